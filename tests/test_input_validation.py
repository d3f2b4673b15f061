"""Bad input is one line naming the file and the key (or line) and what is allowed, before any work: never a
traceback, a RecursionError or a huge allocation (issue 49, item 4)."""
import json
import struct
import time
import typing
from dataclasses import fields

import pytest

from ablations.run.planning import run_config
from ablations.run.record import DONE
from ablations.tables import LIMITS, MAX_NESTING, MAX_TABLE_BYTES, apply_settings, load_table
from ablations.run.trained import load_run_model, run_decoding
from vlm_core.errors import UserError

from .micro import write_micro
from .test_tables import GOOD


def _write(tmp_path, text, name="t.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _refused(path, *parts):
    """load_table(path) raises one UserError naming each of ``parts`` (the file first); returns its message."""
    with pytest.raises(UserError) as err:
        load_table(str(path))
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)
    return message


# ---- size and nesting, checked before tomllib parses


def test_headers_two_thousand_levels_deep_are_one_line(tmp_path):
    path = _write(tmp_path, GOOD + "[" + ".".join(["a"] * 2000) + "]\nx = 1\n")
    _refused(path, f"{path}: line 22: nested too deeply: a key or header of more than {MAX_NESTING} parts")


def test_a_dotted_key_of_100000_parts_is_refused_at_once(tmp_path):
    path = _write(tmp_path, GOOD + ".".join(["a"] * 100_000) + " = 1\n")  # 74 s and 9.3 GB in tomllib
    start = time.perf_counter()
    _refused(path, f"{path}: line 22: nested too deeply: a key or header of more than {MAX_NESTING} parts")
    assert time.perf_counter() - start < 2


def test_values_nested_deeper_than_the_bound_are_refused(tmp_path):
    path = _write(tmp_path, GOOD + "x = " + "[" * 900 + "]" * 900 + "\n")
    _refused(path, f"{path}: line 22: nested too deeply: arrays or inline tables more than {MAX_NESTING} levels deep")
    path = _write(tmp_path, GOOD + "x = " + "{a = " * 40 + "1" + "}" * 40 + "\n")
    _refused(path, f"{path}: line 22: nested too deeply: arrays")


def test_the_bound_itself_is_allowed():
    from ablations.tables import check_nesting

    check_nesting("a" + ".a" * (MAX_NESTING - 1) + " = " + "[" * MAX_NESTING + "]" * MAX_NESTING, "x")
    for text in ("a" + ".a" * MAX_NESTING + " = 1", "a = " + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)):
        with pytest.raises(UserError, match="x: line 1: nested too deeply"):
            check_nesting(text, "x")


def test_depth_is_counted_outside_strings_and_comments_only(tmp_path):
    dots = "." * 100
    text = GOOD.replace("[table]\n", f'[table]\ndescription = "{dots}"  # {dots}\nnotes = """\n[{dots}]\n"""\n')
    assert load_table(_write(tmp_path, text)).description == dots


def test_an_included_file_is_bounded_too(tmp_path):
    (tmp_path / "deep.toml").write_text("[" + ".".join(["a"] * 2000) + "]\n")
    _refused(_write(tmp_path, 'include = "deep.toml"\n' + GOOD), f"{tmp_path / 'deep.toml'}: line 1: nested too deeply")
    _refused(_write(tmp_path, 'include = "/dev/zero"\n' + GOOD), "/dev/zero: not a regular file")
    (tmp_path / "big.toml").write_text("# " + "x" * MAX_TABLE_BYTES + "\n")
    _refused(_write(tmp_path, 'include = "big.toml"\n' + GOOD), f"{tmp_path / 'big.toml'}: larger than 1_048_576 bytes")
    path = _write(tmp_path, "include = [" + ", ".join(['"x.toml"'] * 17) + "]\n" + GOOD)
    _refused(path, f"{path}: include: at most 16 files, not 17")


def test_a_table_that_is_no_regular_file_or_too_big_is_one_line(tmp_path):
    with pytest.raises(UserError, match="/dev/zero: not a regular file"):
        load_table("/dev/zero")
    path = _write(tmp_path, GOOD + "# " + "x" * MAX_TABLE_BYTES + "\n")
    _refused(path, f"{path}: larger than 1_048_576 bytes (1 MiB)")


# ---- wrong types


@pytest.mark.parametrize("bad, key", [
    ("table = 5\n" + GOOD.replace('[table]\nname = "micro"\nseeds = [0, 1]\n', ""), "table: expected a table of keys"),
    ("sweep = 5\n" + GOOD.split("[[sweep]]")[0], "sweep: expected [[sweep]] entries"),
    (GOOD.replace("[table]\n", '[table]\nreference = ["full"]\n'), "table.reference: expected str"),
    (GOOD.replace("[table]\n", "[table]\ndescription = {a = 1}\n"), "table.description: expected str"),
    (GOOD.replace("num_queries = 4", "num_queries = 4\nlora_targets = [1, 2]"),
     "model.lora_targets: expected a list of str"),
    (GOOD.replace("num_queries = 4", "num_queries = 4\nqformer_heads = 3"),
     "model.qformer_heads: 3 does not divide qformer_hidden (256)"),
    (GOOD.replace('base = "full"', 'base = ["full"]'), "sweep[0].base: unknown variant"),
    (GOOD.replace('expect = "image_dependent"', 'expect = [["image_dependent"]]'),
     "variants.full.expect: unknown expectation"),
    (GOOD.replace("epochs = 1", "epochs = 1\nlr = nan"), "train.lr: expected a finite number"),
])
def test_wrong_types_name_the_key(tmp_path, bad, key):
    path = _write(tmp_path, bad)
    _refused(path, f"{path}: {key}")


# ---- resource-shaped values: bounded, the range in the message


@pytest.mark.parametrize("bad, key", [
    (GOOD.replace("train = 10", "train = 10\ntest = -5"), "data.shapes.test: must be in [1, 1_000_000], not -5"),
    (GOOD.replace("train = 10", "train = 10_000_000_000"), "data.shapes.train: must be in [1, 1_000_000]"),
    (GOOD.replace("train = 10", "train = 1e10"), "data.shapes.train: expected int, got float"),
    (GOOD.replace("train = 10", "train = 600_000\ndev = 300_000\ntest = 200_000"),
     "data.shapes: train + dev + test must be at most 1_000_000 images"),
    (GOOD.replace("train = 10", "train = 10\nimage_size = 100"), "data.shapes.image_size: must be in [176, 2048]"),
    (GOOD.replace("seeds = [0, 1]", "seeds = [0, 100_000_000_000_000_000_000]"),
     "table.seeds: expected a non-empty list of distinct integers in [0, 4_294_967_295]"),
    (GOOD.replace("seeds = [0, 1]", "seeds = [0, 1e20]"),
     "table.seeds: expected a non-empty list of distinct integers"),
    (GOOD.replace("[variants.full]\n", "[variants.full]\nseeds = [4_294_967_296]\n"),
     "variants.full.seeds: expected a non-empty list of distinct integers in [0, 4_294_967_295]"),
    (GOOD.replace("train = 10", "train = 10\nseed = -1"), "data.shapes.seed: must be in [0, 4_294_967_295], not -1"),
    (GOOD.replace("epochs = 1", "epochs = 1_000_000"), "train.epochs: must be in [1, 1000], not 1_000_000"),
    (GOOD.replace("epochs = 1", "epochs = 1\nbatch_size = 10_000_000"), "train.batch_size: must be in [1, 65_536]"),
    (GOOD.replace("epochs = 1", "epochs = 1\nnum_beams = 1000"), "train.num_beams: must be in [1, 64], not 1000"),
    (GOOD.replace("epochs = 1", "epochs = 1\nmax_new_tokens = 100_000"), "train.max_new_tokens: must be in [1, 1024]"),
    (GOOD.replace("num_queries = 4", "num_queries = 9_999_999_999"), "model.num_queries: must be in [1, 1024]"),
    (GOOD.replace("values = [2, 8]", "values = [2, 9_999_999_999]"), "model.num_queries: must be in [1, 1024]"),
    (GOOD + "[probes]\nswap_seed = 100_000_000_000_000_000_000\n", "probes.swap_seed: must be in [0, 4_294_967_295]"),
    (GOOD + "[caption_lm]\nn_head = 3\n", "caption_lm.n_head: 3 does not divide n_embd (256)"),
])
def test_out_of_range_values_name_the_key_and_the_range(tmp_path, bad, key):
    path = _write(tmp_path, bad)
    _refused(path, path, key)


def test_set_is_bounded_like_the_table():
    table = load_table("shapes")
    (v,) = table.select(["full"])
    for setting, message in (("model.num_queries=9999999999", "--set model.num_queries: must be in [1, 1024]"),
                             ("model.qformer_heads=3", "--set model.qformer_heads: 3 does not divide qformer_hidden"),
                             ("train.num_beams=100000", "--set train.num_beams: must be in [1, 64]"),
                             ("probes.swap_seed=100000000000000000000", "--set probes.swap_seed: must be in [0, "),
                             ("model.lora_targets=" + "[" * 40 + "]" * 40,
                              "--set model.lora_targets: nested too deeply: arrays")):
        with pytest.raises(UserError) as err:
            apply_settings(table, v, [setting])
        assert message in str(err.value)
    assert v.model.num_queries == 16  # nothing was changed


def test_every_number_of_the_schema_has_a_range():
    """A key added later gets a bound too (or this fails)."""
    for cls, limits in LIMITS.items():
        hints = typing.get_type_hints(cls)
        assert {f.name for f in fields(cls) if hints[f.name] in (int, float)} == set(limits), cls.__name__
        defaults = cls()
        for key, (lo, hi) in limits.items():
            assert lo <= getattr(defaults, key) <= hi, (cls.__name__, key)


# ---- a trained run's files (ablate caption / ablate attention), refused before any backbone is loaded


@pytest.fixture
def run_folder(tmp_path):
    """A finished run folder as `run-all` leaves it, with placeholder weights (nothing is trained)."""
    from safetensors.torch import save_file
    import torch

    table = load_table(str(write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full",))))
    run = tmp_path / "runs" / "micro" / "full" / "seed-0"
    (run / "weights" / "lora").mkdir(parents=True)
    config = run_config(table, table.variants["full"], 0, "test")
    (run / "config.json").write_text(json.dumps(config))
    model_config = {"model": config["model"], "lm": "caption-gpt2-tiny"}
    (run / "weights" / "model_config.json").write_text(json.dumps(model_config))
    save_file({"connector.x": torch.zeros(4)}, str(run / "weights" / "connector_projection.safetensors"))
    save_file({"x": torch.zeros(4)}, str(run / "weights" / "lora" / "adapter_model.safetensors"))
    (run / DONE).write_text("{}")
    return run


def _run_refused(run, name, *parts):
    with pytest.raises(UserError) as err:
        load_run_model(run, run.parent / "cache", "cpu")
    message = str(err.value)
    assert str(run / name) in message and "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


@pytest.mark.parametrize("damage", ["truncated", "huge header", "random bytes"])
def test_damaged_weights_name_the_file(run_folder, damage):
    path = run_folder / "weights" / "connector_projection.safetensors"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) - 8], "huge header": struct.pack("<Q", 2**62) + b"{}",
                      "random bytes": bytes(range(256)) * 16}[damage])
    _run_refused(run_folder, "weights/connector_projection.safetensors", "not a readable safetensors file")


def test_damaged_lora_weights_name_the_file(run_folder):
    (run_folder / "weights" / "lora" / "adapter_model.safetensors").write_bytes(b"\x00" * 7)
    _run_refused(run_folder, "weights/lora/adapter_model.safetensors", "not a readable safetensors file")


@pytest.mark.parametrize("text", ["{}", "[]"])
def test_an_empty_run_config_names_the_file(run_folder, text):
    (run_folder / "config.json").write_text(text)
    _run_refused(run_folder, "config.json", "not a run's settings")
    with pytest.raises(UserError, match="config.json: not a run's settings"):
        run_decoding(run_folder)


@pytest.mark.parametrize("text", ["{}", "[]"])
def test_an_empty_model_config_names_the_file(run_folder, text):
    (run_folder / "weights" / "model_config.json").write_text(text)
    _run_refused(run_folder, "weights/model_config.json", "expected an object with the model's settings")


def test_a_run_config_is_bounded_like_a_table(run_folder):
    config = json.loads((run_folder / "config.json").read_text())
    config["model"]["num_queries"] = 9_999_999_999  # a 1.28 TB tensor
    (run_folder / "config.json").write_text(json.dumps(config))
    _run_refused(run_folder, "config.json", "model.num_queries: must be in [1, 1024]")
