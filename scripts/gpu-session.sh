#!/usr/bin/env bash
# Everything a GPU session (the `device` tool, one call) does for issues 8 and 9, sharing the machine:
# the tiny reasoner trains on the GPU the whole time (tiny/gpu-train.sh) while the CUDA backend builds on the
# CPU cores; training is paused (SIGSTOP) while scripts/check-cuda.sh runs the op tests, the perf mode and the
# decode benchmark, so the timings see an idle GPU; then training resumes until its time is up and writes
# its checkpoint under $OUT.
#
#   device run (carry tiny/checkpoints/RUN when resuming):
#     GPU_TRAIN_S=380 CHECK_CUDA_BUDGET_S=300 bash scripts/gpu-session.sh tiny/checkpoints/run5 <train.py options>
# GPU_TRAIN_S=0 skips training; CHECK_CUDA=0 skips the CUDA checks.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; export OUT
RUN=${1:?run dir}; shift
cd "$(dirname "$0")/.."
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
TRAIN_PID=
if [ "${GPU_TRAIN_S:-0}" -gt 0 ]; then
  bash tiny/gpu-train.sh "$RUN" "$GPU_TRAIN_S" "$@" > "$OUT/gpu-train.log" 2>&1 &
  TRAIN_PID=$!
fi
if [ "${CHECK_CUDA:-1}" = 1 ]; then
  CHECK_CUDA_LEAN=${CHECK_CUDA_LEAN:-1} CHECK_CUDA_JOBS=${CHECK_CUDA_JOBS:-12} \
  CHECK_CUDA_PAUSE="pkill -STOP -f '[t]iny/train.py'; sleep 2" CHECK_CUDA_RESUME="pkill -CONT -f '[t]iny/train.py'" \
    nice -n 5 bash scripts/check-cuda.sh
  echo "check-cuda rc=$? at $(( $(date +%s) - T0 )) s"
fi
if [ -n "$TRAIN_PID" ]; then
  wait "$TRAIN_PID"
  echo "training ended at $(( $(date +%s) - T0 )) s"
  grep -E "^step" "$OUT/$(basename "$RUN")/train.log" | awk 'NR % 20 == 0' | tail -30
  tail -3 "$OUT/$(basename "$RUN")/train.log"
fi
# the device tool returns at most 8 files: the logs travel as one archive beside the summary and the checkpoint
( cd "$OUT" && ls *.log *.jsonl device.txt 2>/dev/null | tar -cf logs.tar -T - && ls *.log *.jsonl device.txt 2>/dev/null | xargs rm -f )
ls -la "$OUT" "$OUT"/*/ 2>/dev/null
