"""Score later, elsewhere: a run-all where Java is missing trains, captions and probes and leaves its Java metrics
'to score'; `ablate score` (or `ablate report`) where Java is gives what a run scored in place holds."""
import json
import platform
import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from ablations.cli import app
from ablations.run.deferred_scoring import unscored
from ablations.run.provenance import REPO_ROOT
from ablations.run.record import RunRecord
from ablations.tables import load_table

from .micro import write_micro

runner = CliRunner()
SCST = '\n[variants.scst]\ntrain = { scst_epochs = 1, scst_samples = 3, scst_lr = 0.05 }\n'
CELLS = [("full", 0), ("scst", 0)]


def _hide_java(mp, tmp_path):
    """No `java` anywhere on the PATH: whatever would start the PTB tokenizer or METEOR fails."""
    empty = tmp_path / "no-java-bin"
    empty.mkdir(exist_ok=True)
    mp.setenv("PATH", str(empty))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The same micro table run twice: scored in place (Java here), and with Java hidden (scored later)."""
    root = tmp_path_factory.mktemp("later")
    table = write_micro(root / "micro.toml", seeds=(0,), variants=("full",), extra=SCST)
    cache = root / "cache"
    now = runner.invoke(app, ["run-all", str(table), "--runs-dir", str(root / "now"), "--cache-dir", str(cache)])
    assert now.exit_code == 0, now.output
    with pytest.MonkeyPatch.context() as mp:
        _hide_java(mp, root)
        later = runner.invoke(app, ["run-all", str(table), "--runs-dir", str(root / "later"), "--cache-dir", str(cache)])
    assert later.exit_code == 0, later.output
    return {"root": root, "table": table, "now": root / "now" / "micro", "later": root / "later" / "micro",
            "output": later.output}


def _copy(made, tmp_path) -> tuple:
    runs = tmp_path / "runs"
    shutil.copytree(made["later"], runs / "micro")
    return runs, runs / "micro"


def _assert_same_result(scored: RunRecord, in_place: RunRecord):
    a, b = scored.metrics(), in_place.metrics()
    for key in ("metrics", "slots", "probes", "metrics_xe"):
        assert a.get(key) == b.get(key), key
    assert list(a) == list(b) and list(a["probes"]) == list(b["probes"])  # the same file, key for key
    pd.testing.assert_frame_equal(scored.per_image(), in_place.per_image())
    assert scored.captions() == in_place.captions()
    assert scored.result_digest() == in_place.result_digest()


def test_a_run_without_java_finishes_to_score(made):
    assert "no usable Java here" in made["output"] and "ablate score" in made["output"]
    for variant, seed in CELLS:
        record = RunRecord(made["later"] / variant / f"seed-{seed}")
        in_place = RunRecord(made["now"] / variant / f"seed-{seed}")
        m = record.metrics()
        assert record.state() == "done" and m["metrics"] == {}
        assert m["to_score"]["metrics"] == ["BLEU", "METEOR", "ROUGE-L", "CIDEr"]
        assert ("captions_xe" in m["to_score"]) == (variant == "scst")
        assert m["ran_on"] == {"train": platform.node(), "generate": platform.node(), "score": None,
                               "probe": platform.node()}
        # what needs only the model or the data is there already, and equal to the run scored in place
        assert record.captions() == in_place.captions()
        assert m["slots"] == in_place.metrics()["slots"]
        assert {k: v for k, v in in_place.metrics()["probes"].items() if k not in m["to_score"]["probes"]} == m["probes"]
    assert unscored(load_table(str(made["table"])), made["later"]) == CELLS
    stored = json.loads(__import__("gzip").decompress((made["later"] / "references.json.gz").read_bytes()))
    assert set(stored) == set(RunRecord(made["now"] / "full" / "seed-0").captions())


def test_ablate_score_gives_the_in_place_metrics(made, tmp_path):
    runs, folder = _copy(made, tmp_path)
    result = runner.invoke(app, ["score", str(made["table"]), "--runs-dir", str(runs),
                                 "--reports-dir", str(tmp_path / "reports")])
    assert result.exit_code == 0, result.output
    assert "2 run(s) of 'micro' scored" in result.output
    for variant, seed in CELLS:
        scored = RunRecord(folder / variant / f"seed-{seed}")
        _assert_same_result(scored, RunRecord(made["now"] / variant / f"seed-{seed}"))
        assert scored.metrics()["ran_on"]["score"] == platform.node()
        assert (scored.path / "weights" / "model_config.json").exists()  # the folder was replaced whole
    again = runner.invoke(app, ["score", str(made["table"]), "--runs-dir", str(runs),
                                "--reports-dir", str(tmp_path / "reports")])
    assert again.exit_code == 0 and "nothing to score" in again.output


def test_a_waiting_record_in_the_evidence_is_scored_there(made, tmp_path):
    """Brought back as evidence (gzipped files, no weights), then scored where Java is."""
    runs, _ = _copy(made, tmp_path)
    reports = tmp_path / "reports"
    added = runner.invoke(app, ["evidence", "add", str(made["table"]), "--from", str(runs), "--reports-dir", str(reports)])
    assert added.exit_code == 0, added.output
    evidence = reports / "micro" / "runs"
    assert (evidence / "full" / "seed-0" / "per_image.csv.gz").exists()
    result = runner.invoke(app, ["score", str(made["table"]), "--runs-dir", str(tmp_path / "none"),
                                 "--reports-dir", str(reports)])
    assert result.exit_code == 0, result.output
    for variant, seed in CELLS:
        _assert_same_result(RunRecord(evidence / variant / f"seed-{seed}"),
                            RunRecord(made["now"] / variant / f"seed-{seed}"))


def test_report_refuses_unscored_runs_where_java_is_missing(made, tmp_path, monkeypatch):
    runs, folder = _copy(made, tmp_path)
    _hide_java(monkeypatch, tmp_path)
    result = runner.invoke(app, ["report", str(made["table"]), "--runs-dir", str(runs), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "2 run(s) of 'micro' are not scored yet" in text and "full seed 0, scst seed 0" in text
    assert "ablate score micro" in text and "Traceback" not in result.output
    assert not (tmp_path / "out" / "micro" / "README.md").exists()
    assert unscored(load_table(str(made["table"])), folder) == CELLS  # nothing was touched


def test_report_scores_waiting_runs_where_java_is(made, tmp_path):
    runs, folder = _copy(made, tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["report", str(made["table"]), "--runs-dir", str(runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "scored full seed 0" in result.output
    assert unscored(load_table(str(made["table"])), out / "micro" / "runs") == []
    _assert_same_result(RunRecord(out / "micro" / "runs" / "full" / "seed-0"), RunRecord(made["now"] / "full" / "seed-0"))
    assert "## Main table" in (out / "micro" / "README.md").read_text()


def test_score_now_without_java_is_refused_before_training(made, tmp_path, monkeypatch):
    _hide_java(monkeypatch, tmp_path)
    result = runner.invoke(app, ["run-all", str(made["table"]), "--score", "now", "--runs-dir", str(tmp_path / "runs"),
                                 "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 2 and "Java not found on the PATH" in result.output and "--score later" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_waiting_run_without_references_is_one_line(made, tmp_path):
    """Stored references gone and the run's settings no longer the table's: nothing to score it against."""
    runs, folder = _copy(made, tmp_path)
    (folder / "references.json.gz").unlink()
    stale = tmp_path / "micro.toml"
    stale.write_text(made["table"].read_text().replace("max_new_tokens = 8", "max_new_tokens = 9"))
    result = runner.invoke(app, ["score", str(stale), "--runs-dir", str(runs), "--reports-dir", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no references for its 8 captions" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_a_run_scored_in_place_keeps_the_layout_of_the_committed_evidence(made):
    """The score stage moved after the model's probes: metrics.json and per_image.csv are laid out as before."""
    old = RunRecord(REPO_ROOT / "reports" / "shapes" / "runs" / "full" / "seed-0")
    new = RunRecord(made["now"] / "full" / "seed-0")
    assert [k for k in new.metrics() if k != "ran_on"] == list(old.metrics())
    assert list(new.metrics()["metrics"]) == list(old.metrics()["metrics"])
    assert [k for k in new.metrics()["probes"] if k in old.metrics()["probes"]] == \
        [k for k in old.metrics()["probes"] if k in new.metrics()["probes"]]
    assert list(new.per_image().columns) == list(old.per_image().columns)


def test_run_score_is_checked_like_any_table_key(made):
    from ablations.tables import apply_settings
    from vlm_core.errors import UserError

    table = load_table(str(made["table"]))
    with pytest.raises(UserError, match="run.score: one of auto, now, later, not 'sometime'"):
        apply_settings(table, None, ["run.score='sometime'"])


def test_train_without_java_makes_its_dev_captions_and_says_what_it_left(made, tmp_path, monkeypatch):
    """`ablate train` on a GPU node (no Java): trained, captioned and probed, the Java metrics named as not scored."""
    _hide_java(monkeypatch, tmp_path)
    out = tmp_path / "train-run"
    result = runner.invoke(app, ["train", "--table", str(made["table"]), "--out", str(out),
                                 "--cache-dir", str(made["root"] / "cache")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "no usable Java here" in text and "not scored (no Java)" in text and "Traceback" not in result.output
    m = RunRecord(out).metrics()
    assert m["metrics"] == {} and m["to_score"]["metrics"] == ["BLEU", "METEOR", "ROUGE-L", "CIDEr"]
    assert RunRecord(out).captions() and "unique_share" in m["probes"]


def test_verify_without_java_compares_what_needs_none_and_names_the_rest(made, tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    added = runner.invoke(app, ["evidence", "add", str(made["table"]), "--from", str(made["now"].parent),
                                "--reports-dir", str(reports)])
    assert added.exit_code == 0, added.output
    _hide_java(monkeypatch, tmp_path)
    result = runner.invoke(app, ["verify", str(made["table"]), "--cell", "full:0", "--reports-dir", str(reports),
                                 "--cache-dir", str(made["root"] / "cache")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "full seed 0: exact" in text and "not compared (no Java here): BLEU, METEOR, ROUGE-L, CIDEr" in text
    (check,) = json.loads((reports / "micro" / "runs" / "verify.json").read_text())
    waiting = RunRecord(made["later"] / "full" / "seed-0").metrics()["to_score"]
    assert check["exact"] and check["not_compared"] == waiting["metrics"] + waiting["probes"]
    assert "swap_rate" in check["not_compared"]
