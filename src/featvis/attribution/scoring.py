"""What every attribution method shares: the score (minus the losses) of rows of images, its
gradient with respect to the images, baselines, smoothing over noisy copies and flips, and the
scaling of maps to [0, 1].

Examples:
    >>> score = scorer(prepared, loss, images, batch_size=16)
    >>> score(torch.arange(len(images)))  # one score per image, without gradients
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math
import numbers
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from featvis.errors import FeatvisValueError, FeatvisWarning, NonFiniteError, bad_value, check_number
from featvis.image import to_unit_tensor
from featvis.model.prepared import PreparedModel
from featvis.optvis import backprop_modifiers
from featvis.optvis.losses import Loss, LossContext
from featvis.rng import Streams, derive_key


def gradients(
    prepared: PreparedModel,
    loss: Loss,
    images: torch.Tensor,
    *,
    backprop_modifier: str | Callable | None = None,
    model_space: bool = False,
) -> torch.Tensor:
    """The gradient of the score (minus the losses) w.r.t. the images (with `model_space`: w.r.t. the
    model input, after `input_range` and `preprocess`), through the model as it is.

    Backprop modifiers see the gradient of the score, the quantity being
    maximized, so 'guided' passes what increases the class, as its definition says.
    """
    terms = [(t, w) for t, w in loss.terms if w != 0]
    rule = backprop_modifiers.get(backprop_modifier)
    prepared.probe(images)
    targets = prepared.resolve_all(layer for term, _ in terms for layer in term.layers())
    capture = prepared.capture(list(targets.values()))
    images = images.detach().clone().requires_grad_(True)
    with backprop_modifiers.modify_backprop(rule):
        x = prepared.model_input(images)
        if model_space and x is not images:
            x.retain_grad()
        activations = capture.run(prepared.model, x)
        ctx = LossContext(images=images, views=1, activations=activations, targets=targets)
        score = row_scores(ctx, terms).sum()
        if not score.requires_grad:
            raise FeatvisValueError("the losses do not depend on the input image")
        score.backward()
    if not torch.isfinite(images.grad).all():
        raise NonFiniteError("the gradient of the losses is NaN or infinite for this input")
    return x.grad.to(images.dtype) if model_space and x is not images else images.grad


def normalize(maps: torch.Tensor, percentile: float | None = None, source: str | None = None) -> np.ndarray:
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
        high = quantile(flat, percentile / 100)
    scaled = ((flat - low) / (high - low).clamp(min=1e-12)).clamp(0, 1)
    return scaled.view_as(maps).cpu().numpy()


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


def quantile(flat: torch.Tensor, q: float) -> torch.Tensor:
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


def check_percentile(percentile) -> float | None:
    if percentile is None:
        return None
    value = check_number("percentile", percentile, positive=True)
    if value > 100:
        raise bad_value("percentile", percentile, "a number in (0, 100], or None for min-max scaling")
    return value


def load_baseline(baseline, images: torch.Tensor, prepared: PreparedModel) -> torch.Tensor:
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


def loss_terms(prepared: PreparedModel, loss: Loss):
    """The loss's terms of non-zero weight and the layers they read, resolved."""
    terms = [(t, w) for t, w in loss.terms if w != 0]
    return terms, prepared.resolve_all(layer for term, _ in terms for layer in term.layers())


def row_scores(ctx: LossContext, terms) -> torch.Tensor:
    """The score (minus the losses) of each row of `ctx`, each row with its own image's units."""
    return -sum(w * ctx.per_row(t(ctx)) for t, w in terms)


def scorer(
    prepared: PreparedModel, loss: Loss, images: torch.Tensor, batch_size: int
) -> Callable[..., torch.Tensor]:
    """``score(index, inputs=None, masks=None)`` -> the score (minus the losses) of each row, row r
    a copy of image ``index[r]`` of `images` scored with that image's units (a loss such as
    `UnitPerImage` gives each image its own): the image itself, or ``inputs[r]`` (a changed copy,
    in featvis's units) when given. `masks` (rows, 1, H, W) multiply the model input (after
    `preprocess`), as pytorch-grad-cam's Score-CAM masks it. Without gradients, `batch_size` rows
    per forward, through the fused runner, stopped after the loss's last layer."""
    terms, targets = loss_terms(prepared, loss)
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
                out.append(row_scores(ctx, terms).float())
        return torch.cat(out)

    return score


def path_gradients(
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
        score = row_scores(ctx, terms).sum()
        if not score.requires_grad:
            raise FeatvisValueError("the losses do not depend on the input image")
        (grad,) = torch.autograd.grad(score, leaf)
    if not torch.isfinite(grad).all():
        raise NonFiniteError("the gradient of the losses is NaN or infinite for this input")
    return grad.to(images.dtype)


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


def smoothed(function, images, *, smooth_samples, smooth_noise, aug_smooth, seed, label) -> torch.Tensor:
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


def resize_map(cam: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, 1, *spatial) maps resized (linear, bilinear or trilinear) to `size`."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(cam.float(), size=tuple(size), mode=mode, align_corners=False)
