"""Read every stored run of a table (through the run record) into frames the analysis can use."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vlm_core.errors import UserError

from ablations.run.provenance import code_label
from ablations.run.record import RunRecord, cell_path
from ablations.run.table_files import ReferenceFile, TableTiming, VerifyLog
from ablations.run.planning import expected_hash
from ablations.tables import Table


@dataclass
class TableRuns:
    """The finished runs of one table. ``runs`` has one row per run: every corpus metric, slot score
    and scalar probe of its metrics.json (so a new probe needs no change here)."""

    table: Table
    folder: Path  # the table folder the runs were read from (the evidence, reports/<table>/runs)
    runs: pd.DataFrame
    order: list[str]  # the table's own rows with at least one finished run, in table order
    sweep_order: list[str] = field(default_factory=list)  # budget rows (train.epochs sweeps) with a finished run
    per_image: dict[str, dict[int, pd.DataFrame]] = field(default_factory=dict)  # variant -> seed -> frame
    captions: dict[str, dict[int, dict[str, str]]] = field(default_factory=dict)
    histories: dict[str, list[pd.DataFrame]] = field(default_factory=dict)  # cross-entropy epochs, one frame a seed
    scst_histories: dict[str, list[pd.DataFrame]] = field(default_factory=dict)  # self-critical epochs (if any)
    params: dict[str, dict] = field(default_factory=dict)
    configs: dict[str, dict] = field(default_factory=dict)  # the first finished seed's config per variant
    failed: list[dict] = field(default_factory=list)
    provenance: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per run
    timing: list[dict] = field(default_factory=list)  # timing.json entries (one per run-all invocation)
    stage_seconds: pd.DataFrame = field(default_factory=pd.DataFrame)  # variant, seed, seconds per stage
    comparisons: dict = field(default_factory=dict)  # analysis.comparisons, per metric, computed once
    attention_maps: dict[str, dict[int, dict]] = field(default_factory=dict)  # variant -> seed -> image -> maps
    train_images: int | None = None  # training images of the runs (from their records)
    verification: list[dict] = field(default_factory=list)  # `ablate verify` checks stored with the evidence
    references: dict[str, list[str]] = field(default_factory=dict)  # eval image -> its reference captions, if stored

    def matrix(self, variant: str, column: str) -> pd.DataFrame:
        """Per-image values of ``column`` for a variant: images x seeds."""
        frames = self.per_image.get(variant, {})
        cols = {s: f[column] for s, f in frames.items() if column in f}
        return pd.DataFrame(cols)

    def run_means(self, variant: str, column: str) -> np.ndarray:
        """Each run's mean of ``column`` over images: the unit the seed-level statistics test."""
        return self.matrix(variant, column).mean(axis=0).to_numpy()

    def seed_values(self, variant: str, column: str) -> pd.Series:
        """Per-run values of a run-level quantity (index = seed)."""
        rows = self.runs[self.runs["variant"] == variant]
        return rows.set_index("seed")[column] if column in rows else pd.Series(dtype=float)


XE_PREFIX = "xe "  # a run's metrics from its model before the self-critical epochs (runs.csv columns "xe CIDEr", ...)


def numerics_label(provenance: dict) -> str:
    """What changes a run's float results without changing its code or settings, in one label: the CPU's
    instruction sets (kernels are chosen per ISA), the torch version, the torch threads (reduction order), the
    device and the precision. Two runs with different labels give other bits for the same seed."""
    if not provenance:
        return "not recorded"
    isa = provenance.get("cpu", {}).get("isa")
    widest = next((name for flag, name in (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
                   if flag in (isa or [])), "no AVX" if isa is not None else "ISA not recorded")
    torch = provenance.get("libraries", {}).get("torch") or "torch not recorded"
    threads = provenance.get("determinism", {}).get("torch_threads", "?")
    return (f"{widest}, torch {torch}, {threads} thread(s), {provenance.get('device', '?')} "
            f"{provenance.get('precision', '?')}")


def _run_row(variant: str, seed: int, m: dict, config: dict) -> dict:
    code = config.get("provenance", {}).get("code", {})
    row = {"variant": variant, "seed": seed, "epochs": config.get("train", {}).get("epochs"),
           "fingerprint": code.get("fingerprint", "not recorded"), "numerics": numerics_label(config.get("provenance", {})),
           "images": m["images"], **m["metrics"], **m["slots"],
           **{f"{XE_PREFIX}{k}": v for k, v in m.get("metrics_xe", {}).items()}}
    row.update({k: v for k, v in m["probes"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return row


def _determinism_text(d: dict) -> str:
    """The settings a rerun must share to repeat a run's numbers (vlm_core.device.configure sets them on CUDA)."""
    if "deterministic_algorithms" not in d:
        return "not recorded"
    text = "deterministic algorithms" if d["deterministic_algorithms"] else "default algorithms"
    text += " (warn-only)" if d["deterministic_algorithms"] and d.get("deterministic_warn_only") else ""
    text += ", cuDNN benchmark" if d.get("cudnn_benchmark") else ""
    text += f", cuBLAS workspace {d['cublas_workspace_config']}" if d.get("cublas_workspace_config") else ""
    return text + (", TF32 matmuls" if d.get("tf32_matmul") else "")


def _provenance_row(variant: str, seed: int, record: RunRecord, current: bool) -> dict:
    p = record.provenance()
    libs = p.get("libraries", {})
    cpu = p.get("cpu", {})
    return {"variant": variant, "seed": seed, "code": code_label(p.get("code", {})) if p else "not recorded",
            "fingerprint": p.get("code", {}).get("fingerprint", "not recorded"),
            "libraries": ", ".join(f"{k} {v}" for k, v in libs.items()) or "not recorded",
            "device": p.get("device", "not recorded"), "machine": p.get("machine", "not recorded"),
            "cpu": (f"{cpu.get('model', '?')} ({'/'.join(cpu.get('isa', [])) or 'no ISA listed'})" if cpu
                    else "not recorded"),
            "host": p.get("host", "not recorded"),
            "threads": p.get("determinism", {}).get("torch_threads", "not recorded"),
            "determinism": _determinism_text(p.get("determinism", {})), "numerics": numerics_label(p),
            "current": current}


def collect(table: Table, folder: Path) -> TableRuns:
    """Every stored run of the table in ``folder`` (a table folder: the evidence, or runs/<table>):
    finished ones with their results, failed ones with why."""
    rows, prov, stages = [], [], []
    out = TableRuns(table, Path(folder), pd.DataFrame(), [])
    for v in table.variants.values():
        for seed in v.seeds:
            record = RunRecord(cell_path(folder, v.name, seed))
            state = record.state()
            if state in ("done", "failed"):
                record.check_content()  # a damaged file is one line naming it, never a traceback in the report
            if state == "failed":
                out.failed.append({"variant": v.name, "seed": seed, "reason": record.failure()["reason"]})
            if state != "done":
                continue
            current = record.is_current(expected_hash(table, v, seed))
            metrics = record.metrics()
            rows.append(_run_row(v.name, seed, metrics, record.config()))
            out.train_images = metrics.get("train_images", out.train_images)
            out.attention_maps.setdefault(v.name, {})[seed] = record.attention_maps()
            stages.append({"variant": v.name, "seed": seed, **metrics["timings"]})
            prov.append(_provenance_row(v.name, seed, record, current))
            out.per_image.setdefault(v.name, {})[seed] = record.per_image()
            out.captions.setdefault(v.name, {})[seed] = record.captions()
            history = record.history()
            scst = history["phase"].eq("scst") if "phase" in history else pd.Series(False, index=history.index)
            out.histories.setdefault(v.name, []).append(history[~scst].drop(columns=["phase", "scst_loss", "reward"],
                                                                            errors="ignore"))
            if scst.any():
                out.scst_histories.setdefault(v.name, []).append(history[scst].drop(columns=["phase", "train_loss"],
                                                                                   errors="ignore"))
            out.params.setdefault(v.name, record.params())
            out.configs.setdefault(v.name, record.config())
    if not rows and not out.failed:
        raise UserError(f"{folder}: no finished runs of table '{table.name}'; "
                        f"add evidence made elsewhere with `ablate evidence add {table.name} --from DIR` (seconds), "
                        f"or train it with `ablate run-all {table.name}`")
    out.runs = pd.DataFrame(rows)
    out.order = [v for v in table.variants if v in out.per_image and not table.variants[v].is_budget_row]
    out.sweep_order = [v for v in table.variants if v in out.per_image and table.variants[v].is_budget_row]
    out.provenance = pd.DataFrame(prov)
    out.stage_seconds = pd.DataFrame(stages)
    out.timing = TableTiming.at(folder).read()
    out.verification = VerifyLog(folder).read()
    out.references = ReferenceFile(folder).read()
    return out
