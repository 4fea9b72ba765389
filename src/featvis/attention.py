"""Attention maps: where in an image the model looks for a class or a unit.

Saliency (vanilla, guided, rectified, SmoothGrad), Grad-CAM, Grad-CAM++ and
guided Grad-CAM, with the same losses, grad modifiers and backprop modifiers as
activation maximization. Every function takes a batch of images and returns one
map per image, resized to the input and normalized to [0, 1] on its own.

Example:
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> cam = featvis.visualize_cam(lite0.model, "_fc", 285, "cat.jpg", preprocess=lite0.preprocess)
    >>> featvis.save_image(featvis.overlay(cat, cam[0]), "cam.png")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from . import backprop_modifiers, grad_modifiers
from .errors import FeatvisValueError, bad_value, check_int, check_number
from .image import check_range, to_unit_tensor
from .input_modifiers import _randn_like
from .losses import ActivationMaximization, Loss, LossContext, layer_key
from .targets import (
    Capture,
    LayerSpec,
    ModelGuard,
    probe,
    resolve_device,
    resolve_layer,
    warn_pre_softmax,
)
from .visualization import _as_losses

CAM_METHODS = ("gradcam", "gradcam++")


def _load_batch(seed_input, input_range, channels, device) -> torch.Tensor:
    if isinstance(seed_input, Sequence) and not isinstance(seed_input, str | np.ndarray):
        if not seed_input:
            raise bad_value("seed_input", seed_input, "at least one image")
        return torch.cat([to_unit_tensor(s, "seed_input", input_range, channels) for s in seed_input]).to(
            device
        )
    return to_unit_tensor(seed_input, "seed_input", input_range, channels).to(device)


def _gradients(
    model: nn.Module,
    loss: Loss,
    images: torch.Tensor,
    *,
    input_range,
    preprocess,
    backprop_modifier=None,
    extra_layer: LayerSpec | None = None,
):
    """Gradients of the score (minus the losses) w.r.t. the images, and of the extra layer if asked.

    Backprop modifiers see the gradient of the score, the quantity being
    maximized, so 'guided' passes what increases the class, as its definition says.
    """
    terms = [(t, w) for t, w in loss.terms if w != 0]
    rule = backprop_modifiers.get(backprop_modifier)
    low, high = input_range
    with ModelGuard(model) as guard:
        x0 = low + (high - low) * images[:1]
        seen = probe(model, preprocess(x0) if preprocess is not None else x0)
        specs = [layer for term, _ in terms for layer in term.layers()]
        targets = {layer_key(spec): resolve_layer(model, spec, seen) for spec in specs}
        penultimate = None
        if extra_layer is not None:
            penultimate = resolve_layer(model, extra_layer, seen, argument="penultimate_layer")
        pre_softmax = {t.key for t in targets.values()} & seen.softmax_outputs
        warn_pre_softmax(pre_softmax)
        wanted = {t.key: t for t in [*targets.values(), *([penultimate] if penultimate else [])]}
        capture = Capture(list(wanted.values()), guard, pre_softmax)
        images = images.detach().clone().requires_grad_(True)
        x = low + (high - low) * images
        with backprop_modifiers.modify_backprop(rule):
            activations = capture.run(model, preprocess(x) if preprocess is not None else x)
            extra = activations[penultimate.key] if penultimate else None
            raw_extra = capture.raw_outputs[penultimate.key] if penultimate else None
            if raw_extra is not None:
                raw_extra.retain_grad()  # the tensor on the path to the loss, not a channels-first view
            ctx = LossContext(images=images, views=1, activations=activations, targets=targets)
            score = -sum(w * ctx.per_image(t(ctx)) for t, w in terms).sum()
            if not score.requires_grad:
                raise FeatvisValueError("the losses do not depend on the input image")
            score.backward()
    if not torch.isfinite(images.grad).all():
        raise FeatvisValueError("the gradient of the losses is NaN or infinite for this input")
    extra_grad = None
    if raw_extra is not None and raw_extra.grad is not None:
        extra_grad = raw_extra.grad if raw_extra is extra else raw_extra.grad.movedim(-1, 1)
    return images.grad, (extra.detach() if extra is not None else None), extra_grad, seen


def _normalize(maps: torch.Tensor) -> np.ndarray:
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp(min=1e-12)).view_as(maps).cpu().numpy()


def visualize_saliency_with_losses(
    model: nn.Module,
    losses,
    seed_input,
    *,
    backprop_modifier: str | Callable | None = None,
    grad_modifier: str | Callable | None = "absolute",
    keepdims: bool = False,
    smooth_samples: int = 0,
    smooth_noise: float = 0.15,
    input_range: tuple[float, float] = (0, 255),
    preprocess: Callable | None = None,
    channels: int = 3,
    seed: int | None = 0,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Saliency of a weighted sum of losses: d(-loss)/d(input), modified, normalized per image.

    ``smooth_samples > 0`` gives SmoothGrad: the mean over noisy copies (noise std
    ``smooth_noise`` times the input range). Returns (B, H, W), or (B, H, W, C)
    with ``keepdims=True``.

    Example:
        >>> maps = visualize_saliency_with_losses(model, [(ActivationMaximization("_fc", 285), 1)], cat)
    """
    loss = _as_losses(losses)
    input_range = check_range(input_range)
    modifier = grad_modifiers.get(grad_modifier)
    check_int("smooth_samples", smooth_samples, 0)
    check_number("smooth_noise", smooth_noise, minimum=0)
    target_device = resolve_device(device, model)
    images = _load_batch(seed_input, input_range, channels, target_device)
    generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
    samples = max(1, smooth_samples)
    total = torch.zeros_like(images)
    for _ in range(samples):
        noisy = images
        if smooth_samples:
            noisy = images + smooth_noise * _randn_like(images, generator)
        grads = -_gradients(
            model,
            loss,
            noisy,
            input_range=input_range,
            preprocess=preprocess,
            backprop_modifier=backprop_modifier,
        )[0]
        total += modifier(grads) if modifier is not None else grads
    grads = total / samples
    if keepdims:
        return _normalize(grads).transpose(0, 2, 3, 1)
    return _normalize(grads.max(dim=1).values)


def visualize_saliency(
    model: nn.Module, layer: LayerSpec, filter_indices, seed_input, **kwargs
) -> np.ndarray:
    """Saliency map of the chosen units of `layer` for each image (keras-vis's API, plus SmoothGrad).

    Example:
        >>> vanilla = visualize_saliency(lite0.model, "_fc", 285, cat, preprocess=lite0.preprocess)
        >>> guided = visualize_saliency(lite0.model, "_fc", 285, cat, backprop_modifier="guided", preprocess=...)
        >>> smooth = visualize_saliency(lite0.model, "_fc", 285, cat, smooth_samples=20, preprocess=...)
    """
    return visualize_saliency_with_losses(
        model, ActivationMaximization(layer, filter_indices), seed_input, **kwargs
    )


def visualize_cam_with_losses(
    model: nn.Module,
    losses,
    seed_input,
    *,
    penultimate_layer: LayerSpec | None = None,
    method: str = "gradcam",
    grad_modifier: str | Callable | None = None,
    input_range: tuple[float, float] = (0, 255),
    preprocess: Callable | None = None,
    channels: int = 3,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Grad-CAM (or Grad-CAM++) of a weighted sum of losses; returns (B, H, W) in [0, 1].

    `penultimate_layer` defaults to the last layer run before the loss's layer whose
    output has spatial dimensions (for EfficientNet-Lite0 and ``"_fc"``: the head
    activation ``"_swish#1"``).

    Example:
        >>> cams = visualize_cam_with_losses(model, [(ActivationMaximization("_fc", 285), 1)], cat)
    """
    loss = _as_losses(losses)
    input_range = check_range(input_range)
    if method not in CAM_METHODS:
        raise bad_value("method", method, f"one of {', '.join(CAM_METHODS)}")
    modifier = grad_modifiers.get(grad_modifier)
    target_device = resolve_device(device, model)
    images = _load_batch(seed_input, input_range, channels, target_device)
    penultimate = penultimate_layer
    if penultimate is None:
        penultimate = _auto_penultimate(model, loss, images, input_range, preprocess)
    _, acts, grads, _ = _gradients(
        model, loss, images, input_range=input_range, preprocess=preprocess, extra_layer=penultimate
    )
    if acts.ndim != 4:
        raise bad_value("penultimate_layer", penultimate, "a layer with (N, C, H, W) output")
    if grads is None:
        raise bad_value(
            "penultimate_layer", penultimate, "a layer the loss depends on (it runs before the loss's layer)"
        )
    if modifier is not None:
        grads = modifier(grads)
    if method == "gradcam":
        weights = grads.mean(dim=(2, 3), keepdim=True)
    else:
        g2, g3 = grads**2, grads**3
        denominator = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
        alphas = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
        weights = (alphas * F.relu(grads)).sum(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return _normalize(cam)


def _auto_penultimate(model, loss, images, input_range, preprocess) -> str:
    low, high = input_range
    specs = [layer for term, w in loss.terms if w != 0 for layer in term.layers()]
    if not specs:
        raise bad_value("penultimate_layer", None, "a layer name: the losses read no layer to search before")
    with ModelGuard(model):
        x = low + (high - low) * images[:1]
        seen = probe(model, preprocess(x) if preprocess is not None else x)
        found = seen.spatial_layer_before(resolve_layer(model, specs[0], seen))
    if found is None:
        raise bad_value(
            "penultimate_layer", None, f"a layer name: no layer with spatial output runs before {specs[0]!r}"
        )
    return found


def visualize_cam(model: nn.Module, layer: LayerSpec, filter_indices, seed_input, **kwargs) -> np.ndarray:
    """Grad-CAM map of the chosen units of `layer` for each image; ``method="gradcam++"`` for Grad-CAM++.

    Example:
        >>> cam = visualize_cam(lite0.model, "_fc", 285, cat, preprocess=lite0.preprocess)
        >>> cam_pp = visualize_cam(lite0.model, "_fc", 285, cat, method="gradcam++", preprocess=...)
    """
    return visualize_cam_with_losses(
        model, ActivationMaximization(layer, filter_indices), seed_input, **kwargs
    )


def visualize_guided_cam(
    model: nn.Module,
    layer: LayerSpec,
    filter_indices,
    seed_input,
    *,
    penultimate_layer: LayerSpec | None = None,
    keepdims: bool = False,
    input_range: tuple[float, float] = (0, 255),
    preprocess: Callable | None = None,
    channels: int = 3,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Guided Grad-CAM (Selvaraju et al.): guided-backprop gradients times the Grad-CAM map.

    Returns |guided gradient x CAM|, max over channels (or per channel with
    ``keepdims=True``), normalized per image.

    Example:
        >>> maps = visualize_guided_cam(lite0.model, "_fc", 285, cat, preprocess=lite0.preprocess)
    """
    common = dict(input_range=input_range, preprocess=preprocess, channels=channels, device=device)
    cam = visualize_cam(
        model, layer, filter_indices, seed_input, penultimate_layer=penultimate_layer, **common
    )
    input_range = check_range(input_range)
    target_device = resolve_device(device, model)
    images = _load_batch(seed_input, input_range, channels, target_device)
    loss = ActivationMaximization(layer, filter_indices)
    guided = _gradients(
        model, loss, images, input_range=input_range, preprocess=preprocess, backprop_modifier="guided"
    )[0]
    product = (guided * torch.as_tensor(cam, device=guided.device)[:, None]).abs()
    if keepdims:
        return _normalize(product).transpose(0, 2, 3, 1)
    return _normalize(product.max(dim=1).values)


def overlay(image, heatmap: np.ndarray, colormap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] heat map (resized to the image) over an image; returns (H, W, 3) uint8.

    Example:
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
