"""How the runs of a table execute, once the driver has prepared what they share (caption LM, features).
Every executor has one interface, ``run(todo, done) -> runs lost``; EXECUTORS (at the end) names each with its
options (``[run.options.<name>]`` in a table, ``--executor-option KEY=VALUE``) and its check before anything
trains, and ``executor()`` picks one by name.

- ``serial``: one run after another in this process, all cores to each run (the simplest path);
- ``local``: a process pool on this machine, ``cpus_per_run`` threads per run (two 1-thread runs
  on 2 cores train about 1.3x faster than one 2-thread run: small models do not use 2 threads well);
  workers read the caches the driver filled and write their run folders themselves;
- ``ray``: each (variant, seed) a Ray task with the requested CPUs / GPUs. No shared filesystem is
  assumed: the prepared workspace travels through the object store, a task runs in a scratch folder
  and sends the run's files back, and the driver writes them (DONE / FAILED last, atomically). A
  task whose worker dies is retried by Ray; a killed driver loses only the runs in flight.
- ``slurm``: each (variant, seed) a SLURM job through submitit, shipped and written back as by Ray: the jobs
  read the prepared workspace from submitit's folder (on a filesystem the nodes share) and return the run's
  files. A job that ends without a result (killed, timed out, its node lost) is counted lost; a killed driver
  leaves its jobs to finish unread, and the next `run-all` redoes those runs.
"""
from __future__ import annotations

import importlib.util
import math
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from vlm_core.device import AUTO_DEVICE, describe, resolve_device
from vlm_core.errors import UserError
from vlm_core.features import FeatureSet

from ablations.console import quiet_libraries
from ablations.run.preflight import ray_address
from ablations.run.provenance import provenance
from ablations.run.record import RunRecord, read_folder, run_path
from ablations.run.runner import Workspace, execute_run, prepare
from ablations.tables import Table, Variant, checked_section, toml_value

Done = Callable[[Variant, int, str, list[str]], None]  # (variant, seed, state, log lines) after each run


def threads_per_run(table: Table) -> int:
    if table.run.cpus_per_run:
        return table.run.cpus_per_run
    return (os.cpu_count() or 1) if table.run.executor == "serial" else 1


class Executor(Protocol):
    def run(self, todo: list[tuple[Variant, int]], done: Done) -> int:
        """Run every (variant, seed) of ``todo``, calling ``done`` after each; returns how many were lost."""


@dataclass
class Driver:
    """What the driver hands every executor: the prepared workspace, where runs and caches live, progress and log."""

    workspace: Workspace
    runs_dir: Path
    cache_dir: Path
    data_dir: str | None
    on_step: Callable[[Variant, int], Callable] | None = None
    log: Callable[[str], None] = print


def executor(kind: str, workspace: Workspace, runs_dir: Path, cache_dir: Path, data_dir: str | None,
             on_step: Callable[[Variant, int], Callable] | None = None, log: Callable[[str], None] = print) -> Executor:
    """The executor named ``kind`` (EXECUTORS) with the table's options for it."""
    return known_executor(kind, workspace.table).cls(Driver(workspace, runs_dir, cache_dir, data_dir, on_step, log),
                                                     executor_options(workspace.table, kind))


def known_executor(kind: str, table: Table) -> ExecutorKind:
    if kind not in EXECUTORS:
        raise UserError(f"{table.path}: run.executor: unknown executor {kind!r}; known: {', '.join(EXECUTORS)}")
    return EXECUTORS[kind]


def executor_options(table: Table, kind: str) -> Any:
    """The table's ``[run.options.<kind>]``, checked like table keys (None for an executor without options)."""
    raw, where = table.run.options.get(kind, {}), f"{table.path}: run.options.{kind}"
    options = known_executor(kind, table).options
    if options is None:
        if raw:
            raise UserError(f"{where}: the {kind} executor takes no options")
        return None
    return checked_section(options, raw, where)


def set_executor_options(table: Table, settings: list[str]) -> None:
    """``KEY=VALUE`` (``--executor-option``) into the options of the table's executor; values are TOML (``4``,
    ``"gpu"``), anything else is taken as a string."""
    chosen = dict(table.run.options.get(table.run.executor, {}))
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--executor-option {setting[:200]!r}: expected KEY=VALUE")
        chosen[key.strip()] = toml_value(text, f"--executor-option {key.strip()}")
    table.run = replace(table.run, options={**table.run.options, table.run.executor: chosen})


def check_executor(table: Table) -> None:
    """Before anything trains: the table's executor is known, the options it gives any executor are right, and
    what its executor needs is there."""
    kind = known_executor(table.run.executor, table)
    if not isinstance(table.run.options, dict):
        raise UserError(f"{table.path}: run.options: expected a table of keys per executor ([run.options.<name>])")
    for name in table.run.options:
        executor_options(table, name)
    if kind.check is not None:
        kind.check(executor_options(table, table.run.executor))


@dataclass
class SerialExecutor:
    """One run after another in this process, all cores to each run (the simplest path)."""

    driver: Driver
    options: None = None

    def run(self, todo: list[tuple[Variant, int]], done: Done) -> int:
        workspace, on_step = self.driver.workspace, self.driver.on_step
        torch.set_num_threads(threads_per_run(workspace.table))
        for v, s in todo:
            state = execute_run(workspace, v, s, run_path(self.driver.runs_dir, workspace.table.name, v.name, s),
                                on_step=on_step(v, s) if on_step else None, log=self.driver.log)
            done(v, s, state, [])
        return 0


# ---- local process pool
_WORKSPACE: Workspace | None = None


def on_gpu(device: str, gpus: float) -> bool:
    """Runs go to a GPU: asked for by name, or 'auto' where GPUs are."""
    return device.startswith("cuda") or (device == AUTO_DEVICE and gpus > 0)


def local_workers(table: Table, runs: int, cpus: int, gpus: int) -> list[str | None]:
    """The local pool: on a GPU, one worker per GPU (each its own device; ``cuda:N`` asked for: that one);
    on the CPU, as many workers as cores / threads per run. One entry per worker: its device, or None (the
    table's)."""
    device = table.run.device
    if on_gpu(device, gpus):
        devices = [device] if device.startswith("cuda:") else [f"cuda:{k}" for k in range(max(gpus, 1))]
        return devices[: max(1, min(runs, len(devices)))]
    return [None] * max(1, min(runs, cpus // threads_per_run(table)))


def die_with_parent(parent: int) -> None:
    """A pool worker must not outlive its `run-all`: an orphan would go on writing a run that the next
    `run-all` redoes. The kernel kills it when the driver dies (Linux), and a watcher checks once a second
    where that is not available."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the watcher below alone
        pass
    if os.getppid() != parent:  # the driver died before the kernel was told
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="ablate-parent-watch", daemon=True).start()


PR_SET_PDEATHSIG = 1


def _init_local_worker(table: Table, cache_dir: Path, data_dir: str | None, threads: int, devices,
                       parent: int) -> None:
    global _WORKSPACE
    die_with_parent(parent)
    torch.set_num_threads(threads)
    quiet_libraries()
    device = devices.get()  # each worker takes one device (None: the table's own)
    if device is not None:
        table = replace(table, run=replace(table.run, device=device))
    _WORKSPACE = prepare(table, cache_dir, data_dir, log=lambda *_: None)  # cache hits: the driver built them


def _local_run(variant: str, seed: int, out: Path) -> tuple[str, list[str]]:
    lines: list[str] = []
    state = execute_run(_WORKSPACE, _WORKSPACE.table.variants[variant], seed, out, log=lines.append)
    return state, lines


@dataclass
class LocalPoolExecutor:
    """A process pool on this machine; each worker prepares from the caches the driver filled and writes
    its run folders itself."""

    driver: Driver
    options: None = None

    def run(self, todo: list[tuple[Variant, int]], done: Done) -> int:
        d = self.driver
        table, threads = d.workspace.table, threads_per_run(d.workspace.table)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = local_workers(table, len(todo), os.cpu_count() or 1, gpus)
        context = get_context("spawn")
        queue = context.Queue()
        for device in devices:
            queue.put(device)
        with ProcessPoolExecutor(len(devices), mp_context=context, initializer=_init_local_worker,
                                 initargs=(table, d.cache_dir, d.data_dir, threads, queue, os.getpid())) as pool:
            futures = {pool.submit(_local_run, v.name, s, run_path(d.runs_dir, table.name, v.name, s)): (v, s)
                       for v, s in todo}
            try:
                for fut in as_completed(futures):
                    v, s = futures[fut]
                    state, lines = fut.result()  # a run's error is raised here, as the serial executor would
                    done(v, s, state, lines)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # runs not started are dropped; run-all redoes them
                raise
        return 0


# ---- Ray
def _folder_bytes(save: Callable[[Path], None]) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        save(Path(tmp))
        return read_folder(Path(tmp))


def shippable(workspace: Workspace) -> tuple[Workspace, dict[str, bytes]]:
    """What a Ray task needs, as the object store wants it: the workspace without the vision model
    (runs only need its cached features), features in memory, and the frozen LM as the files of
    save_pretrained (a pickled transformers model loses the hooks that return hidden states)."""
    feats = {k: FeatureSet(f.ids, np.ascontiguousarray(f.array), f.path, True, 0.0) for k, f in workspace.features.items()}
    lm_files = _folder_bytes(lambda d: (workspace.lm.model.save_pretrained(d), workspace.lm.tokenizer.save_pretrained(d)))
    return replace(workspace, vision=replace(workspace.vision, model=None), features=feats, lm=replace(workspace.lm, model=None)), lm_files


def _unship(workspace: Workspace, lm_files: dict[str, bytes], scratch: Path) -> Workspace:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vlm_core.language import frozen_lm

    for name, data in lm_files.items():
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / name).write_bytes(data)
    lm = frozen_lm(workspace.lm.name, AutoModelForCausalLM.from_pretrained(scratch), AutoTokenizer.from_pretrained(scratch),
                   workspace.lm.info)
    device = resolve_device(task_device(workspace.table.run.device))
    return replace(workspace, lm=lm, device=device, provenance=provenance(describe(device), workspace.table.run.precision))


def task_device(device: str) -> str:
    """Inside a Ray task only the GPUs Ray gave it are visible, numbered from 0: 'cuda:N' names one of the
    driver's GPUs, so a task uses its own ('cuda')."""
    return "cuda" if device.startswith("cuda") else device


def gpus_per_task(run, cluster_gpus: float) -> float:
    """What each Ray task asks for. Ray hides every GPU from a task that asks for none, so runs meant for a
    GPU (a cuda device, or 'auto' on a cluster with GPUs) ask for one unless run.gpus_per_run says otherwise."""
    if run.gpus_per_run:
        return run.gpus_per_run
    if run.device.startswith("cuda") and cluster_gpus <= 0:
        raise UserError(f"--device {run.device}: the Ray cluster has no GPU")
    return 1.0 if on_gpu(run.device, cluster_gpus) else 0.0


def ablate_run(shipped: tuple[Workspace, dict[str, bytes]], variant: str, seed: int,
               threads: int) -> tuple[str, dict[str, bytes], list[str]]:
    """One run on a Ray worker, in a scratch folder; returns its state, every file of it, and its log."""
    torch.set_num_threads(threads)
    quiet_libraries()
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ablate-run-") as tmp:
        (Path(tmp) / "lm").mkdir()
        workspace = _unship(*shipped, Path(tmp) / "lm")
        out = Path(tmp) / "run"
        state = execute_run(workspace, workspace.table.variants[variant], seed, out, log=lines.append)
        files = RunRecord(out).read_files()
    return state, files, lines


@dataclass
class RayOptions:
    """[run.options.ray] (--ray-address sets it too)."""

    address: str = ""  # an existing Ray cluster (host:port, ray://host:port or auto); "" = start a local one


@dataclass
class RayExecutor:
    """Each (variant, seed) a Ray task (see the module docstring)."""

    driver: Driver
    options: RayOptions

    def run(self, todo: list[tuple[Variant, int]], done: Done) -> int:
        return run_ray(self.driver.workspace, todo, self.driver.runs_dir, done, self.options.address or None,
                       self.driver.log)


def run_ray(workspace: Workspace, todo: list[tuple[Variant, int]], runs_dir: Path, done: Done, address: str | None = None,
            log: Callable[[str], None] = print) -> int:
    """Returns how many runs could not be finished because their workers kept dying (Ray retried each
    3 times); their folders are left as they were and the next `run-all` redoes them. An error raised
    by a run itself stops the table, with the remote traceback, as in the serial executor."""
    try:
        import ray
    except ImportError as err:
        raise UserError("--executor ray needs Ray: pip install -e '.[ray]'") from err
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or None, num_cpus=None if address else os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    lost = 0
    try:
        threads = threads_per_run(workspace.table)
        gpus = gpus_per_task(workspace.table.run, ray.cluster_resources().get("GPU", 0))
        task = ray.remote(ablate_run).options(num_cpus=threads, num_gpus=gpus, max_retries=3)
        payload = ray.put(shippable(workspace))
        pending = {task.remote(payload, v.name, s, threads): (v, s) for v, s in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            v, s = pending.pop(ready[0])
            try:
                state, files, lines = ray.get(ready[0])
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OwnerDiedError,
                    ray.exceptions.ObjectLostError) as err:
                lost += 1
                log(f"{v.name} seed {s}: lost, its worker kept dying ({type(err).__name__}); `run-all` again redoes it")
                continue
            RunRecord(run_path(runs_dir, workspace.table.name, v.name, s)).write_files(files)
            done(v, s, state, lines)
    finally:
        if started:
            ray.shutdown()
    return lost


# ---- SLURM (submitit)
@dataclass
class SlurmOptions:
    """[run.options.slurm] (or --executor-option KEY=VALUE): what each run's job asks SLURM for."""

    partition: str = ""  # "" = the cluster's default
    account: str = ""
    timeout_min: int = 240  # SLURM ends a job still running then: its run is lost, `run-all` again redoes it
    mem_gb: float = 0.0  # 0 = the partition's default
    parallel: int = 0  # at most this many jobs at once (0 = as many as SLURM starts)
    folder: str = ""  # submitit's job files and logs, shared with the nodes ("" = <runs-dir>/.submitit/<table>)
    cluster: str = "slurm"  # "local": submitit runs each job as a process on this machine (tests, a dry run)

    def __post_init__(self):
        if self.cluster not in ("slurm", "local"):
            raise UserError(f"cluster: 'slurm' or 'local', not {self.cluster!r}")
        if self.timeout_min < 1 or self.mem_gb < 0 or self.parallel < 0:
            raise UserError("timeout_min must be >= 1, mem_gb and parallel >= 0")


def check_slurm(options: SlurmOptions) -> None:
    if importlib.util.find_spec("submitit") is None:
        raise UserError("--executor slurm needs submitit: pip install -e '.[slurm]'")
    if options.cluster == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: no sbatch on the PATH (run it where jobs are submitted; "
                        "--executor-option cluster=local runs the jobs on this machine)")


def slurm_run(payload: Path, variant: str, seed: int, threads: int) -> tuple[str, dict[str, bytes], list[str]]:
    """One run as a SLURM job: the shipped workspace (written once for all jobs) read back, then ablate_run as on Ray."""
    with open(payload, "rb") as f:
        shipped = pickle.load(f)
    return ablate_run(shipped, variant, seed, threads)


def slurm_gpus(run) -> int:
    """GPUs per job: run.gpus_per_run (rounded up: SLURM gives whole GPUs), else one for runs meant for a GPU."""
    if run.gpus_per_run:
        return math.ceil(run.gpus_per_run)
    return 1 if run.device.startswith("cuda") else 0


@dataclass
class SlurmExecutor:
    """Each (variant, seed) a SLURM job array task (see the module docstring)."""

    driver: Driver
    options: SlurmOptions

    def run(self, todo: list[tuple[Variant, int]], done: Done) -> int:
        import submitit
        from submitit.core.utils import FailedJobError, UncompletedJobError

        d, o = self.driver, self.options
        table, threads = d.workspace.table, threads_per_run(d.workspace.table)
        folder = Path(o.folder) if o.folder else d.runs_dir / ".submitit" / table.name
        folder.mkdir(parents=True, exist_ok=True)
        submitter = submitit.AutoExecutor(folder=folder, cluster=o.cluster)
        submitter.update_parameters(name=f"ablate-{table.name}", timeout_min=o.timeout_min, cpus_per_task=threads,
                                    gpus_per_node=slurm_gpus(table.run), mem_gb=o.mem_gb or None,
                                    slurm_partition=o.partition or None, slurm_account=o.account or None,
                                    slurm_array_parallelism=o.parallel or None)
        with tempfile.NamedTemporaryFile(dir=folder, prefix="workspace-", suffix=".pkl", delete=False) as f:
            pickle.dump(shippable(d.workspace), f, protocol=pickle.HIGHEST_PROTOCOL)
        payload, lost, submitted = Path(f.name), 0, []
        try:
            submitted = submitter.map_array(slurm_run, [payload] * len(todo), [v.name for v, _ in todo],
                                            [s for _, s in todo], [threads] * len(todo))
            cells = {id(job): cell for job, cell in zip(submitted, todo)}
            for job in submitit.helpers.as_completed(submitted, poll_frequency=1.0):
                v, s = cells[id(job)]
                try:
                    state, files, lines = job.result()  # a run's own error is raised here, as in the serial executor
                except FailedJobError:  # (a subclass of the next one) the run itself raised: stop, as serial does
                    raise
                except UncompletedJobError as err:
                    lost += 1
                    d.log(f"{v.name} seed {s}: lost, its job {job.job_id} ended without a result "
                          f"({str(err).splitlines()[0]}); `run-all` again redoes it")
                    continue
                RunRecord(run_path(d.runs_dir, table.name, v.name, s)).write_files(files)
                for done_with in (job.paths.result_pickle, job.paths.submitted_pickle):  # the logs stay
                    done_with.unlink(missing_ok=True)
                done(v, s, state, lines)
        except BaseException:
            for job in submitted:
                if not job.done():
                    job.cancel(check=False)  # their results would never be read
            raise
        finally:
            payload.unlink(missing_ok=True)
        return lost


@dataclass(frozen=True)
class ExecutorKind:
    """An executor as `run-all` knows it: its class, built from the Driver and its options; the dataclass of its
    options (None: it takes none); what run-all checks, given them, before anything trains."""

    cls: type
    options: type | None = None
    check: Callable[[Any], None] | None = None


# Every executor, by the name run.executor / --executor gives: adding one is one entry.
EXECUTORS: dict[str, ExecutorKind] = {
    "serial": ExecutorKind(SerialExecutor),
    "local": ExecutorKind(LocalPoolExecutor),
    "ray": ExecutorKind(RayExecutor, RayOptions, lambda options: ray_address(options.address or None)),
    "slurm": ExecutorKind(SlurmExecutor, SlurmOptions, check_slurm),
}
