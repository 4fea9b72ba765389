"""Atlas throughput: units per minute for a sample of Lite0's layers, and the whole atlas extrapolated.

Run: python benchmarks/atlas.py [--device cuda] [--layers _conv_stem _blocks.5 _blocks.15 _fc]
     [--units 8] [--batch-size N] [--steps 128]

For each sampled layer (a spread over the depth) it makes `--units` units with
`featvis.atlas` at the default settings (128 one-view steps, 128 px) into a fresh
folder and times them; the whole Lite0 atlas (4,120 units: stem, 16 blocks, head,
classifier) is extrapolated from the per-unit time of the sampled layer nearest in
estimated cost (multiply-accumulates up to the layer, as the atlas's shards use).
It also reports how evenly `featvis.atlas.shard` splits the whole plan over N
processes (the slowest rank's share of the estimated cost): N processes finish in
about (that share) x (one process's time).

``--model resnet50`` (torchvision's ResNet-50, random weights; torchvision imported through
the tests' shim for the CPU build of torch) plans its default layers (conv1, the 16
bottlenecks, fc: the plan's per-layer cost and unit count are printed), samples
``--layers`` (default conv1, layer1.0, layer3.0, fc) and extrapolates as above; with
``--measure-ranks 2 3`` it then runs the same slice (``--slice-layers``, at ``--slice-steps``)
under ``torchrun --nproc-per-node R`` for each R and reports each rank's measured time (the
sum of its batches' seconds in ``timings/``): the measured balance of the shards.

Prints JSON and a short table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import time

import torch

import featvis
from featvis.atlas import default_layers, layer_costs, plan, shard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", nargs="*", default=["_conv_stem", "_blocks.5", "_blocks.15", "_fc"])
    parser.add_argument("--units", type=int, default=8, help="units made per sampled layer")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the atlas's (4 CPU, 32 GPU)")
    parser.add_argument("--steps", type=int, default=featvis.Settings.max_iter)
    parser.add_argument("--views", type=int, default=featvis.Settings.views)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--worlds", type=int, nargs="*", default=[1, 2, 4, 8])
    parser.add_argument("--model", choices=["lite0", "resnet50"], default="lite0")
    parser.add_argument("--measure-ranks", type=int, nargs="*", default=[], help="e.g. 2 3 (CPU)")
    parser.add_argument("--slice-layers", nargs="*", default=["conv1", "layer1.0"])
    parser.add_argument("--slice-steps", type=int, default=4)
    parser.add_argument("--slice-size", type=int, default=64)
    args = parser.parse_args()
    if args.model == "resnet50" and args.layers == parser.get_default("layers"):
        args.layers = ["conv1", "layer1.0", "layer3.0", "fc"]
    device = torch.device(args.device)
    lite0 = featvis.zoo.efficientnet_lite0() if args.model == "lite0" else _resnet50()
    model = lite0.model.to(device)
    batch = args.batch_size or (32 if device.type == "cuda" else 4)
    units = max(args.units, batch) if device.type == "cuda" else args.units
    layers = default_layers(model)
    with featvis.PreparedModel(model, preprocess=lite0.preprocess, device=device) as prepared:
        costs = layer_costs(prepared, layers, (args.size, args.size))
        counts = {layer: prepared.unit_count(layer, (args.size, args.size)) for layer in layers}
    per_unit = {}
    for layer in args.layers:
        options = dict(size=args.size, batch_size=batch, max_iter=args.steps, progress=False)
        options.update(views=args.views, preprocess=lite0.preprocess, device=device)
        # a warm-up batch (first use of each kernel), then the timed units in a fresh folder
        featvis.visualize_layer(
            model, layer, list(range(min(batch, counts[layer]))), **{**options, "max_iter": 2}
        )
        with tempfile.TemporaryDirectory() as out:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            featvis.atlas(model, out, [layer], **options) if counts[layer] <= units else _some_units(
                model, out, layer, units, options
            )
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            per_unit[layer] = (time.perf_counter() - start) / min(units, counts[layer])
    # extrapolate: each layer's per-unit time from the sampled layer nearest in estimated cost
    sampled = sorted(per_unit, key=lambda layer: costs[layer])
    whole = 0.0
    for layer in layers:
        nearest = min(sampled, key=lambda s: abs(costs[s] - costs[layer]))
        whole += counts[layer] * per_unit[nearest] * costs[layer] / costs[nearest]
    batches = plan(counts, costs, batch)
    total_cost = sum(b.cost for b in batches)
    balance = {
        world: max(sum(batches[i].cost for i in share) for share in shard(batches, world)) / total_cost
        for world in args.worlds
    }
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()}",
        "torch": torch.__version__,
        "steps": args.steps,
        "views": args.views,
        "size": args.size,
        "batch_size": batch,
        "seconds_per_unit": per_unit,
        "units_per_minute": {layer: 60 / s for layer, s in per_unit.items()},
        "whole_atlas_units": sum(counts.values()),
        "whole_atlas_extrapolated_s": whole,
        "slowest_rank_share": balance,
    }
    result["model"] = args.model
    result["plan"] = {layer: {"units": counts[layer], "cost": costs[layer]} for layer in layers}
    if args.measure_ranks:
        result["measured_ranks"] = _measure(args)
    print(json.dumps(result, indent=2))
    print(f"\n{'layer':14s} {'units':>6s} {'cost (MMAC+px)':>15s}")
    for layer in layers:
        print(f"{layer:14s} {counts[layer]:6d} {costs[layer] / 1e6:15.1f}")
    print(f"\n{'layer':14s} {'s/unit':>8s} {'units/min':>10s}")
    for layer, seconds in per_unit.items():
        print(f"{layer:14s} {seconds:8.2f} {60 / seconds:10.1f}")
    print(
        f"whole {args.model} atlas ({sum(counts.values())} units): {whole / 60:.1f} min on one process (extrapolated)"
    )
    for world, share in balance.items():
        print(
            f"  {world} processes: slowest share {share:.3f} -> {whole * share / 60:.1f} min ({1 / share:.2f}x)"
        )


class _Bundle:
    def __init__(self, model, preprocess):
        self.model, self.preprocess = model, preprocess


RESNET = """
import sys

import torch

sys.path.insert(0, {tests!r})
from torchvision_models import allow_torchvision_import

allow_torchvision_import()
import torchvision


def make():
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval()
"""


def _resnet50() -> _Bundle:
    """torchvision's ResNet-50 with random weights (seed 0), through the tests' shim for CPU torch."""
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    namespace: dict = {}
    exec(RESNET.format(tests=tests), namespace)  # noqa: S102 - the same code the measured runs import
    return _Bundle(namespace["make"](), featvis.zoo.Normalize())


def _measure(args) -> dict:
    """Each rank's time (sum of its batches' seconds) for the same slice under torchrun, per world size."""
    folder = Path(tempfile.mkdtemp(prefix="atlas-ranks-"))
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    (folder / "bench_resnet.py").write_text(RESNET.format(tests=tests))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]),
    }
    measured = {}
    for world in args.measure_ranks:
        out = folder / f"ranks{world}"
        command = [
            str(Path(sys.executable).with_name("torchrun")),
            "--standalone",
            "--nproc-per-node",
            str(world),
        ]
        command += ["-m", "featvis", "atlas", "--model", "bench_resnet:make", "--preprocess", "imagenet"]
        command += [arg for layer in args.slice_layers for arg in ("--layer", layer)]
        command += ["--steps", str(args.slice_steps), "--views", "1", "--size", str(args.slice_size)]
        command += ["--batch-size", "4", "--out", str(out)]
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=3600)
        wall = time.perf_counter() - start
        per_rank: dict[int, float] = {}
        units: dict[int, int] = {}
        for log in out.glob("timings/*.jsonl"):
            for entry in map(json.loads, log.read_text().splitlines()):
                per_rank[entry["rank"]] = per_rank.get(entry["rank"], 0.0) + entry["seconds"]
                units[entry["rank"]] = units.get(entry["rank"], 0) + entry["units"]
        times = [per_rank.get(r, 0.0) for r in range(world)]
        measured[world] = {
            "wall_s": wall,
            "rank_seconds": times,
            "rank_units": [units.get(r, 0) for r in range(world)],
            "slowest_over_mean": max(times) / (sum(times) / world),
        }
    return measured


def _some_units(model, out, layer, units, options):
    """The first `units` units of a layer: a model whose layer is narrowed is not the same, so run
    visualize_layer on those units as the atlas would (one batch plan, the same settings)."""
    featvis.visualize_layer(model, layer, list(range(units)), seed=0, **options)


if __name__ == "__main__":
    main()
