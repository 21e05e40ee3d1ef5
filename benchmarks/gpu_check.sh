#!/bin/bash
# One device call: the loop benchmarks in every precision (fp32 exact, tf32, bf16), digits and full size,
# with and without the decoder levers; logs and JSON go to OUTDIR.
#
# Usage, in the repository root:
#   bash benchmarks/gpu_check.sh OUTDIR                 # on a GPU machine (device cuda)
#   bash benchmarks/gpu_check.sh OUTDIR --device cpu    # the same script as a smoke run on a CPU
# On a GPU machine that lacks open_clip, taming or diffusers, bring them as wheels in .whl/
# (see docs/benchmarks.md); the script installs them into a private folder first.
# Sizes can be lowered for a smoke run: N_DIGITS, N_FULL, BUDGET_DIGITS, BUDGET_FULL, BATCH, LIMIT_S.
set -u -o pipefail
OUT=${1:-gpu_out}; shift || true
DEVICE=cuda
if [ "${1:-}" = "--device" ]; then DEVICE=$2; fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH || exit 1
fi
N_DIGITS=${N_DIGITS:-200} N_FULL=${N_FULL:-64} BUDGET_DIGITS=${BUDGET_DIGITS:-50} BUDGET_FULL=${BUDGET_FULL:-10}
BATCH=${BATCH:-32} LIMIT_S=${LIMIT_S:-150}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
} | tee "$OUT/gpu.txt"
bench() {  # NAME ARGS...: one bench_loop run, cut off after LIMIT_S seconds so the rest still runs
    local name=$1; shift
    timeout "$LIMIT_S" python3 benchmarks/bench_loop.py --device "$DEVICE" --json "$OUT/$name.json" "$@" 2>&1 \
        | grep -v Warning | tee "$OUT/$name.txt"
}
# Faithfulness on a trained world: each mode against the reference and against exact fp32.
bench digits --setup digits --n "$N_DIGITS" --budget "$BUDGET_DIGITS" --batch-size 100 --modes reference,fp32,tf32,bf16
# Steady-state speed at full size (accept-all head: every sample runs its whole budget), plain decoder...
bench full_accept --setup full --oracle-head accept --n "$N_FULL" --budget "$BUDGET_FULL" --batch-size "$BATCH" \
    --modes fp32,tf32,bf16
# ...and with the decoder levers and one fixed shape (cudnn.benchmark on; torch.compile is left to a later run)
bench full_accept_levers --setup full --oracle-head accept --n "$N_FULL" --budget "$BUDGET_FULL" \
    --batch-size "$BATCH" --modes fp32,tf32,bf16 --levers subpixel,groupnorm --fixed-slots
echo "done: $(ls "$OUT")"
