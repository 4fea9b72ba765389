"""Speed of featvis against the physical limit and the naive loop, with EfficientNet-Lite0.

Run: python benchmarks/speed.py [--quick] [--device cuda] [--autocast bf16] [--channels-last]

1. limit: a bare forward+backward (weights frozen) of the network up to the target
   layer, per image-step, at batch 1 and at featvis's batch size; also for the
   graph featvis runs (batch norms and zero pads folded into the convolutions,
   `featvis.fusion`, with channels-last input where featvis uses it);
2. naive: what existing libraries do: the full network every step, weights with
   gradients, one unit at a time, a 128 px image upsampled to 224;
3. featvis: `visualize_layer`, per image-step;
4. a whole layer: all 112 channels of `_blocks.10`, 32 steps each, 224 px, wall time
   for the naive loop and for featvis, and featvis's peak memory;
5. quality: the activation reached by batched and one-at-a-time images (8 units,
   32 steps at featvis's default views per step: the images users get).

Prints JSON with every figure and a short table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F

import featvis

LAYER, SIZE, STEPS = "_blocks.10", 224, 32


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def up_to_layer(model, x):
    """EfficientNet-Lite0 run by hand up to and including `_blocks.10`."""
    x = model._swish(model._bn0(model._conv_stem(x)))
    for block in model._blocks[:11]:
        x = block(x)
    return x


def fused_model(model, device, preprocess):
    """The copy of the model featvis runs: batch norms and zero pads folded into convolutions."""
    model.eval()
    x = preprocess(255 * torch.rand(1, 3, SIZE, SIZE, device=device))
    with torch.no_grad():
        calls = featvis.targets.probe(model, x).calls
        return featvis.fusion.fused_copy(model, x, calls, keep={LAYER})


def limit_per_image_step(model, batch, device, repeats, channels_last, autocast, forward=up_to_layer):
    """Median seconds per image of a forward+backward of `forward(model, x)`, weights frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(batch, 3, SIZE, SIZE, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    times = []
    for i in range(repeats + 2):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            out = forward(model, x)
        out[:, :batch].float().mean().backward()
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    for p in model.parameters():
        p.requires_grad_(True)
    return float(np.median(times)) / batch


def naive_unit(model, unit, steps, device, normalize):
    """The loop existing libraries run: full forward, weight gradients, small image upsampled."""
    for p in model.parameters():
        p.requires_grad_(True)
    captured = {}
    handle = model._blocks[10].register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    pixels = (0.5 + 0.1 * torch.randn(1, 3, 128, 128, device=device)).requires_grad_(True)
    optimizer = torch.optim.Adam([pixels], lr=0.05)
    try:
        for _ in range(steps):
            x = F.interpolate(pixels, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            model(normalize(x * 255))
            loss = -captured["out"][:, unit].mean()
            optimizer.zero_grad()
            model.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    return pixels


def timed(function, device):
    sync(device)
    start = time.perf_counter()
    value = function()
    sync(device)
    return time.perf_counter() - start, value


def peak_memory_gib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 channels instead of 112")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", choices=["bf16", "fp16"], default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="featvis batch (default: automatic)")
    parser.add_argument(
        "--channels-last", action="store_true", help="featvis and the limit use channels-last input"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.autocast]
    torch.manual_seed(0)
    lite0 = featvis.zoo.efficientnet_lite0()
    model = lite0.model.to(device)
    units = list(range(16 if args.quick else 112))
    kwargs = dict(
        preprocess=lite0.preprocess,
        size=SIZE,
        max_iter=STEPS,
        views=1,  # one forward+backward per image and step, like the limit and the naive loop
        seed=0,
        progress=False,
        device=device,
        autocast=autocast,
        channels_last=True if args.channels_last else None,  # None: featvis's default
    )

    with featvis.PreparedModel(model, preprocess=lite0.preprocess, device=device) as prepared:
        most = args.batch_size or featvis.visualization.auto_batch_size(prepared, (SIZE, SIZE))
    # the batch featvis runs: the layer split into equal batches of at most `most` units
    batch = max(len(chunk) for chunk in featvis.visualization.layer_batches(units, most))
    repeats = 5 if device.type == "cpu" else 20
    limit_1 = limit_per_image_step(model, 1, device, repeats, args.channels_last, autocast)
    limit_b = limit_per_image_step(model, batch, device, repeats, args.channels_last, autocast)
    fused = fused_model(model, device, lite0.preprocess)
    fused_channels_last = True  # featvis's layout for Lite0 by default, on the CPU and on CUDA
    limit_fused = limit_per_image_step(fused, batch, device, repeats, fused_channels_last, autocast)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # warm-up, like the limit's: the same batches, so that cuDNN and cuFFT have met their shapes
    featvis.visualize_layer(model, LAYER, units, batch_size=most, **{**kwargs, "max_iter": 2})
    featvis_time, _ = timed(
        lambda: featvis.visualize_layer(model, LAYER, units, batch_size=most, **kwargs), device
    )
    peak = peak_memory_gib(device)
    featvis_per_step = featvis_time / (len(units) * STEPS)

    naive_units = units if not args.quick or device.type == "cuda" else units[:4]
    naive_time, _ = timed(
        lambda: [naive_unit(model, u, STEPS, device, lite0.preprocess) for u in naive_units], device
    )
    naive_per_step = naive_time / (len(naive_units) * STEPS)
    naive_layer = naive_per_step * len(units) * STEPS

    # quality: the default views per step (what users get), 32 steps, batched and one by one
    quality_units = units[:8]
    quality_kwargs = {**kwargs, "views": featvis.Settings.views}
    batched = featvis.visualize_layer(model, LAYER, quality_units, batch_size=batch, **quality_kwargs)
    one_by_one = featvis.visualize_layer(model, LAYER, quality_units, batch_size=1, **quality_kwargs)
    reached_batch = featvis.activations_reached(
        model, LAYER, quality_units, batched, preprocess=lite0.preprocess, device=device
    )
    reached_single = featvis.activations_reached(
        model, LAYER, quality_units, one_by_one, preprocess=lite0.preprocess, device=device
    )
    difference = float(
        np.mean(np.abs(reached_batch - reached_single) / np.maximum(np.abs(reached_single), 1e-6))
    )

    result = {
        "machine": platform.node(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "autocast": args.autocast,
        "channels_last": args.channels_last,
        "layer": LAYER,
        "size": SIZE,
        "steps": STEPS,
        "units": len(units),
        "batch_size": batch,
        "batch_size_most": most,
        "limit_s_per_image_step_batch1": limit_1,
        "limit_s_per_image_step_batch": limit_b,
        "featvis_s_per_image_step": featvis_per_step,
        "featvis_over_limit_same_batch": featvis_per_step / limit_b,
        "limit_fused_s_per_image_step_batch": limit_fused,
        "limit_fused_channels_last": fused_channels_last,
        "featvis_over_fused_limit_same_batch": featvis_per_step / limit_fused,
        "naive_s_per_image_step": naive_per_step,
        "naive_units_timed": len(naive_units),
        "layer_featvis_s": featvis_time,
        "layer_naive_s": naive_layer,
        "layer_naive_measured": len(naive_units) == len(units),
        "layer_speedup": naive_layer / featvis_time,
        "featvis_peak_memory_gib": peak,
        "batched_vs_single_activation_difference": difference,
        "reached_batched": reached_batch.tolist(),
        "reached_single": reached_single.tolist(),
    }
    print(json.dumps(result, indent=2))
    print(f"\n{'figure':42s} value")
    for key in (
        "limit_s_per_image_step_batch1",
        "limit_s_per_image_step_batch",
        "featvis_s_per_image_step",
        "featvis_over_limit_same_batch",
        "limit_fused_s_per_image_step_batch",
        "featvis_over_fused_limit_same_batch",
        "naive_s_per_image_step",
        "layer_naive_s",
        "layer_featvis_s",
        "layer_speedup",
        "featvis_peak_memory_gib",
        "batched_vs_single_activation_difference",
    ):
        print(f"{key:42s} {result[key]:.4g}")


if __name__ == "__main__":
    main()
