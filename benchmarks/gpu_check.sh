#!/usr/bin/env bash
# The GPU check: one command that measures and tests the CUDA path in about 8 minutes.
#
#   benchmarks/gpu_check.sh            # on a CUDA machine: the paper's CIFAR-10 config
#   benchmarks/gpu_check.sh --cpu      # anywhere: the same stages on a tiny model (~2 minutes)
#   benchmarks/gpu_check.sh --cpu --compile   # and torch.compile on the CPU (a few minutes more)
#
# Stages, each under its own time limit and skipped once the budget (GPU_CHECK_BUDGET seconds,
# 470 by default) is spent: environment; `pytest -m cuda`; `glow-repro bench` at the paper
# config; images/s, peak memory, TFLOP/s and host reads per step for each speed option
# (float32 with TF32 off, TF32, bf16, channels_last off, grad checkpointing, batch 256), then
# for each torch.compile mode; a float32-against-bf16 train(); resume against one go, with and
# without train.deterministic; DDP over a one-process NCCL group. Results are JSON lines from
# benchmarks/gpu_check.py; the last lines summarise each stage's exit status.
#
# A machine without pydantic or submitit installs them from the wheels in $GPU_CHECK_WHEELS
# (default shared/wheels) without going online.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BUDGET=${GPU_CHECK_BUDGET:-470}
WHEELS=${GPU_CHECK_WHEELS:-shared/wheels}
STARTED=$SECONDS
SUMMARY=()

if [ "${1:-}" = "--cpu" ]; then
  DEVICE=cpu
else
  DEVICE=$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
fi

# stage NAME LIMIT COMMAND...: run COMMAND for at most LIMIT seconds (less if the budget is short)
stage() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - (SECONDS - STARTED)))
  if [ "$left" -lt 15 ]; then
    echo "== $name: skipped, budget spent"
    SUMMARY+=("$name: skipped")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s, $((SECONDS - STARTED))s elapsed)"
  local began=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local status=$?
  [ "$status" -eq 124 ] && status="timed out"
  SUMMARY+=("$name: exit $status after $((SECONDS - began))s")
}

if ! "$PYTHON" -c 'import pydantic, submitit' 2>/dev/null && [ -d "$WHEELS" ]; then
  "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" pydantic submitit
fi

if [ "$DEVICE" = cuda ]; then
  BENCH=(--preset paper-cifar10 --device cuda --steps 10 --repeats 3)
else
  BENCH=(--preset reference --device cpu --steps 2 --repeats 1 --threads 2 --set model.depth=1
         --set model.width=8 --set data.image_size=8 --set model.levels=2 --set train.batch_size=8
         --set train.eval_batch_size=16)
fi

echo "gpu_check on $DEVICE, budget ${BUDGET}s"
stage environment 60 "$PYTHON" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
print("defaults: matmul.allow_tf32", torch.backends.cuda.matmul.allow_tf32,
      "cudnn.allow_tf32", torch.backends.cudnn.allow_tf32, "cudnn.deterministic", torch.backends.cudnn.deterministic)
for index in range(torch.cuda.device_count()):
    print(f"cuda:{index}", torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index))
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
stage "pytest -m cuda" 150 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests/test_scale_options.py tests/test_gpu_path.py
stage "glow-repro bench" 90 "$PYTHON" -m glow_repro bench "${BENCH[@]}"
stage "options, eager" 150 "$PYTHON" benchmarks/gpu_check.py --device "$DEVICE" options
stage "precision, resume, ddp" 150 "$PYTHON" benchmarks/gpu_check.py --device "$DEVICE" precision resume ddp
if [ "$DEVICE" = cuda ] || { [ "${2:-}" = "--compile" ] && command -v "${CXX:-g++}" >/dev/null; }; then
  stage "options, compiled" 240 "$PYTHON" benchmarks/gpu_check.py --device "$DEVICE" options --compile
fi

echo "== summary ($((SECONDS - STARTED))s)"
printf '%s\n' "${SUMMARY[@]}"
