#!/usr/bin/env bash
# Mutation testing of featvis's core against the quick suite, with mutmut 3.
#
#   .venv/bin/pip install -e ".[test,mutation]"
#   bash benchmarks/mutation.sh --fresh            # every module, from scratch, then the score
#   bash benchmarks/mutation.sh                    # go on: only mutants without a result yet
#   bash benchmarks/mutation.sh "featvis.losses*"  # re-test these mutants (e.g. survivors after new tests)
#   bash benchmarks/mutation.sh --sample 0.15      # a seeded 15% of each module's mutants (an estimate)
#   bash benchmarks/mutation.sh --score            # only print the score of what has run
#
# What is mutated and which tests run: [tool.mutmut] in pyproject.toml (targets, losses,
# optimizer, backprop_modifiers, grad_modifiers, attention, fusion, prepared, units, cam_methods,
# rng, params; the quick suite,
# `-m "not slow and not awaiting_fix"`). mutmut maps each mutated function to the tests
# that call it and runs only those for its mutants, JOBS at a time (default: the CPU count),
# one torch thread each. Results go to mutants/ (ignored by git); after a code or test change,
# a run re-tests what changed. Progress goes to mutants.log. `.venv/bin/mutmut show NAME` prints one mutant's diff.
# How to read the score: benchmarks/RESULTS.md, "Mutation testing".
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS="${JOBS:-$(nproc)}"  # before OMP_NUM_THREADS is set: nproc obeys it
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [[ "${1:-}" == "--fresh" ]]; then
    rm -rf mutants
    shift
fi
SCORE=()
if [[ "${1:-}" == "--sample" ]]; then
    SCORE=(--sample "$2")
    [[ -d mutants ]] || .venv/bin/mutmut run "nothing" > /dev/null 2>&1 || true  # generates the mutants
    mapfile -t names < <(.venv/bin/python benchmarks/mutation_score.py --sample "$2" --to-run)
    set -- "${names[@]}"
    [[ $# -gt 0 ]] || set -- --score
fi
if [[ "${1:-}" != "--score" ]]; then
    .venv/bin/mutmut run --max-children "$JOBS" "$@" > mutants.log 2>&1 || { tail -c 3000 mutants.log; exit 1; }
    tr '\r' '\n' < mutants.log | grep -v '^\s*$' | tail -n 3
fi
.venv/bin/python benchmarks/mutation_score.py "${SCORE[@]}"
