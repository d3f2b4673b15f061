"""The original experiment's text handling, kept on purpose as the ``seed-recipe`` row.

The first attempt (CLIP ViT-B/32 + Q-Former + GPT-2 small + LoRA on Flickr8k) produced only
[EOS] for every image. It made three mistakes, all reproduced here and nowhere else:

1. pad = EOS: the tokenizer had no pad token, so padding used EOS;
2. padding kept in the labels: every caption was padded to a fixed length and the padding
   positions stayed targets, so most training targets were "EOS follows EOS";
3. no start token: captions began right after the visual tokens, and generation was started
   from EOS, which training only ever showed followed by more EOS.

(The original also called generate without an attention mask. With one unpadded prefix per image
a missing mask is all ones, exactly what generate assumes, so it changes nothing and is not counted.)
"""
from __future__ import annotations

import torch

from .language import LanguageBackbone, caption_token_ids, pad_batch


class SeedRecipeText:
    """Same interface as model.CaptionText, with the bugs above."""

    def __init__(self, lm: LanguageBackbone, max_tokens: int, pad_length: int):
        self.tokenizer = lm.tokenizer
        self.bos_id = self.eos_id = self.pad_id = lm.eos_id  # bug 1 (and 3: no separate start token)
        self.start_id = lm.eos_id  # bug 3: generation starts from EOS
        self.max_tokens = max_tokens
        self.pad_length = pad_length

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask = pad_batch(caption_token_ids(self.tokenizer, captions, self.max_tokens), self.pad_id,
                              width=self.pad_length)
        return ids, mask, ids.clone()  # bug 2: padding (= EOS) positions are targets
