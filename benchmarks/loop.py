"""300 consecutive visualization calls on one model: hooks, memory and time must not creep.

Run: python benchmarks/loop.py [--calls 300] [--size 64] [--steps 8]

Uses the embedded EfficientNet-Lite0 (a different `_blocks.10` channel each call).
Reports the forward hooks left on the model, the resident memory growth between
call 20 and the last call, and the mean time of the first 20 and the last 20 calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import featvis


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hook_count(model) -> int:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, n, {})) for m in model.modules() for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    lite0 = featvis.zoo.efficientnet_lite0()
    times, memory = [], []
    for call in range(args.calls):
        start = time.perf_counter()
        featvis.visualize_activation(
            lite0.model,
            "_blocks.10",
            call % 112,
            preprocess=lite0.preprocess,
            size=args.size,
            max_iter=args.steps,
            views=1,
            seed=call,
            progress=False,
        )
        times.append(time.perf_counter() - start)
        memory.append(resident_mib())
    first, last = sum(times[:20]) / 20, sum(times[-20:]) / 20
    result = {
        "machine": platform.node(),
        "calls": args.calls,
        "size": args.size,
        "steps": args.steps,
        "hooks_left": hook_count(lite0.model),
        "rss_mib_after_call_20": memory[19],
        "rss_mib_after_last_call": memory[-1],
        "rss_growth_after_call_20": memory[-1] / memory[19] - 1,
        "mean_s_first_20": first,
        "mean_s_last_20": last,
        "last_over_first": last / first,
    }
    print(json.dumps(result, indent=2))
    print(
        f"\nhooks left {result['hooks_left']}, RSS growth after call 20: {result['rss_growth_after_call_20']:+.1%}, "
        f"last 20 / first 20 time: {result['last_over_first']:.3f}"
    )


if __name__ == "__main__":
    main()
