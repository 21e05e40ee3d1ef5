#!/bin/bash
# One device call: the full-size and digits loop benchmarks on the GPU, and the default job on cuda.
# Usage (on a GPU machine, in the repository root): bash benchmarks/gpu_check.sh OUTDIR
set -u
OUT=${1:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
python3 benchmarks/bench_loop.py --setup digits --device cuda --n 200 --budget 50 --batch-size 100 \
    --modes reference,fp32,bf16 --json "$OUT/digits_cuda.json" 2>&1 | grep -v Warning | tee "$OUT/digits_cuda.txt"
python3 benchmarks/bench_loop.py --setup full --device cuda --n 64 --budget 10 --batch-size 32 \
    --modes reference,fp32,bf16 --json "$OUT/full_cuda_b32.json" 2>&1 | grep -v Warning | tee "$OUT/full_cuda.txt"
python3 -m fmr_bench evaluate --model builtin:digits-cnn --data digits --device cuda --out "$OUT/runs" \
    --quiet 2>&1 | tee "$OUT/evaluate_cuda.txt"
