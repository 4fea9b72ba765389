#!/usr/bin/env bash
# Sixth sweep for issue 17 (one lent GPU): the leaky backward pass's share around the new
# default's 0.1, and the narrower zoom beside it, at seeds 0-11 on the 20 public classes.
# Run from the repository root with the EfficientNet wheels in .whl/; writes to $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
python3 benchmarks/quality.py --device cuda --budget 128 --seeds 0 1 2 3 4 5 6 7 8 9 10 11 \
  --jsonl $OUT/share.jsonl --recipes "grid:bp=0.05" "grid:bp=0.15" "grid:bp=0.07" "grid:bp=0.13" \
  "grid:zoom=0.5-1.3" 2>&1 | grep -v "^ \|^{\|^}" | tail -8
