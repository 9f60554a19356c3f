#!/usr/bin/env bash
# The GPU throughput check of issue 9, in one command that installs nothing:
#
#     bash benchmarks/gpu_check.sh [extra throughput.py flags, e.g. --models googlenet]
#
# Runs benchmarks/throughput.py with its full settings (all five models, batch 128, bf16 and fp32,
# parts a-e) on the machine's first GPU and ends with its summary table. It needs jax (with CUDA),
# flax, optax, chex and torch already installed; grain and tensorflow-datasets are not needed.
# jaxnotes is used from this checkout (PYTHONPATH), not installed. About 5-6 minutes on one H100.
# The log and a JSON of every number go to $OUT (the device runner's output folder) if set, else
# to ./throughput-gpu.{log,json}.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DEST="${OUT:-.}"
mkdir -p "$DEST"
LOG="$DEST/throughput-gpu.log"

{
  echo "== gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
  git log -1 --format='checkout %h %s' 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi failed"
  "$PYTHON" - <<'EOF'
import importlib, importlib.util, platform
print("python", platform.python_version())
for name in ("jax", "jaxlib", "flax", "optax", "chex", "torch", "numpy"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as error:  # a missing package shows here and in its cells
        print(f"{name} unavailable: {error}")
for name in ("grain", "tensorflow_datasets"):
    spec = importlib.util.find_spec(name)
    print(f"{name}: {'installed' if spec else 'not installed (jaxnotes falls back)'}")
EOF
} 2>&1 | tee "$LOG"

# Keep JAX's preallocated pool at 60% of the card: PyTorch runs in the same process.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" benchmarks/throughput.py --json "$DEST/throughput-gpu.json" "$@" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
echo "gpu_check: throughput.py exited with status $status; log in $LOG" | tee -a "$LOG"
exit "$status"
