"""Which runs a table still needs: each cell's settings, their hash, and what is already finished
(in the local runs folder or in the committed evidence)."""
from __future__ import annotations

from pathlib import Path

from ablations.run.identity import config_hash
from ablations.run.record import RunRecord, cell_path, child
from ablations.tables import Table, Variant, variant_config


def run_config(table: Table, variant: Variant, seed: int, eval_split: str) -> dict:
    """The settings that determine one run's result; their hash tells a current run from a stale one."""
    return {**variant_config(table, variant), "seed": seed, "eval_split": eval_split}


def expected_hash(table: Table, variant: Variant, seed: int) -> str:
    return config_hash(run_config(table, variant, seed, table.data.eval_split))


def plan_runs(table: Table, runs_dir: Path, variants: list[Variant], seeds: list[int], force: bool = False,
              keep_stale: bool = False, evidence: Path | None = None,
              any_seed: bool = False) -> tuple[list[tuple[Variant, int]], list[str]]:
    """Which (variant, seed) runs to do, and one line for each run left as it is or redone for a reason.

    A finished run is kept only when its stored config hash equals the table's now, in the local runs
    folder or in the evidence (``evidence``: the table's reports/<table>/runs); a stale one (settings
    changed since, or made before runs recorded their hash) is redone unless ``keep_stale``. A row runs
    the ``seeds`` it lists; with ``any_seed``, every one of ``seeds`` (a replication beyond the table's)."""
    todo, notes = [], []
    for v in variants:
        for s in [s for s in v.seeds if s in seeds] + [s for s in seeds if any_seed and s not in v.seeds]:
            want = expected_hash(table, v, s)
            local = RunRecord(cell_path(child(runs_dir, table.name), v.name, s))
            state = local.status(want)
            if evidence is not None and state != "done" and not force:
                committed = RunRecord(cell_path(evidence, v.name, s))
                if committed.status(want) == "done" and committed.stored_hash_valid():
                    notes.append(f"skip {v.name} seed {s}: finished in the evidence ({evidence})")
                    continue
            if state not in ("done", "failed", "stale") or force:
                todo.append((v, s))
            elif state == "stale":
                if keep_stale:
                    notes.append(f"keep {v.name} seed {s}: STALE (its settings differ from the table's; the report flags it)")
                else:
                    notes.append(f"redo {v.name} seed {s}: stale (its settings differ from the table's now)")
                    todo.append((v, s))
            else:
                notes.append(f"skip {v.name} seed {s}: {state} earlier" + (" (use --force to retry)" if state == "failed" else ""))
    return todo, notes
