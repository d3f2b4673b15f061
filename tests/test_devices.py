"""Device plumbing without a GPU: a tensor our code creates without naming a device would stay on the
CPU next to a CUDA model. Under ``off_device()`` such a tensor lands on ``meta`` instead, and any op
that mixes devices fails (torch lets a few through, e.g. an embedding lookup with meta indices, so a
function mode checks every call), so these tests fail on any stray tensor."""
import contextlib

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ablations.measure import probes
from vlm_core.device import autocast, resolve_device
from vlm_core.errors import UserError
from vlm_core.features import FeatureSet
from vlm_core.model import CaptionModel, CaptionModelConfig
from vlm_core.decoding import generate_captions
from vlm_core.train import TrainConfig, reference_nll

CFG = dict(num_queries=2, qformer_hidden=32, qformer_layers=1, qformer_heads=2, qformer_intermediate=64)
CAPTIONS = ["a small red circle", "a large blue square left of a small green triangle"]


@pytest.fixture(params=["fixed", "seed"])
def model(request, gpt2_tiny):
    return CaptionModel(CaptionModelConfig(recipe=request.param, **CFG), gpt2_tiny, 32, (2, 2))


def _feats():
    return torch.randn(2, 4, 32)


class SameDevice(TorchFunctionMode):
    """Every torch call gets tensors (beyond 0-d scalars) on one device only."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = {t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.dim() > 0}
        if len(devices) > 1 and getattr(func, "__name__", "") not in ("to", "copy_", "cpu"):
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes devices {devices}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def off_device():
    with torch.device("meta"), SameDevice():
        yield


def test_forward_backward_and_likelihood_make_no_tensor_off_the_model_device(model):
    x = _feats()
    with off_device():
        loss = model(x, CAPTIONS)
        loss.backward()
        nll = model.caption_nll(x, CAPTIONS)
        ref = reference_nll(model, x, [[c] for c in CAPTIONS])
    assert loss.device == model.device and torch.isfinite(loss)
    assert nll.shape == (2,) and np.isfinite(ref).all()
    assert all(p.grad is None or p.grad.device == model.device for p in model.parameters())


def test_generation_and_probes_make_no_tensor_off_the_model_device(model):
    x = _feats()
    feats = FeatureSet(["a", "b"], x.numpy().astype(np.float16), None, True, 0.0)
    with off_device():
        texts, first = model.generate(x, max_new_tokens=4, first_token_ids=True)
        captions = generate_captions(model, feats, TrainConfig(max_new_tokens=4).decoding())
        like = probes.likelihood_swap(model, x, [[c] for c in CAPTIONS], [1, 0])
        eos = probes.eos_probabilities(model, x, CAPTIONS)
        p = model.next_token_probs(x, [[model.text.start_id], [model.text.start_id, 5]])
    assert len(texts) == len(first) == len(captions) == 2
    assert np.isfinite(like["nll_gap"]) and 0 <= eos["p_eos_start"] <= 1
    assert p.device.type == "cpu" and torch.allclose(p.sum(-1), torch.ones(2))


def test_vision_encoding_makes_no_tensor_off_the_encoder_device():
    from PIL import Image

    from vlm_core.vision import tiny_random_clip

    vision = tiny_random_clip()
    with off_device():
        tokens = vision.encode_images([Image.new("RGB", (40, 40), (200, 30, 30))])
    assert tokens.device.type == "cpu" and tokens.shape[0] == 1


def test_every_parameter_and_buffer_follows_the_workspace_device(gpt2_tiny):
    from dataclasses import dataclass

    from ablations.run.runner import build_model

    @dataclass
    class Vision:
        feature_dim = 32
        grid = (2, 2)

    @dataclass
    class Run:
        precision = "bf16"

    @dataclass
    class Table:
        run = Run()

    @dataclass
    class Workspace:
        lm = gpt2_tiny
        vision = Vision()
        device = torch.device("meta")
        table = Table()

    m = build_model(Workspace(), CaptionModelConfig(**CFG), seed=0)
    assert m.device.type == "meta" and m.precision == "bf16"
    assert all(t.device.type == "meta" for t in list(m.parameters()) + list(m.buffers()))


def test_device_and_precision_are_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda:0")
    with pytest.raises(UserError, match="not a device"):
        resolve_device("tpu-9000")
    with pytest.raises(UserError, match="precision must be one of"):
        autocast(torch.device("cpu"), "fp8")


def test_bf16_autocast_runs_the_loss_in_bf16(model):
    model.precision = "bf16"
    seen = []
    handle = model.projection.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    loss = model(_feats(), CAPTIONS)
    handle.remove()
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_bf16_autocast_keeps_the_lm_head_in_fp32(model):
    """The logits the losses, NLL gaps and P(EOS) come from: under bf16 autocast the head still runs in fp32
    on its input (bf16 logits of 32-128 come in steps of 0.25-0.5)."""
    model.precision = "bf16"
    head, seen = model.lm.get_output_embeddings(), []
    handle = head.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out)))
    with torch.no_grad():
        model.caption_nll(_feats(), CAPTIONS)
    handle.remove()
    hidden, logits = seen[-1]  # the LM's own forward also calls it, for one unused position (logits_to_keep=1)
    weight = head.weight if hasattr(head, "weight") else head.base_layer.weight
    expected = hidden.float() @ weight.float().T
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, expected, rtol=1e-5, atol=1e-5), (logits - expected).abs().max()


def test_bf16_autocast_standardises_the_patch_features_in_fp32(gpt2_tiny):
    """Features far from zero (mean 50, SD 1): folded into the weights, b − (W/σ)μ cancels in bf16."""
    m = CaptionModel(CaptionModelConfig(**CFG), gpt2_tiny, 32, (2, 2))
    x = 50 + torch.randn(64, 4, 32)
    m.connector.fit_feature_stats(x)
    with torch.no_grad():
        exact = m.connector._patch_tokens(x)
        with autocast(torch.device("cpu"), "bf16"):
            low = m.connector._patch_tokens(x).float()
    scale = exact.abs().mean()
    assert (low - exact).abs().mean() < 0.02 * scale, ((low - exact).abs().mean(), scale)


def test_the_fixed_order_row_sums_equal_index_add_and_carry_gradients():
    """What CUDA uses instead of index_add (atomics: a different sum each run): the same sums, differentiable."""
    from vlm_core.model import per_row_sums

    keep = torch.tensor([[True, True, False], [False, False, False], [True, True, True]])
    values = torch.randn(int(keep.sum()), dtype=torch.float64, requires_grad=True)
    fixed, atomic = per_row_sums(values, keep, True), per_row_sums(values, keep, False)
    assert torch.allclose(fixed, atomic) and fixed[1] == 0
    assert torch.allclose(fixed, torch.stack([values[:2].sum(), values.new_zeros(()), values[2:].sum()]))
    fixed.sum().backward()
    assert torch.equal(values.grad, torch.ones_like(values))


def test_a_cuda_run_is_configured_for_repeatable_numbers(monkeypatch):
    """Set for CUDA only (the CPU needs nothing): deterministic algorithms, the cuBLAS workspace, no cuDNN
    autotuning, TF32 only for low-precision runs; the run's provenance records them."""
    from ablations.run.provenance import determinism
    from vlm_core.device import configure

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.matmul.allow_tf32)
    configure(torch.device("cpu"), "fp32")
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.matmul.allow_tf32) == before
    try:
        configure(torch.device("cuda"), "bf16")
        assert torch.backends.cuda.matmul.allow_tf32 and determinism()["tf32_matmul"] is True
        configure(torch.device("cuda"), "fp32")
        recorded = determinism()
        assert recorded["deterministic_algorithms"] and recorded["cublas_workspace_config"] == ":4096:8"
        assert recorded["tf32_matmul"] is False and recorded["cudnn_benchmark"] is False
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cuda.matmul.allow_tf32 = before[1]
        torch.backends.cudnn.allow_tf32 = True  # torch default


@pytest.mark.parametrize("fixed", [False, True])
def test_the_nll_of_captions_is_the_same_with_the_fixed_order_sum_at_its_call_site(gpt2_tiny, monkeypatch, fixed):
    """At the call site (the NLL the probes and the loss use): with the fixed-order sum forced, as on CUDA, the
    per-caption NLL is the one index_add gives, and the sum is asked for with the device's choice."""
    import vlm_core.model as model_module

    model = CaptionModel(CaptionModelConfig(**CFG), gpt2_tiny, 32, (2, 2)).eval()  # no dropout: two calls compare
    torch.manual_seed(0)
    x = _feats()
    plain = model.caption_nll(x, CAPTIONS)
    seen = []
    real = model_module.per_row_sums

    def spy(values, keep, fixed_order):
        seen.append(fixed_order)
        return real(values, keep, fixed)

    monkeypatch.setattr(model_module, "per_row_sums", spy)
    forced = model.caption_nll(x, CAPTIONS)
    assert seen and all(f == model_module.fixed_order_sums(model.device) for f in seen)
    assert torch.allclose(forced, plain, atol=1e-6)
    assert model_module.fixed_order_sums(torch.device("cuda")) and not model_module.fixed_order_sums(torch.device("cpu"))


def test_every_run_records_its_determinism_after_the_device_is_configured(monkeypatch, tmp_path):
    """The determinism record is written after configure() in each process (a Ray worker's first run said
    'default algorithms' before), and records warn-only."""
    import ablations.run.runner as runner_module
    from ablations.run.provenance import determinism

    order = []
    monkeypatch.setattr(runner_module, "configure", lambda *a: order.append("configure"))
    monkeypatch.setattr(runner_module, "determinism", lambda: order.append("record") or determinism())

    class Stop(Exception):
        pass

    monkeypatch.setattr(runner_module, "_execute", lambda *a: (_ for _ in ()).throw(Stop()))
    from types import SimpleNamespace

    from ablations.tables import load_table

    from .micro import write_micro

    table = load_table(str(write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full",))))
    workspace = SimpleNamespace(table=table, device=torch.device("cpu"), provenance={},
                                vision=SimpleNamespace(revision=None, num_tokens=4, feature_dim=32),
                                lm=SimpleNamespace(info={}))
    with pytest.raises(Stop):
        runner_module.execute_run(workspace, table.variants["full"], 0, tmp_path / "run")
    assert order[:2] == ["configure", "record"]
    assert "deterministic_warn_only" in determinism()
