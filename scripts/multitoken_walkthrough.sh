#!/usr/bin/env bash
# Issue 14's figures: how many of the README walkthrough's pairs `crosslens attribute` scores,
# and how long it takes, with the code before issue 14 (OLD) and this tree.
#   git archive d14e4ae | tar -x -C /tmp/old
#   OLD=/tmp/old bash scripts/multitoken_walkthrough.sh /tmp/walk
# Settings: the README's "Your own text" commands with tests/test_cli_e2e.py's SMALL flags.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:?usage: OLD=/path/to/old/tree bash scripts/multitoken_walkthrough.sh OUT_DIR}
PY=${PYTHON:-python}
mkdir -p "$OUT" && cd "$OUT"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline CROSSLENS_HOME="$OUT/home"
PYTHONPATH=$HERE $PY -c "
import sys; sys.path.insert(0, '$HERE/tests')
from pathlib import Path
from test_cli_e2e import write_corpus
write_corpus(Path('.'))"
run() { PYTHONPATH=$HERE $PY -m crosslens "$@"; }
run suite build --corpus corpus.txt --eval pairs.jsonl --root my_suite --n-layers 1 --d-model 32 --train-steps 32 \
    --checkpoints 16 --seq-len 32 --batch-size 8 --bpe-vocab 400 > build.log 2>&1
run harvest --suite my_suite --text corpus.txt --hook blocks.0.hook_resid_post --n-snapshots 4 --n-tokens 2048 \
    --seq-len 32 --out store > harvest.log 2>&1
run train --store store --out run --d-sae 64 --n-steps 40 --batch-size 128 --checkpoint-every 0 > train.log 2>&1
for code in old new; do
  tree=$HERE; [ "$code" = old ] && tree=${OLD:?set OLD to the tree before issue 14}
  /usr/bin/time -f "%e s wall" env PYTHONPATH="$tree" $PY -m crosslens attribute --crosscoder run --task pairs.jsonl \
      --n-examples 64 --out "attr-$code.json" > "attr-$code.log" 2>&1
  echo "== $code"; grep -E "kept|pairs:|causal stage|metric [+-]|s wall" "attr-$code.log"
done
