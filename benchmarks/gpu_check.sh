#!/usr/bin/env bash
# Measure the GPU goals of docs/benchmarks.md in one run on a CUDA machine.
#
#   NIN_DATA_DIR=<folder that contains FashionMNIST/raw> bash benchmarks/gpu_check.sh [OUTPUT_FOLDER]
#
# Steps, most important first:
#   1. benchmark at 224, eager: reference pipeline against ours, 300 batches each
#   2. one full 10-epoch run at 224 of the improved recipe and of the lesson's recipe
#   3. the same benchmark through torch.compile
#   4. one full run of the improved recipe through torch.compile
#   5. seeds 1-4 of both full recipes, for as long as the time budget allows
# Each step writes a log, and steps 2, 4 and 5 a JSON file, to OUTPUT_FOLDER (default:
# runs/gpu_check). A step that fails is reported and the next one still runs.
# GPU_CHECK_SECONDS (default 540) is the time budget for all steps. Each step is stopped early
# enough to leave time for the steps after it, and step 5 keeps the seeds that finished.
# NOTE: not yet run on a GPU. The estimate for steps 1-4 on one H200 is about 5 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${1:-runs/gpu_check}
budget=${GPU_CHECK_SECONDS:-540}
# PYTHON sets the interpreter. Else the project's .venv is used when it exists, else python3.
default_python=python3
if [[ -x .venv/bin/python ]]; then default_python=.venv/bin/python; fi
python=${PYTHON:-$default_python}
export PYTHONUNBUFFERED=1
started=$SECONDS
failed=()
stopped=()
skipped=()

# Run one step: NAME LOG_FILE MARGIN COMMAND... The command's output goes to the screen and to
# $out/LOG_FILE. It is stopped MARGIN seconds before the time budget ends (exit status 124), and
# skipped when less than a minute would be left for it.
step() {
    local name=$1 log=$2 margin=$3
    shift 3
    local limit=$((budget - (SECONDS - started) - margin))
    echo
    if ((limit < 60)); then
        echo "== $name skipped: only $limit s of the time budget left"
        skipped+=("$name")
        return
    fi
    echo "== $name ($((SECONDS - started)) s since start, at most $limit s): $*"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$out/$log"
    local status=${PIPESTATUS[0]}
    if ((status == 124 || status == 137)); then
        echo "== $name stopped at the end of its time limit"
        stopped+=("$name")
    elif ((status != 0)); then
        echo "== $name FAILED (exit status $status)"
        failed+=("$name")
    fi
}

if ! "$python" -c "import torch" 2>/dev/null; then
    echo "$python cannot import torch. Set PYTHON to an interpreter with PyTorch installed." >&2
    exit 2
fi
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "CUDA is not available to $python here. Run this script on a machine with an NVIDIA GPU." >&2
    exit 2
fi
if ! "$python" -c "import nin_helpers as nh; nh.verify_fashion_mnist()"; then
    echo "Set NIN_DATA_DIR to the folder that contains FashionMNIST/raw with the four files." >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p "$out"

bench=(benchmarks/bench_training.py --device cuda --image-size 224 --batches 300)
# The margins keep time for the steps after each one.
step bench-eager bench_224_eager.log 360 "$python" "${bench[@]}"
step full-eager full_224_eager.log 240 "$python" benchmarks/full_training.py --device cuda \
    --recipe improved lesson --output "$out/full_224_eager.json"
step bench-compile bench_224_compile.log 180 "$python" "${bench[@]}" --compile
step full-compile full_224_compile.log 90 "$python" benchmarks/full_training.py --device cuda \
    --recipe improved --compile --output "$out/full_224_compile.json"
# Seed 0 of both recipes was trained in step 2. seed_robustness.py writes its file after every seed.
step seeds seeds_224.log 20 "$python" benchmarks/seed_robustness.py --full --device cuda \
    --recipe lesson improved --first-seed 1 --seeds 4 --output "$out/seeds_224.json"

echo
echo "== done in $((SECONDS - started)) s; files in $out"
if ((${#stopped[@]})); then echo "== stopped at their time limit: ${stopped[*]}"; fi
if ((${#skipped[@]})); then echo "== skipped for lack of time: ${skipped[*]}"; fi
if ((${#failed[@]})); then
    echo "== failed steps: ${failed[*]}"
    exit 1
fi
