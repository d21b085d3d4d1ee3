#!/usr/bin/env bash
# Continue a tiny-reasoner run on a lent GPU (the `device` tool: PyTorch on an H100/H200, one call of at most
# 10 minutes), the same train.py with --device cuda; the checkpoint comes back under $OUT.
#   device run, carry ["tiny/checkpoints/run5"]:  bash tiny/gpu-train.sh tiny/checkpoints/run5 540 --tokens 16384 --steps 60000 --decay-steps 6000
# Arguments: RUN_DIR (its ckpt.pt is resumed when present), SECONDS of training before a final checkpoint, then
# train.py's own options (they must describe the run, e.g. the model shape of an existing checkpoint).
# The checkpoint comes back split in 15 MiB parts (the device tool returns files of at most 16 MiB):
#   cat "$files_at/<run name>/ckpt.pt.part-"* > RUN_DIR/ckpt.pt   then finalize on the CPU (tiny/finalize.sh).
set -euo pipefail
RUN=${1:?run dir}; SECS=${2:?seconds}; shift 2
OUTDIR=${OUT:-/tmp/out}/$(basename "$RUN")
mkdir -p "$OUTDIR"
[ -f "$RUN/ckpt.pt" ] && cp "$RUN/ckpt.pt" "$OUTDIR/ckpt.pt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
# train.py checkpoints every --ckpt-every-s and at exit; timeout sends SIGTERM, so checkpoint often
timeout --signal=TERM "$SECS" python3 tiny/train.py --out "$OUTDIR" --device cuda --threads 4 --workers 8 --ckpt-every-s 60 "$@" \
  > "$OUTDIR/train.log" 2>&1 || true
tail -5 "$OUTDIR/train.log"
if [ -f "$OUTDIR/ckpt.pt" ]; then
  sha256sum "$OUTDIR/ckpt.pt" | cut -c1-16 > "$OUTDIR/ckpt.sha"
  split -b 15M "$OUTDIR/ckpt.pt" "$OUTDIR/ckpt.pt.part-" && rm "$OUTDIR/ckpt.pt"
fi
rm -f "$OUTDIR"/ckpt-stable-*.pt
ls -la "$OUTDIR"
