"""run_table: `run-all` from Python, as the coming drivers (a loop until decided, a replicate command) call it."""
from ablations.run.planning import plan_runs
from ablations.run.record import RunRecord, run_path
from ablations.run.run_all import run_table
from ablations.tables import load_table

from .micro import write_micro


def test_a_seed_the_table_does_not_list_is_planned_only_when_asked(tmp_path):
    table = load_table(str(write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full", "blind"))))
    rows = list(table.variants.values())
    todo, _ = plan_runs(table, tmp_path / "runs", rows, [0, 7])
    assert [(v.name, s) for v, s in todo] == [("full", 0), ("blind", 0)]
    todo, _ = plan_runs(table, tmp_path / "runs", rows, [0, 7], any_seed=True)
    assert [(v.name, s) for v, s in todo] == [("full", 0), ("full", 7), ("blind", 0), ("blind", 7)]


def test_run_table_runs_a_chosen_cell_beyond_the_table_and_then_has_nothing_to_do(tmp_path):
    table = load_table(str(write_micro(tmp_path / "micro.toml", seeds=(0,), variants=("full",))))
    dirs = dict(runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache", reports_dir=tmp_path / "reports")
    ran = run_table(table, **dirs, seeds=[3], any_seed=True)
    assert (ran.cells, ran.lost) == ([("full", 3)], 0)
    assert RunRecord(run_path(tmp_path / "runs", "micro", "full", 3)).state() == "done"
    assert not RunRecord(run_path(tmp_path / "runs", "micro", "full", 0)).path.exists()
    assert run_table(table, **dirs, seeds=[3], any_seed=True).cells == []
