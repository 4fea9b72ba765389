#!/usr/bin/env bash
# Fifth sweep for issue 17 (one lent GPU): the skip gradient, a leaky backward pass through
# the ReLUs (bp=), the zoom range and their mixes, each at seeds 0-11 on the 20 public classes;
# then the two best and the default again at seeds 12-23.
# Run from the repository root with the EfficientNet wheels in .whl/; writes to $OUT.
# Small test on a CPU: DEVICE=cpu BUDGET=4 SEEDS="0 1" MORE="2" CLASSES=/tmp/two.txt OUT=/tmp/o bash run.sh
set -u
DEVICE=${DEVICE:-cuda} BUDGET=${BUDGET:-128} SEEDS=${SEEDS:-"0 1 2 3 4 5 6 7 8 9 10 11"}
MORE=${MORE:-"12 13 14 15 16 17 18 19 20 21 22 23"} CLASSES=${CLASSES:-benchmarks/classes.txt}
if [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
  nvidia-smi --query-gpu=name --format=csv,noheader
fi
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
$PY -c "import torch; print(torch.__version__)"
R=(quality=fast "grid:sgm=0.5" "grid:bp=0.3" "grid:bp=0.1" "grid:zoom=0.5-1.3" "grid:sgm=0.5,zoom=0.5-1.3"
   "grid:bp=1" "grid:sgm=0.7" "grid:ctf=32" "grid:sgm=0.5,bp=0.3" "grid:b1=0.2")
$PY benchmarks/quality.py --device $DEVICE --classes $CLASSES --budget $BUDGET --seeds $SEEDS \
  --jsonl $OUT/sweep.jsonl --recipes "${R[@]}" 2>&1 | grep -v "^ \|^{\|^}" | tail -14
mapfile -t BEST < <($PY - "$OUT/sweep.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
rows = [r for r in rows if r["recipe"] != "quality=fast"]
rows.sort(key=lambda r: -(r["lite2_top1"] + r["lite2_top5"]))
print("\n".join(r["recipe"] for r in rows[:2]))
PYEOF
)
echo "again at more seeds: ${BEST[*]}"
$PY benchmarks/quality.py --device $DEVICE --classes $CLASSES --budget $BUDGET --seeds $MORE \
  --jsonl $OUT/more.jsonl --recipes "${BEST[@]}" quality=fast 2>&1 | grep -v "^ \|^{\|^}" | tail -5
