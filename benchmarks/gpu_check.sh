#!/usr/bin/env bash
# One prepared device check for a session lent the GPU machine (15 minutes of device time in all).
# Prepare here: python benchmarks/prepare_device_carry.py --size 128
# Run there:    run(command="bash benchmarks/gpu_check.sh 128", carry=[".carry"], timeout_s=540)
# Prints throughput and MFU at the size, then times all five variants x seed 0 of the ELPV
# protocol (epochs capped by $EPOCHS, default 300 with early stopping). Logs land in $OUT.
set -euo pipefail
SIZE=${1:-128}
export CSBA_ELPV_ROOT=$PWD/.carry CSBA_CACHE=$PWD/.carry PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 benchmarks/bench_device.py --image-size "$SIZE" --batch 128 2>&1 | tee "$OUT/device.txt"
start=$(date +%s)
python3 -m csba protocol --dataset elpv --image-size "$SIZE" --seeds 0 --epochs "${EPOCHS:-300}" \
  --device cuda --out /tmp/ck --diagnose-per-class 64 2>&1 | tee "$OUT/protocol.txt"
echo "protocol, five variants x seed 0 at ${SIZE}px: $(( $(date +%s) - start )) s" | tee -a "$OUT/protocol.txt"
python3 -m csba list --root /tmp/ck | tee -a "$OUT/protocol.txt"
