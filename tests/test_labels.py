"""Label masking: pads never reach the loss, exactly one EOS target, visual/prompt positions -100."""
import pytest
import torch

from vlm_core.model import CaptionModel, CaptionModelConfig

CAPTIONS = ["a dog", "a small red circle left of a large blue square", "two people walk on the beach at night"]


@pytest.fixture(scope="module")
def llama_tiny(gpt2_tiny):
    """A tiny random Llama (SmolLM2's architecture) with the GPT-2 tokenizer: the Llama code path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from vlm_core.language import frozen_lm

    tok = gpt2_tiny.tokenizer
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    return frozen_lm("tiny-random-llama", LlamaForCausalLM(cfg), tok)


@pytest.fixture(params=["gpt2", "bpe", "llama"])
def lm(request, gpt2_tiny, caption_lm, llama_tiny):
    return {"gpt2": gpt2_tiny, "bpe": caption_lm, "llama": llama_tiny}[request.param]


def _model(lm, **kw):
    torch.manual_seed(0)
    return CaptionModel(CaptionModelConfig(num_queries=4, qformer_hidden=32, qformer_layers=1, qformer_heads=2,
                                           qformer_intermediate=64, **kw), lm, feature_dim=24, grid=None)


def test_label_mask_structure(lm):
    model = _model(lm)
    ids, mask, labels = model.encode_captions(CAPTIONS)
    assert ids.shape == labels.shape == mask.shape
    for r, cap in enumerate(CAPTIONS):
        n_tok = len(lm.tokenizer(cap, add_special_tokens=False).input_ids)
        targets = labels[r][labels[r] != -100].tolist()
        assert ids[r, 0].item() == model.bos_id and labels[r, 0].item() == -100  # prompt: given, not a target
        assert (labels[r][mask[r] == 0] == -100).all()  # pads never targets
        assert targets.count(model.eos_id) == 1 and targets[-1] == model.eos_id  # exactly one EOS, at the end
        assert len(targets) == n_tok + 1  # the caption and the EOS, nothing else
    # Rows of different length really were padded.
    assert (mask == 0).any()


def test_loss_matches_hf_loss_with_visual_positions_masked(lm):
    """Our loss equals HF's own loss on the full sequence with visual positions labelled -100."""
    model = _model(lm)
    model.eval()
    feats = torch.randn(len(CAPTIONS), 5, 24)
    ours = model(feats, CAPTIONS)
    ids, mask, labels = model.encode_captions(CAPTIONS)
    visual = model.visual_tokens(feats)
    embeds = torch.cat([visual, model.lm.get_input_embeddings()(ids)], dim=1)
    attn = torch.cat([torch.ones(visual.shape[:2], dtype=torch.long), mask], dim=1)
    full_labels = torch.cat([torch.full(visual.shape[:2], -100), labels], dim=1)
    theirs = model.lm(inputs_embeds=embeds, attention_mask=attn, labels=full_labels).loss
    assert torch.allclose(ours, theirs, atol=1e-5)
    # Per-caption NLL (logits at target positions only) equals HF's per-token loss averaged per row.
    logits = model.lm(inputs_embeds=embeds, attention_mask=attn).logits[:, visual.shape[1] - 1 : -1]
    per_tok = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    expected = per_tok.sum(1) / (labels != -100).sum(1)
    assert torch.allclose(model.caption_nll(feats, CAPTIONS), expected, atol=1e-5)


def test_pad_ids_do_not_change_loss(lm):
    model = _model(lm)
    model.eval()
    feats = torch.randn(len(CAPTIONS), 5, 24)
    base = model(feats, CAPTIONS)
    original = model.encode_captions

    def with_junk_pads(captions):
        ids, mask, labels = original(captions)
        ids = ids.masked_fill(mask == 0, 7)  # any other token in pad positions
        return ids, mask, labels

    model.encode_captions = with_junk_pads
    assert torch.allclose(model(feats, CAPTIONS), base, atol=1e-5)


def test_seed_recipe_keeps_the_original_bugs(lm):
    model = _model(lm, recipe="seed", seed_pad_length=64, max_caption_tokens=40)
    ids, mask, labels = model.encode_captions(CAPTIONS)
    assert model.pad_id == model.eos_id == model.bos_id
    assert ids.shape[1] == 64
    # padding (= EOS) positions are targets, many per caption
    assert ((labels == model.eos_id) & (mask == 0)).sum(1).min() > 1
