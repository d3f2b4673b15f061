"""`ablate verify`: retrain chosen cells of a table with the code as it is now and compare them with the
evidence, so a reader can check reproducibility and a maintainer that old evidence still stands.

Short runs reproduce exactly on one machine; long ones drift (float order differs with thread count,
CPU instruction set and library versions, and the difference grows over steps), so a difference is
reported in units of the variant's spread over seeds, beside what differed in the run's provenance.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vlm_core.errors import UserError

from ablations.report.collect import collect, numerics_label
from ablations.run.planning import expected_hash
from ablations.run.preflight import when_to_score
from ablations.run.provenance import code_label, code_version
from ablations.run.record import RunRecord, cell_path, evidence_dir
from ablations.run.table_files import VerifyLog
from ablations.run.runner import execute_run, prepare
from ablations.tables import Table, apply_settings, load_table


def chosen_cells(table: Table, evidence: Path, n: int) -> list[tuple[str, int]]:
    """One finished cell per variant (its lowest seed), in table order, until ``n``."""
    cells = []
    for v in table.variants.values():
        seed = next((s for s in v.seeds if RunRecord(cell_path(evidence, v.name, s)).state() == "done"), None)
        if seed is not None:
            cells.append((v.name, seed))
    if not cells:
        raise UserError(f"{evidence}: no finished run of table '{table.name}' to verify")
    return cells[:n]


def quantities(metrics: dict) -> dict[str, float]:
    """Every number a run reports: corpus metrics, slot scores, scalar probes."""
    out = {**metrics["metrics"], **metrics["slots"]}
    out.update({k: v for k, v in metrics["probes"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and not k.endswith("_p")})  # p-values are not quantities to measure a difference in
    return {k: float(v) for k, v in out.items()}


def provenance_differences(old: dict, new: dict) -> list[str]:
    """What changes the numerics and differs between two runs' provenance."""
    def get(p, *keys):
        for k in keys:
            p = p.get(k, {}) if isinstance(p, dict) else {}
        return p or None

    checks = {"code fingerprint": ("code", "fingerprint"), "libraries": ("libraries",), "python": ("python",),
              "torch threads": ("determinism", "torch_threads"), "CPU": ("cpu",), "device": ("device",),
              "precision": ("precision",)}
    return [name for name, keys in checks.items() if get(old, *keys) != get(new, *keys)]


def compare_runs(old: RunRecord, new: RunRecord, seed_sd: dict[str, float]) -> dict:
    """'exact' when captions and every reported number agree; else the largest difference, in seed SDs."""
    a, b = quantities(old.metrics()), quantities(new.metrics())
    diffs = {k: b[k] - a[k] for k in a if k in b and not (np.isnan(a[k]) and np.isnan(b[k]))}
    exact = old.captions() == new.captions() and all(d == 0 for d in diffs.values())
    largest = None
    if not exact and diffs:
        def size(k):
            sd = seed_sd.get(k, float("nan"))
            return abs(diffs[k]) / sd if sd and not np.isnan(sd) else abs(diffs[k])
        k = max(diffs, key=size)
        sd = seed_sd.get(k, float("nan"))
        largest = {"quantity": k, "difference": diffs[k],
                   "seed_sds": abs(diffs[k]) / sd if sd and not np.isnan(sd) else None,
                   "captions_changed": sum(x != y for x, y in zip(old.captions().values(), new.captions().values()))}
    return {"exact": exact, "largest": largest}


def named_cells(table: Table, evidence: Path, names: list[str]) -> list[tuple[str, int]]:
    """``variant:seed`` cells (e.g. one made by each code version, to lift a confound), each finished in the evidence."""
    cells = []
    for name in names:
        variant, sep, seed = name.rpartition(":")
        if not sep or variant not in table.variants or not seed.isdigit():
            raise UserError(f"--cell {name!r}: expected VARIANT:SEED with a variant of '{table.name}'")
        if RunRecord(cell_path(evidence, variant, int(seed))).state() != "done":
            raise UserError(f"--cell {name}: no finished run of it in {evidence}")
        cells.append((variant, int(seed)))
    return cells


def verify_cells(table_name: str, n: int, reports_dir: Path, cache_dir: Path, data_dir: str | None,
                 settings: list[str], log: Callable[[str], None] = print, named: list[str] | None = None) -> list[dict]:
    """Retrain ``n`` chosen cells into a scratch folder and compare; checks made with the table's own
    settings are stored in the evidence's verify.json (with ``settings`` changed, they are only printed)."""
    table = load_table(table_name)
    evidence = evidence_dir(reports_dir, table.name)
    cells = named_cells(table, evidence, named) if named else chosen_cells(table, evidence, n)
    for name in {v for v, _ in cells}:
        apply_settings(table, table.variants[name], settings)
    stored = collect(table, evidence)
    if when_to_score(table):  # no Java here: compare the captions and every number that needs none
        log("no usable Java here: the reruns are compared on their captions, slots and probes; the metrics "
            "that need Java are left out of the comparison (each check names them)")
    workspace = prepare(table, Path(cache_dir), data_dir, log=log)
    checks = []
    with tempfile.TemporaryDirectory(prefix="ablate-verify-") as tmp:
        for variant, seed in cells:
            old = RunRecord(cell_path(evidence, variant, seed))
            threads = old.provenance().get("determinism", {}).get("torch_threads") or torch.get_num_threads()
            torch.set_num_threads(int(threads))  # the thread count changes float order: match the run's
            log(f"verify {variant} seed {seed}: retraining with {threads} thread(s) ...")
            new = RunRecord(Path(tmp) / variant / f"seed-{seed}")
            if execute_run(workspace, table.variants[variant], seed, new.path, log=log) != "done":
                raise UserError(f"verify {variant} seed {seed}: the rerun failed ({new.failure()['reason']})")
            rows = stored.runs[stored.runs["variant"] == variant]
            seed_sd = {c: float(rows[c].std(ddof=1)) for c in rows.columns if c not in ("variant", "seed", "fingerprint")
                       and len(rows) > 1 and rows[c].dtype.kind in "fi"}
            result = compare_runs(old, new, seed_sd)
            waiting = new.metrics().get("to_score")
            if waiting:  # scored only where Java is: the metrics and the probes that read tokenized captions
                result["not_compared"] = waiting["metrics"] + waiting.get("probes", [])
            differed = provenance_differences(old.provenance(), new.provenance())
            if new.config_hash() != old.config_hash():
                differed.insert(0, "settings (" + ", ".join(settings) + ")")
            elif new.config_hash() != expected_hash(table, table.variants[variant], seed):
                differed.insert(0, "settings (the evidence is stale)")
            check = {"variant": variant, "seed": seed, "when": time.strftime("%Y-%m-%d"),
                     "code": code_label(code_version()), **result, "differed": differed,
                     "fingerprints": sorted({old.provenance().get("code", {}).get("fingerprint", "?"),
                                             new.provenance().get("code", {}).get("fingerprint", "?")}),
                     # the machines it compared (collect.numerics_label): a check within the seed spread lifts the
                     # confound of runs made on both (verdicts.machine_confound)
                     "numerics": sorted({numerics_label(old.provenance()), numerics_label(new.provenance())})}
            checks.append(check)
            log(_line(check))
    if not settings:
        VerifyLog(evidence).add(checks)
        log(f"stored in {VerifyLog(evidence).path} (`ablate report {table.name}` lists the checks)")
    if not all(c["exact"] for c in checks):
        raise UserError("not every verified cell reproduced exactly (see above)")
    return checks


def _line(check: dict) -> str:
    head = f"{check['variant']} seed {check['seed']}: "
    left_out = f"; not compared (no Java here): {', '.join(check['not_compared'])}" if check.get("not_compared") else ""
    if check["exact"]:
        return head + "exact (every caption and every reported number equal)" + left_out
    big = check["largest"]
    sds = f" = {big['seed_sds']:.2f} seed SDs" if big["seed_sds"] is not None else ""
    return (head + f"differs: largest {big['quantity']} {big['difference']:+.4g}{sds}; {big['captions_changed']} "
            f"caption(s) changed; differed: {', '.join(check['differed']) or 'nothing recorded'}" + left_out)
