#!/usr/bin/env bash
# One prepared device check for a session lent the GPU machine (15 minutes of device time in all).
# Prepare here: python benchmarks/prepare_device_carry.py --size 224      (xz-packed cache, 60 MiB)
#   and keep tracked checkpoints/ from travelling (the tree limit is 64 MiB):
#   git rm -r -q --cached checkpoints && echo /checkpoints/ >> .git/info/exclude   (undo after:
#   git reset -q checkpoints, and drop that line)
# Run there:    run(command="bash benchmarks/gpu_check.sh 224", carry=[".carry"], timeout_s=570)
# 1. throughput and MFU of the training step at the size (bench_device.py);
# 2. the whole ELPV protocol (five variants x seeds $SEEDS, default 0 1 2) with $JOBS runs at once
#    sharing the GPU, capped at $CAP seconds (resumable: whatever finished is kept);
# 3. packs what comes back into $OUT (at most 8 files of 16 MiB): runs.tgz (every run.json, logs)
#    and weights.tar.* (model.safetensors of the runs in $SHIP, split into 15 MiB parts).
set -uo pipefail
SIZE=${1:-224}
JOBS=${JOBS:-5}
CAP=${CAP:-430}
SEEDS=${SEEDS:-0 1 2}
SHIP=${SHIP:-baseline-s0 baseline-s1 baseline-s2 csba-s0 csba-s1 csba-s2 focal-s0 gradnorm-s0}
export CSBA_ELPV_ROOT=$PWD/.carry CSBA_CACHE=${CSBA_CACHE:-$PWD/.carry} PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}  # cpu: a local dry run of this script at a small size
OUT=${OUT:-/tmp/out}
CK=/tmp/ck
mkdir -p "$OUT"
for f in .carry/*.xz; do [ -e "$f" ] && xz -d -k -T0 "$f"; done
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])" \
  | tee -a "$OUT/gpu.txt"
timeout 90 python3 benchmarks/bench_device.py --image-size "$SIZE" --batch 128 2>&1 \
  | tee "$OUT/device.txt"
timeout 40 python3 benchmarks/bench_device.py --image-size "$SIZE" --batch 32 --steps 30 2>&1 \
  | tee -a "$OUT/device.txt"
start=$(date +%s)
# shellcheck disable=SC2086
timeout "$CAP" python3 -m csba protocol --dataset elpv --image-size "$SIZE" --seeds $SEEDS \
  --device "$DEVICE" --jobs "$JOBS" --out "$CK" 2>&1 | tee "$OUT/protocol.txt"
echo "protocol at ${SIZE}px, seeds $SEEDS, $JOBS jobs on one GPU: exit ${PIPESTATUS[0]}," \
  "$(( $(date +%s) - start )) s" | tee -a "$OUT/protocol.txt"
pkill -f "csba protocol" || true  # timeout stops the parent; its workers would run on
python3 -m csba list --root "$CK" 2>&1 | tee -a "$OUT/protocol.txt"
key=elpv-${SIZE}px
[ "$SIZE" = 128 ] && key=elpv
(cd "$CK" && tar czf "$OUT/runs.tgz" --exclude=model.safetensors "$key" logs)
(cd "$CK/$key" && ls -d $SHIP 2>/dev/null | sed 's|$|/model.safetensors|' \
  | tar cf - -T - | split -b 15M - "$OUT/weights.tar.")
ls -la "$OUT"
