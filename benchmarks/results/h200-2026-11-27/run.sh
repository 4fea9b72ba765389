#!/usr/bin/env bash
# One GPU session: the atlas sample (issue 16) and the 128-pass recipe sweep (issue 17).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch; print(torch.__version__)"
python3 benchmarks/atlas.py --device cuda > $OUT/atlas_512.txt 2>&1; tail -8 $OUT/atlas_512.txt
python3 benchmarks/atlas.py --device cuda --steps 32 > $OUT/atlas_128.txt 2>&1; tail -8 $OUT/atlas_128.txt
G=()
for v in 2 4 1; do for lr in 0.1 0.05 0.2; do for s in cosine constant; do G+=("grid:v=$v,lr=$lr,sched=$s"); done; done; done
G+=("grid:v=2,lr=0.1,sched=cosine,ema=0.8" "grid:v=2,lr=0.1,sched=cosine,ema=none" "grid:v=2,lr=0.1,sched=cosine,ema=0.95")
G+=("grid:v=2,lr=0.1,sched=cosine,zoom=0.4-1.2" "grid:v=2,lr=0.1,sched=cosine,zoom=0.25-1.0")
G+=("grid:v=2,lr=0.1,sched=cosine,decay=1.2" "grid:v=2,lr=0.1,sched=cosine,decay=0.8")
G+=("grid:v=2,lr=0.1,sched=cosine,tv=0.5" "grid:v=2,lr=0.1,sched=cosine,tv=2")
python3 benchmarks/quality.py --device cuda --budget 128 --seeds 0 1 2 3 --jsonl $OUT/q128.jsonl --recipes "${G[@]}" 2>&1 | grep -v "^ \|^{\|^}" | tail -40
python3 benchmarks/quality.py --device cuda --budget 512 --seeds 0 1 2 3 --jsonl $OUT/q512.jsonl --recipes featvis "grid:v=4,lr=0.1,sched=cosine" "grid:v=4,lr=0.05,sched=cosine" 2>&1 | grep -v "^ \|^{\|^}" | tail -8
