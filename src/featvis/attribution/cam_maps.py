"""Class activation maps: `visualize_cam` (any method of `CAM_METHODS`, or your own) and guided
Grad-CAM, for a class or unit, per image, resized to the input and normalized to [0, 1].

Examples:
    >>> cam = featvis.visualize_cam(lite0.model, "_fc", 285, "cat.jpg", preprocess=lite0.preprocess)
    >>> featvis.visualize_cam(model, "fc", 3, image, method=ScoreCam(batch_size=16))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from featvis.attribution.cam import CamMethod
from featvis.attribution.cam_methods import GradCam, as_cam_method
from featvis.attribution.scoring import gradients, normalize, smoothed
from featvis.errors import bad_type, check_int, check_number, known_keywords
from featvis.model import tokens
from featvis.model.prepared import PreparedModel, preparing
from featvis.model.targets import LayerSpec, OutputPick
from featvis.optvis.losses import ActivationMaximization, as_losses
from featvis.rng import seed_or_fresh

CAM_SOURCE = (
    "the class activation map (made of the gradient of the target with respect to the penultimate layer)"
)


GUIDED_CAM_SOURCE = (
    "the guided gradient of the target with respect to the input times the class activation map"
)


@known_keywords
def visualize_cam_with_losses(
    model: nn.Module | PreparedModel,
    losses,
    seed_input,
    *,
    penultimate_layer: LayerSpec | None = None,
    method: str | CamMethod | Callable = "gradcam",
    grad_modifier: str | Callable | None = None,
    batch_size: int | None = None,
    smooth_samples: int = 0,
    smooth_noise: float = 0.15,
    aug_smooth: bool = False,
    seed: int | None = 0,
    token_grid: tuple[int, int] | None = None,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
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
    `register_cam` adds one), a `CamMethod` object (``ScoreCam(batch_size=32)``) or a plain
    function (activations, gradients) -> map. `penultimate_layer`
    defaults to the last layer or block run before the loss's layer whose output has spatial
    dimensions (for EfficientNet-Lite0 and ``"_fc"``: the head activation ``"_swish#1"``; for a
    ConvNeXt, whose blocks end in an addition, the last block, not its residual branch). `batch_size`:
    rows per forward for the methods that run the model (Score-CAM, Ablation-CAM); by default 64,
    on the CPU for Score-CAM as many as hold 16 images of 112 px (4 of 224 px), its fastest there
    (`featvis.fusion.chunk_rows`).
    ``smooth_samples > 0`` averages over noisy copies (std `smooth_noise` times the image's range,
    drawn with `seed`), ``aug_smooth=True`` over flips and zooms. The model's conventions,
    `input_range` to `output`, are `featvis.prepared.PreparedModel`'s (``input_range=None``: tensors
    fed to the model as given); a model prepared already keeps its own.

    Examples:
        >>> cams = visualize_cam_with_losses(model, [(ActivationMaximization("_fc", 285), 1)], cat)
    """
    loss = as_losses(losses)
    cam_method = as_cam_method(method)
    tokens.check_token_grid(token_grid)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    check_int("smooth_samples", smooth_samples, 0)
    check_number("smooth_noise", smooth_noise, minimum=0)
    if not isinstance(aug_smooth, bool):
        raise bad_type("aug_smooth", aug_smooth, "True or False")
    seed = seed_or_fresh(seed)
    conventions = dict(
        input_range=input_range,
        preprocess=preprocess,
        channels=channels,
        device=device,
        fuse=fuse,
        channels_last=channels_last,
        inputs=inputs,
        output=output,
    )
    with preparing(model, **conventions) as prepared:
        images = prepared.load_images(seed_input)
        cam = smoothed(
            lambda x: cam_method.attribute(
                prepared,
                loss,
                x,
                penultimate_layer=penultimate_layer,
                grad_modifier=grad_modifier,
                batch_size=batch_size,
                token_grid=token_grid,
            ),
            images,
            smooth_samples=smooth_samples,
            smooth_noise=smooth_noise,
            aug_smooth=aug_smooth,
            seed=seed,
            label="cam",
        )
    return normalize(cam, source=CAM_SOURCE)


@known_keywords
def visualize_cam(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    filter_indices,
    seed_input,
    *,
    unit_axis: int | None = None,
    token: int | None = None,
    penultimate_layer: LayerSpec | None = None,
    method: str | CamMethod | Callable = "gradcam",
    grad_modifier: str | Callable | None = None,
    batch_size: int | None = None,
    smooth_samples: int = 0,
    smooth_noise: float = 0.15,
    aug_smooth: bool = False,
    seed: int | None = 0,
    token_grid: tuple[int, int] | None = None,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> np.ndarray:
    """Grad-CAM map of the chosen units of `layer` for each image; ``method="gradcam++"`` for Grad-CAM++.

    `unit_axis` and `token` choose the units as in `featvis.visualize_activation`; the other
    arguments, `penultimate_layer` on (``token_grid`` for transformers, ``method``, the model's
    conventions), are those of `visualize_cam_with_losses`.

    Examples:
        >>> cam = visualize_cam(lite0.model, "_fc", 285, cat, preprocess=lite0.preprocess)
        >>> cam_pp = visualize_cam(lite0.model, "_fc", 285, cat, method="gradcam++", preprocess=...)
        >>> vit_cam = visualize_cam(vit, "heads.head", 3, image, penultimate_layer="encoder.layers.encoder_layer_11.ln_1")
    """
    objective = ActivationMaximization(layer, filter_indices, unit_axis=unit_axis, token=token)
    return visualize_cam_with_losses(
        model,
        objective,
        seed_input,
        penultimate_layer=penultimate_layer,
        method=method,
        grad_modifier=grad_modifier,
        batch_size=batch_size,
        smooth_samples=smooth_samples,
        smooth_noise=smooth_noise,
        aug_smooth=aug_smooth,
        seed=seed,
        token_grid=token_grid,
        input_range=input_range,
        preprocess=preprocess,
        channels=channels,
        device=device,
        fuse=fuse,
        channels_last=channels_last,
        inputs=inputs,
        output=output,
    )


@known_keywords
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
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> np.ndarray:
    """Guided Grad-CAM (Selvaraju et al.): guided-backprop gradients times the Grad-CAM map.

    Returns |guided gradient x CAM|, max over channels (or per channel with
    ``keepdims=True``), normalized per image. `penultimate_layer`, `unit_axis`, `token`,
    `token_grid` and the model's conventions, `input_range` to `output`, as in `visualize_cam`.

    Examples:
        >>> maps = visualize_guided_cam(lite0.model, "_fc", 285, cat, preprocess=lite0.preprocess)
    """
    loss = ActivationMaximization(layer, filter_indices, unit_axis=unit_axis, token=token)
    tokens.check_token_grid(token_grid)
    conventions = dict(
        input_range=input_range,
        preprocess=preprocess,
        channels=channels,
        device=device,
        fuse=fuse,
        channels_last=channels_last,
        inputs=inputs,
        output=output,
    )
    with preparing(model, **conventions) as prepared:
        images = prepared.load_images(seed_input)
        cam = GradCam().attribute(
            prepared, loss, images, penultimate_layer=penultimate_layer, token_grid=token_grid
        )
        cam = torch.as_tensor(normalize(cam))
        guided = gradients(prepared, loss, images, backprop_modifier="guided", model_space=True)
    product = (guided * cam.to(guided.device)[:, None]).abs()
    if keepdims:
        return np.moveaxis(normalize(product, source=GUIDED_CAM_SOURCE), 1, -1)
    return normalize(product.max(dim=1).values, source=GUIDED_CAM_SOURCE)
