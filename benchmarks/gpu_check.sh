#!/usr/bin/env bash
# The prepared device check for a session lent the GPU machine (15 minutes of device time in all,
# 10 minutes per command, 64 MiB back per call in at most 8 files).
#
# Prepare here:
#   python benchmarks/prepare_device_carry.py --size 224   # labels + xz-packed cache, 60 MiB
#   git rm -r -q --cached checkpoints && echo /checkpoints/ >> .git/info/exclude
#     (tracked checkpoints/ would not fit the 64 MiB tree; undo after the calls with
#      git reset -q checkpoints, and delete that line from .git/info/exclude)
# Call 1:  run(command="JOBS=8 CAP=600 DEADLINE=540 bash benchmarks/gpu_check.sh 224",
#              carry=[".carry"], timeout_s=600)
#          (2026-11-29 on one H200: 533 s in all; the benchmarks and the two smoke runs took
#           128 s, the whole protocol 374 s with 8 jobs, and 10 of the 15 runs' weights came back)
# Call 2, AT ONCE (the machine stays warm 30 s; /tmp/ck survives only on a warm machine):
#          run(command="RESUME=1 CAP=1 bash benchmarks/gpu_check.sh 224", carry=[".carry"],
#              timeout_s=120)
#          (brings back the weights call 1 could not pack: 25 s. If call 1's protocol did not
#           finish, give call 2 the time left instead: RESUME=1 CAP=<s>; complete runs are
#           skipped, so the whole protocol's time is the sum of the calls' protocol lines)
#          (start-up, both calls and the idle gaps must fit the 900 s budget: 614 s used then)
# Then give_back, and here: cat /work/.device/*/runs-*.tar.* | tar x -C checkpoints
# and judge the 224 px runs against the 128 px ones, pair by pair (validation decides, DESIGN §2):
#   python -m csba pair checkpoints checkpoints --image-size-a 128 --image-size-b 224
#
# 1. (call 1 only) throughput and MFU of the training step, eager and as one CUDA graph
#    (bench_device.py, batch 128 and 32), then a 2-epoch smoke run of the whole path (stops here
#    if it fails) and the same 2 epochs with eager steps, to compare with the graphed ones;
# 2. the ELPV protocol, five variants x seeds $SEEDS (default 0 1 2), $JOBS runs at once sharing
#    the GPU, for at most $CAP seconds; it resumes where the last call stopped (complete runs are
#    skipped), so the time of a whole protocol is the sum of the calls' protocol lines;
# 3. packs the complete runs that no earlier call returned (benchmarks/pack_runs.py, 56 MiB per
#    call: float16 weights of 15 runs at 224 px are 68 MB, so two calls bring them all) and
#    runs.tgz (every run.json and log, for the record even when a run did not finish).
set -uo pipefail
SIZE=${1:-224}
JOBS=${JOBS:-5}
CAP=${CAP:-480}
SEEDS=${SEEDS:-0 1 2}
RESUME=${RESUME:-0}
# DEADLINE: seconds after this script starts by which the protocol must stop (CAP shrinks to fit),
# so that packing ends inside the call's timeout_s whatever the benchmarks before it took
DEADLINE=${DEADLINE:-}
script_start=$(date +%s)
# extra protocol options, e.g. PROTOCOL_ARGS="--lr-schedule cosine --keep last --epochs 40"; call 2
# must repeat call 1's (a run's config is its protocol)
PROTOCOL_ARGS=${PROTOCOL_ARGS:-}
CALL=$([ "$RESUME" = 1 ] && echo 2 || echo 1)
export CSBA_ELPV_ROOT=$PWD/.carry CSBA_CACHE=${CSBA_CACHE:-$PWD/.carry} PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}  # cpu: a local dry run of this script at a small size
OUT=${OUT:-/tmp/out}
CK=${CK:-/tmp/ck}
mkdir -p "$OUT"
for f in .carry/*.xz; do [ -e "$f" ] && [ ! -e "${f%.xz}" ] && xz -d -k -T0 "$f"; done
if [ "$RESUME" != 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
  python3 -c "import torch, sys; print('torch', torch.__version__, 'python', sys.version.split()[0])" \
    | tee -a "$OUT/gpu.txt"
  # eager vs the whole step as one CUDA graph (train.py's default on CUDA); COMPILE=1 adds the
  # torch.compile modes for the baseline (about a minute of compilation each)
  timeout 100 python3 benchmarks/bench_device.py --image-size "$SIZE" --batch 128 \
    --modes eager cudagraph 2>&1 | tee "$OUT/device.txt"
  timeout 60 python3 benchmarks/bench_device.py --image-size "$SIZE" --batch 32 --steps 30 \
    --modes eager cudagraph 2>&1 | tee -a "$OUT/device.txt"
  if [ "${COMPILE:-0}" = 1 ]; then
    timeout 240 python3 benchmarks/bench_device.py --image-size "$SIZE" --batch 32 --steps 30 \
      --variants baseline --modes eager compile compile-cudagraph 2>&1 | tee -a "$OUT/device.txt"
  fi
  rm -rf /tmp/smoke /tmp/smoke-eager  # a stale complete run would be skipped, not retrained
  # Smoke: the whole path (train, evaluate, diagnose) for 2 epochs of one variant, so that a
  # crash after training costs 30 s here rather than a whole protocol wave.
  # shellcheck disable=SC2086
  if ! timeout 150 python3 -m csba protocol --dataset elpv --image-size "$SIZE" --variants csba \
    $PROTOCOL_ARGS --seeds 0 --epochs 2 --device "$DEVICE" --out /tmp/smoke > "$OUT/smoke.txt" 2>&1; then
    tail -n 30 "$OUT/smoke.txt"
    echo "smoke run failed: no protocol this call"
    exit 1
  fi
  # the same 2 epochs with eager steps: train losses should agree with the graphed run's to a
  # few per cent (dropout draws differ), and runtime says whether the graph was captured
  # shellcheck disable=SC2086
  timeout 90 python3 -m csba protocol --dataset elpv --image-size "$SIZE" --variants csba \
    $PROTOCOL_ARGS --seeds 0 --epochs 2 --device "$DEVICE" --out /tmp/smoke-eager \
    --no-cuda-graph > "$OUT/smoke-eager.txt" 2>&1
  python3 - <<'PY' | tee -a "$OUT/smoke.txt"
import glob, json
for path in sorted(glob.glob("/tmp/smoke*/elpv*/csba-s0/run.json")):
    r = json.load(open(path))
    rt = r["runtime"]
    print(path, "cuda_graph", rt.get("cuda_graph"), rt.get("cuda_graph_error", ""),
          "train s %.1f" % rt["train_seconds"],
          "train loss", [round(h["train_loss"], 4) for h in r["history"]],
          "val acc", [round(h["val_accuracy"], 3) for h in r["history"]])
PY

fi
start=$(date +%s)
if [ -n "$DEADLINE" ]; then
  left=$(( DEADLINE - (start - script_start) ))
  [ "$left" -lt "$CAP" ] && CAP=$(( left > 1 ? left : 1 ))
  echo "protocol cap: $CAP s (deadline $DEADLINE s after the script's start)"
fi
mkdir -p "$CK"  # a cap that ends before the first run still packs (nothing)
# shellcheck disable=SC2086
timeout "$CAP" python3 -m csba protocol --dataset elpv --image-size "$SIZE" --seeds $SEEDS \
  --device "$DEVICE" --jobs "$JOBS" --out "$CK" $PROTOCOL_ARGS 2>&1 | tee "$OUT/protocol-$CALL.txt"
echo "call $CALL: protocol at ${SIZE}px, seeds $SEEDS, $JOBS jobs: exit ${PIPESTATUS[0]}," \
  "$(( $(date +%s) - start )) s" | tee -a "$OUT/protocol-$CALL.txt"
pkill -f -- "--out $CK" || true  # timeout stops the parent, not its workers (only this out)
python3 -m csba list --root "$CK" 2>&1 | tee -a "$OUT/protocol-$CALL.txt"
key=$(python3 -c "from csba.store import run_dir_for as r; print(r('', 'elpv', 'x', 0, $SIZE).parent)")
(cd "$CK" && tar czf "$OUT/runs.tgz" --exclude=model.safetensors "$key" $(ls -d logs 2>/dev/null))
python3 benchmarks/pack_runs.py "$CK" "$key" "$OUT" --call "$CALL" | tee -a "$OUT/protocol-$CALL.txt"
ls -la "$OUT"
