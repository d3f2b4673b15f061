"""Which parts learn: gradients after one backward pass, per trainability setting.

Runs the tiny random CLIP + tiny GPT-2 + real GPT-2 tokenizer path end to end."""
import pytest
import torch
from PIL import Image

from vlm_core.model import CaptionModel, CaptionModelConfig
from vlm_core.vision import tiny_random_clip

CAPTIONS = ["a dog runs", "a red ball on the grass"]


def _images():
    return [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (20, 30, 200))]


def _setup(gpt2_tiny, **kw):
    vision = tiny_random_clip()
    torch.manual_seed(0)
    cfg = CaptionModelConfig(num_queries=4, qformer_hidden=32, qformer_layers=2, qformer_heads=2,
                             qformer_intermediate=64, qformer_dropout=0.0, **kw)
    model = CaptionModel(cfg, gpt2_tiny, vision.feature_dim, vision.grid)
    return vision, model


def _grad_norms(model):
    out = {"query_tokens": [], "qformer": [], "projection": [], "lora": [], "lm_base": []}
    for name, p in model.named_parameters():
        g = 0.0 if p.grad is None else float(p.grad.abs().sum())
        if name == "connector.query_tokens":
            out["query_tokens"].append(g)
        elif name.startswith("connector."):
            out["qformer"].append(g)
        elif name.startswith("projection."):
            out["projection"].append(g)
        elif "lora_" in name:
            out["lora"].append(g)
        else:
            out["lm_base"].append(g)
            assert p.grad is None, f"frozen LM parameter {name} got a gradient"
    return out


def test_full_model_gradients_and_query_update(gpt2_tiny):
    vision, model = _setup(gpt2_tiny)
    feats = vision.encode_images(_images())
    assert feats.shape == (2, vision.num_tokens, vision.feature_dim)
    model.train_trainable_parts()
    assert not model.lm.training  # the frozen LM stays in eval mode
    loss = model(feats, CAPTIONS)
    loss.backward()
    g = _grad_norms(model)
    assert all(p.grad is None and not p.requires_grad for p in vision.model.parameters())
    for part in ("query_tokens", "qformer", "projection", "lora"):
        assert g[part] and sum(g[part]) > 0, f"{part} got no gradient"
    # B of each LoRA pair starts at zero, so A gets no gradient on step one; B must.
    assert sum(x > 0 for x in g["lora"]) >= len(g["lora"]) // 2
    before = model.connector.query_tokens.detach().clone()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    assert not torch.equal(before, model.connector.query_tokens.detach())


def test_no_lora_keeps_whole_lm_frozen(gpt2_tiny):
    vision, model = _setup(gpt2_tiny, lora_rank=0)
    report = model.parameter_report()
    assert "lm.lora" not in report and report["lm.base"]["trainable"] == 0
    model(vision.encode_images(_images()), CAPTIONS).backward()
    g = _grad_norms(model)
    assert g["lora"] == [] and sum(g["qformer"]) > 0 and sum(g["projection"]) > 0


def test_frozen_qformer_keeps_connector_at_init(gpt2_tiny):
    vision, model = _setup(gpt2_tiny, train_qformer=False)
    report = model.parameter_report()
    assert report["query_tokens"]["trainable"] == 0 and report["connector.qformer"]["trainable"] == 0
    model.train_trainable_parts()
    assert not model.connector.training
    model(vision.encode_images(_images()), CAPTIONS).backward()
    g = _grad_norms(model)
    assert sum(g["qformer"]) == 0 and sum(g["query_tokens"]) == 0
    assert sum(g["projection"]) > 0 and sum(g["lora"]) > 0


def test_the_mlp_connector_reads_every_patch_and_trains(gpt2_tiny):
    vision, model = _setup(gpt2_tiny, connector="mlp")
    feats = vision.encode_images(_images())
    model.connector.fit_feature_stats(feats)
    assert model.visual_tokens(feats).shape == (2, vision.num_tokens, gpt2_tiny.hidden_size)  # a token per patch
    layers = [type(m).__name__ for m in (*model.connector.children(), model.projection)]
    assert layers == ["FeatureStandardizer", "Linear", "GELU", "Linear"]  # LLaVA-1.5's MLP, then the LM
    model.train_trainable_parts()
    step = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        step.zero_grad()
        loss = model(feats, CAPTIONS)
        loss.backward()
        trained = {n: float(p.grad.abs().sum()) for n, p in model.named_parameters()
                   if n.startswith(("connector.", "projection."))}
        assert sorted(trained) == ["connector.fc.bias", "connector.fc.weight", "projection.bias", "projection.weight"]
        assert all(g > 0 for g in trained.values()), trained
        step.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_an_unknown_connector_is_one_line_naming_the_known_ones(tmp_path):
    from ablations.tables import load_table
    from vlm_core.errors import UserError

    from .micro import write_micro

    table = write_micro(tmp_path / "m.toml", variants=("full",), extra='[variants.mpl]\nmodel = { connector = "mpl" }\n')
    with pytest.raises(UserError) as err:
        load_table(str(table))
    assert str(err.value) == (f"{table}: variants.mpl.model: model.connector: unknown connector 'mpl'; "
                              "known: qformer, meanpool, mlp")


def test_generate_returns_only_new_decoded_tokens(gpt2_tiny):
    vision, model = _setup(gpt2_tiny)
    texts, first = model.generate(vision.encode_images(_images()), max_new_tokens=5, first_token_ids=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert all(t == t.strip() for t in texts)
    for t in texts:  # at most 5 new tokens (each new word needs at least one)
        assert len(t.split()) <= 5
    beams = model.generate(vision.encode_images(_images()), max_new_tokens=5, num_beams=3)
    assert len(beams) == 2


def test_parameter_report_counts_add_up(gpt2_tiny):
    _, model = _setup(gpt2_tiny)
    report = model.parameter_report()
    total = sum(p.numel() for p in model.parameters())
    assert sum(v["trainable"] + v["frozen"] for v in report.values()) == total
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(v["trainable"] for v in report.values()) == trainable
    assert report["lm.base"]["trainable"] == 0 and report["lm.lora"]["trainable"] > 0


def test_saved_weights_with_a_head_adapter_round_trip_and_hold_only_trained_parts(gpt2_tiny, tmp_path):
    """LoRA on the tied lm_head: the reloaded model gives the same loss, and the embedding is not saved."""
    from safetensors.torch import load_file

    targets = ["c_attn", "c_proj", "lm_head"]
    vision, model = _setup(gpt2_tiny, lora_targets=targets)
    feats = vision.encode_images(_images())
    with torch.no_grad():  # move every trainable tensor away from its init (LoRA B starts at zero)
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    loss = float(model(feats, CAPTIONS))
    model.save_trainable(tmp_path / "w")
    _, fresh = _setup(gpt2_tiny, lora_targets=targets)
    fresh.eval()
    assert abs(float(fresh(feats, CAPTIONS)) - loss) > 1e-4  # a fresh model differs ...
    fresh.load_trainable(tmp_path / "w")
    assert abs(float(fresh(feats, CAPTIONS)) - loss) < 1e-5  # ... until it loads the saved weights
    saved = load_file(str(tmp_path / "w" / "lora" / "adapter_model.safetensors"))
    assert any("lm_head" in k for k in saved)
    assert all("lora_" in k for k in saved), [k for k in saved if "lora_" not in k]


def test_blind_tokens_are_the_zero_image_tokens_for_every_image_and_still_train(gpt2_tiny):
    vision, model = _setup(gpt2_tiny, blind=True)
    feats = vision.encode_images(_images())
    tokens = model.visual_tokens(feats)
    per_row = model.projection(model.connector(torch.zeros_like(feats)))  # the definition, row by row
    assert torch.allclose(tokens, per_row, atol=1e-6)
    assert torch.equal(tokens[0], tokens[1])
    model.train_trainable_parts()
    model(feats, CAPTIONS).backward()
    norms = _grad_norms(model)
    assert sum(norms["qformer"]) > 0 and sum(norms["projection"]) > 0 and sum(norms["query_tokens"]) > 0


def test_standardisation_folded_into_the_patch_projection_is_the_same_function():
    from vlm_core.connector import QFormerConnector

    torch.manual_seed(0)
    conn = QFormerConnector(48, (3, 3), num_queries=4, hidden=32, layers=1, heads=2, intermediate=64,
                            cross_attention_frequency=1, dropout=0.0)
    x = torch.randn(5, 9, 48) * torch.linspace(0.1, 8, 48) + torch.linspace(-3, 5, 48)
    conn.fit_feature_stats(x)
    assert float((conn.vision_norm.std - 1).abs().max()) > 1  # the statistics are far from identity
    two_step = conn.vision_proj(conn.vision_norm(x)) + conn.vision_pos
    queries = conn.query_tokens.expand(5, -1, -1)
    expected = conn.qformer(query_embeds=queries, encoder_hidden_states=two_step).last_hidden_state
    assert torch.allclose(conn(x), expected, atol=1e-5)


def test_lora_dropout_applies_in_training_only(gpt2_tiny):
    """lora_dropout lives inside the frozen (eval-mode) LM; it must still act while training."""
    vision, model = _setup(gpt2_tiny, lora_dropout=0.5, lora_targets=["c_attn", "c_proj", "c_fc", "lm_head"])
    with torch.no_grad():  # B starts at zero, which hides any dropout on A's input
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    feats = vision.encode_images(_images())
    model.train_trainable_parts()
    for name, module in model.lm.named_modules():  # adapters' dropout on; the frozen LM's own dropout off
        assert module.training == (".lora_dropout" in name), name
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(feats, CAPTIONS)
        torch.manual_seed(2)
        b = model(feats, CAPTIONS)
    assert not torch.allclose(a, b), "LoRA dropout did not act in training mode"
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(feats, CAPTIONS), model(feats, CAPTIONS))
