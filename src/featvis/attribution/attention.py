"""Attention maps: where in an image the model looks for a class or a unit.

Saliency (vanilla, guided, rectified, SmoothGrad), Integrated Gradients, occlusion,
the CAM family (Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM, HiRes-CAM, Score-CAM,
Ablation-CAM, Eigen-CAM; see `featvis.cam_methods`) and guided Grad-CAM, with the same
losses, grad modifiers and backprop modifiers as activation maximization. Every
function takes a batch of images and returns one map per image, resized to the input
and normalized to [0, 1] on its own; with a loss that gives each image its own unit
(`UnitPerImage`), one map per image and unit, for every method. Any map can be smoothed
over noisy copies and over flips and zooms. ``input_range=None`` takes tensors ready
for the model.

Examples:
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> cam = featvis.visualize_cam(lite0.model, "_fc", 285, "cat.jpg", preprocess=lite0.preprocess)
    >>> featvis.save_image(featvis.overlay(cat, cam[0]), "cam.png")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math
import numbers
import warnings

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from featvis.attribution.cam_methods import (
    CamContext,
    ContextMethod,
    ablationcam,
    eigencam,
    gradcam,
    gradcam_plus_plus,
    hirescam,
    layercam,
    scorecam,
    xgradcam,
)
from featvis.errors import (
    FeatvisError,
    FeatvisValueError,
    FeatvisWarning,
    NonFiniteError,
    bad_type,
    bad_value,
    check_int,
    check_number,
    choose,
    close_matches,
)
from featvis.image import to_unit_tensor
from featvis.model import fusion, tokens
from featvis.model.prepared import PreparedModel, preparing
from featvis.model.targets import LayerSpec
from featvis.optvis import backprop_modifiers, grad_modifiers
from featvis.optvis.losses import ActivationMaximization, Loss, LossContext, as_losses
from featvis.rng import Streams, derive_key, seed_or_fresh

CamMethod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | ContextMethod

CAM_METHODS: dict[str, CamMethod] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "xgradcam": xgradcam,
    "layercam": layercam,
    "hirescam": hirescam,
    "scorecam": scorecam,
    "ablationcam": ablationcam,
    "eigencam": eigencam,
}

SALIENCY_METHODS = ("vanilla", "integrated_gradients", "occlusion")

# Integrated Gradients' rules for the path integral, by Captum's names: Gauss-Legendre (the default,
# Captum's too) and the midpoint Riemann sum (featvis's rule before it; Captum's method="riemann_middle").
QUADRATURES = ("gausslegendre", "riemann_middle")

# Vanilla saliency runs the fused copy (batch norms folded, channels-last) when its passes hold
# at least this many pixels (images x height x width x noisy copies x views): building and
# checking the copy costs a few one-image forwards per call. Measured on the CPU (Lite0, one
# thread, forward and backward of 16 images, median of 3-8 calls): at 224 px the fused copy took
# 0.71 s of CPU with its building, the model as it is 1.0 s; at 112 px the fused copy 0.22 s,
# the model as it is 0.20-0.23 s (channels-last input, with its check, 0.27 s).
FUSED_VANILLA_PIXELS = 8 * 224 * 224


def _rows_per_forward(method, images: torch.Tensor, batch_size: int | None) -> int:
    """`batch_size`, or by default 64 rows, on the CPU for Score-CAM `fusion.chunk_rows`."""
    if batch_size is not None:
        return batch_size
    return fusion.chunk_rows(images, 64) if method is scorecam else 64


def register_cam(name: str, method: CamMethod) -> None:
    """Add a CAM method: a function (activations, gradients) -> map, both (N, C, H, W), map (N, H, W),
    or a `ContextMethod` (a function of a `CamContext`, for methods that run the model).

    Examples:
        >>> register_cam("gradxact", lambda a, g: F.relu((a * g).sum(1)))
        >>> featvis.visualize_cam(model, "fc", 3, image, method="gradxact")
    """
    if not isinstance(name, str) or not name:
        raise bad_type("name", name, "a non-empty str")
    if not callable(method):
        raise bad_type("method", method, "a function (activations, gradients) -> map or a ContextMethod")
    CAM_METHODS[name] = method


def _gradients(
    prepared: PreparedModel,
    loss: Loss,
    images: torch.Tensor,
    *,
    backprop_modifier=None,
    extra_layer: LayerSpec | None = None,
    model_space: bool = False,
):
    """Gradients of the score (minus the losses) w.r.t. the images (with `model_space`: w.r.t. the
    model input, after `input_range` and `preprocess`), and the extra layer's output and gradient.

    Backprop modifiers see the gradient of the score, the quantity being
    maximized, so 'guided' passes what increases the class, as its definition says.
    """
    terms = [(t, w) for t, w in loss.terms if w != 0]
    rule = backprop_modifiers.get(backprop_modifier)
    prepared.probe(images)
    targets = prepared.resolve_all(layer for term, _ in terms for layer in term.layers())
    extra = prepared.resolve(extra_layer, "penultimate_layer") if extra_layer is not None else None
    capture = prepared.capture([*targets.values(), *([extra] if extra else [])])
    images = images.detach().clone().requires_grad_(True)
    with backprop_modifiers.modify_backprop(rule):
        x = prepared.model_input(images)
        if model_space and x is not images:
            x.retain_grad()
        activations = capture.run(prepared.model, x)
        extra_out = activations[extra.key] if extra else None
        raw_extra = capture.raw_outputs[extra.key] if extra else None
        if raw_extra is not None:
            raw_extra.retain_grad()  # the tensor on the path to the loss, not a channels-first view
        ctx = LossContext(images=images, views=1, activations=activations, targets=targets)
        score = _row_scores(ctx, terms).sum()
        if not score.requires_grad:
            raise FeatvisValueError("the losses do not depend on the input image")
        score.backward()
    if not torch.isfinite(images.grad).all():
        raise NonFiniteError("the gradient of the losses is NaN or infinite for this input")
    grad = x.grad.to(images.dtype) if model_space and x is not images else images.grad
    extra_grad = None
    if raw_extra is not None and raw_extra.grad is not None:
        extra_grad = raw_extra.grad if raw_extra is extra_out else raw_extra.grad.movedim(-1, 1)
        extra_grad = extra_grad.float()  # maps are computed in float32 whatever the model's dtype
    return grad, (extra_out.detach().float() if extra_out is not None else None), extra_grad


def input_gradients(
    model: nn.Module | PreparedModel,
    losses,
    seed_input,
    *,
    backprop_modifier: str | Callable | None = None,
    **conventions,
) -> torch.Tensor:
    """d(-loss)/d(image) for each image, in the units of `input_range`, as (B, C, H, W), unnormalized.

    Examples:
        >>> grads = input_gradients(net, ActivationMaximization("fc", 3), image, backprop_modifier="guided")
    """
    loss = as_losses(losses)
    with preparing(model, **conventions) as prepared:
        images = prepared.load_images(seed_input)
        low, high = prepared.input_range if prepared.input_range is not None else (0.0, 1.0)
        return _gradients(prepared, loss, images, backprop_modifier=backprop_modifier)[0] / (high - low)


def _normalize(maps: torch.Tensor, percentile: float | None = None, source: str | None = None) -> np.ndarray:
    """Each map scaled to [0, 1] by its min and max, or by its min and its `percentile`-th
    percentile (the values above it clipped to 1: outliers no longer hide the rest).

    With `source` (what the maps are made of, for the message), maps that are constant (all zero,
    typically) are warned about once: they show nothing, and are returned as zeros."""
    if not torch.isfinite(maps).all():
        raise NonFiniteError("the map holds NaN or infinite values; the model's output is not finite here")
    flat = maps.flatten(1).float()
    low = flat.min(1, keepdim=True).values
    if source is not None:
        _warn_constant(flat, low, source)
    if percentile is None:
        high = flat.max(1, keepdim=True).values
    else:
        high = _quantile(flat, percentile / 100)
    scaled = ((flat - low) / (high - low).clamp(min=1e-12)).clamp(0, 1)
    return scaled.view_as(maps).cpu().numpy()


GRADIENT = "the gradient of the target with respect to the input"
SOURCES = {
    "vanilla": GRADIENT,
    "integrated_gradients": "the gradient of the target along the path from the baseline (Integrated Gradients)",
    "occlusion": "the target's change when any part of the image is occluded",
}
CAM_SOURCE = (
    "the class activation map (made of the gradient of the target with respect to the penultimate layer)"
)
GUIDED_CAM_SOURCE = (
    "the guided gradient of the target with respect to the input times the class activation map"
)


def _warn_constant(flat: torch.Tensor, low: torch.Tensor, source: str) -> None:
    """One `FeatvisWarning` when any of the (B, pixels) maps is constant: `source` is zero (or the same)
    everywhere, so the target does not depend on the input."""
    constant = (flat.max(1, keepdim=True).values == low)[:, 0]
    count = int(constant.sum())
    if count == 0:
        return
    value = float(low[constant][0])
    warnings.warn(
        f"{count} of {len(flat)} maps are constant ({value:.3g} everywhere) and show nothing: {source} "
        f"is {'zero' if value == 0 else 'the same'} at every pixel, so the target does not depend on the "
        "input (an all-zero head? a dead unit? check layer, filter_indices and the model's weights)",
        FeatvisWarning,
        stacklevel=4,
    )


def _quantile(flat: torch.Tensor, q: float) -> torch.Tensor:
    """`torch.quantile(flat, q, dim=1, keepdim=True)` (linear interpolation); a high `q` from the
    top values alone (a 99th percentile of a 224 x 224 map: the top 502 of 50,176, several times
    faster than sorting them all)."""
    n = flat.shape[1]
    position = q * (n - 1)
    below = math.floor(position)
    top = n - below  # the values from sorted[below] up
    if top > n // 8:
        return torch.quantile(flat, q, dim=1, keepdim=True)
    values = flat.topk(min(top + 1, n), dim=1).values  # descending: sorted[n - 1 - j] is values[:, j]
    at, above = values[:, top - 1 : top], values[:, max(top - 2, 0) : max(top - 1, 1)]
    return torch.lerp(at, above, position - below)


def _check_percentile(percentile) -> float | None:
    if percentile is None:
        return None
    value = check_number("percentile", percentile, positive=True)
    if value > 100:
        raise bad_value("percentile", percentile, "a number in (0, 100], or None for min-max scaling")
    return value


def _baseline(baseline, images: torch.Tensor, prepared: PreparedModel) -> torch.Tensor:
    """The baseline as featvis holds images: None is black (the low end of `input_range`; zeros
    when ``input_range=None``), a number a flat image of that value, else an image or a batch."""
    if baseline is None:
        return torch.zeros_like(images)
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        low, high = prepared.input_range if prepared.input_range is not None else (0.0, 1.0)
        return torch.full_like(images, (float(baseline) - low) / (high - low))
    loaded = to_unit_tensor(baseline, "baseline", prepared.input_range, prepared.channels).to(images)
    if loaded.shape[1:] != images.shape[1:] or loaded.shape[0] not in (1, images.shape[0]):
        raise bad_value(
            "baseline",
            f"an image batch of shape {tuple(loaded.shape)}",
            f"None, a number, or an image of shape {tuple(images.shape[1:])} "
            f"(or a batch of {images.shape[0]}) like seed_input",
        )
    return loaded.expand_as(images)


def _loss_terms(prepared: PreparedModel, loss: Loss):
    """The loss's terms of non-zero weight and the layers they read, resolved."""
    terms = [(t, w) for t, w in loss.terms if w != 0]
    return terms, prepared.resolve_all(layer for term, _ in terms for layer in term.layers())


def _row_scores(ctx: LossContext, terms) -> torch.Tensor:
    """The score (minus the losses) of each row of `ctx`, each row with its own image's units."""
    return -sum(w * ctx.per_row(t(ctx)) for t, w in terms)


def _scorer(
    prepared: PreparedModel, loss: Loss, images: torch.Tensor, batch_size: int
) -> Callable[..., torch.Tensor]:
    """``score(index, inputs=None, masks=None)`` -> the score (minus the losses) of each row, row r
    a copy of image ``index[r]`` of `images` scored with that image's units (a loss such as
    `UnitPerImage` gives each image its own): the image itself, or ``inputs[r]`` (a changed copy,
    in featvis's units) when given. `masks` (rows, 1, H, W) multiply the model input (after
    `preprocess`), as pytorch-grad-cam's Score-CAM masks it. Without gradients, `batch_size` rows
    per forward, through the fused runner, stopped after the loss's last layer."""
    terms, targets = _loss_terms(prepared, loss)
    model_images = {}

    def score(index: torch.Tensor, inputs: torch.Tensor | None = None, masks: torch.Tensor | None = None):
        out = []
        for start in range(0, len(index), batch_size):
            rows = index[start : start + batch_size]
            with torch.no_grad():
                activations = {}
                if targets:
                    runner, capture, channels_last = prepared.runner(list(targets.values()), images.shape[1:])
                    if inputs is not None:
                        x = prepared.model_input(inputs[start : start + batch_size])
                    else:  # the model input of each image is made once, then copied per row
                        if "x" not in model_images:
                            model_images["x"] = prepared.model_input(images)
                        x = model_images["x"][rows]
                    if masks is not None:
                        x = x * masks[start : start + batch_size].to(x.dtype)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    activations = capture.run(runner, x)
                ctx = LossContext(
                    images=images, views=1, activations=activations, targets=targets, row_images=rows
                )
                out.append(_row_scores(ctx, terms).float())
        return torch.cat(out)

    return score


def _prefix_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Input sizes to try for the layers before an ablated layer, smallest first: 1, 2, 4, ... px,
    up to a quarter of the image."""
    sizes, side = [], 1
    while side < max(h, w) // 4:
        sizes.append((min(h, side), min(w, side)))
        side *= 2
    sizes.append((min(h, max(32, h // 4)), min(w, max(32, w // 4))))
    return list(dict.fromkeys(sizes))


def _ablated_scorer(
    prepared: PreparedModel,
    loss: Loss,
    layer: LayerSpec,
    images: torch.Tensor,
    acts: torch.Tensor,
    batch_size,
):
    """(index, scale (K, C), fill=None) -> K scores of image `index` with `layer`'s output replaced
    by its activations `acts[index]` scaled channel-wise by each row of `scale`, plus
    ``(1 - scale) * fill`` when `fill` (C,) is given.

    What comes after the layer runs on the K replacements at full size. The layers before it
    only have to run, so they run as cheaply as reproduces the model's own scores (checked once,
    on the first image, unablated and with half the channels ablated, against the layers
    before run on K copies of the image): on one row, the image fed alone (the replacement
    broadcast over K rows), else fed as K rows of which every module before the layer sees the
    first only (for a model that reads the batch size from its input, as EfficientNet does),
    else K copies; each on the image shrunk to 1, 2, 4, ... px, the smallest that works, else
    at full size. Through the fused runner."""
    terms, targets = _loss_terms(prepared, loss)
    target = prepared.resolve(layer, "penultimate_layer")
    # the fused runner (batch norms folded; the ablated layer and the loss's layers kept as they are)
    runner, capture, channels_last = prepared.runner([*targets.values(), target], images.shape[1:])
    module = runner.get_submodule(target.name) if target.name else runner
    leaves = [m for m in runner.modules() if next(m.children(), None) is None]
    state = {"replacement": None, "calls": 0, "first_row": False}

    def hook(mod, inputs, output):
        calls, state["calls"] = state["calls"], state["calls"] + 1
        if calls != target.call or state["replacement"] is None:
            return None
        state["first_row"] = False  # the layers after see every row
        return state["replacement"].to(output.dtype)

    def first_row(mod, inputs):
        if not state["first_row"] or not inputs or not isinstance(inputs[0], torch.Tensor):
            return None
        if inputs[0].ndim == 0 or inputs[0].shape[0] <= 1:
            return None
        return (inputs[0][:1], *inputs[1:])

    def run(
        index: int, scale: torch.Tensor, how: tuple[str, tuple[int, int] | None], fill=None
    ) -> torch.Tensor:
        rows_mode, size = how
        image = images[index : index + 1]
        replacement = acts[index : index + 1] * scale[:, :, None, None]
        if fill is not None:  # the ablated part takes the value `fill` instead of 0
            replacement = replacement + (1 - scale[:, :, None, None]) * fill.view(1, -1, 1, 1)
        if capture.channels_last:
            replacement = replacement.movedim(1, -1)
        k = len(scale)
        state["replacement"], state["calls"], state["first_row"] = replacement, 0, rows_mode == "first_row"
        if size is not None:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        x = prepared.model_input(image)  # one row, preprocessed once
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if rows_mode != "broadcast":  # K rows for the model to count; copies of the one row
            x = x.expand(k, *x.shape[1:])
            if rows_mode == "copies" and channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        try:
            activations = capture.run(runner, x)
        finally:
            state["first_row"] = False
        rows = torch.full((k,), index, device=images.device)
        ctx = LossContext(images=images, views=1, activations=activations, targets=targets, row_images=rows)
        return _row_scores(ctx, terms).float()

    chosen = {}
    full = ("copies", None)

    def choose(index: int, channels: int, device) -> tuple[str, tuple[int, int] | None]:
        check = torch.ones(2, channels, device=device)
        check[1, : channels // 2] = 0
        expected = run(index, check, full)
        for rows_mode in ("broadcast", "first_row", "copies"):
            for size in [*_prefix_sizes(*images.shape[-2:]), None]:
                if (rows_mode, size) == full:
                    continue
                try:
                    got = run(index, check, (rows_mode, size))
                except FeatvisError:
                    continue
                if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
                    return rows_mode, size
        return full

    def score_ablated(index: int, scale: torch.Tensor, fill: torch.Tensor | None = None) -> torch.Tensor:
        handles = [module.register_forward_hook(hook)]
        handles += [leaf.register_forward_pre_hook(first_row) for leaf in leaves]
        try:
            with torch.no_grad():
                if "how" not in chosen:
                    chosen["how"] = choose(index, scale.shape[1], scale.device)
                chunks = scale.split(batch_size)
                return torch.cat([run(index, chunk, chosen["how"], fill) for chunk in chunks])
        finally:
            for handle in handles:
                handle.remove()
            state["replacement"] = None

    return score_ablated


def integrated_gradients(
    model: nn.Module | PreparedModel,
    losses,
    seed_input,
    *,
    steps: int = 64,
    quadrature: str = "gausslegendre",
    baseline=None,
    batch_size: int | None = None,
    return_delta: bool = False,
    **conventions,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients (Sundararajan et al. 2017): (input - baseline) times the integral of the
    score's gradient along the straight path from the baseline, as (B, C, H, W).

    The integral is a weighted sum of the gradient at `steps` points of the path: by default
    Gauss-Legendre nodes and weights on [0, 1] (``quadrature="gausslegendre"``, Captum's
    default), or the midpoint Riemann sum (``"riemann_middle"``, Captum's ``method="riemann_middle"``
    and featvis's rule before Gauss-Legendre: to reproduce earlier maps). The attributions of an
    image sum to score(input) - score(baseline) (completeness) up to the rule's error; the score
    is minus the losses, as in `input_gradients`. ``return_delta=True`` also returns that error
    per image, ``attributions.sum() - (score(input) - score(baseline))`` (B,), as Captum's
    ``return_convergence_delta`` (two more forwards per image, without gradients; raise `steps`
    when it is large against the score difference: the error falls with more steps but not
    steadily on a network of ReLU6s, whose gradient jumps along the path). `baseline`: None is a black image (the low end of
    `input_range`, before `preprocess`; zeros with ``input_range=None``), a number a flat image,
    or an image (or batch) like `seed_input`. `batch_size` path points run per forward and
    backward (None: 32, on the CPU `fusion.chunk_rows`: 4 at 224 px, where Lite0's 64 steps of 4
    images took 1.3 s against 2.4 s at 32).

    Examples:
        >>> attributions = integrated_gradients(net, ActivationMaximization("fc", 3), image, steps=64)
        >>> coffee = skimage.data.coffee()  # 400 x 600 px, Lite0's espresso (967); black baseline
        >>> espresso = ActivationMaximization("_fc", 967)
        >>> attributions, delta = integrated_gradients(
        ...     lite0.model, espresso, coffee, preprocess=lite0.preprocess, return_delta=True
        ... )
        >>> attributions.sum(), delta  # the logit rises by 1.959 from black: 3.9% short at 64 steps
        (tensor(1.8838), tensor([-0.0755]))
        >>> integrated_gradients(lite0.model, espresso, coffee, steps=256, preprocess=..., return_delta=True)[1]
        tensor([-0.0304])
    """
    loss = as_losses(losses)
    check_int("steps", steps, 1)
    _check_quadrature(quadrature)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    if not isinstance(return_delta, bool):
        raise bad_type("return_delta", return_delta, "True or False")
    with preparing(model, **conventions) as prepared:
        images = prepared.load_images(seed_input)
        base = _baseline(baseline, images, prepared)
        attributions = _integrated_gradients(prepared, loss, images, base, steps, batch_size, quadrature)
        if not return_delta:
            return attributions
        score = _scorer(prepared, loss, images, fusion.chunk_rows(images, 32))
        index = torch.arange(len(images), device=images.device)
        difference = score(index).double() - score(index, base).double()
        delta = attributions.flatten(1).double().sum(1) - difference
        return attributions, delta.to(attributions.dtype)


def _check_quadrature(quadrature) -> None:
    if quadrature not in QUADRATURES:
        hint = close_matches(quadrature, QUADRATURES) if isinstance(quadrature, str) else ""
        raise bad_value("quadrature", quadrature, f"one of {', '.join(QUADRATURES)}{hint}")


def _path_rule(quadrature: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The points of the path (fractions of the way from the baseline, in (0, 1)) and their weights
    (summing to 1) of `quadrature` with `steps` points, in float64.

    Examples:
        >>> _path_rule("riemann_middle", 4)
        (array([0.125, 0.375, 0.625, 0.875]), array([0.25, 0.25, 0.25, 0.25]))
    """
    _check_quadrature(quadrature)
    if quadrature == "riemann_middle":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1 / steps)
    nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1], weights summing to 2
    return (nodes + 1) / 2, weights / 2


def _integrated_gradients(
    prepared, loss, images, base, steps, batch_size, quadrature="gausslegendre"
) -> torch.Tensor:
    """The attributions: the path points of all images in chunks of `batch_size` rows, one forward
    and one backward per chunk through the fused runner, each row scored with its own image's
    units; the gradients weighted by the rule's weights and summed per image."""
    nodes, weights = _path_rule(quadrature, steps)
    alphas = torch.from_numpy(nodes).to(device=images.device, dtype=images.dtype)
    weights = torch.from_numpy(weights).to(device=images.device, dtype=images.dtype)
    n = len(images)
    rows_image = torch.arange(n * steps, device=images.device) // steps
    rows_alpha, rows_weight = alphas.repeat(n), weights.repeat(n)
    if batch_size is None:
        batch_size = fusion.chunk_rows(images, 32)
    prepared.probe(images)  # before resolving: a model of one input size is probed at that size
    terms, targets = _loss_terms(prepared, loss)
    total = torch.zeros_like(images)
    shape = (-1, *[1] * (images.ndim - 1))
    for start in range(0, n * steps, batch_size):
        index = rows_image[start : start + batch_size]
        alpha = rows_alpha[start : start + batch_size].view(shape)
        path = base[index] + alpha * (images[index] - base[index])
        grads = _path_gradients(prepared, terms, targets, images, index, path)
        total.index_add_(0, index, grads * rows_weight[start : start + batch_size].view(shape))
    return (images - base) * total


def _path_gradients(
    prepared, terms, targets, images, index, path, model_space=False, fused=True
) -> torch.Tensor:
    """d(score)/d(path) for rows `path`, row r a copy of image ``index[r]`` of `images` (None: row r is
    image r), through the fused runner (``fused=False``: the model as it is, for a call too small
    to pay for building and checking the fused copy); with `model_space`, w.r.t. the model input
    (after `input_range` and `preprocess`) instead."""
    if model_space:
        leaf = x = prepared.model_input(path).detach().requires_grad_(True)
    else:
        leaf = path = path.detach().requires_grad_(True)
    with torch.enable_grad():
        activations = {}
        if targets:
            if fused:
                runner, capture, channels_last = prepared.runner(list(targets.values()), images.shape[1:])
            else:
                runner, capture, channels_last = (
                    prepared.model,
                    prepared.capture(list(targets.values())),
                    False,
                )
            if not model_space:
                x = prepared.model_input(path)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            activations = capture.run(runner, x)
        ctx = LossContext(images=images, views=1, activations=activations, targets=targets, row_images=index)
        score = _row_scores(ctx, terms).sum()
        if not score.requires_grad:
            raise FeatvisValueError("the losses do not depend on the input image")
        (grad,) = torch.autograd.grad(score, leaf)
    if not torch.isfinite(grad).all():
        raise NonFiniteError("the gradient of the losses is NaN or infinite for this input")
    return grad.to(images.dtype)


def occlusion(
    model: nn.Module | PreparedModel,
    losses,
    seed_input,
    *,
    window: int = 16,
    stride: int = 8,
    baseline=None,
    batch_size: int | None = None,
    **conventions,
) -> torch.Tensor:
    """Occlusion (Zeiler and Fergus 2014, Captum's `Occlusion`): the score's drop when a
    `window` x `window` square (all channels) is replaced by the baseline, averaged over the
    windows (every `stride` pixels) covering each pixel; (B, H, W). All windows of all images
    run in batches of `batch_size` rows, without gradients (None: on the CPU
    `fusion.chunk_rows`, 4 rows at 224 px: Lite0, 4 images, 2 cores, 7.0 s against 12.9 s at
    256 rows; elsewhere as many rows as hold the pixels of 256 images of 224 x 224, at most 1024).

    Examples:
        >>> drops = occlusion(net, ActivationMaximization("fc", 3), image, window=8, stride=4)
    """
    loss = as_losses(losses)
    check_int("window", window, 1)
    check_int("stride", stride, 1)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    with preparing(model, **conventions) as prepared:
        images = prepared.load_images(seed_input)
        return _occlusion(
            prepared, loss, images, _baseline(baseline, images, prepared), window, stride, batch_size
        )


def _occlusion(prepared, loss, images, base, window, stride, batch_size) -> torch.Tensor:
    if images.ndim != 4:
        raise bad_value("method", "occlusion", "'vanilla' or 'integrated_gradients' for 1-D and 3-D input")
    n, _, h, w = images.shape
    if window > min(h, w):
        raise bad_value("window", window, f"an int <= the image size {min(h, w)}")
    if batch_size is None:
        batch_size = fusion.chunk_rows(images, max(1, min(1024, 256 * 224 * 224 // (h * w))))
    prepared.probe(images)  # before the scorer resolves the loss's layers
    score = _scorer(prepared, loss, images, batch_size)
    plain = score(torch.arange(n, device=images.device))
    tops = list(range(0, h - window + 1, stride)) + ([h - window] if (h - window) % stride else [])
    lefts = list(range(0, w - window + 1, stride)) + ([w - window] if (w - window) % stride else [])
    boxes = torch.zeros(len(tops) * len(lefts), h, w, device=images.device)
    for k, (top, left) in enumerate((t, left) for t in tops for left in lefts):
        boxes[k, top : top + window, left : left + window] = 1
    m = len(boxes)
    drops = torch.empty(n, m, device=images.device)
    rows_image = torch.arange(n * m, device=images.device) // m
    for start in range(0, n * m, batch_size):
        index = rows_image[start : start + batch_size]
        box = boxes[torch.arange(start, start + len(index), device=images.device) % m][:, None]
        occluded = torch.lerp(images[index], base[index], box)
        drops.view(-1)[start : start + len(index)] = plain[index].to(drops) - score(index, occluded).to(drops)
    counts = boxes.sum(0).clamp(min=1)
    return torch.einsum("nm,mhw->nhw", drops, boxes) / counts


def _augmented(images: torch.Tensor) -> list[tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]:
    """The "aug smooth" views: (view, function taking a map of the view back to the image), for
    the image and its mirror, each as is and zoomed in 10% (a centered crop)."""
    h, w = images.shape[-2:]
    ch, cw = max(1, round(h / 1.1)), max(1, round(w / 1.1))
    top, left = (h - ch) // 2, (w - cw) // 2

    def zoom(x):
        crop = x[..., top : top + ch, left : left + cw]
        return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)

    def unzoom(m):
        small = F.interpolate(m, size=(ch, cw), mode="bilinear", align_corners=False)
        out = torch.full_like(m, float("nan"))
        out[..., top : top + ch, left : left + cw] = small
        return out

    def flip(x):
        return x.flip(-1)

    return [
        (images, lambda m: m),
        (flip(images), flip),
        (zoom(images), unzoom),
        (zoom(flip(images)), lambda m: flip(unzoom(m))),
    ]


def _smoothed(function, images, *, smooth_samples, smooth_noise, aug_smooth, seed, label) -> torch.Tensor:
    """`function(images) -> (B, ..., H, W)` averaged over noisy copies (SmoothGrad: noise std
    `smooth_noise` times the image's range; image i's noise from the stream of (seed, label, i))
    and, with `aug_smooth`, over flips and zooms; maps of the views taken back to the image."""
    if aug_smooth and images.ndim != 4:
        raise bad_value("aug_smooth", True, "False for 1-D and 3-D input (its flips and zooms are of images)")
    views = _augmented(images) if aug_smooth else [(images, lambda m: m)]
    streams = None
    if smooth_samples:
        streams = Streams([derive_key(seed, label, i) for i in range(len(images))], images.device)
        flat = images.flatten(1)
        spans = (flat.max(1).values - flat.min(1).values).clamp(min=1e-12).view(-1, 1, 1, 1)
    total, count = 0, 0
    for view, back in views:
        for _ in range(max(1, smooth_samples)):
            noisy = view
            if streams is not None:
                noise = streams.normal(*view.shape[1:]).to(view)
                noisy = view + smooth_noise * spans * noise
            result = function(noisy)
            expanded = result if result.ndim == 4 else result[:, None]
            mapped = back(expanded)
            mapped = mapped if result.ndim == 4 else mapped[:, 0]
            total = total + torch.nan_to_num(mapped)
            count = count + torch.isfinite(mapped).float()
    return total / count.clamp(min=1)


def visualize_saliency_with_losses(
    model: nn.Module | PreparedModel,
    losses,
    seed_input,
    *,
    method: str = "vanilla",
    backprop_modifier: str | Callable | None = None,
    grad_modifier: str | Callable | None = "absolute",
    keepdims: bool = False,
    smooth_samples: int = 0,
    smooth_noise: float = 0.15,
    aug_smooth: bool = False,
    steps: int = 64,
    quadrature: str = "gausslegendre",
    baseline=None,
    window: int = 16,
    stride: int = 8,
    batch_size: int | None = None,
    percentile: float | None = 99.0,
    seed: int | None = 0,
    **conventions,
) -> np.ndarray:
    """Saliency of a weighted sum of losses: the score's (minus the losses') attribution per pixel, modified
    by `grad_modifier` (default ``"absolute"``; ``"negate"`` shows what lowers the score), normalized per image.

    `method`: ``"vanilla"`` (d(-loss)/d(input); guided or rectified with `backprop_modifier`),
    ``"integrated_gradients"`` (`steps`, `quadrature`, `baseline`: see `integrated_gradients`) or
    ``"occlusion"`` (`window`, `stride`, `baseline`: see `occlusion`); `batch_size` rows per
    forward (None: on the CPU as many as hold 16 images of 112 px, `fusion.chunk_rows`;
    elsewhere 32 for Integrated Gradients, for occlusion 256 at 224 px, up to 1024 on smaller
    images). Gradient maps keep the max over channels, attributions their sum. ``smooth_samples > 0`` averages the map over
    noisy copies (SmoothGrad; noise std ``smooth_noise`` times the image's range, image i's
    noise from the stream of (seed, i)); ``aug_smooth=True`` over flips and zooms too.
    `percentile`: maps are scaled from their min to this percentile, above it clipped (None:
    min-max). Returns (B, H, W), or (B, H, W, C) with ``keepdims=True``. `conventions`:
    ``input_range`` (None: tensors fed to the model as given), ``preprocess``, ``channels``, ``device``.

    Examples:
        >>> maps = visualize_saliency_with_losses(model, [(ActivationMaximization("_fc", 285), 1)], cat)
    """
    loss = as_losses(losses)
    if method not in SALIENCY_METHODS:
        hint = close_matches(method, SALIENCY_METHODS) if isinstance(method, str) else ""
        raise bad_value("method", method, f"one of {', '.join(SALIENCY_METHODS)}{hint}")
    modifier = grad_modifiers.get(grad_modifier)
    backprop_modifiers.get(backprop_modifier)
    if method != "vanilla" and backprop_modifier is not None:
        raise bad_value("backprop_modifier", backprop_modifier, f"None with method={method!r}")
    check_int("smooth_samples", smooth_samples, 0)
    check_number("smooth_noise", smooth_noise, minimum=0)
    check_int("steps", steps, 1)
    _check_quadrature(quadrature)
    check_int("window", window, 1)
    check_int("stride", stride, 1)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    percentile = _check_percentile(percentile)
    if not isinstance(aug_smooth, bool):
        raise bad_type("aug_smooth", aug_smooth, "True or False")
    seed = seed_or_fresh(seed)
    with preparing(model, **conventions) as prepared:
        images = prepared.load_images(seed_input)
        base = _baseline(baseline, images, prepared) if method != "vanilla" else None
        passes = max(1, smooth_samples) * (4 if aug_smooth else 1)
        fused = passes * images[:, 0].numel() >= FUSED_VANILLA_PIXELS

        def attribute(x: torch.Tensor) -> torch.Tensor:
            if method == "integrated_gradients":
                return _integrated_gradients(prepared, loss, x, base, steps, batch_size, quadrature)
            if method == "occlusion":
                return _occlusion(prepared, loss, x, base, window, stride, batch_size)[:, None].expand_as(x)
            if backprop_modifier is None:  # plain gradients: through the fused runner if it pays
                prepared.probe(x)  # before resolving the loss's layers
                terms, targets = _loss_terms(prepared, loss)
                return _path_gradients(prepared, terms, targets, x, None, x, model_space=True, fused=fused)
            return _gradients(prepared, loss, x, backprop_modifier=backprop_modifier, model_space=True)[0]

        if method == "vanilla":

            def mapped(x):
                grads = attribute(x)
                return modifier(grads) if modifier is not None else grads
        else:

            def mapped(x):  # attributions: the sum over channels is the pixel's
                total = attribute(x).sum(1, keepdim=True).expand_as(x)
                return modifier(total) if modifier is not None else total

        grads = _smoothed(
            mapped,
            images,
            smooth_samples=smooth_samples,
            smooth_noise=smooth_noise,
            aug_smooth=aug_smooth,
            seed=seed,
            label="saliency",
        )
    source = SOURCES[method]
    if keepdims:
        return np.moveaxis(_normalize(grads, percentile, source), 1, -1)
    return _normalize(grads.max(dim=1).values, percentile, source)


def visualize_saliency(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    filter_indices,
    seed_input,
    *,
    unit_axis: int | None = None,
    token: int | None = None,
    **kwargs,
) -> np.ndarray:
    """Saliency map of the chosen units of `layer` for each image (keras-vis's API, plus SmoothGrad,
    Integrated Gradients and occlusion: see `visualize_saliency_with_losses`).

    Examples:
        >>> vanilla = visualize_saliency(lite0.model, "_fc", 285, cat, preprocess=lite0.preprocess)
        >>> guided = visualize_saliency(lite0.model, "_fc", 285, cat, backprop_modifier="guided", preprocess=...)
        >>> smooth = visualize_saliency(lite0.model, "_fc", 285, cat, smooth_samples=20, preprocess=...)
        >>> ig = visualize_saliency(lite0.model, "_fc", 285, cat, method="integrated_gradients", steps=64,
        ...                         preprocess=...)
    """
    objective = ActivationMaximization(layer, filter_indices, unit_axis=unit_axis, token=token)
    return visualize_saliency_with_losses(model, objective, seed_input, **kwargs)


def _layer_gradients(prepared: PreparedModel, loss: Loss, images: torch.Tensor, layer: LayerSpec):
    """The output of `layer` (channels first, float32) and the score's gradient w.r.t. it (None when the
    score does not depend on it). The layers before run without a graph: the backward pass starts at
    `layer`, not at the images, which is what makes a CAM cheaper than a saliency map."""
    terms = [(t, w) for t, w in loss.terms if w != 0]
    prepared.probe(images)
    targets = prepared.resolve_all(layer for term, _ in terms for layer in term.layers())
    extra = prepared.resolve(layer, "penultimate_layer")
    capture = prepared.capture([*targets.values(), extra])
    call = int(extra.key.rsplit("#", 1)[1])
    state = {"calls": 0, "leaf": None}

    def hook(module, inputs, output):
        calls, state["calls"] = state["calls"], state["calls"] + 1
        if calls == call and not isinstance(output, torch.Tensor):
            state["structured"] = type(output).__name__
        if calls == call and isinstance(output, torch.Tensor) and output.is_floating_point():
            state["leaf"] = output.detach().requires_grad_(True)
            return state["leaf"].clone()  # an in-place op after the layer (torchvision's DenseNet,
            # Inception and ConvNeXt: ReLU(inplace=True), x += ...) changes this copy, not the leaf
        return None

    handle = extra.module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            activations = capture.run(prepared.model, prepared.model_input(images.detach()))
            ctx = LossContext(images=images, views=1, activations=activations, targets=targets)
            score = -sum(w * ctx.per_image(t(ctx)) for t, w in terms).sum()
            leaf = state["leaf"]
            if leaf is None and "structured" in state:
                raise bad_value(
                    "penultimate_layer",
                    layer if isinstance(layer, str | int) else extra.name,
                    f"a layer whose output is one tensor ({extra.name!r} gives a {state['structured']}, "
                    "whose gradient featvis cannot take); choose a layer inside it",
                )
            if leaf is None or not score.requires_grad:
                return activations[extra.key].detach().float(), None
            (grad,) = torch.autograd.grad(score, leaf, allow_unused=True)
    finally:
        handle.remove()
    acts = activations[extra.key].detach().float()
    if grad is None:
        return acts, None
    if not torch.isfinite(grad).all():
        raise NonFiniteError("the gradient of the losses is NaN or infinite for this input")
    grad = grad.float()
    return acts, (grad.movedim(-1, 1) if grad.shape != acts.shape else grad)


def _cam_method(method):
    cam_method = choose("method", method, CAM_METHODS) if isinstance(method, str) else method
    if not callable(cam_method):
        raise bad_type("method", method, f"one of {', '.join(CAM_METHODS)} or a function")
    return cam_method


def _as_map(prepared, penultimate, acts, grads, images, token_grid):
    """A penultimate layer's output and gradient as (N, C, *spatial) maps like the images': conv outputs
    as they are, channels-last blocks (Swin) moved channels-first, token outputs (N, tokens, features)
    on their patch grid (leading class/register tokens dropped); and whether they were converted."""
    target = prepared.resolve(penultimate, "penultimate_layer")
    axis = target.unit_axis
    spatial = images.ndim - 2
    if acts.ndim == images.ndim:
        if axis == 1:
            return acts, grads, False
        moved = (acts.movedim(axis, 1), None if grads is None else grads.movedim(axis, 1))
        return *moved, True
    if acts.ndim == 3 and spatial == 2:
        (rows, cols), extra = token_grid_of(acts.shape[1 if axis != 1 else 2], images, token_grid, target)
        grid = (rows, cols)
        return (
            tokens.to_grid(acts, axis, grid, extra),
            None if grads is None else tokens.to_grid(grads, axis, grid, extra),
            True,
        )
    expected = "(N, C, H, W) or (N, tokens, features)" if spatial == 2 else f"(N, C, {spatial} spatial axes)"
    raise bad_value(
        "penultimate_layer", penultimate, f"a layer with {expected} output (it gives {tuple(acts.shape)})"
    )


def token_grid_of(count: int, images: torch.Tensor, token_grid, target) -> tuple[tuple[int, int], int]:
    """The patch grid and leading-token count of a token layer for these images."""
    return tokens.token_grid(
        count, tuple(images.shape[-2:]), tokens.check_token_grid(token_grid), str(target)
    )


def _resize_map(cam: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, 1, *spatial) maps resized (linear, bilinear or trilinear) to `size`."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(cam.float(), size=tuple(size), mode=mode, align_corners=False)


def _on_first_call(make: Callable[[], Callable]) -> Callable:
    """A function that calls ``make()`` on its first call and then what it made: a scorer's model
    runner (a fused copy, checked) is built only for a method that scores (not for Eigen-CAM)."""
    made = []

    def call(*args, **kwargs):
        if not made:
            made.append(make())
        return made[0](*args, **kwargs)

    return call


def _cam(
    prepared, loss, images, penultimate_layer, method, grad_modifier, batch_size=None, token_grid=None
) -> torch.Tensor:
    """The (B, *spatial) class activation map at the images' size, not normalized."""
    cam_method = _cam_method(method)
    batch_size = _rows_per_forward(cam_method, images, batch_size)
    modifier = grad_modifiers.get(grad_modifier)
    needs_gradients = not isinstance(cam_method, ContextMethod) or cam_method.gradients
    candidates = [penultimate_layer]
    if penultimate_layer is None:
        candidates = _auto_penultimates(prepared, loss, images, token_grid)
    for tried, penultimate in enumerate(candidates):
        if needs_gradients or penultimate_layer is None:
            acts, grads = _layer_gradients(prepared, loss, images, penultimate)
        else:
            prepared.probe(images)
            prepared.resolve(penultimate, "penultimate_layer")
            acts, grads = prepared.layer_output(penultimate, images).float(), None
        acts, grads, converted = _as_map(prepared, penultimate, acts, grads, images, token_grid)
        # a token layer whose patch tokens do not reach the score (a ViT's final norm feeds only the
        # class token to the head): try the layer before, as pytorch-grad-cam's ViT recipe does
        automatic_token = penultimate_layer is None and converted and tried + 1 < len(candidates)
        if automatic_token and (grads is None or not bool(grads.abs().amax() > 0)):
            continue
        break
    if not needs_gradients:
        grads = None
    if needs_gradients and grads is None:
        raise bad_value(
            "penultimate_layer", penultimate, "a layer the loss depends on (it runs before the loss's layer)"
        )
    if modifier is not None and grads is not None:
        grads = modifier(grads)
    if isinstance(cam_method, ContextMethod):
        if converted and cam_method is ablationcam:
            raise bad_value(
                "method",
                "ablationcam",
                f"another CAM method for layer {penultimate!r}, whose output is "
                "not (N, C, H, W) (Ablation-CAM replaces the layer's output channel by channel)",
            )
        ctx = CamContext(
            activations=acts,
            gradients=grads,
            images=images,
            score=_on_first_call(lambda: _scorer(prepared, loss, images, batch_size)),
            score_ablated=_on_first_call(
                lambda: _ablated_scorer(prepared, loss, penultimate, images, acts, batch_size)
            ),
            batch_size=batch_size,
        )
        cam = cam_method(ctx)[:, None]
    else:
        cam = cam_method(acts, grads)[:, None]
    return _resize_map(cam, images.shape[2:])[:, 0]


def visualize_cam_with_losses(
    model: nn.Module | PreparedModel,
    losses,
    seed_input,
    *,
    penultimate_layer: LayerSpec | None = None,
    method: str | CamMethod = "gradcam",
    grad_modifier: str | Callable | None = None,
    batch_size: int | None = None,
    smooth_samples: int = 0,
    smooth_noise: float = 0.15,
    aug_smooth: bool = False,
    seed: int | None = 0,
    token_grid: tuple[int, int] | None = None,
    **conventions,
) -> np.ndarray:
    """A class activation map (Grad-CAM by default) of a weighted sum of losses; (B, H, W) in [0, 1].

    Transformers: a `penultimate_layer` with (N, tokens, features) output (a ViT block or its
    norm) is put on its patch grid, the leading class/register tokens dropped; the grid is
    inferred from the token count and the image size, or given as ``token_grid=(rows, cols)``.
    Channels-last blocks (Swin's (N, H, W, C)) are read channels-last. Without a
    `penultimate_layer` a token model's last token layer that the score depends on is taken: the
    input of its last attention (any module that computes one: torch's, timm's, Hugging Face's),
    else the last layer whose tokens make a grid of more than one patch; an attention's own layers
    (queries, keys, weights) never.

    `method`: a name in `CAM_METHODS` (``"gradcam"``, ``"gradcam++"``, ``"xgradcam"``,
    ``"layercam"``, ``"hirescam"``, ``"scorecam"``, ``"ablationcam"``, ``"eigencam"``;
    `register_cam` adds one) or a function (activations, gradients) -> map. `penultimate_layer`
    defaults to the last layer or block run before the loss's layer whose output has spatial
    dimensions (for EfficientNet-Lite0 and ``"_fc"``: the head activation ``"_swish#1"``; for a
    ConvNeXt, whose blocks end in an addition, the last block, not its residual branch). `batch_size`:
    rows per forward for the methods that run the model (Score-CAM, Ablation-CAM); by default 64,
    on the CPU for Score-CAM as many as hold 16 images of 112 px (4 of 224 px), its fastest there
    (`featvis.fusion.chunk_rows`).
    ``smooth_samples > 0`` averages over noisy copies, ``aug_smooth=True`` over flips and zooms.

    Examples:
        >>> cams = visualize_cam_with_losses(model, [(ActivationMaximization("_fc", 285), 1)], cat)
    """
    loss = as_losses(losses)
    _cam_method(method)
    tokens.check_token_grid(token_grid)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    check_int("smooth_samples", smooth_samples, 0)
    check_number("smooth_noise", smooth_noise, minimum=0)
    if not isinstance(aug_smooth, bool):
        raise bad_type("aug_smooth", aug_smooth, "True or False")
    seed = seed_or_fresh(seed)
    with preparing(model, **conventions) as prepared:
        images = prepared.load_images(seed_input)
        cam = _smoothed(
            lambda x: _cam(
                prepared, loss, x, penultimate_layer, method, grad_modifier, batch_size, token_grid
            ),
            images,
            smooth_samples=smooth_samples,
            smooth_noise=smooth_noise,
            aug_smooth=aug_smooth,
            seed=seed,
            label="cam",
        )
    return _normalize(cam, source=CAM_SOURCE)


def _last_attention_input(prepared: PreparedModel, target) -> str | None:
    """The last leaf call with a token output before the last attention that runs before `target`:
    the input of a transformer block's attention (its first norm). An attention is a module that
    computes one (`Probe.attention_modules`: an `nn.MultiheadAttention`, timm's and Hugging Face's
    attention modules, any module that calls a softmax over token pairs or a fused attention
    kernel); its input is the token output finished before the first of its layers ran."""
    events = prepared.seen.events
    end = next((i for i, e in enumerate(events) if e[0] == target.name and e[1] == target.call), len(events))
    attentions = prepared.seen.attention_modules
    for index in range(end - 1, -1, -1):
        name, call = events[index][:2]
        if name in attentions and name:
            start = prepared.seen.starts.get(f"{name}#{call}", index)  # before its first layer ran
            for label, called, shape, leaf in reversed(events[:start]):
                if leaf and shape is not None:  # a token output, not a map (Swin's norm: maps win)
                    return f"{label}#{called}" if len(shape) == 3 else None
            return None
    return None


def _inside_attentions(seen) -> set[str]:
    """The module calls ('name#call') that run inside an attention's call, and its own: its layers and
    the modules it calls (CoaT's convolutional position encoding, a module of the model shared by
    its blocks)."""
    inside = set()
    for index, (name, call, _, _) in enumerate(seen.events):
        if name and name in seen.attention_modules:
            start = seen.starts.get(f"{name}#{call}", index)
            inside.update(f"{n}#{c}" for n, c, _, _ in seen.events[start : index + 1])
    return inside


def _is_map(shape: tuple[int, ...], axis: int, images: torch.Tensor) -> bool:
    """Whether a layer output of `shape` (units on `axis`) is a map of the images, of more than one
    position: its spatial axes a scaled-down copy of the images' (each at most the image's, in
    the same proportions within rounding), not an attention's (heads, tokens, features)."""
    if len(shape) != images.ndim:
        return False
    spatial = shape[2:] if axis == 1 else shape[1:-1]
    if math.prod(spatial) <= 1 or any(s > i for s, i in zip(spatial, images.shape[2:])):
        return False
    scales = [i / s for s, i in zip(spatial, images.shape[2:])]
    return max(scales) <= 1.5 * min(scales)


def _auto_penultimates(prepared: PreparedModel, loss: Loss, images: torch.Tensor, token_grid) -> list[str]:
    """Layers to try as the penultimate layer, best first: the last module call (a leaf or a block)
    before the loss's layer whose output is a map like the images' (N, C, *spatial; or
    channels-last), or a token output
    whose tokens make a grid of more than one patch for these images; for a token output, the
    token layers before it too (the input of the last attention first). The layers inside an
    attention module are passed over."""
    specs = [layer for term, w in loss.terms if w != 0 for layer in term.layers()]
    if not specs:
        raise bad_value("penultimate_layer", None, "a layer name: the losses read no layer to search before")
    prepared.probe(images)
    target = prepared.resolve(specs[0])
    found: list[str] = []
    attention_input = _last_attention_input(prepared, target)
    inside = _inside_attentions(prepared.seen)
    for label, shape in prepared.seen.outputs_before(target):
        if len(shape) not in (3, images.ndim) or shape[0] != 1 or label in inside:
            continue  # an attention's own layers (its queries, keys, weights), patches or windows
            # folded into the batch axis (one image probed gave several rows): no map of the image
        axis = prepared.resolve(label, "penultimate_layer").unit_axis
        if _is_map(shape, axis, images):
            found.append(label)
            break  # a map: the classic choice, and nothing earlier is needed
        if len(shape) == 3 and images.ndim == 4 and (len(found) < 8 or label == attention_input):
            try:
                (rows, cols), _ = token_grid_of(shape[2 if axis == 1 else 1], images, token_grid, label)
            except FeatvisError:
                continue
            if rows * cols > 1:  # one patch (a class-token-only layer, a 1 x 1 grid) is no map
                found.append(label)
        if label == attention_input and label in found:  # pytorch-grad-cam's ViT recipe: the last
            found.insert(0, found.pop())  # block's first norm, unless a map runs after it
    if not found:
        raise bad_value(
            "penultimate_layer", None, f"a layer name: no layer with spatial output runs before {specs[0]!r}"
        )
    return found


def visualize_cam(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    filter_indices,
    seed_input,
    *,
    unit_axis: int | None = None,
    token: int | None = None,
    **kwargs,
) -> np.ndarray:
    """Grad-CAM map of the chosen units of `layer` for each image; ``method="gradcam++"`` for Grad-CAM++.

    `unit_axis` and `token` choose the units as in `featvis.visualize_activation`; other
    keyword arguments as in `visualize_cam_with_losses` (``penultimate_layer``,
    ``token_grid`` for transformers, ``method``, ...).

    Examples:
        >>> cam = visualize_cam(lite0.model, "_fc", 285, cat, preprocess=lite0.preprocess)
        >>> cam_pp = visualize_cam(lite0.model, "_fc", 285, cat, method="gradcam++", preprocess=...)
        >>> vit_cam = visualize_cam(vit, "heads.head", 3, image, penultimate_layer="encoder.layers.encoder_layer_11.ln_1")
    """
    objective = ActivationMaximization(layer, filter_indices, unit_axis=unit_axis, token=token)
    return visualize_cam_with_losses(model, objective, seed_input, **kwargs)


def visualize_guided_cam(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    filter_indices,
    seed_input,
    *,
    penultimate_layer: LayerSpec | None = None,
    keepdims: bool = False,
    unit_axis: int | None = None,
    token: int | None = None,
    token_grid: tuple[int, int] | None = None,
    **conventions,
) -> np.ndarray:
    """Guided Grad-CAM (Selvaraju et al.): guided-backprop gradients times the Grad-CAM map.

    Returns |guided gradient x CAM|, max over channels (or per channel with
    ``keepdims=True``), normalized per image.

    Examples:
        >>> maps = visualize_guided_cam(lite0.model, "_fc", 285, cat, preprocess=lite0.preprocess)
    """
    loss = ActivationMaximization(layer, filter_indices, unit_axis=unit_axis, token=token)
    tokens.check_token_grid(token_grid)
    with preparing(model, **conventions) as prepared:
        images = prepared.load_images(seed_input)
        cam = _cam(prepared, loss, images, penultimate_layer, "gradcam", None, token_grid=token_grid)
        cam = torch.as_tensor(_normalize(cam))
        guided = _gradients(prepared, loss, images, backprop_modifier="guided", model_space=True)[0]
    product = (guided * cam.to(guided.device)[:, None]).abs()
    if keepdims:
        return np.moveaxis(_normalize(product, source=GUIDED_CAM_SOURCE), 1, -1)
    return _normalize(product.max(dim=1).values, source=GUIDED_CAM_SOURCE)


def overlay(image, heatmap: np.ndarray, colormap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] heat map (resized to the image) over an image; returns (H, W, 3) uint8.

    Examples:
        >>> featvis.save_image(overlay(cat, cam[0]), "cat_cam.png")
    """
    from matplotlib import colormaps

    if colormap not in colormaps:
        raise bad_value("colormap", colormap, "a matplotlib colormap name such as 'jet' or 'viridis'")
    if not 0 <= alpha <= 1:
        raise bad_value("alpha", alpha, "a number in [0, 1]")
    base = to_unit_tensor(image, "image", (0, 255) if not _is_unit_float(image) else (0.0, 1.0))
    if base.shape[0] != 1:
        raise bad_value("image", f"a batch of {base.shape[0]}", "one image")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2 or not np.isfinite(heat).all():
        raise bad_value("heatmap", f"an array of shape {heat.shape}", "a finite (H, W) map")
    heat_t = torch.from_numpy(heat)[None, None]
    heat_t = F.interpolate(heat_t, size=base.shape[-2:], mode="bilinear", align_corners=False)[0, 0].clamp(
        0, 1
    )
    colored = colormaps[colormap](heat_t.numpy())[..., :3]
    rgb = base[0].expand(3, -1, -1).permute(1, 2, 0).numpy()
    return np.rint(255 * ((1 - alpha) * rgb + alpha * colored)).clip(0, 255).astype(np.uint8)


def _is_unit_float(image) -> bool:
    return (
        isinstance(image, np.ndarray | torch.Tensor)
        and not _is_int_dtype(image)
        and float(image.max()) <= 1.0
    )


def _is_int_dtype(image) -> bool:
    if isinstance(image, np.ndarray):
        return np.issubdtype(image.dtype, np.integer)
    return not image.is_floating_point()
