"""Where a featvis step's time goes: the network, the image, the transforms, the set-up.

Run: python benchmarks/step_costs.py [--device cuda] [--batch 56] [--compile] [--profile FILE]

With EfficientNet-Lite0 and one unit of `_blocks.10` per image (224 px, one view per
step, like `speed.py`), it times the bare forward+backward up to the layer (the
model as given and the fused copy featvis runs), then featvis's default and
variants that each leave one piece out. A variant's time per step is the
difference between a long and a short run divided by the extra steps, so the
per-call set-up (probe, fused copy and its check, image initialization) is timed
apart. `--compile` also times the fused network under `torch.compile` (and how long
compiling takes); `--profile FILE` writes the profiler's table of one default run's
kernels.

Prints JSON and a short table.
"""

from __future__ import annotations

import argparse
import json

from speed import LAYER, SIZE, fused_model, limit_per_image_step, timed, up_to_layer
import torch

import featvis
from featvis.input_modifiers import Jitter, Noise, RandomFlip, RandomZoom

SHORT, LONG = 4, 36

VARIANTS = {
    "default": {},
    "no transforms": {"input_modifiers": []},
    "no zoom": {"input_modifiers": [RandomFlip(0.5), Jitter(0.03), Noise(0.05)]},
    "no noise": {"input_modifiers": [RandomFlip(0.5), RandomZoom((0.316, 1.3)), Jitter(0.03)]},
    "no jitter": {"input_modifiers": [RandomFlip(0.5), RandomZoom((0.316, 1.3)), Noise(0.05)]},
    "no flip": {"input_modifiers": [RandomZoom((0.316, 1.3)), Jitter(0.03), Noise(0.05)]},
    "no total variation": {"tv_weight": 0.0},
    "no image average": {"image_ema": None},
    "pixel image": {"method": "pixel"},
    "not fused": {"fuse": False},
    "channels-first": {"channels_last": False},
    "bf16 autocast": {"autocast": torch.bfloat16},
    "bf16 autocast, channels-first": {"autocast": torch.bfloat16, "channels_last": False},
}


def compiled_limit(fused, batch, device, repeats):
    """The fused network up to the layer under torch.compile: (s per step, s to compile)."""
    compiled = torch.compile(lambda x: up_to_layer(fused, x))
    x = torch.rand(batch, 3, SIZE, SIZE, device=device, requires_grad=True)
    compile_s, _ = timed(lambda: compiled(x).mean().backward(), device)
    step = limit_per_image_step(fused, batch, device, repeats, False, None, lambda _, x: compiled(x))
    return step * batch, compile_s


def run(model, lite0, batch, device, steps, options):
    options = dict(options)
    tv_weight = options.pop("tv_weight", featvis.visualization.DEFAULT_TV_WEIGHT)
    loss = featvis.losses.UnitPerImage(LAYER, range(batch)) + tv_weight * featvis.TotalVariation()
    kwargs = dict(
        batch_size=batch,
        size=SIZE,
        views=1,
        max_iter=steps,
        seed=0,
        progress=False,
        device=device,
        preprocess=lite0.preprocess,
        return_result=True,
    )
    seconds, _ = timed(
        lambda: featvis.visualize_activation_with_losses(model, loss, **{**kwargs, **options}), device
    )
    return seconds


def layer_setup(model, lite0, batch, device, batches):
    """A whole layer of `batches` batches in one `visualize_layer` call: (s per step of a batch, set-up s).

    featvis prepares the model (probe, fused copy and its check) once per call; the set-up
    is the time of a short and a long run with the steps taken out.
    """
    units = list(range(batch * batches))
    kwargs = dict(batch_size=batch, size=SIZE, views=1, seed=0, progress=False, device=device)
    kwargs["preprocess"] = lite0.preprocess
    featvis.visualize_layer(model, LAYER, units, max_iter=2, **kwargs)  # warm-up
    short, _ = timed(lambda: featvis.visualize_layer(model, LAYER, units, max_iter=SHORT, **kwargs), device)
    long, _ = timed(lambda: featvis.visualize_layer(model, LAYER, units, max_iter=LONG, **kwargs), device)
    step = (long - short) / ((LONG - SHORT) * batches)
    return step, short - SHORT * batches * step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: featvis's automatic size")
    parser.add_argument("--profile", default=None, help="write the kernel table of a default run here")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--compile", action="store_true", help="also time the fused network compiled")
    parser.add_argument(
        "--layer-batches", type=int, default=3, help="batches of the whole-layer set-up run (0: skip it)"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    lite0 = featvis.zoo.efficientnet_lite0()
    model = lite0.model.to(device)
    with featvis.PreparedModel(model, preprocess=lite0.preprocess, device=device) as prepared:
        batch = args.batch or featvis.visualization.auto_batch_size(prepared, (SIZE, SIZE))
    repeats = 5 if device.type == "cpu" else 20
    limit = limit_per_image_step(model, batch, device, repeats, False, None) * batch
    fused = fused_model(model, device, lite0.preprocess)
    # featvis feeds the fused copy channels-last input on CPUs and CUDA GPUs
    limit_fused = limit_per_image_step(fused, batch, device, repeats, True, None) * batch
    with torch.no_grad():  # does the fused copy compute what the model does, on this device?
        x = lite0.preprocess(255 * torch.rand(1, 3, SIZE, SIZE, device=device))
        difference = featvis.fusion.relative_difference(
            {LAYER: up_to_layer(model.eval(), x)}, {LAYER: up_to_layer(fused, x)}
        )
    compiled = compiled_limit(fused, batch, device, repeats) if args.compile else (None, None)
    rows = {}
    for name in args.variants:
        try:
            run(model, lite0, batch, device, 2, VARIANTS[name])  # warm-up: first use of a layout or kernel
            short = run(model, lite0, batch, device, SHORT, VARIANTS[name])
            long = run(model, lite0, batch, device, LONG, VARIANTS[name])
        except Exception as err:  # one variant failing on some device leaves the others' figures
            print(f"{name}: {type(err).__name__}: {err}")
            continue
        step = (long - short) / (LONG - SHORT)
        rows[name] = {"step_s": step, "setup_s": short - SHORT * step, "step_over_limit": step / limit}
    layer_step, layer_setup_s = (
        layer_setup(model, lite0, batch, device, args.layer_batches) if args.layer_batches else (None, None)
    )
    result = {
        "whole_layer_batches": args.layer_batches,
        "whole_layer_step_s": layer_step,
        "whole_layer_setup_s": layer_setup_s,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch": batch,
        "limit_step_s": limit,
        "fused_limit_step_s": limit_fused,
        "fused_relative_difference": difference,
        "compiled_fused_limit_step_s": compiled[0],
        "compile_s": compiled[1],
        "fused_tolerance": featvis.fusion.tolerance(device),
        "variants": rows,
    }
    print(json.dumps(result, indent=2))
    print(f"\nbatch {batch}: limit {limit * 1e3:.2f} ms/step, fused limit {limit_fused * 1e3:.2f} ms/step")
    print(
        f"fused copy vs model: relative difference {difference:.2g} (featvis accepts up to {result['fused_tolerance']:g})"
    )
    if args.compile:
        print(f"compiled fused limit {compiled[0] * 1e3:.2f} ms/step, compiling took {compiled[1]:.1f} s")
    print(f"{'variant':30s} {'step ms':>9s} {'set-up ms':>10s} {'/ limit':>8s}")
    for name, row in rows.items():
        print(
            f"{name:30s} {row['step_s'] * 1e3:9.2f} {row['setup_s'] * 1e3:10.1f} {row['step_over_limit']:8.2f}"
        )
    if args.layer_batches:
        print(
            f"whole layer, {args.layer_batches} batches of {batch} in one visualize_layer call: set-up "
            f"{layer_setup_s * 1e3:.1f} ms in all (once, not per batch), {layer_step * 1e3:.2f} ms per step"
        )
    if args.profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            run(model, lite0, batch, device, 8, {})
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        with open(args.profile, "w") as f:
            f.write(profiler.key_averages().table(sort_by=sort, row_limit=60, max_name_column_width=70))


if __name__ == "__main__":
    main()
