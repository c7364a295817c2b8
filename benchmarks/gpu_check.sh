#!/usr/bin/env bash
# The GPU check of issue 26, one script for one 80 GB GPU in under 8 minutes:
#   1. the accelerator tests (tests/test_cuda.py: greedy identity of every drafter, bf16 greedy, sampling and
#      `scylla costs` on the device);
#   2. the law-3 cost surface c(b, t) in bf16 at b 1-64 x t 1, 2, 3, 5, 9, 17 of SmolLM2-135M and Gemma 3 270M,
#      built from their packaged configs with random weights (benchmarks/gpu_check.py), tables written to OUT_DIR.
#
#   benchmarks/gpu_check.sh --wheels         here, before: download the wheels a GPU machine without a package
#                                            registry needs into .whl/ (git-ignored; 19 MB: carry it)
#   benchmarks/gpu_check.sh OUT_DIR          on a machine with a CUDA GPU (the device machine: OUT_DIR=$OUT)
#   benchmarks/gpu_check.sh --cpu OUT_DIR    the same path on the CPU, tiny (tests/test_gpu_check.py runs it)
#
# PYTHON picks the interpreter (default python3). Wheels in .whl/ are installed into /tmp/scylla-site first (the GPU
# image's transformers, 5.17, predates the 5.24 this toolkit needs; docs/benchmarks.md). Exits non-zero if the tests
# fail, after the surface has been measured all the same.
set -euo pipefail
cd "$(dirname "$0")/.."
# transformers >= 5.24 (pyproject.toml) and what it needs beyond the GPU image (huggingface_hub 2, its httpx2), for
# the image's Python 3.12 on x86-64
WHEELS="transformers==5.25.0 huggingface_hub==2.4.0 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 hf-xet==1.8.0
click==8.5.1"
if [ "${1:-}" = "--wheels" ]; then
  # shellcheck disable=SC2086
  "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $WHEELS
  du -sh .whl
  exit 0
fi
cpu=""
if [ "${1:-}" = "--cpu" ]; then
  cpu="--cpu"
  shift
fi
out="${1:?usage: benchmarks/gpu_check.sh [--cpu] OUT_DIR}"
python="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
if [ -z "$cpu" ] && compgen -G ".whl/*.whl" > /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/scylla-site \
    .whl/*.whl
  export PYTHONPATH="/tmp/scylla-site${PYTHONPATH:+:$PYTHONPATH}"
fi
device=cuda
if [ -n "$cpu" ]; then
  device=cpu
  export OMP_WAIT_POLICY=PASSIVE  # a busy shared CPU: idle threads sleep rather than spin (the suite runs this)
fi
mkdir -p "$out"
start=$SECONDS
if [ -z "$cpu" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" || true
fi

echo "== 1/2 accelerator tests on $device (tests/test_cuda.py)"
tests=0
SCYLLA_TEST_DEVICE=$device "$python" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py \
  > "$out/tests.log" 2>&1 || tests=$?
tail -n 15 "$out/tests.log"
if [ -z "$cpu" ] && grep -q " skipped" "$out/tests.log" && ! grep -q " passed" "$out/tests.log"; then
  echo "the accelerator tests were skipped: torch sees no CUDA device" >&2
  tests=1
fi

echo "== 2/2 law-3 cost surface in bf16 ($((SECONDS - start)) s so far)"
"$python" benchmarks/gpu_check.py $cpu --out "$out" 2>&1 | tee "$out/surface.log"
echo "== done in $((SECONDS - start)) s: $out (tests exit code $tests)"
exit "$tests"
