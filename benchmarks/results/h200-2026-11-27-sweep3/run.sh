#!/usr/bin/env bash
# Third GPU sweep for issue 17: the objective (log-softmax beside the logit), coarse-to-fine
# spectra and random crops, around the one-view 128-pass recipe (quality="fast").
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch; print(torch.__version__)"
F="grid:v=1,lr=0.05,ema=0.95"
G=("$F,lsm=1" "$F,lsm=3" "$F,lsm=10,logit=0" "$F,ctf=32" "$F" "$F,crop=0.1" "$F,lsm=0.3" "$F,ctf=64"
   "$F,b1=0.8,lsm=1" "$F,ctf=32,lsm=1" "$F,crop=0.25" "$F,ctf=32,ctf0=0.2" "grid:v=1,lr=0.07,ema=0.95,lsm=1"
   "$F,lsm=1,zoom=0.4-1.2" "grid:v=1,lr=0.05,ema=0.97" "$F,b1=0.8" "$F,tv=0,lsm=1" "$F,ctf=16,lsm=1"
   "$F,lsm=3,b1=0.8" "$F,crop=0.1,lsm=1" "$F,ctf=64,lsm=3" "grid:v=2,lr=0.05,ema=0.95,lsm=1"
   "grid:v=1,lr=0.03,ema=0.95,lsm=3" "$F,lsm=30,logit=0" "$F,ctf=32,lsm=3,b1=0.8")
python3 benchmarks/quality.py --device cuda --budget 128 --seeds 0 1 2 3 --jsonl $OUT/q128c.jsonl --grid-dir $OUT --recipes "${G[@]}" 2>&1 | grep -v "^ \|^{\|^}" | tail -30
