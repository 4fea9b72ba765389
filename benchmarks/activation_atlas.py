"""The activation atlas of a late EfficientNet-Lite0 block over scikit-image's photographs and
their augmentations: the time of each stage, the cells drawn, and cells per minute against single
units per minute (one `visualize_activation` call per unit) at the same size and steps.

    python benchmarks/activation_atlas.py                                   # _blocks.15, 12 x 12 grid
    python benchmarks/activation_atlas.py --crops 20 --docs docs/examples/activation_atlas_blocks15.png

Prints JSON and a short table; with --docs, also writes the atlas picture there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

import featvis
from featvis.data.sources import sample_photos
from featvis.site import activation_atlas as atlas_module


def augmented_photos(crops: int, size: int, seed: int) -> np.ndarray:
    """Each photograph (color ones only) and `crops` random crops of it (a third to all of its
    shorter side), half of them mirrored, all resized to `size`: (N, size, size, 3) uint8."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for photo in sample_photos()[0]:
        if photo.ndim != 3:
            continue
        picture = Image.fromarray(photo[..., :3])
        w, h = picture.size
        out.append(np.asarray(picture.resize((size, size), Image.BILINEAR)))
        for _ in range(crops):
            side = int(rng.uniform(1 / 3, 1.0) * min(w, h))
            x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
            crop = picture.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
            out.append(np.asarray(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layer", default="_blocks.15")
    parser.add_argument("--crops", type=int, default=20, help="random crops per photograph")
    parser.add_argument("--grid", type=int, default=12)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--min-count", type=int, default=4)
    parser.add_argument("--icon-size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--single-units", type=int, default=4, help="single-unit calls timed for comparison")
    parser.add_argument("--docs", default=None, help="write the atlas picture here")
    args = parser.parse_args()
    lite0 = featvis.zoo.efficientnet_lite0()
    data = augmented_photos(args.crops, 224, seed=0)
    stages = {}
    original = {name: getattr(atlas_module, name) for name in ("_sample", "_layout", "_render")}

    def timed(name):
        def run(*a, **k):
            start = time.perf_counter()
            try:
                return original[name](*a, **k)
            finally:
                stages[name.strip("_")] = time.perf_counter() - start

        return run

    for name in original:
        setattr(atlas_module, name, timed(name))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = featvis.activation_atlas(
            lite0.model,
            args.layer,
            data,
            out=out,
            grid=args.grid,
            samples=args.samples,
            min_count=args.min_count,
            icon_size=args.icon_size,
            max_iter=args.steps,
            batch_size=args.batch_size,
            preprocess=lite0.preprocess,
            class_names=lite0.class_names,
        )
    total = time.perf_counter() - start
    if args.docs:
        featvis.save_image(result.image, args.docs)
    single = time.perf_counter()
    for unit in range(args.single_units):
        featvis.visualize_activation(
            lite0.model,
            args.layer,
            unit,
            size=args.icon_size,
            max_iter=args.steps,
            seed=unit,
            preprocess=lite0.preprocess,
        )
    single = (time.perf_counter() - single) / args.single_units
    row = {
        "layer": args.layer,
        "images": len(data),
        "samples": len(result.coordinates),
        "layout": result.layout,
        "grid": args.grid,
        "cells": len(result.cells),
        "seconds": {**{k: round(v, 1) for k, v in stages.items()}, "total": round(total, 1)},
        "cells_per_minute": round(60 * len(result.cells) / stages["render"], 2),
        "single_units_per_minute": round(60 / single, 2),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load {os.getloadavg()[0]:.1f}",
    }
    print(json.dumps(row))
    print(f"\n{'figure':28s} value")
    for key in ("images", "samples", "layout", "cells", "cells_per_minute", "single_units_per_minute"):
        print(f"{key:28s} {row[key]}")
    for key, value in row["seconds"].items():
        print(f"{'seconds: ' + key:28s} {value}")


if __name__ == "__main__":
    main()
