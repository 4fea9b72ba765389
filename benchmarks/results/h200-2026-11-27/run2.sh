#!/usr/bin/env bash
# Second GPU session: the 128-pass recipe sweep around the one-view recipe (issue 17).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
B="grid:v=1,lr=0.05"
G=("$B,zoom=0.4-1.2" "$B,zoom=0.5-1.1" "$B,zoom=0.316-1.0" "$B,zoom=0.5-1.3" "grid:v=1,lr=0.03" "grid:v=1,lr=0.07"
   "grid:v=1,lr=0.04" "$B,ema=0.95" "$B,ema=none" "$B,ema=0.8" "$B,noise=0.02" "$B,noise=0.1" "$B,jitter=0.0" "$B,jitter=0.06"
   "$B,tv=0" "$B,tv=2" "$B,res=112" "$B,res=160" "$B,sd=0.001" "$B,b2=0.99" "$B,b1=0.95" "$B,b1=0.8" "$B,decay=0.9" "$B,flip=0"
   "grid:v=2,lr=0.05,zoom=0.4-1.2" "grid:v=2,lr=0.07,zoom=0.4-1.2" "grid:v=1,lr=0.07,sched=cosine,zoom=0.4-1.2"
   "grid:v=1,method=maco,tv=0" "grid:v=1,method=maco,lr=1.0,tv=0" "$B,zoom=0.4-1.2,res=160" "$B,zoom=0.4-1.2,ema=0.95"
   "$B,zoom=0.4-1.2,b2=0.99" "$B,zoom=0.4-1.2,noise=0.02")
python3 benchmarks/quality.py --device cuda --budget 128 --seeds 0 1 2 3 --jsonl $OUT/q128b.jsonl --recipes "${G[@]}" 2>&1 | grep -v "^ \|^{\|^}" | tail -36
python3 benchmarks/quality.py --device cuda --budget 256 --seeds 0 1 2 3 --jsonl $OUT/q256.jsonl --recipes featvis "$B" "grid:v=2,lr=0.05" 2>&1 | grep -v "^ \|^{\|^}" | tail -4
python3 benchmarks/quality.py --device cuda --budget 32 --seeds 0 1 2 3 --jsonl $OUT/q32.jsonl --recipes "$B" "grid:v=1,lr=0.1" "grid:v=1,lr=0.1,sched=cosine" "grid:v=1,lr=0.2,sched=cosine" --grid-dir $OUT 2>&1 | grep -v "^ \|^{\|^}" | tail -5
