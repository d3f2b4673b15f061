"""Looking inside: grounding score against known object pixels, maps on the patch grid, the LM's
reading of the visual tokens, and `ablate attention`."""
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ablations.measure import attention
from ablations.cli import app
from vlm_core.model import CaptionModel, CaptionModelConfig
from vlm_core.shapes import object_masks

from .micro import write_micro

runner = CliRunner()


def _label(centre=(180, 40), radius=30, size=224):
    return {"objects": [{"colour": "red", "shape": "square", "size": "large", "radius": radius, "centre": centre}],
            "relation": None, "background": (240, 240, 240), "image_size": size, "noise_seed": 0}


def test_object_masks_and_patch_coverage_follow_the_image_layout():
    label = _label()
    (obj, mask), = object_masks(label)
    assert obj["box"] == (150, 10, 211, 71) and mask.sum() == 61 * 61
    cover = attention.coverage(mask, 7, 7).reshape(7, 7)  # 32-px patches, row-major like the encoder's tokens
    assert cover[1, 5] == pytest.approx(1.0) and cover[0, 5] == pytest.approx(22 / 32) and cover[6, 0] == 0.0
    assert cover.mean() == pytest.approx(mask.mean())  # chance = the objects' share of the image


class HandSetConnector:
    """Query 0 looks only at one patch, query 1 spreads evenly: a grounding score known in advance."""

    def __init__(self, patch: int, n: int = 49):
        self.patch, self.n = patch, n

    def query_attention(self, x):
        maps = torch.full((1, len(x), 2, self.n), 1.0 / self.n)
        maps[0, :, 0] = 0.0
        maps[0, :, 0, self.patch] = 1.0
        return maps


@pytest.mark.parametrize("patch, on_object", [(12, 1.0), (42, 0.0)])  # (row 1, col 5) inside the square; (6, 0) not
def test_grounding_score_of_hand_set_attention(patch, on_object):
    label = _label()
    chance = attention.coverage(object_masks(label)[0][1], 7, 7).mean()
    per_image, scalars = attention.grounding(HandSetConnector(patch), torch.zeros(2, 49, 8), [label, label], (7, 7))
    expected = (on_object + chance) / 2  # mean of the one-patch query and the even one
    assert per_image["grounding_mass"].to_numpy() == pytest.approx([expected, expected], abs=1e-6)
    assert scalars["grounding_chance"] == pytest.approx(chance, abs=1e-6)
    assert scalars["query_entropy"] == pytest.approx(np.log(49) / 2, abs=1e-5)  # 0 and log 49
    assert scalars["query_overlap"] == pytest.approx(1 / 49, abs=1e-6)


def test_query_maps_match_the_patch_grid(gpt2_tiny):
    from vlm_core.vision import tiny_random_clip

    vision = tiny_random_clip()  # 32-px images, 8-px patches: a CLS token + 4 x 4 patches
    model = CaptionModel(CaptionModelConfig(num_queries=3, qformer_hidden=32, qformer_layers=2, qformer_heads=2,
                                            qformer_intermediate=64), gpt2_tiny, vision.feature_dim, vision.grid).eval()
    from PIL import Image

    maps = model.query_attention(vision.encode_images([Image.new("RGB", (32, 32), (9, 200, 9))]))
    assert maps.shape == (2, 1, 3, 17) and torch.allclose(maps.sum(-1), torch.ones(2, 1, 3))
    patches, rows, cols = attention.patch_maps(maps, vision.grid)
    assert (rows, cols) == (4, 4) and patches.shape[-1] == 16
    assert attention.patch_grid(49, (7, 7)) == (7, 7, 0)


def test_a_blind_model_reads_the_same_visual_share_for_any_image(gpt2_tiny):
    cfg = dict(num_queries=2, qformer_hidden=32, qformer_layers=1, qformer_heads=2, qformer_intermediate=64)
    blind = CaptionModel(CaptionModelConfig(blind=True, **cfg), gpt2_tiny, 32, (2, 2)).eval()
    seeing = CaptionModel(CaptionModelConfig(**cfg), gpt2_tiny, 32, (2, 2)).eval()
    caps = ["a red circle", "a blue square above a green triangle"]
    a, b = torch.randn(2, 4, 32), 3 * torch.randn(2, 4, 32)
    blind_a, blind_b = attention.visual_reliance(blind, a, caps)[0], attention.visual_reliance(blind, b, caps)[0]
    assert np.array_equal(blind_a, blind_b) and (0 < blind_a).all() and (blind_a < 1).all()
    assert not np.allclose(attention.visual_reliance(seeing, a, caps)[0], attention.visual_reliance(seeing, b, caps)[0])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention")
    table = write_micro(root / "micro.toml", seeds=(0,), variants=("full", "meanpool"))
    result = runner.invoke(app, ["run-all", str(table), "--runs-dir", str(root / "runs"), "--cache-dir", str(root / "cache")])
    assert result.exit_code == 0, result.output
    from vlm_core.shapes import ShapesConfig, load_shapes

    load_shapes(ShapesConfig(seed=7, train=24, dev=8, test=8)).load_image("shapes_00033.png").save(root / "x.png")
    return root


def test_attention_command_writes_one_map_per_query_and_a_grid(two_runs):
    out = two_runs / "maps"
    result = runner.invoke(app, ["attention", str(two_runs / "x.png"), "--run", str(two_runs / "runs/micro/full/seed-0"),
                                 "--out", str(out), "--cache-dir", str(two_runs / "cache")])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["x_layer0_grid.png", "x_layer0_query0.png", "x_layer0_query1.png"]
    assert all((out / n).stat().st_size > 1000 for n in names)


def test_attention_command_on_a_run_without_a_q_former_says_so(two_runs):
    result = runner.invoke(app, ["attention", str(two_runs / "x.png"), "--run", str(two_runs / "runs/micro/meanpool/seed-0"),
                                 "--out", str(two_runs / "maps2"), "--cache-dir", str(two_runs / "cache")])
    assert result.exit_code == 2
    assert "no Q-Former (connector = meanpool)" in result.output and "Traceback" not in result.output
    assert not (two_runs / "maps2").exists()


def test_commands_refuse_a_run_that_did_not_finish(two_runs):
    import shutil

    unfinished = two_runs / "unfinished"
    shutil.copytree(two_runs / "runs/micro/full/seed-0", unfinished)
    (unfinished / "DONE").unlink()  # killed while probing: weights are there, the run is not finished
    result = runner.invoke(app, ["attention", str(two_runs / "x.png"), "--run", str(unfinished),
                                 "--out", str(two_runs / "maps3"), "--cache-dir", str(two_runs / "cache")])
    assert result.exit_code == 2 and "not a finished run folder" in result.output
