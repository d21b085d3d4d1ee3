#!/usr/bin/env bash
# Export the latest checkpoint of a run to the bundled GGUF and measure its accuracy.
#   tiny/finalize.sh [RUN_DIR=tiny/checkpoints/run1] [N=100] [LLAMA=5]
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-tiny/checkpoints/run1}
N=${2:-100}
LLAMA=${3:-5}
OUT=tiny/model/thinkcache-tiny-reasoner.gguf
# held-out test sets and calibration problems from the current tasks.py (seeded: unchanged when tasks.py is)
/usr/bin/python3 tiny/tasks.py --write-tests tiny/data 100
/usr/bin/python3 tiny/tasks.py --write-calib tiny/data/calib.jsonl 4
/usr/bin/python3 tiny/train.py --out "$RUN" --export "$RUN/weights"
npx tsx tiny/export-gguf.ts --weights "$RUN/weights" --out "$OUT" --type f16
cp "$RUN/weights/manifest.json" /tmp/tiny-manifest.json
/usr/bin/python3 tiny/tasks.py --dump-tokens /tmp/tiny-tokens.json 20
npx tsx tiny/eval.ts --model "$OUT" --check-tokenizer /tmp/tiny-tokens.json
npx tsx tiny/eval.ts --model "$OUT" --n "$N" --llama "$LLAMA" --json "$RUN/eval.json"
# head profile for the rlkv presets of `thinkcache demo` (calibration problems, disjoint from the test sets)
node bin/thinkcache.cjs profile-heads --model "$OUT" --out tiny/model/thinkcache-tiny-reasoner.heads.tsv --method ablation \
  --prompts tiny/data/calib.jsonl --traces 12 --max-tokens 512
