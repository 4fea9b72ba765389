"""Attention maps: featvis against pytorch-grad-cam and Captum (where installed), one run, one model.

EfficientNet-Lite0 and a batch of collages of two scikit-image photos (the cat of
``chelsea()``, class 285, and the espresso of ``coffee()``, class 967: Lite0's top-1 on
each photo alone), each photo on a known half, half the batch asking for the cat and half
for the espresso. Every library gets the same ImageNet-normalized tensor (featvis with
``input_range=None``) and the same layer (``--layer``, default ``_bn1``, the head's 1280
channels; pytorch-grad-cam cannot pick the second call of Lite0's shared ``_swish``). For
each method both have: maps per second on the batch, the share of the map on the object's
half, the pointing game, deletion and insertion areas (featvis.metrics, probabilities, the
same settings for every map), and the rank correlation of featvis's map with the anchor's
(median over the batch). Both libraries make one call for the batch with a class per image
(featvis: ``UnitPerImage``, a map per image and unit). With ``--repeat n`` each library is
timed n times, interleaved, and the medians are reported, with the load average; before
that each library runs each method ``--warmup`` times untimed (default 1: the first call of a
code path at a new batch shape costs several times a later one on the CPU, and the anchors'
model-as-is paths are warm from the earlier methods while featvis's fused ones are not).
featvis's timed calls still build their fused copy each time (the anchors need the model as
the user has it in between). Integrated Gradients runs the same rule at the same steps in both
libraries (``--quadrature``, default Gauss-Legendre, Captum's default), each returning its
completeness error (featvis ``return_delta=True``, Captum ``return_convergence_delta=True``, both
timed): the rows report it relative to score(input) - score(baseline), so the speed is compared
at equal accuracy. featvis is called through `featvis.integrated_gradients` there (the map is
the channel sum's absolute value, as Captum's).

    python benchmarks/attention.py                       # batch 16, 224 px, every method
    python benchmarks/attention.py --size 112 --methods gradcam,scorecam --batch 16
    python benchmarks/attention.py --methods integrated_gradients --quadrature riemann_middle  # the old rule
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
from PIL import Image
import torch

import featvis
from featvis import metrics

CAT, ESPRESSO = 285, 967
CAMS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "scorecam", "ablationcam"]
SALIENCY = ["vanilla", "integrated_gradients", "occlusion"]


def collages(batch: int, size: int):
    """(uint8 (B, H, W, 3), classes (B,), object masks (B, H, W)): the photos side by side."""
    from skimage import data

    half = size // 2
    cat, coffee = data.chelsea(), data.coffee()
    images, classes, masks = [], [], []
    for i in range(batch):
        shift = 2 * (i // 4)  # small crops make the images differ

        def piece(photo, shift=shift):
            wide = np.asarray(Image.fromarray(photo).resize((half + 16, size), Image.BILINEAR))
            return wide[:, shift : shift + half]

        cat_left = i % 4 < 2
        left, right = (piece(cat), piece(coffee)) if cat_left else (piece(coffee), piece(cat))
        target = CAT if i % 2 == 0 else ESPRESSO
        on_left = (target == CAT) == cat_left
        mask = np.zeros((size, 2 * half), bool)
        mask[:, :half] = on_left
        mask[:, half:] = not on_left
        images.append(np.concatenate([left, right], axis=1))
        classes.append(target)
        masks.append(mask)
    return np.stack(images), np.array(classes), np.stack(masks)


def relative_deltas(attributions: torch.Tensor, delta: torch.Tensor) -> list[float]:
    """Per image, the completeness error over score(input) - score(baseline) (= the sum - delta)."""
    sums = attributions.detach().double().flatten(1).sum(1)
    delta = delta.detach().double().view(-1)
    return (delta / (sums - delta)).tolist()


def featvis_maps(prepared, method, x, classes, args, deltas=None):
    """One featvis call for the batch: `UnitPerImage` gives each image its own class (a map per
    image and unit), as the anchors' one target per image. Integrated Gradients: the map is the
    channel sum's absolute value; its relative completeness errors go to `deltas`."""
    loss = featvis.UnitPerImage("_fc", [int(c) for c in classes])
    if method == "integrated_gradients":
        attributions, delta = featvis.integrated_gradients(
            prepared, loss, x, steps=args.steps, quadrature=args.quadrature, return_delta=True
        )
        if deltas is not None:
            deltas[:] = relative_deltas(attributions, delta)
        return attributions.sum(1).abs().numpy()
    if method in CAMS:
        return featvis.visualize_cam_with_losses(
            prepared, loss, x, method=method, penultimate_layer=args.layer
        )
    return featvis.visualize_saliency_with_losses(
        prepared,
        loss,
        x,
        method=method,
        steps=args.steps,
        window=args.window,
        stride=args.stride,
        percentile=None,
    )


def gradcam_library_maps(model, method, x, classes, layer):
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    kinds = {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "xgradcam": pgc.XGradCAM,
        "layercam": pgc.LayerCAM,
        "hirescam": pgc.HiResCAM,
        "eigencam": pgc.EigenCAM,
        "scorecam": pgc.ScoreCAM,
        "ablationcam": pgc.AblationCAM,
    }
    with kinds[method](model=model, target_layers=[model.get_submodule(layer)]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in classes])


def captum_maps(model, method, x, classes, args, deltas=None):
    from captum import attr

    target = torch.as_tensor(classes)
    if method == "vanilla":
        return attr.Saliency(model).attribute(x, target=target, abs=True).amax(1).numpy()
    if method == "integrated_gradients":
        ig = attr.IntegratedGradients(model)
        # the baseline featvis takes with input_range=None (zeros), the same rule and steps
        result, delta = ig.attribute(
            x,
            target=target,
            n_steps=args.steps,
            method=args.quadrature,
            internal_batch_size=32,
            return_convergence_delta=True,
        )
        if deltas is not None:
            deltas[:] = relative_deltas(result, delta)
        return result.sum(1).abs().detach().numpy()
    result = attr.Occlusion(model).attribute(
        x,
        target=target,
        sliding_window_shapes=(3, args.window, args.window),
        strides=(3, args.stride, args.stride),
        baselines=0,
        # as many rows per forward as featvis's default (256 at 224 px, 1024 at 112 px)
        perturbations_per_eval=max(1, min(1024, 256 * 224 * 224 // (x.shape[-2] * x.shape[-1])) // len(x)),
    )
    return result.sum(1).abs().numpy()


def eigencam_either_sign(prepared, maps, x, layer) -> np.ndarray:
    """Per image, the rank correlation of featvis's Eigen-CAM with pytorch-grad-cam's projection
    (its own `get_2d_projection`) taken with the better of its two signs, ReLU, resized as featvis
    resizes: whether the two take the same principal component, the sign aside."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    acts = prepared.layer_output(layer, x).float()
    projection = torch.from_numpy(get_2d_projection(acts.numpy()))[:, None]
    best = np.full(len(x), -1.0)
    for sign in (1, -1):
        up = torch.nn.functional.interpolate(
            (sign * projection).clamp(min=0), size=x.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0].numpy()
        best = np.maximum(best, metrics.rank_correlation(maps, up))
    return best


def scores(model, maps, x, classes, masks, args) -> dict:
    """Share on the object, pointing game, deletion and insertion areas (means over the batch)."""
    deletion, insertion = np.zeros(len(x)), np.zeros(len(x))
    for target in np.unique(classes):
        rows = np.flatnonzero(classes == target)
        kwargs = dict(steps=args.curve_steps, input_range=None)
        deletion[rows] = metrics.deletion(model, "_fc", int(target), x[rows], maps[rows], **kwargs).areas
        insertion[rows] = metrics.insertion(model, "_fc", int(target), x[rows], maps[rows], **kwargs).areas
    return {
        "share_on_object": float(metrics.share_on(maps, masks).mean()),
        "pointing_game": float(metrics.pointing_game(maps, masks).mean()),
        "deletion_area": float(deletion.mean()),
        "insertion_area": float(insertion.mean()),
    }


def timed(function):
    """(result as float32, wall-clock seconds, CPU seconds of this process). On a shared machine the
    CPU seconds move less with the other processes' load than the wall clock."""
    start, cpu = time.perf_counter(), time.process_time()
    result = function()
    return np.asarray(result, dtype=np.float32), time.perf_counter() - start, time.process_time() - cpu


def import_gradcam_library() -> bool:
    """Import pytorch-grad-cam; True when it is usable.

    pytorch-grad-cam imports torchvision at import time only for image utilities (transforms,
    a resize used by SESS); none of the CAM code timed here calls it. Where the installed
    torchvision cannot load (PyPI's torchvision 0.28.0 wheel is a CUDA build that needs
    libc10_cuda.so, absent with the CPU torch 2.13.0), a stand-in module with those names lets
    pytorch-grad-cam import; it says so on stdout.
    """
    import importlib
    import sys
    import types

    try:
        importlib.import_module("pytorch_grad_cam")
        return True
    except ImportError:
        return False
    except RuntimeError as err:  # torchvision's C extension does not match this torch
        for name in [
            n for n in sys.modules if n == "torchvision" or n.startswith(("torchvision.", "pytorch_grad_cam"))
        ]:
            del sys.modules[name]
        print(f"torchvision cannot load ({err}); pytorch-grad-cam imported with a stand-in torchvision")

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision is not usable here")

    stub = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    transforms.Compose = transforms.Normalize = transforms.ToTensor = unavailable
    functional.resize = unavailable
    transforms.functional, stub.transforms = functional, transforms
    sys.modules.update(
        {
            "torchvision": stub,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
        }
    )
    try:
        importlib.import_module("pytorch_grad_cam")
        return True
    except Exception as err:  # noqa: BLE001 - any failure means: benchmark featvis without it
        print(f"pytorch-grad-cam not usable: {err}")
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--methods", default=",".join(CAMS + SALIENCY))
    parser.add_argument("--steps", type=int, default=64, help="Integrated Gradients steps")
    parser.add_argument(
        "--quadrature",
        default="gausslegendre",
        choices=["gausslegendre", "riemann_middle"],
        help="Integrated Gradients' rule, for both libraries (Captum's names)",
    )
    parser.add_argument("--window", type=int, default=32, help="occlusion window (px)")
    parser.add_argument("--stride", type=int, default=16, help="occlusion stride (px)")
    parser.add_argument("--curve-steps", type=int, default=8, help="deletion/insertion steps")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="time each library this many times, interleaved (featvis, anchor, featvis, ...); report the medians",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed calls of each library per method before the timed ones (the first call of a"
        " code path at a new batch shape costs several times a later one on the CPU)",
    )
    parser.add_argument("--layer", default="_bn1", help="the CAM layer, for both libraries")
    parser.add_argument("--no-metrics", action="store_true", help="skip share/pointing/deletion/insertion")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    lite0 = featvis.zoo.efficientnet_lite0()
    model = lite0.model.eval()
    images, classes, masks = collages(args.batch, args.size)
    x = lite0.preprocess(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    with torch.no_grad():
        top1 = model(x).argmax(1).numpy()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()},"
        f" load average {os.getloadavg()}"
    )
    print(
        f"batch {args.batch} at {args.size} px; Lite0's top-1 on the collages: {np.bincount(top1).argmax()}"
    )

    has_pgc = import_gradcam_library()
    try:
        import captum  # noqa: F401

        has_captum = True
    except ImportError:
        has_captum = False
    print(
        f"pytorch-grad-cam: {'yes' if has_pgc else 'not installed'}; Captum: {'yes' if has_captum else 'not installed'}"
    )

    results = []
    with featvis.PreparedModel(model, input_range=None) as prepared:
        featvis.visualize_cam(prepared, "_fc", CAT, x[:1], penultimate_layer=args.layer)  # probe, warm up
        for method in args.methods.split(","):
            row = {"method": method, "load_before": os.getloadavg()[0]}
            featvis_deltas, anchor_deltas = [], []  # Integrated Gradients' relative completeness errors
            anchor = None
            if method in CAMS and has_pgc:
                anchor = (
                    "pytorch-grad-cam",
                    lambda method=method: gradcam_library_maps(model, method, x, classes, args.layer),
                )
            elif method in SALIENCY and has_captum:
                anchor = (
                    "captum",
                    lambda method=method, deltas=anchor_deltas: captum_maps(
                        model, method, x, classes, args, deltas
                    ),
                )
            seconds, other_seconds, cpu, other_cpu = [], [], [], []
            for _ in range(args.warmup):
                featvis_maps(prepared, method, x, classes, args)
                if anchor is not None:
                    prepared.close()
                    anchor[1]()
            for _ in range(args.repeat):  # interleaved, so both see the same machine load
                maps, took, used = timed(
                    lambda method=method, deltas=featvis_deltas: featvis_maps(
                        prepared, method, x, classes, args, deltas
                    )
                )
                seconds.append(took)
                cpu.append(used)
                if anchor is not None:
                    prepared.close()  # the anchors need the model as the user has it (weights not frozen)
                    other, took, used = timed(anchor[1])
                    other_seconds.append(took)
                    other_cpu.append(used)
            row["load_after"] = os.getloadavg()[0]
            row["featvis_seconds"] = seconds
            row["featvis_cpu_seconds"] = cpu
            row["featvis_maps_per_s"] = len(x) / float(np.median(seconds))
            if method == "integrated_gradients":
                row["steps"], row["quadrature"] = args.steps, args.quadrature
                row["featvis_relative_delta"] = featvis_deltas
                row["anchor_relative_delta"] = anchor_deltas
            if not args.no_metrics:
                row["featvis"] = scores(prepared, maps, x, classes, masks, args)
            if anchor is not None:
                row["anchor"] = anchor[0]
                row["anchor_seconds"] = other_seconds
                row["anchor_maps_per_s"] = len(x) / float(np.median(other_seconds))
                row["speedup"] = float(np.median(other_seconds) / np.median(seconds))
                row["speedup_per_pair"] = [a / f for a, f in zip(other_seconds, seconds)]
                row["anchor_cpu_seconds"] = other_cpu
                row["speedup_cpu"] = float(np.median(other_cpu) / np.median(cpu))
                row["rank_correlation_median"] = float(np.median(metrics.rank_correlation(maps, other)))
                row["rank_correlation_min"] = float(np.min(metrics.rank_correlation(maps, other)))
                if method == "eigencam":
                    same = eigencam_either_sign(prepared, maps, x, args.layer)
                    row["rank_correlation_either_sign_median"] = float(np.median(same))
                    row["rank_correlation_either_sign_min"] = float(np.min(same))
                if not args.no_metrics:
                    row["anchor_scores"] = scores(prepared, other, x, classes, masks, args)
            print(json.dumps(row), flush=True)
            results.append(row)
    print()
    print(
        "| method | featvis maps/s | anchor | anchor maps/s | speed-up (median; per pair) | speed-up, CPU time |"
        " rank corr. (median, min) | IG completeness error, abs. (median / max; fv; anchor) |"
        " share on object (fv / anchor) | pointing (fv / anchor) | deletion (fv / anchor) |"
        " insertion (fv / anchor) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        fv, an = row.get("featvis", {}), row.get("anchor_scores", {})

        def pair(key, fv=fv, an=an):
            if not fv:
                return "-"
            return f"{fv[key]:.3f}" + (f" / {an[key]:.3f}" if an else "")

        corr = (
            f"{row['rank_correlation_median']:.3f}, {row['rank_correlation_min']:.3f}"
            if "anchor" in row
            else "-"
        )
        errors = "-"
        if "featvis_relative_delta" in row:

            def spread(values):
                values = np.abs(values)
                return f"{np.median(values):.2%} / {values.max():.2%}" if len(values) else "-"

            errors = f"{spread(row['featvis_relative_delta'])}; {spread(row['anchor_relative_delta'])}"
        if "rank_correlation_either_sign_median" in row:
            corr += (
                f" (either sign: {row['rank_correlation_either_sign_median']:.3f},"
                f" {row['rank_correlation_either_sign_min']:.3f})"
            )
        print(
            f"| {row['method']} | {row['featvis_maps_per_s']:.3g} | {row.get('anchor', '-')} | "
            f"{row.get('anchor_maps_per_s', float('nan')):.3g} | {row.get('speedup', float('nan')):.2f}x"
            f"{'; ' + ', '.join(f'{v:.2f}' for v in row['speedup_per_pair']) if 'speedup_per_pair' in row else ''} | "
            f"{row.get('speedup_cpu', float('nan')):.2f}x | "
            f"{corr} | {errors} | {pair('share_on_object')} | {pair('pointing_game')} | {pair('deletion_area')} | "
            f"{pair('insertion_area')} |"
        )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=1)


if __name__ == "__main__":
    main()
