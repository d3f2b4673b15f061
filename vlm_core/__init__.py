"""vlm_core: a minimal BLIP-2-style captioner (frozen vision encoder -> Q-Former -> projection -> LM + LoRA).

Holds the model, its backbones and its data; no harness logic lives here.
"""
