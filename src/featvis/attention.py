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
from .errors import FeatvisValueError, NonFiniteError, bad_type, bad_value, check_int, check_number, choose
from .image import to_unit_tensor
from .losses import ActivationMaximization, Loss, LossContext, as_losses
from .prepared import PreparedModel, prepare
from .rng import Streams, derive_key, fresh_seed
from .targets import LayerSpec

CamMethod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al.): channels weighted by their mean gradient, summed, ReLU."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activations).sum(1))


def gradcam_plus_plus(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al.): per-position weights alpha from the gradient's powers."""
    g2, g3 = gradients**2, gradients**3
    denominator = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g3
    alphas = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    weights = (alphas * F.relu(gradients)).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * activations).sum(1))


CAM_METHODS: dict[str, CamMethod] = {"gradcam": gradcam, "gradcam++": gradcam_plus_plus}


def register_cam(name: str, method: CamMethod) -> None:
    """Add a CAM method: a function (activations, gradients) -> map, both (N, C, H, W), map (N, H, W).

    Example:
        >>> register_cam("gradxact", lambda a, g: F.relu((a * g).sum(1)))
        >>> featvis.visualize_cam(model, "fc", 3, image, method="gradxact")
    """
    if not isinstance(name, str) or not name:
        raise bad_type("name", name, "a non-empty str")
    if not callable(method):
        raise bad_type("method", method, "a function (activations, gradients) -> map")
    CAM_METHODS[name] = method


def _load_batch(seed_input, prepared: PreparedModel) -> torch.Tensor:
    if isinstance(seed_input, Sequence) and not isinstance(seed_input, str | np.ndarray):
        if not seed_input:
            raise bad_value("seed_input", seed_input, "at least one image")
        images = [
            to_unit_tensor(s, "seed_input", prepared.input_range, prepared.channels) for s in seed_input
        ]
        return torch.cat(images).to(prepared.device)
    return to_unit_tensor(seed_input, "seed_input", prepared.input_range, prepared.channels).to(
        prepared.device
    )


def _gradients(
    prepared: PreparedModel,
    loss: Loss,
    images: torch.Tensor,
    *,
    backprop_modifier=None,
    extra_layer: LayerSpec | None = None,
):
    """Gradients of the score (minus the losses) w.r.t. the images, and the extra layer's output and gradient.

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
        activations = capture.run(prepared.model, prepared.model_input(images))
        extra_out = activations[extra.key] if extra else None
        raw_extra = capture.raw_outputs[extra.key] if extra else None
        if raw_extra is not None:
            raw_extra.retain_grad()  # the tensor on the path to the loss, not a channels-first view
        ctx = LossContext(images=images, views=1, activations=activations, targets=targets)
        score = -sum(w * ctx.per_image(t(ctx)) for t, w in terms).sum()
        if not score.requires_grad:
            raise FeatvisValueError("the losses do not depend on the input image")
        score.backward()
    if not torch.isfinite(images.grad).all():
        raise NonFiniteError("the gradient of the losses is NaN or infinite for this input")
    extra_grad = None
    if raw_extra is not None and raw_extra.grad is not None:
        extra_grad = raw_extra.grad if raw_extra is extra_out else raw_extra.grad.movedim(-1, 1)
        extra_grad = extra_grad.float()  # maps are computed in float32 whatever the model's dtype
    return images.grad, (extra_out.detach().float() if extra_out is not None else None), extra_grad


def input_gradients(
    model: nn.Module | PreparedModel,
    losses,
    seed_input,
    *,
    backprop_modifier: str | Callable | None = None,
    **conventions,
) -> torch.Tensor:
    """d(-loss)/d(image) for each image, in the units of `input_range`, as (B, C, H, W), unnormalized.

    Example:
        >>> grads = input_gradients(net, ActivationMaximization("fc", 3), image, backprop_modifier="guided")
    """
    loss = as_losses(losses)
    prepared, owned = prepare(model, **conventions)
    try:
        images = _load_batch(seed_input, prepared)
        low, high = prepared.input_range
        return _gradients(prepared, loss, images, backprop_modifier=backprop_modifier)[0] / (high - low)
    finally:
        if owned:
            prepared.close()


def _normalize(maps: torch.Tensor) -> np.ndarray:
    if not torch.isfinite(maps).all():
        raise NonFiniteError("the map holds NaN or infinite values; the model's output is not finite here")
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp(min=1e-12)).view_as(maps).cpu().numpy()


def visualize_saliency_with_losses(
    model: nn.Module | PreparedModel,
    losses,
    seed_input,
    *,
    backprop_modifier: str | Callable | None = None,
    grad_modifier: str | Callable | None = "absolute",
    keepdims: bool = False,
    smooth_samples: int = 0,
    smooth_noise: float = 0.15,
    seed: int | None = 0,
    **conventions,
) -> np.ndarray:
    """Saliency of a weighted sum of losses: d(score)/d(input) (score = minus the losses), modified by
    `grad_modifier` (default ``"absolute"``; ``"negate"`` shows what lowers the score), normalized per image.

    ``smooth_samples > 0`` gives SmoothGrad: the mean over noisy copies (noise std
    ``smooth_noise`` times the input range; image i's noise drawn from the stream of
    (seed, i)). Returns (B, H, W), or (B, H, W, C) with ``keepdims=True``.
    `conventions`: ``input_range``, ``preprocess``, ``channels``, ``device``.

    Example:
        >>> maps = visualize_saliency_with_losses(model, [(ActivationMaximization("_fc", 285), 1)], cat)
    """
    loss = as_losses(losses)
    modifier = grad_modifiers.get(grad_modifier)
    backprop_modifiers.get(backprop_modifier)
    check_int("smooth_samples", smooth_samples, 0)
    check_number("smooth_noise", smooth_noise, minimum=0)
    seed = fresh_seed() if seed is None else check_int("seed", seed, 0)
    prepared, owned = prepare(model, **conventions)
    try:
        images = _load_batch(seed_input, prepared)
        streams = Streams([derive_key(seed, "saliency", i) for i in range(len(images))], images.device)
        total = torch.zeros_like(images)
        for _ in range(max(1, smooth_samples)):
            noisy = images
            if smooth_samples:
                noisy = images + smooth_noise * streams.normal(*images.shape[1:]).to(images.device)
            # the score's gradient, as in Grad-CAM: 'negate' shows what lowers the output
            grads = _gradients(prepared, loss, noisy, backprop_modifier=backprop_modifier)[0]
            total += modifier(grads) if modifier is not None else grads
    finally:
        if owned:
            prepared.close()
    grads = total / max(1, smooth_samples)
    if keepdims:
        return _normalize(grads).transpose(0, 2, 3, 1)
    return _normalize(grads.max(dim=1).values)


def visualize_saliency(
    model: nn.Module | PreparedModel, layer: LayerSpec, filter_indices, seed_input, **kwargs
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


def _cam(prepared, loss, images, penultimate_layer, method, grad_modifier) -> torch.Tensor:
    """The (B, H, W) class activation map at the images' size, not normalized."""
    cam_method = choose("method", method, CAM_METHODS) if isinstance(method, str) else method
    if not callable(cam_method):
        raise bad_type("method", method, f"one of {', '.join(CAM_METHODS)} or a function")
    modifier = grad_modifiers.get(grad_modifier)
    penultimate = penultimate_layer
    if penultimate is None:
        penultimate = _auto_penultimate(prepared, loss, images)
    _, acts, grads = _gradients(prepared, loss, images, extra_layer=penultimate)
    if acts.ndim != 4:
        raise bad_value("penultimate_layer", penultimate, "a layer with (N, C, H, W) output")
    if grads is None:
        raise bad_value(
            "penultimate_layer", penultimate, "a layer the loss depends on (it runs before the loss's layer)"
        )
    if modifier is not None:
        grads = modifier(grads)
    cam = cam_method(acts, grads)[:, None]
    return F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def visualize_cam_with_losses(
    model: nn.Module | PreparedModel,
    losses,
    seed_input,
    *,
    penultimate_layer: LayerSpec | None = None,
    method: str | CamMethod = "gradcam",
    grad_modifier: str | Callable | None = None,
    **conventions,
) -> np.ndarray:
    """A class activation map (Grad-CAM by default) of a weighted sum of losses; (B, H, W) in [0, 1].

    `method`: a name in `CAM_METHODS` (``"gradcam"``, ``"gradcam++"``; `register_cam` adds
    one) or a function (activations, gradients) -> map. `penultimate_layer` defaults to
    the last layer run before the loss's layer whose output has spatial dimensions (for
    EfficientNet-Lite0 and ``"_fc"``: the head activation ``"_swish#1"``).

    Example:
        >>> cams = visualize_cam_with_losses(model, [(ActivationMaximization("_fc", 285), 1)], cat)
    """
    loss = as_losses(losses)
    prepared, owned = prepare(model, **conventions)
    try:
        images = _load_batch(seed_input, prepared)
        cam = _cam(prepared, loss, images, penultimate_layer, method, grad_modifier)
    finally:
        if owned:
            prepared.close()
    return _normalize(cam)


def _auto_penultimate(prepared: PreparedModel, loss: Loss, images: torch.Tensor) -> str:
    specs = [layer for term, w in loss.terms if w != 0 for layer in term.layers()]
    if not specs:
        raise bad_value("penultimate_layer", None, "a layer name: the losses read no layer to search before")
    prepared.probe(images)
    found = prepared.spatial_layer_before(specs[0])
    if found is None:
        raise bad_value(
            "penultimate_layer", None, f"a layer name: no layer with spatial output runs before {specs[0]!r}"
        )
    return found


def visualize_cam(
    model: nn.Module | PreparedModel, layer: LayerSpec, filter_indices, seed_input, **kwargs
) -> np.ndarray:
    """Grad-CAM map of the chosen units of `layer` for each image; ``method="gradcam++"`` for Grad-CAM++.

    Example:
        >>> cam = visualize_cam(lite0.model, "_fc", 285, cat, preprocess=lite0.preprocess)
        >>> cam_pp = visualize_cam(lite0.model, "_fc", 285, cat, method="gradcam++", preprocess=...)
    """
    return visualize_cam_with_losses(
        model, ActivationMaximization(layer, filter_indices), seed_input, **kwargs
    )


def visualize_guided_cam(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    filter_indices,
    seed_input,
    *,
    penultimate_layer: LayerSpec | None = None,
    keepdims: bool = False,
    **conventions,
) -> np.ndarray:
    """Guided Grad-CAM (Selvaraju et al.): guided-backprop gradients times the Grad-CAM map.

    Returns |guided gradient x CAM|, max over channels (or per channel with
    ``keepdims=True``), normalized per image.

    Example:
        >>> maps = visualize_guided_cam(lite0.model, "_fc", 285, cat, preprocess=lite0.preprocess)
    """
    loss = ActivationMaximization(layer, filter_indices)
    prepared, owned = prepare(model, **conventions)
    try:
        images = _load_batch(seed_input, prepared)
        cam = torch.as_tensor(_normalize(_cam(prepared, loss, images, penultimate_layer, "gradcam", None)))
        guided = _gradients(prepared, loss, images, backprop_modifier="guided")[0]
    finally:
        if owned:
            prepared.close()
    product = (guided * cam.to(guided.device)[:, None]).abs()
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
