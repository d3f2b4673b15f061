"""How the runs of a table execute, once the driver has prepared what they share (caption LM, features).
Every executor has one interface, ``run(todo, done) -> runs lost``; ``executor()`` picks one by name.

- ``serial``: one run after another in this process, all cores to each run (the simplest path);
- ``local``: a process pool on this machine, ``cpus_per_run`` threads per run (two 1-thread runs
  on 2 cores train about 1.3x faster than one 2-thread run: small models do not use 2 threads well);
  workers read the caches the driver filled and write their run folders themselves;
- ``ray``: each (variant, seed) a Ray task with the requested CPUs / GPUs. No shared filesystem is
  assumed: the prepared workspace travels through the object store, a task runs in a scratch folder
  and sends the run's files back, and the driver writes them (DONE / FAILED last, atomically). A
  task whose worker dies is retried by Ray; a killed driver loses only the runs in flight.
"""
from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from vlm_core.device import AUTO_DEVICE, describe, resolve_device
from vlm_core.errors import UserError
from vlm_core.features import FeatureSet

from .console import quiet_libraries
from .record import RunRecord, provenance, read_folder, run_path
from .runner import Workspace, execute_run, prepare
from .tables import Table, Variant

Done = Callable[[Variant, int, str, list[str]], None]  # (variant, seed, state, log lines) after each run


def threads_per_run(table: Table) -> int:
    if table.run.cpus_per_run:
        return table.run.cpus_per_run
    return (os.cpu_count() or 1) if table.run.executor == "serial" else 1


class Executor(Protocol):
    def run(self, todo: list[tuple[Variant, int]], done: Done) -> int:
        """Run every (variant, seed) of ``todo``, calling ``done`` after each; returns how many were lost."""


def executor(kind: str, workspace: Workspace, runs_dir: Path, cache_dir: Path, data_dir: str | None,
             ray_address: str | None = None, on_step: Callable[[Variant, int], Callable] | None = None,
             log: Callable[[str], None] = print) -> Executor:
    """The table's ``run.executor`` by name: serial, local (a process pool) or ray."""
    if kind == "serial":
        return SerialExecutor(workspace, runs_dir, on_step, log)
    if kind == "local":
        return LocalPoolExecutor(workspace.table, runs_dir, cache_dir, data_dir)
    if kind == "ray":
        return RayExecutor(workspace, runs_dir, ray_address, log)
    raise UserError(f"run.executor: unknown executor {kind!r} (serial, local, ray)")


@dataclass
class SerialExecutor:
    """One run after another in this process, all cores to each run (the simplest path)."""

    workspace: Workspace
    runs_dir: Path
    on_step: Callable[[Variant, int], Callable] | None = None
    log: Callable[[str], None] = print

    def run(self, todo: list[tuple[Variant, int]], done: Done) -> int:
        workspace = self.workspace
        torch.set_num_threads(threads_per_run(workspace.table))
        for v, s in todo:
            state = execute_run(workspace, v, s, run_path(self.runs_dir, workspace.table.name, v.name, s),
                                on_step=self.on_step(v, s) if self.on_step else None, log=self.log)
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

    table: Table
    runs_dir: Path
    cache_dir: Path
    data_dir: str | None

    def run(self, todo: list[tuple[Variant, int]], done: Done) -> int:
        table, threads = self.table, threads_per_run(self.table)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = local_workers(table, len(todo), os.cpu_count() or 1, gpus)
        context = get_context("spawn")
        queue = context.Queue()
        for device in devices:
            queue.put(device)
        with ProcessPoolExecutor(len(devices), mp_context=context, initializer=_init_local_worker,
                                 initargs=(table, self.cache_dir, self.data_dir, threads, queue, os.getpid())) as pool:
            futures = {pool.submit(_local_run, v.name, s, run_path(self.runs_dir, table.name, v.name, s)): (v, s)
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
class RayExecutor:
    """Each (variant, seed) a Ray task (see the module docstring)."""

    workspace: Workspace
    runs_dir: Path
    address: str | None = None
    log: Callable[[str], None] = print

    def run(self, todo: list[tuple[Variant, int]], done: Done) -> int:
        return run_ray(self.workspace, todo, self.runs_dir, done, self.address, self.log)


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
