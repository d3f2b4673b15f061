"""Where and with what a run was made (stored in its config.json as ``provenance``): the code version
(git commit, a fingerprint of the code a result depends on, a source hash), library versions, the machine,
the device and what the numerics depended on. Not part of a run's identity: two machines make the same cell."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from vlm_core.device import DEFAULT_PRECISION

REPO_ROOT = Path(__file__).resolve().parents[2]
LIBRARIES = ("torch", "transformers", "peft", "pycocoevalcap", "numpy", "scipy")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# The code a run's result depends on: the model, data, training and the run stages that caption, score and
# probe. The report writer, the CLI, tests and docs are left out, so a commit that changes only those
# keeps the fingerprint, and runs made before and after it count as one code version.
RESULT_CODE = ("vlm_core", "ablations/run/runner.py", "ablations/table_data.py", "ablations/measure/probes.py",
               "ablations/measure/scoring.py", "ablations/measure/slots.py", "ablations/measure/attention.py")


def _code_tree(source: str) -> str:
    """A module's syntax tree without docstrings: comments, formatting and docstrings cannot change a result."""
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


def code_fingerprint(root: Path = REPO_ROOT) -> str:
    """Hash of the syntax trees of RESULT_CODE: equal for two commits whose differences cannot move a run."""
    h = hashlib.sha256()
    for entry in RESULT_CODE:
        base = Path(root) / entry
        files = sorted(base.rglob("*.py")) if base.is_dir() else [base]
        for p in files:
            if "__pycache__" in p.parts:
                continue
            h.update(str(p.relative_to(root)).encode() + b"\0" + _code_tree(p.read_text()).encode() + b"\0")
    return h.hexdigest()[:16]


def source_hash() -> str:
    """Hash of the package sources and shipped tables: the code version outside a git checkout."""
    h = hashlib.sha256()
    for pkg in ("vlm_core", "ablations"):
        for p in sorted((REPO_ROOT / pkg).rglob("*")):
            if p.suffix in (".py", ".toml") and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(REPO_ROOT)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def code_version() -> dict:
    """git commit and dirty flag (tracked code changed) when run from a checkout; always the source hash."""
    out = {"source_hash": source_hash(), "fingerprint": code_fingerprint()}
    if (REPO_ROOT / ".git").exists():
        commit = _git("rev-parse", "HEAD")
        if commit:
            out["git_commit"] = commit
            # Dirty = the code or its pins changed since the commit (generated reports do not count).
            out["dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "vlm_core", "ablations",
                                     "pyproject.toml"))
    return out


def code_label(code: dict) -> str:
    """'abc1234', 'abc1234+dirty' or 'source 0123abcd…' for tables and logs."""
    if code.get("git_commit"):
        return code["git_commit"][:10] + ("+dirty" if code.get("dirty") else "")
    return f"source {code.get('source_hash', '?')}"


def cpu_model() -> dict:
    """The processor and the instruction sets that change float results (kernels chosen per ISA)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    return {"model": name, "isa": [f for f in wanted if f in flags]}


def determinism() -> dict:
    """What a run's numerics depended on beyond its settings: a rerun can only be exact where these agree."""
    import torch

    return {"torch_threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark}


def provenance(device: str, precision: str = DEFAULT_PRECISION) -> dict:
    import torch

    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {
        "code": code_version(), "libraries": versions, "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads",
        "host": platform.node(), "device": device, "precision": precision,
        "cpu": cpu_model(), "determinism": determinism(),
    }
