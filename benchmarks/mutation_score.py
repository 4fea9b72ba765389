"""The mutation score of the last `benchmarks/mutation.sh` run, per module, and the surviving mutants.

Run: python benchmarks/mutation_score.py [--equivalent benchmarks/equivalent_mutants.txt] [--sample 0.15]
     python benchmarks/mutation_score.py --sample 0.15 --to-run   (the sampled mutants still to test)

Reads mutmut's results under mutants/. Score = killed / (all - equivalent), where killed
counts mutants a test failed on (timeouts and crashes count as killed: the mutant changed
what the tests saw) and "equivalent" lists mutants, one name per line followed by `#` and
the reason, that no test can kill because they do not change behaviour. Mutants that no
quick test reaches ("no tests") count as surviving. `--sample F` restricts everything to a
seeded random fraction F of each module's mutants (the same set every time for the same F
and --seed), for a score estimate when the full run is too long; the interval printed is
the 95% Wilson interval of the sampled score.
"""

from __future__ import annotations

import argparse
from collections import Counter
import json
import math
from pathlib import Path
import random

ROOT = Path(__file__).resolve().parents[1]
STATUS = {0: "survived", 1: "killed", 3: "killed", 5: "no tests", 33: "no tests", 36: "timeout"}
STATUS.update({-24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -9: "crash", -11: "crash"})
KILLED = {"killed", "timeout", "crash"}


def load_equivalent(path: Path) -> dict[str, str]:
    reasons = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, _, reason = line.partition("#")
            if name.strip():
                reasons[name.strip()] = reason.strip()
    return reasons


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion k / n."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--equivalent", type=Path, default=ROOT / "benchmarks/equivalent_mutants.txt")
    parser.add_argument("--sample", type=float, default=None, help="a fraction of each module's mutants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--to-run", action="store_true", help="print the mutants without a kill, and stop")
    args = parser.parse_args()
    equivalent = load_equivalent(args.equivalent)
    rows, survivors, to_run = [], [], []
    tree = ROOT / "mutants/src/featvis"
    for meta in sorted(tree.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if args.sample is not None:
            names = sorted(codes)
            chosen = random.Random(f"{args.seed}:{meta.name}").sample(names, round(args.sample * len(names)))
            codes = {name: codes[name] for name in sorted(chosen)}
        to_run += [name for name, code in codes.items() if STATUS.get(code) not in KILLED]
        counts = Counter()
        for name, code in codes.items():
            status = "not run" if code is None else STATUS.get(code, "suspicious")
            if name in equivalent:
                status = "equivalent"
            counts[status] += 1
            if status in ("survived", "no tests", "suspicious"):
                survivors.append((name, status))
        module = meta.relative_to(tree).as_posix().removesuffix(".py.meta").replace("/", ".")
        judged = sum(counts.values()) - counts["equivalent"] - counts["not run"]
        killed = sum(counts[s] for s in KILLED)
        rows.append((module, killed, judged, counts))
    if args.to_run:
        print("\n".join(to_run))
        return
    if args.sample is not None:
        print(f"random sample: {args.sample:.0%} of each module's mutants (seed {args.seed})")
    print(f"{'module':28s} {'killed':>7s} {'judged':>7s} {'score':>7s}  other")
    total_killed = total = 0
    for module, killed, judged, counts in rows:
        total_killed, total = total_killed + killed, total + judged
        other = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s not in KILLED)
        score = f"{killed / judged:.1%}" if judged else "-"
        print(f"{module:28s} {killed:7d} {judged:7d} {score:>7s}  {other}")
    if total:
        low, high = wilson(total_killed, total)
        print(
            f"{'all':28s} {total_killed:7d} {total:7d} {total_killed / total:7.1%}  (95%: {low:.1%}-{high:.1%})"
        )
    print(f"\nsurviving ({len(survivors)}):")
    for name, status in survivors:
        print(f"  {name}  [{status}]")


if __name__ == "__main__":
    main()
