"""Building blocks (Olah et al. 2018, "The Building Blocks of Interpretability"): one image's
activations at a layer factored into a few groups with NMF, each shown where it sits in the
image, what it looks like and how much it pushes a class.

The activation map (positions x channels) is factored as ``maps @ directions``: a group is a
direction of the layer's channel space (drawn with feature visualization) and a map of how much
of it each position holds. A layer whose outputs can be negative is factored on its positive and
negative parts side by side, and a group's direction is the first part minus the second. A
group's attribution is what it adds to the class's logit to first order: the sum over positions
of its share of the activation times the logit's gradient there.

Examples:
    >>> blocks = featvis.building_blocks(lite0.model, "_blocks.10", "cat.jpg", k=6,
    ...                                  preprocess=lite0.preprocess, class_names=lite0.class_names)
    >>> featvis.save_image(blocks.figure, "cat_blocks.png")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
import torch
from torch import nn
import torch.nn.functional as F

from featvis.attribution.cam import layer_gradients
from featvis.errors import bad_value, check_int
from featvis.image import to_array
from featvis.model.prepared import PreparedModel, preparing
from featvis.model.targets import LayerSpec
from featvis.optvis.losses import DirectionPerImage, UnitPerImage
from featvis.optvis.regularizers import TotalVariation
from featvis.optvis.visualization import visualize_activation_with_losses


@dataclass
class BuildingBlocks:
    """The groups of one image's activations: `maps` (k, H, W) in [0, 1] at the image's size,
    `directions` (k, channels), their drawings `icons` (k, S, S, C) uint8, their `attribution` to
    the class (k,), in the order of their attribution (largest first), and the `figure`."""

    layer: str
    class_index: int
    class_name: str
    maps: np.ndarray
    directions: torch.Tensor
    icons: np.ndarray
    attribution: np.ndarray
    figure: np.ndarray


def building_blocks(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    image: object,
    k: int = 6,
    *,
    class_index: int | None = None,
    class_names: Sequence[str] | None = None,
    icon_size: int | None = None,
    max_iter: int = 128,
    seed: int = 0,
    input_range: tuple[float, float] = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
) -> BuildingBlocks:
    """Factor `image`'s activations at `layer` into `k` groups (NMF) and draw each one.

    `image`: a path, an array or a tensor of one image (as `visualize_cam` takes it).
    `class_index`: the class whose logit the groups are attributed to (default: the model's
    top class for the image). The icons are `icon_size` px (default: the image's shorter side,
    at most 128), drawn in one batched call of `max_iter` steps. Needs scikit-learn
    (``pip install "featvis[concepts]"``).

    Examples:
        >>> blocks = featvis.building_blocks(model, "layer3", photo, k=4, input_range=(0.0, 1.0))
        >>> blocks.attribution  # what each group adds to the class's logit
    """
    check_int("k", k, 1)
    check_int("max_iter", max_iter, 1)
    try:
        from sklearn.decomposition import NMF
    except ImportError as err:
        raise bad_value(
            "building_blocks", "no scikit-learn", 'scikit-learn: pip install "featvis[concepts]"'
        ) from err
    conventions = dict(input_range=input_range, preprocess=preprocess, channels=channels, device=device)
    with preparing(model, **conventions) as prepared:
        prepared.require_input_range("building blocks")
        pictures = prepared.load_images(image, "image")[:1]
        act, grad, chosen = _activation_and_gradient(prepared, layer, pictures, class_index)
        name = prepared.resolve(layer).name
        channels_count, rows, columns = act.shape
        if k > rows * columns:
            raise bad_value("k", k, f"at most the {rows * columns} positions of layer {name!r}")
        flat = act.reshape(channels_count, -1).T.double()  # (positions, channels)
        split = bool((flat < 0).any())
        features = torch.cat([flat.clamp(min=0), (-flat).clamp(min=0)], 1) if split else flat
        factor = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=1000)
        maps = torch.from_numpy(factor.fit_transform(features.numpy()))  # (positions, k)
        parts = torch.from_numpy(factor.components_)  # (k, features)
        directions = parts[:, :channels_count] - parts[:, channels_count:] if split else parts
        shares = maps[:, :, None] * directions[None]  # (positions, k, channels)
        attribution = (shares * grad.reshape(channels_count, -1).T.double()[:, None]).sum((0, 2))
        order = torch.argsort(attribution, descending=True)
        maps, directions, attribution = maps[:, order], directions[order].float(), attribution[order]
        size = icon_size or min(128, *pictures.shape[2:])
        usable = directions.norm(dim=1) > 0
        icons = np.full((k, size, size, prepared.channels), 255, np.uint8)
        if usable.any():
            loss = DirectionPerImage(layer, directions[usable])
            drawn = visualize_activation_with_losses(
                prepared,
                [(loss, 1.0), (TotalVariation(), 1.0)],
                size=size,
                batch_size=int(usable.sum()),
                seed=seed,
                max_iter=max_iter,
                return_result=True,
            )
            icons[usable.numpy()] = to_array(drawn.images, (0, 255))
        photo = to_array(pictures.cpu(), (0, 255))[0]
    spatial = maps.T.reshape(k, 1, rows, columns).float()
    spatial = F.interpolate(spatial, size=photo.shape[:2], mode="bilinear", align_corners=False)[:, 0]
    spatial = (spatial / spatial.flatten(1).amax(1).clamp(min=1e-12)[:, None, None]).clamp(0, 1).numpy()
    label = class_names[chosen] if class_names is not None and chosen < len(class_names) else str(chosen)
    figure = _figure(photo, spatial, icons, attribution.numpy(), label)
    return BuildingBlocks(name, chosen, label, spatial, directions, icons, attribution.numpy(), figure)


def _activation_and_gradient(prepared, layer, pictures, class_index):
    """The layer's output for the one image (C, h, w), the class logit's gradient w.r.t. it, and
    the class."""
    prepared.probe(pictures)
    prepared.resolve(layer)  # an unknown layer is named as `layer`
    logits = prepared.layer_output("", pictures)
    if logits.ndim != 2:
        raise bad_value("layer", layer, "a layer of a model whose output is (N, classes) logits")
    chosen = int(logits[0].argmax()) if class_index is None else class_index
    if not 0 <= chosen < logits.shape[1]:
        raise bad_value("class_index", class_index, f"a class in [0, {logits.shape[1] - 1}]")
    act, grad = layer_gradients(prepared, UnitPerImage("", [chosen]), pictures, layer)
    if act.ndim != 4:
        raise bad_value("layer", layer, "a layer with (N, C, H, W) output")
    grad = torch.zeros_like(act) if grad is None else grad
    return act[0].detach().float().cpu(), grad[0].float().cpu(), chosen


def _figure(photo: np.ndarray, maps: np.ndarray, icons: np.ndarray, attribution: np.ndarray, label: str):
    """The paper's layout: the photo, then per group its map over the photo (top) and its drawing
    (below), with its attribution to the class."""
    tile = 128
    k = len(maps)
    canvas = Image.new("RGB", ((k + 1) * (tile + 8) + 8, 2 * (tile + 24) + 24), "white")
    draw = ImageDraw.Draw(canvas)
    gray = photo if photo.shape[-1] == 3 else np.repeat(photo, 3, -1)
    canvas.paste(Image.fromarray(gray).resize((tile, tile)), (8, 24))
    draw.text((8, 6), f"class: {label}", fill="black")
    for i in range(k):
        x = (i + 1) * (tile + 8) + 8
        heat = maps[i][..., None]
        tinted = (gray * (0.25 + 0.75 * heat) + np.array([255, 80, 0]) * 0.35 * heat).clip(0, 255)
        canvas.paste(Image.fromarray(tinted.astype(np.uint8)).resize((tile, tile)), (x, 24))
        icon = icons[i] if icons.shape[-1] == 3 else np.repeat(icons[i], 3, -1)
        canvas.paste(Image.fromarray(icon).resize((tile, tile)), (x, tile + 40))
        draw.text((x, 6), f"group {i + 1}: {attribution[i]:+.2f}", fill="black")
    return np.asarray(canvas)
