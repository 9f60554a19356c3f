#!/usr/bin/env bash
# The one GPU check, in one command that installs and downloads nothing:
#
#     bash benchmarks/gpu_check.sh [gpu_check.py flags, e.g. --models googlenet --parts 1]
#
# Runs benchmarks/gpu_check.py: the parts of the GPU check in priority order, each in its own
# process, within one time budget (GPU_CHECK_BUDGET seconds, default 440; the whole command ends
# within about GPU_CHECK_BUDGET + 20 s: a hard stop kills it at GPU_CHECK_BUDGET + 25):
#   1. throughput of 7 models at batch 128: jaxnotes step (bf16, fp32), jaxnotes epoch through
#      the real input pipeline, PyTorch eager fp32 and bf16 + channels_last, plain Flax step;
#      TFLOP/s against the measured bf16 matmul peak; PASS/FAIL of "no recompilation"
#   2. LeNet populations P = 1, 8, 64; 3. the book's settings, projected epoch and 10 epochs;
#   4. fp16 (loss scaling) vs bf16 vs fp32 on digits; 5. a CPU-made export to 1e-4 here;
#   6. per-example dropout keys vs one key per batch (AlexNet, VGG-11/4, NiN).
# What does not fit in the budget is skipped and listed at the end.
#
# Needs jax (with CUDA), flax, optax, chex, orbax-checkpoint, scikit-learn, numpy and torch
# (CUDA) already installed; grain, tensorflow-datasets and tensorboardX are not needed.
# jaxnotes is used from this checkout (PYTHONPATH). Part 5 reads benchmarks/fixtures/
# (made on a CPU by benchmarks/make_export_fixture.py).
#
# Output, in $OUT (default ./gpu-out): gpu_check.log (everything printed) and gpu_check.json
# (every number). CPU dry run: GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh (tiny sizes).
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DEST="${OUT:-./gpu-out}"
mkdir -p "$DEST"
LOG="$DEST/gpu_check.log"
BUDGET="${GPU_CHECK_BUDGET:-440}"
export GPU_CHECK_BUDGET="$BUDGET"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Let no earlier run's cache answer for this one: gpu_check.py makes a fresh one per run.
unset JAXNOTES_CACHE_DIR

{
  echo "== gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname), budget ${BUDGET} s"
  git log -1 --format='checkout %h %s' 2>/dev/null || true
  git status --short 2>/dev/null | head -20 | sed 's/^/  changed: /' || true
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit \
      --format=csv || true
    nvidia-smi 2>&1 | head -15 || true  # the banner names the driver's CUDA version
  else
    echo "nvidia-smi: not found"
  fi
  echo "CPUs: $(nproc 2>/dev/null || echo '?'); $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null || true)"
  free -g 2>/dev/null | head -2 || true
  # Versions read from the installed metadata: nothing is imported (no GPU touched) here.
  "$PYTHON" - <<'EOF'
import importlib.metadata as md, importlib.util, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin",
             "flax", "optax", "chex", "orbax-checkpoint", "torch", "numpy", "scikit-learn"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        pass
for name in ("grain", "tensorflow_datasets", "tensorboardX"):
    spec = importlib.util.find_spec(name)
    print(f"  {name}: {'installed' if spec else 'not installed (not needed)'}")
EOF
  ls -l benchmarks/fixtures 2>&1 | sed 's/^/  fixtures: /'
} 2>&1 | tee "$LOG"

# The hard stop: gpu_check.py keeps to its budget itself; this only catches a hang.
HARD=()
if command -v timeout >/dev/null 2>&1; then HARD=(timeout --kill-after=5 "$((BUDGET + 25))"); fi
"${HARD[@]}" "$PYTHON" benchmarks/gpu_check.py --out "$DEST" --python "$PYTHON" "$@" 2>&1 \
  | tee -a "$LOG"
status=${PIPESTATUS[0]}
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
  echo "gpu_check: HARD STOP at $((BUDGET + 25)) s (gpu_check.json holds the parts finished)" \
    | tee -a "$LOG"
fi
echo "gpu_check: exit status $status; log $LOG, results $DEST/gpu_check.json" | tee -a "$LOG"
exit "$status"
