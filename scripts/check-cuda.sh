#!/usr/bin/env bash
# The one script a GPU session runs for issue 8 (STYLE §2.7): build the CUDA backend without Node, run
# the CUDA op tests (test + perf mode) and the op-level decode benchmark, within a fixed time budget,
# and write every log plus summary.txt and bench.jsonl to $OUT.
#
#   OUT=/tmp/out CHECK_CUDA_LEAN=1 bash scripts/check-cuda.sh
#
# Env:
#   OUT                     results folder (default ./cuda-check-out)
#   CHECK_CUDA_BUDGET_S     wall-clock budget in seconds for the whole script (default 480)
#   CHECK_CUDA_LEAN=1       compile sm_90a only (H100/H200), else sm_90a + sm_80 + compute_80 PTX
#   CHECK_CUDA_PREBUILT=1   skip the build and use build-cuda/native-tests and build-cuda/decode-bench-cuda
#                           (built elsewhere with the same flags and carried over); also chosen
#                           automatically when nvcc is missing and the binaries are there
#   CHECK_CUDA_JOBS         build parallelism (default: nproc)
#   CHECK_CUDA_ALLOW_SKIP=1 exit 0 when no device is visible (CPU-only smoke run of this script); else 2
#   CHECK_CUDA_BENCH_ARGS   extra decode-bench-cuda arguments (default: f16,q8_0,q4_K weights at 1K/8K/32K, KV f16,
#                           rot2, rot2-post, rot2-hs-lazy: 36 rows, ~25 s on an H200)
#   CHECK_CUDA_FORWARD=0     skip the real-forward benchmark (decode-bench-cuda --forward, q8_0 1.5B shape, caches f16,
#                           rot2, rot2 + head-selective, and that + lazy / h2o eviction on the other heads, at
#                           1K/8K/32K; one JSON line per row as it finishes, so a timeout keeps the rows done; the lazy
#                           row decodes 128 steps before timing, the h2o one drops a token per head at every step)
#   CHECK_CUDA_FORWARD_ARGS  extra --forward arguments (later flags win, e.g. "--contexts 1024 --kv f16,rot2")
#   CHECK_CUDA_PAUSE / CHECK_CUDA_RESUME  commands run just before / after the timed steps (tests, perf, bench),
#                           e.g. to pause a training job sharing the GPU (scripts/gpu-session.sh)
set -u
T0=$(date +%s)
BUDGET=${CHECK_CUDA_BUDGET_S:-480}
OUT=${OUT:-./cuda-check-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD=build-cuda
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# run STEP_NAME MAX_SECONDS cmd...: bounded by both MAX_SECONDS and what is left of the budget
run_step() {
  local name=$1 max=$2; shift 2
  local l; l=$(left)
  if [ "$l" -le 5 ]; then say "$name: SKIPPED (budget spent)"; return 124; fi
  [ "$max" -gt "$l" ] && max=$l
  local t=$(date +%s)
  timeout --kill-after=10 "$max" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  say "$name: rc=$rc ($(( $(date +%s) - t )) s, limit $max s)$([ $rc -eq 124 ] && echo ' TIMED OUT')"
  return $rc
}

say "check-cuda: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(date -u +%FT%TZ), budget ${BUDGET}s"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv 2>&1 || echo "nvidia-smi: not available"; } > "$OUT/device.txt"
{ command -v nvcc && nvcc --version; } >> "$OUT/device.txt" 2>&1
say "device: $(head -2 "$OUT/device.txt" | tail -1)"

PREBUILT=${CHECK_CUDA_PREBUILT:-0}
if [ "$PREBUILT" != 1 ] && ! command -v nvcc > /dev/null && [ -x "$BUILD/native-tests" ]; then
  say "nvcc not found: using the carried $BUILD binaries"
  PREBUILT=1
fi
if [ "$PREBUILT" != 1 ]; then
  if ! command -v nvcc > /dev/null; then say "FAIL: nvcc not found and no prebuilt $BUILD/native-tests"; exit 3; fi
  if [ "${CHECK_CUDA_LEAN:-0}" = 1 ]; then GENCODE="-gencode=arch=compute_90a,code=sm_90a"
  else GENCODE="-gencode=arch=compute_90a,code=sm_90a;-gencode=arch=compute_80,code=sm_80;-gencode=arch=compute_80,code=compute_80"; fi
  run_step configure 120 cmake -S . -B "$BUILD" -DTHINKCACHE_CUDA=ON -DTHINKCACHE_ADDON=OFF -DCMAKE_BUILD_TYPE=Release \
    "-DTHINKCACHE_CUDA_GENCODE=$GENCODE" || { say "FAIL: configure (see configure.log)"; exit 3; }
  run_step build 420 cmake --build "$BUILD" -j "${CHECK_CUDA_JOBS:-$(nproc)}" --target native-tests decode-bench-cuda \
    || { say "FAIL: build (see build.log)"; tail -40 "$OUT/build.log"; exit 3; }
fi

rc_all=0
[ -n "${CHECK_CUDA_PAUSE:-}" ] && { sh -c "$CHECK_CUDA_PAUSE"; say "paused: $CHECK_CUDA_PAUSE"; }
run_step ops-test 120 "$BUILD/native-tests" -o cuda/ || rc_all=1
grep -E "FAIL|skipped|tests passed|DEQUANT|^cuda/" "$OUT/ops-test.log" | head -60 >> "$SUMMARY"
# shellcheck disable=SC2086
run_step decode-bench 180 sh -c "\"$BUILD/decode-bench-cuda\" ${CHECK_CUDA_BENCH_ARGS:-} > \"$OUT/bench.jsonl\"" || rc_all=1
cat "$OUT/decode-bench.log" >> "$SUMMARY"
# the real forward pass on a synthetic Qwen2-1.5B (q8_0 weights made on the CPU first, ~1 min), with the device
# caches quantizing on write; CHECK_CUDA_FORWARD=0 skips
if [ "${CHECK_CUDA_FORWARD:-1}" = 1 ]; then
  run_step forward-bench 300 sh -c "\"$BUILD/decode-bench-cuda\" --forward --type q8_0 --contexts 1024,8192,32768 --kv f16,rot2,rot2-hs,rot2-hs-lazy,rot2-hs-h2o ${CHECK_CUDA_FORWARD_ARGS:-} > \"$OUT/forward.jsonl\"" || rc_all=1
  grep -E "forward:|synthesized" "$OUT/forward-bench.log" >> "$SUMMARY"
fi
# op timings last: the least needed when the budget runs short
run_step ops-perf 90 "$BUILD/native-tests" -o cuda/ --mode perf
grep -E "PERF" "$OUT/ops-perf.log" >> "$SUMMARY"
[ -n "${CHECK_CUDA_RESUME:-}" ] && { sh -c "$CHECK_CUDA_RESUME"; say "resumed: $CHECK_CUDA_RESUME"; }
if grep -q "skipped: no CUDA device" "$OUT/ops-test.log" 2>/dev/null; then
  say "NO DEVICE: the CUDA tests skipped ($(grep -m1 'skipped: no CUDA device' "$OUT/ops-test.log" | sed 's/^ *//')); nothing was measured"
  [ "${CHECK_CUDA_ALLOW_SKIP:-0}" = 1 ] || rc_all=2
fi
say "check-cuda: done in $(( $(date +%s) - T0 )) s, $([ $rc_all = 0 ] && echo OK || echo "FAIL (rc $rc_all)")"
exit $rc_all
