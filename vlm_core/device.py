"""Where the model runs and in what precision: one place that resolves ``--device`` / ``--precision``.

On these CPUs bf16 autocast measured slower than fp32 for GPT-2 training steps (0.70-0.75x), so
fp32 stays the default; autocast is for devices with fast low-precision units (CUDA, MPS).
"""
from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch

# Precision names and their autocast dtypes (None: no autocast). torch is imported when a device is used, so
# that a table's run.precision is checked without it.
PRECISIONS = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}
DEFAULT_PRECISION = "fp32"  # measured fastest on these CPUs
AUTO_DEVICE = "auto"  # CUDA when present, else CPU


def resolve_device(name: str = AUTO_DEVICE) -> torch.device:
    """``auto`` = CUDA when present, else CPU; an explicit device that is not there is a UserError."""
    import torch

    if name == AUTO_DEVICE:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise UserError(f"--device {name!r}: not a device (auto, cpu, cuda, cuda:N or mps)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: only cpu, cuda and mps are supported")
    return device


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    """torch.autocast for bf16 / fp16; a no-op context for fp32."""
    import torch

    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def check_supported(device: torch.device, precision: str) -> None:
    """Before any cache is built: a precision the device cannot run is a UserError now, not a crash later."""
    import torch

    if device.type == "cuda" and precision == "bf16" and torch.cuda.get_device_capability(device)[0] < 8:
        raise UserError(f"run.precision bf16: {torch.cuda.get_device_name(device)} has no native bf16 (compute "
                        "capability 8.0 or later); use fp16 or fp32")


def configure(device: torch.device, precision: str) -> None:
    """What makes a rerun on ``device`` repeat its numbers, set before its first kernel.

    CPU: nothing to set (bit-identical reruns at a fixed thread count). CUDA: deterministic algorithms
    (warn, not fail, where an op has none), the cuBLAS workspace setting that deterministic matmuls need, no
    cuDNN autotuning; TF32 matmuls only for bf16 / fp16 runs (fp32 runs stay comparable with the CPU's).
    Recorded in every run's provenance (ablations/record.determinism)."""
    import torch

    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    torch.backends.cudnn.allow_tf32 = precision != "fp32"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: a timer read without it measures the launch, not the work."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextlib.contextmanager
def full_precision(device: torch.device):
    """fp32 inside an autocast region (and no TF32 matmuls on CUDA): for what low precision would round into
    the numbers the verdicts use."""
    import torch

    tf32 = torch.backends.cuda.matmul.allow_tf32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def describe(device: torch.device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
