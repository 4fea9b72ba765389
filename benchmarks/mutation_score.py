"""The mutation score of the last `benchmarks/mutation.sh` run, per module, and the surviving mutants.

Run: python benchmarks/mutation_score.py [--equivalent benchmarks/equivalent_mutants.txt]

Reads mutmut's results under mutants/. Score = killed / (all - equivalent), where killed
counts mutants a test failed on (timeouts and crashes count as killed: the mutant changed
what the tests saw) and "equivalent" lists mutants, one name per line followed by `#` and
the reason, that no test can kill because they do not change behaviour. Mutants that no
quick test reaches ("no tests") count as surviving.
"""

from __future__ import annotations

import argparse
from collections import Counter
import json
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--equivalent", type=Path, default=ROOT / "benchmarks/equivalent_mutants.txt")
    args = parser.parse_args()
    equivalent = load_equivalent(args.equivalent)
    rows, survivors = [], []
    for meta in sorted((ROOT / "mutants/src/featvis").glob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter()
        for name, code in codes.items():
            status = "not run" if code is None else STATUS.get(code, "suspicious")
            if name in equivalent:
                status = "equivalent"
            counts[status] += 1
            if status in ("survived", "no tests", "suspicious"):
                survivors.append((name, status))
        module = meta.name.removesuffix(".py.meta")
        judged = sum(counts.values()) - counts["equivalent"] - counts["not run"]
        killed = sum(counts[s] for s in KILLED)
        rows.append((module, killed, judged, counts))
    print(f"{'module':20s} {'killed':>7s} {'judged':>7s} {'score':>7s}  other")
    total_killed = total = 0
    for module, killed, judged, counts in rows:
        total_killed, total = total_killed + killed, total + judged
        other = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s not in KILLED)
        score = f"{killed / judged:.1%}" if judged else "-"
        print(f"{module:20s} {killed:7d} {judged:7d} {score:>7s}  {other}")
    if total:
        print(f"{'all':20s} {total_killed:7d} {total:7d} {total_killed / total:7.1%}")
    print(f"\nsurviving ({len(survivors)}):")
    for name, status in survivors:
        print(f"  {name}  [{status}]")


if __name__ == "__main__":
    main()
