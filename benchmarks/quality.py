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
import functools
import json
from pathlib import Path
import time

import numpy as np
import torch
import torch.nn.functional as F

import featvis
from featvis.backprop_modifiers import leaky
from featvis.input_modifiers import Jitter, Noise, RandomAffine, RandomCrop, RandomFlip, RandomZoom
from featvis.losses import Loss, UnitPerImage
from featvis.optimizer import QUALITY
from featvis.params import CoarseToFineImage, FourierImage
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


class LowResolution(FourierImage):
    """A Fourier image made at `resolution` px and resized to the asked size (fewer parameters)."""

    def __init__(self, batch, channels, size, *, resolution=112, **kwargs):
        super().__init__(batch, channels, (resolution, resolution), **kwargs)
        self.target = size

    def __call__(self):
        return F.interpolate(super().__call__(), size=self.target, mode="bilinear", align_corners=False)


class ClassScore(Loss):
    """Image i maximizes ``logit + weight * log_softmax`` of class ``units[i]`` at "_fc".

    weight 0 is the plain logit; a large weight is nearly the log-probability alone.
    """

    def __init__(self, units, weight: float, logit: float = 1.0):
        self.units, self.weight, self.logit = list(units), weight, logit

    def layers(self):
        return ("_fc",)

    def __call__(self, ctx):
        act = ctx.activation("_fc")
        units = torch.tensor(self.units, device=act.device)[ctx.image_of_row()]
        chosen = act.gather(1, units[:, None])[:, 0]
        return -(self.logit * chosen + self.weight * (chosen - act.logsumexp(1)))


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
    presets = {
        f"quality={name}": dict(
            quality=name,
            views=featvis.Settings.take({"quality": name}).views,
            steps=featvis.Settings.take({"quality": name}).max_iter,
        )
        for name in QUALITY
    }  # the named presets (quality="fast" ...), each at its own number of passes
    return {
        **presets,
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


def grid_recipe(spec: str) -> dict:
    """A recipe written out in its name: ``grid:v=2,lr=0.1,sched=cosine,ema=0.8,tv=1,zoom=0.316-1.3``.

    Keys: v (views), lr, sched (a `featvis.optimizer.SCHEDULES` name), ema (a decay or
    "none"), tv, decay (the Fourier spectrum's), zoom (RandomZoom's side range), noise,
    jitter, flip (0 or 1), method, crop (RandomCrop's smallest area, instead of the zoom),
    ctf (coarse to fine: the spectrum opens over that many steps, from ctf0's radius),
    lsm (the weight of the class's log-softmax beside its logit), logit (the logit's
    weight, default 1), sgm (`Settings.skip_gradient`), bp (the share of the gradient let
    through where a ReLU is off, `featvis.backprop_modifiers.leaky`; "none": plain
    gradients). Anything left out is the library's default.
    """
    options = dict(item.split("=", 1) for item in spec.split(":", 1)[1].split(",") if item)
    recipe: dict = {}
    if "v" in options:
        recipe["views"] = int(options["v"])
    if "lr" in options:
        recipe["lr"] = float(options["lr"])
    if "sched" in options:
        recipe["lr_schedule"] = options["sched"]
    if "ema" in options:
        recipe["image_ema"] = None if options["ema"] == "none" else float(options["ema"])
    if "tv" in options:
        recipe["tv"] = float(options["tv"])
    if "decay" in options:
        recipe["method"] = fourier_decay(float(options["decay"]))
    if "method" in options:
        recipe["method"] = options["method"]
    if "res" in options or "sd" in options:
        resolution, sd = int(options.get("res", 0)), float(options.get("sd", 0.01))

        def make(batch, channels, size, **kwargs):
            if resolution:
                return LowResolution(batch, channels, size, resolution=resolution, sd=sd, **kwargs)
            return FourierImage(batch, channels, size, sd=sd, **kwargs)

        make.default_lr = FourierImage.default_lr
        recipe["method"] = make
    if "ctf" in options:  # steps to open over: a share of the run once its steps are known
        recipe["coarse_to_fine"] = (int(options["ctf"]), float(options.get("ctf0", 0.1)))
    if "lsm" in options or "logit" in options:
        recipe["objective"] = (float(options.get("lsm", 0)), float(options.get("logit", 1)))
    if "b1" in options or "b2" in options:
        b1, b2 = featvis.Settings.betas
        recipe["betas"] = (float(options.get("b1", b1)), float(options.get("b2", b2)))
    if "sgm" in options:
        recipe["skip_gradient"] = float(options["sgm"])
    if "bp" in options:
        recipe["backprop_modifier"] = None if options["bp"] == "none" else leaky(float(options["bp"]))
    if {"zoom", "noise", "jitter", "flip", "crop"} & set(options):
        low, high = (float(v) for v in options.get("zoom", "0.316-1.3").split("-"))
        first = RandomCrop((float(options["crop"]), 1.0)) if "crop" in options else RandomZoom((low, high))
        modifiers = [first, Jitter(float(options.get("jitter", 0.03)))]
        modifiers.append(Noise(float(options.get("noise", 0.05))))
        if options.get("flip", "1") == "1":
            modifiers.insert(0, RandomFlip())
        recipe["input_modifiers"] = modifiers
    return recipe


def run_recipe(name, recipe, lite0, classes, device, seed, budget, chunk, equal_passes=False):
    """All classes' images, `chunk` classes per batch (each image with its own class and transforms).

    A recipe with its own "steps" (Lucid's) keeps them at the default budget unless
    `equal_passes`; otherwise every recipe gets budget // views steps.
    """
    views = recipe.get("views", featvis.Settings.views)
    own_steps = budget == BUDGET and not equal_passes
    steps = recipe.get("steps", budget // views) if own_steps else budget // views
    kwargs = {k: v for k, v in recipe.items() if k not in ("tv", "steps", "objective", "coarse_to_fine")}
    if "coarse_to_fine" in recipe:
        opening_steps, start = recipe["coarse_to_fine"]
        kwargs["method"] = functools.partial(CoarseToFineImage, opening=opening_steps / steps, start=start)
    kwargs["views"] = views
    if name != "featvis" and not name.startswith(("grid:", "quality=")):
        kwargs.setdefault("image_ema", None)  # the recipes as measured: the last step's image,
        kwargs.setdefault("backprop_modifier", None)  # plain gradients
    start = time.perf_counter()
    images = []
    for first in range(0, len(classes), chunk):
        part = classes[first : first + chunk]
        objective = (
            ClassScore(part, *recipe["objective"]) if "objective" in recipe else UnitPerImage("_fc", part)
        )
        loss = objective + recipe.get("tv", featvis.visualization.DEFAULT_TV_WEIGHT) * TotalVariation()
        image = featvis.visualize_activation_with_losses(
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
        images.append(image)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / len(classes)
    return np.concatenate(images), seconds, steps, views


def judge(zoo_model, images: np.ndarray, size: int, device) -> torch.Tensor:
    x = torch.tensor(images).permute(0, 3, 1, 2).float().to(device)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        return zoo_model.model.to(device)(zoo_model.preprocess(x))


def evaluate(name, recipe, lite0, lite2, classes, device, seed, args, chunk) -> dict:
    """One recipe at one seed: its images judged by Lite2 (top-1, top-5) and by Lite0."""
    images, seconds, steps, views = run_recipe(
        name, recipe, lite0, classes, device, seed, args.budget, chunk, args.equal_passes
    )
    target = torch.tensor(classes, device=device)[:, None]
    top5 = judge(lite2, images, lite2.image_size, device).topk(5).indices
    own = judge(lite0, images, lite0.image_size, device).argmax(1)
    row = {
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
    return row, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=["featvis", "lucid", "pixel"],
        help="names from recipes(), or grid:KEY=VALUE,... (see grid_recipe)",
    )
    parser.add_argument("--classes", type=Path, default=DEFAULT_CLASSES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--seeds", "--seed", type=int, nargs="+", default=[0], help="each recipe at each seed; means"
    )
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
        "--grid", type=Path, default=None, help="save a 4x5 grid of the first recipe's images (first seed)"
    )
    parser.add_argument(
        "--grid-dir", type=Path, default=None, help="save every recipe's grid as <recipe>.png here"
    )
    parser.add_argument(
        "--jsonl", type=Path, default=None, help="append each recipe's result here as it ends"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    classes = [int(line) for line in args.classes.read_text().split()]
    lite0, lite2 = featvis.zoo.efficientnet_lite0(), featvis.zoo.efficientnet_lite2()
    lite0.model.to(device)
    chunk = args.chunk or (len(classes) if device.type == "cuda" else 1)
    labels = [lite0.class_names[c] for c in classes]
    # a warm-up call (first use of every kernel), so that the first recipe's time is not inflated
    featvis.visualize_activation(
        lite0.model, "_fc", classes[0], max_iter=2, preprocess=lite0.preprocess, device=device, progress=False
    )
    table = {}
    for name in args.recipes:
        runs = []
        for seed in args.seeds:
            available = recipes(torch.Generator().manual_seed(seed))
            recipe = grid_recipe(name) if name.startswith("grid:") else available[name]
            row, images = evaluate(name, recipe, lite0, lite2, classes, device, seed, args, chunk)
            runs.append({"seed": seed, **row})
            if seed == args.seeds[0]:
                grid = featvis.stitch_images(list(images), cols=5, labels=labels)
                if args.grid is not None and name == args.recipes[0]:
                    featvis.save_image(grid, args.grid)
                if args.grid_dir is not None:
                    featvis.save_image(grid, args.grid_dir / f"{name.replace(':', '_')}.png")
        keys = ("lite2_top1", "lite2_top5", "lite0_top1", "seconds_per_image")
        table[name] = {
            **{key: float(np.mean([run[key] for run in runs])) for key in keys},
            "passes_per_image": runs[0]["passes_per_image"],
            "seeds": runs,
        }
        if args.jsonl is not None:
            with args.jsonl.open("a") as file:
                file.write(json.dumps({"recipe": name, **table[name]}) + "\n")
        print(f"{name}: {table[name]['lite2_top1']:.4f} / {table[name]['lite2_top5']:.4f}", flush=True)
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
            f"{name:20s} {row['lite2_top1']:11.2%} {row['lite2_top5']:11.2%} {row['lite0_top1']:11.2%} "
            f"{row['passes_per_image']:7d} {row['seconds_per_image']:8.2f}"
        )


if __name__ == "__main__":
    main()
