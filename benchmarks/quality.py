"""Transfer quality of class visualizations: made with EfficientNet-Lite0, judged by Lite2.

Run: python benchmarks/quality.py [--recipes featvis lucid pixel] [--device cuda] [--grid docs/classes.png]
     python benchmarks/quality.py --classes benchmarks/hard_classes.txt --recipes ...  (the 8 classes
     the earlier defaults missed most, for comparing recipes quickly)
     python benchmarks/quality.py --equal-passes ...  (Lucid's recipe at the same budget as the others)

For every class in benchmarks/classes.txt (20 ImageNet class indices, one a line; it ships
with the repository), a 224 px visualization of that class logit is made with
EfficientNet-Lite0 (all classes in one batch, each image with its own class and its own
random transforms), then classified by EfficientNet-Lite2 at its own input size (260 px),
which never saw the optimization. Every recipe gets the same budget of forward+backward
passes per image (steps x views = 512 by default), except Lucid's, which is defined as
Lucent runs it, 256 single-view steps (256 passes), unless --equal-passes is given (then
512 x 1). Prints JSON and a table: per recipe, Lite2 top-1 and top-5, Lite0's own top-1,
passes per image and seconds per image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import time

import numpy as np
import torch
import torch.nn.functional as F

import featvis
from featvis.input_modifiers import Jitter, Noise, RandomAffine, RandomCrop, RandomFlip, RandomZoom
from featvis.losses import UnitPerImage
from featvis.params import FourierImage
from featvis.regularizers import TotalVariation

BUDGET = 512  # forward+backward passes per image
DEFAULT_CLASSES = Path(__file__).resolve().parent / "classes.txt"  # shipped with the repository


def lucid_transforms(generator: torch.Generator) -> list:
    """Lucid's standard_transforms as Lucent runs them: one random draw shared by the whole batch."""

    def shared(images: torch.Tensor, draw) -> torch.Tensor:
        return draw(images)

    def pad(images):
        return F.pad(images, [12] * 4, mode="constant", value=0.5)

    def jitter(d):
        def apply(images):
            dx, dy = (int(v) for v in torch.randint(0, d, (2,), generator=generator))
            h, w = images.shape[-2:]
            return images[..., dy : dy + h - d, dx : dx + w - d]

        return apply

    def scale(images):
        factor = [1 + (i - 5) / 50.0 for i in range(11)][int(torch.randint(0, 11, (1,), generator=generator))]
        size = [int(round(s * factor)) for s in images.shape[-2:]]
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)

    def rotate(images):
        angle = float(torch.randint(-10, 11, (1,), generator=generator)) * np.pi / 180
        theta = torch.tensor(
            [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0]], dtype=images.dtype
        )
        grid = F.affine_grid(
            theta[None].expand(images.shape[0], -1, -1).to(images.device),
            list(images.shape),
            align_corners=False,
        )
        return F.grid_sample(images, grid, align_corners=False)

    return [pad, jitter(8), scale, rotate, jitter(4)]


def fourier_decay(decay: float):
    """A Fourier parameterization factory with another spectrum decay."""

    def make(batch, channels, size, **kwargs):
        return FourierImage(batch, channels, size, decay=decay, **kwargs)

    return make


def recipes(generator: torch.Generator) -> dict[str, dict]:
    """Each recipe: keyword arguments of visualize_activation_with_losses plus a TV weight."""
    crops = [RandomCrop(area=(0.25, 1.0)), Jitter(0.03), Noise(0.05)]
    bigcrops = [RandomCrop(area=(0.1, 1.0)), Jitter(0.03), Noise(0.05)]  # the second default
    zoom = [RandomZoom((0.316, 1.3)), Jitter(0.03), Noise(0.05)]
    jitter_affine = [
        Jitter(0.04),
        RandomAffine(scale=(0.9, 1.1), degrees=10, translate=0.03),
        Noise(0.01),
    ]  # the first default
    return {
        "featvis": dict(),  # the library's defaults (the only recipe with the image average by default)
        "fourier-flip-zoom-4v-last": dict(
            method="fourier",
            input_modifiers=[RandomFlip(), *zoom],
            views=4,
            tv=1.0,
        ),  # the default without the image average
        "lucid": dict(
            method="fourier", input_modifiers=lucid_transforms(generator), views=1, tv=0.0, steps=256
        ),
        "pixel": dict(method="pixel", input_modifiers=[Jitter(16)], views=2, tv=1.0, lr=0.02),
        "fourier-std-2v": dict(method="fourier", input_modifiers=jitter_affine, views=2, tv=1.0),
        "fourier-crops-2v": dict(method="fourier", input_modifiers=crops, views=2, tv=1.0),
        "fourier-crops-2v-tv0": dict(method="fourier", input_modifiers=crops, views=2, tv=0.0),
        "fourier-crops-2v-tv3": dict(method="fourier", input_modifiers=crops, views=2, tv=3.0),
        "fourier-bigcrops-2v": dict(method="fourier", input_modifiers=bigcrops, views=2, tv=1.0),
        "fourier-bigcrops-2v-tv2": dict(method="fourier", input_modifiers=bigcrops, views=2, tv=2.0),
        "fourier-bigcrops-4v": dict(method="fourier", input_modifiers=bigcrops, views=4, tv=1.0),
        "fourier-bigcrops-4v-ema": dict(
            method="fourier", input_modifiers=bigcrops, views=4, tv=1.0, image_ema=0.9
        ),
        "fourier-flip-bigcrops-4v": dict(
            method="fourier", input_modifiers=[RandomFlip(), *bigcrops], views=4, tv=1.0
        ),
        "fourier-zoom-4v": dict(method="fourier", input_modifiers=zoom, views=4, tv=1.0),
        "fourier-bigcrops-rotate-4v": dict(
            method="fourier",
            input_modifiers=[
                RandomCrop(area=(0.1, 1.0)),
                RandomAffine(degrees=10),
                Jitter(0.03),
                Noise(0.05),
            ],
            views=4,
            tv=1.0,
        ),
        "fourier-flip-zoom-8v": dict(
            method="fourier", input_modifiers=[RandomFlip(), *zoom], views=8, tv=1.0
        ),
        "fourier-flip-zoom-8v-ema": dict(
            method="fourier", input_modifiers=[RandomFlip(), *zoom], views=8, tv=1.0, image_ema=0.9
        ),
        "fourier-flip-zoom-4v-tv0.5-ema": dict(
            method="fourier", input_modifiers=[RandomFlip(), *zoom], views=4, tv=0.5, image_ema=0.9
        ),
        "fourier-bigcrops-8v": dict(method="fourier", input_modifiers=bigcrops, views=8, tv=1.0),
        "fourier-bigcrops-8v-lr0.08": dict(
            method="fourier", input_modifiers=bigcrops, views=8, tv=1.0, lr=0.08
        ),
        "fourier-crops-noise0.1-2v": dict(
            method="fourier",
            input_modifiers=[RandomCrop(area=(0.25, 1.0)), Jitter(0.03), Noise(0.1)],
            views=2,
            tv=1.0,
        ),
        "fourier-crops-rotate-2v": dict(
            method="fourier",
            input_modifiers=[
                RandomCrop(area=(0.25, 1.0)),
                RandomAffine(degrees=10),
                Jitter(0.03),
                Noise(0.05),
            ],
            views=2,
            tv=1.0,
        ),
        "fourier-crops-4v": dict(method="fourier", input_modifiers=crops, views=4, tv=1.0),
        "fourier-affine-2v": dict(
            method="fourier",
            input_modifiers=[RandomAffine((0.7, 1.2), 15, 0.1), Noise(0.05)],
            views=2,
            tv=1.0,
        ),
        "fourier-crops-2v-lr0.1": dict(method="fourier", input_modifiers=crops, views=2, tv=1.0, lr=0.1),
        "fourier-decay1.5-crops-2v": dict(
            method=fourier_decay(1.5), input_modifiers=crops, views=2, tv=1.0, lr=0.05
        ),
        "maco-crops-2v": dict(method="maco", input_modifiers=crops, views=2, tv=0.0),
        "maco-crops-2v-lr1": dict(method="maco", input_modifiers=crops, views=2, tv=0.0, lr=1.0),
        "maco-crops-4v": dict(method="maco", input_modifiers=crops, views=4, tv=0.0),
    }


def run_recipe(name, recipe, lite0, classes, device, seed, budget, chunk, equal_passes=False):
    """All classes' images, `chunk` classes per batch (each image with its own class and transforms).

    A recipe with its own "steps" (Lucid's) keeps them at the default budget unless
    `equal_passes`; otherwise every recipe gets budget // views steps.
    """
    views = recipe.get("views", featvis.Settings.views)
    own_steps = budget == BUDGET and not equal_passes
    steps = recipe.get("steps", budget // views) if own_steps else budget // views
    kwargs = {k: v for k, v in recipe.items() if k not in ("tv", "steps")}
    kwargs["views"] = views
    if name != "featvis":
        kwargs.setdefault("image_ema", None)  # the recipes as measured: the last step's image
    start = time.perf_counter()
    images = []
    for first in range(0, len(classes), chunk):
        part = classes[first : first + chunk]
        loss = (
            UnitPerImage("_fc", part)
            + recipe.get("tv", featvis.visualization.DEFAULT_TV_WEIGHT) * TotalVariation()
        )
        images.append(
            featvis.visualize_activation_with_losses(
                lite0.model,
                loss,
                batch_size=len(part),
                size=224,
                max_iter=steps,
                preprocess=lite0.preprocess,
                seed=seed + first,
                device=device,
                progress=False,
                **kwargs,
            ).reshape(len(part), 224, 224, 3)
        )
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / len(classes)
    return np.concatenate(images), seconds, steps, views


def judge(zoo_model, images: np.ndarray, size: int, device) -> torch.Tensor:
    x = torch.tensor(images).permute(0, 3, 1, 2).float().to(device)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        return zoo_model.model.to(device)(zoo_model.preprocess(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["featvis", "lucid", "pixel"])
    parser.add_argument("--classes", type=Path, default=DEFAULT_CLASSES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=BUDGET, help="forward+backward passes per image")
    parser.add_argument(
        "--equal-passes",
        action="store_true",
        help="give Lucid's recipe the same budget as the others (default: its own 256 x 1)",
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="classes per batch (default: all on a GPU, 1 on a CPU, where small batches run fastest)",
    )
    parser.add_argument(
        "--grid", type=Path, default=None, help="save a 4x5 grid of the first recipe's images"
    )
    parser.add_argument(
        "--grid-dir", type=Path, default=None, help="save every recipe's grid as <recipe>.png here"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    classes = [int(line) for line in args.classes.read_text().split()]
    lite0, lite2 = featvis.zoo.efficientnet_lite0(), featvis.zoo.efficientnet_lite2()
    lite0.model.to(device)
    chunk = args.chunk or (len(classes) if device.type == "cuda" else 1)
    table = {}
    available = recipes(torch.Generator().manual_seed(args.seed))
    for name in args.recipes:
        images, seconds, steps, views = run_recipe(
            name, available[name], lite0, classes, device, args.seed, args.budget, chunk, args.equal_passes
        )
        target = torch.tensor(classes, device=device)[:, None]
        top5 = judge(lite2, images, lite2.image_size, device).topk(5).indices
        own = judge(lite0, images, lite0.image_size, device).argmax(1)
        table[name] = {
            "lite2_top1": float((top5[:, :1] == target).any(1).float().mean()),
            "lite2_top5": float((top5 == target).any(1).float().mean()),
            "lite0_top1": float((own == target[:, 0]).float().mean()),
            "seconds_per_image": seconds,
            "steps": steps,
            "views": views,
            "passes_per_image": steps * views,
            "classes_per_batch": chunk,
            "lite2_predictions": top5[:, 0].tolist(),
        }
        labels = [lite0.class_names[c] for c in classes]
        if args.grid is not None and name == args.recipes[0]:
            featvis.save_image(featvis.stitch_images(list(images), cols=5, labels=labels), args.grid)
        if args.grid_dir is not None:
            featvis.save_image(
                featvis.stitch_images(list(images), cols=5, labels=labels), args.grid_dir / f"{name}.png"
            )
        print(f"{name}: {table[name]['lite2_top1']:.2f} / {table[name]['lite2_top5']:.2f}", flush=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        json.dumps(
            {"device": device_name, "torch": torch.__version__, "classes": classes, "results": table},
            indent=2,
        )
    )
    print(
        f"\n{'recipe':20s} {'Lite2 top-1':>11s} {'Lite2 top-5':>11s} {'Lite0 top-1':>11s} {'passes':>7s} {'s/image':>8s}"
    )
    for name, row in table.items():
        print(
            f"{name:20s} {row['lite2_top1']:11.0%} {row['lite2_top5']:11.0%} {row['lite0_top1']:11.0%} "
            f"{row['passes_per_image']:7d} {row['seconds_per_image']:8.2f}"
        )


if __name__ == "__main__":
    main()
