"""Feature inversion and caricatures: the image a layer "sees" in a photo, and what it exaggerates.

`invert` computes a photo's activations at a layer, then optimizes an image (from the
usual parameterizations) whose activations there match them (Mahendran & Vedaldi 2015,
`ActivationMatch`) or, with ``caricature=True``, have the largest dot product with them
(Lucid's caricatures, `Caricature`). Early layers keep nearly every pixel of the photo;
deeper ones keep what the network needs and let the rest go. Both losses are `Loss`
objects and compose with the others by arithmetic.

Examples:
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> seen = featvis.invert(lite0.model, "_blocks.5", "cat.jpg", preprocess=lite0.preprocess)
    >>> loss = ActivationMatch("_blocks.5", target) + 0.05 * TotalVariation()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import numbers

import numpy as np
import torch
from torch import nn

from featvis.errors import bad_type, bad_value, check_number, known_keywords
from featvis.image import resize
from featvis.model.prepared import PreparedModel, image_size, preparing
from featvis.model.targets import LayerSpec, OutputPick
from featvis.model.units import resolve_axis
from featvis.optvis.input_modifiers import InputModifier
from featvis.optvis.losses import Loss, LossContext, WeightedSum
from featvis.optvis.optimizer import FROM_QUALITY, Callback, FromQuality, Result
from featvis.optvis.regularizers import TotalVariation
from featvis.optvis.visualization import visualize_activation_with_losses

DEFAULT_INVERSION_TV = 0.05
"""The weight of `TotalVariation` beside the inversion loss (its value is about 1 at the start)."""


class _Compared(Loss):
    """A loss that compares a layer's output with fixed target activations (one row or one per image)."""

    def __init__(self, layer: LayerSpec, target_activation: object):
        self.layer = layer
        if not isinstance(target_activation, torch.Tensor | np.ndarray):
            raise bad_type("target_activation", target_activation, "a tensor of the layer's output (N, ...)")
        target = torch.as_tensor(target_activation).detach().float()
        if target.ndim < 2 or target.numel() == 0:
            raise bad_value(
                "target_activation", f"shape {tuple(target.shape)}", "a batch of activations (N, ...)"
            )
        if not torch.isfinite(target).all():
            raise bad_value("target_activation", "non-finite values", "finite activations")
        self.target = target

    def layers(self) -> tuple[LayerSpec, ...]:
        return (self.layer,)

    def _pair(self, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The image's activations and the target's, row by row, both with units on axis 1."""
        act = ctx.activation(self.layer)
        target = self.target.to(act.device)
        if target.shape[1:] != act.shape[1:]:
            raise bad_value(
                "target_activation",
                f"shape {tuple(target.shape[1:])} per image",
                f"the shape of layer {self.layer!r}'s output, {tuple(act.shape[1:])} (optimize an image "
                "of the photo's size)",
            )
        if target.shape[0] == 1:
            target = target.expand_as(act)
        elif target.shape[0] == ctx.batch_size:
            target = target[ctx.image_of_row()]
        else:
            raise bad_value(
                "target_activation", f"a batch of {target.shape[0]}", f"1 or {ctx.batch_size} (one per image)"
            )
        if act.ndim > 2:  # units to axis 1 (a token layer's features lie on the last)
            axis = resolve_axis(act, None, ctx.target(self.layer), self.layer)
            act, target = act.movedim(axis, 1), target.movedim(axis, 1)
        return act.float(), target


class ActivationMatch(_Compared):
    """The normalized squared distance ``||a - a0||^2 / ||a0||^2`` between the image's activations
    `a` at `layer` and the photo's `a0` (Mahendran & Vedaldi 2015): 1 for an image whose activations
    are zero, 0 for one that matches. `target_activation` is ``(1, ...)`` (every image) or one row
    per image, as `featvis.PreparedModel.layer_output` gives it.

    Examples:
        >>> target = prepared.layer_output("_blocks.5", prepared.load_images("cat.jpg"))
        >>> loss = ActivationMatch("_blocks.5", target) + 0.05 * featvis.TotalVariation()
    """

    name = "ActivationMatch"

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        act, target = self._pair(ctx)
        return (act - target).pow(2).flatten(1).sum(1) / target.pow(2).flatten(1).sum(1).clamp_min(1e-12)


class Caricature(_Compared):
    """Minus the dot product of the image's activations with the photo's (Lucid's caricatures).

    At each position the activations' dot product over units is taken, times the cosine of
    their angle (floored at 0.1) to the power `cossim_pow` (0: the plain dot product; higher
    values favor the photo's direction over sheer size); it is averaged over positions and
    divided by the photo's own mean ``a0 . a0``, so the photo itself scores -1 and a
    caricature, which exaggerates what the layer sees, goes below.

    Examples:
        >>> Caricature("_blocks.5", target, cossim_pow=1.0) + 0.05 * featvis.TotalVariation()
    """

    name = "Caricature"

    def __init__(self, layer: LayerSpec, target_activation: object, cossim_pow: float = 0.0):
        super().__init__(layer, target_activation)
        self.cossim_pow = check_number("cossim_pow", cossim_pow, minimum=0)

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        act, target = self._pair(ctx)
        dot = (act * target).sum(1)  # per position: (rows, *positions)
        if self.cossim_pow:
            cos = dot / (act.norm(dim=1) + 1e-4) / (target.norm(dim=1) + 1e-4)
            dot = dot * cos.clamp_min(0.1) ** self.cossim_pow
        own = target.pow(2).sum(1).flatten(1).mean(1).clamp_min(1e-12)
        return -dot.flatten(1).mean(1) / own


def _layers(layer: object) -> list[LayerSpec]:
    """One layer spec or a non-empty list of them."""
    if isinstance(layer, list | tuple):
        if not layer:
            raise bad_value("layer", layer, "a layer or a non-empty list of layers")
        return list(layer)
    return [layer]


@known_keywords
def invert(
    model: nn.Module | PreparedModel,
    layer: LayerSpec | Sequence[LayerSpec],
    image: object,
    *,
    caricature: bool = False,
    cossim_pow: float = 0.0,
    tv_weight: float = DEFAULT_INVERSION_TV,
    size: int | tuple[int, int] | None = None,
    seed: int | None = None,
    return_result: bool = False,
    seed_input: object = None,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
    quality: str = "fast",
    max_iter: int | FromQuality = FROM_QUALITY,
    views: int | FromQuality = FROM_QUALITY,
    lr: float | None = None,
    method: str | Callable | FromQuality = FROM_QUALITY,
    input_modifiers: Sequence[InputModifier | Callable] | None = (),
    grad_modifier: str | Callable | None = None,
    backprop_modifier: str | Callable | None | FromQuality = None,
    callbacks: Sequence[Callback] | None = None,
    verbose: bool = False,
    progress: bool | None = None,
    autocast: torch.dtype | None = None,
    image_ema: float | None | FromQuality = FROM_QUALITY,
    lr_schedule: str | Callable[[int, int], float] | None = None,
    betas: tuple[float, float] | FromQuality = FROM_QUALITY,
    skip_gradient: float | None = None,
) -> np.ndarray | Result:
    """The image whose activations at `layer` match a photo's (feature inversion), or exaggerate
    them (``caricature=True``).

    `image`: the photo(s) as featvis takes images (a path, PIL image, array, tensor, or a list;
    see `featvis.PreparedModel.load_images`); several photos are inverted together, one image
    each. Its activations at `layer` (a list of layers: all of them, equally weighted) are
    computed once without gradients, then an image of the photo's size (`size` resizes the
    photo first) minimizes ``ActivationMatch`` (or ``Caricature`` with `cossim_pow`) plus
    ``tv_weight * TotalVariation``. Returns the image as `featvis.visualize_activation` does
    (``return_result=True``: the `Result`). The other arguments, `seed_input` on (the model's
    conventions, `input_range` to `output`, and the optimization's settings, `quality` to
    `skip_gradient`), are those of `featvis.visualize_activation_with_losses`, with two defaults
    of its own: no transforms (``input_modifiers=()``: a moved image no longer lines up with the
    photo's activations; give some for deep layers) and plain gradients
    (``backprop_modifier=None``). `model`: an ``nn.Module`` or a `featvis.PreparedModel`.

    Examples:
        >>> lite0 = featvis.zoo.efficientnet_lite0()
        >>> seen = featvis.invert(lite0.model, "_blocks.10", "cat.jpg", preprocess=lite0.preprocess, seed=0)
        >>> funny = featvis.invert(lite0.model, "_blocks.10", "cat.jpg", caricature=True, preprocess=...)
        >>> both = featvis.invert(tiny, ["conv1", "conv2"], photo, input_range=(0.0, 1.0), size=32)
    """
    layers = _layers(layer)
    if not isinstance(caricature, bool):
        raise bad_type("caricature", caricature, "True or False")
    check_number("tv_weight", tv_weight, minimum=0)
    cossim_pow = check_number("cossim_pow", cossim_pow, minimum=0)
    if isinstance(image, bool | numbers.Number) or image is None:
        raise bad_type("image", image, "a photo: a path, PIL image, array or tensor (or a list of them)")
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
        prepared.require_input_range("feature inversion")
        if prepared.spatial_dims != 2:
            raise bad_value("model", type(prepared.model).__name__, "a model of images (2-D input)")
        photos = prepared.load_images(image, "image")
        if size is not None:
            photos = resize(photos, image_size(size))
        terms = []
        for spec in layers:
            target = prepared.layer_output(spec, photos)
            term = Caricature(spec, target, cossim_pow) if caricature else ActivationMatch(spec, target)
            terms.append((term, 1.0 / len(layers)))
        loss = WeightedSum([*terms, (TotalVariation(), float(tv_weight))])
        return visualize_activation_with_losses(
            prepared,
            loss,
            size=tuple(photos.shape[2:]),
            batch_size=photos.shape[0],
            seed=seed,
            return_result=return_result,
            seed_input=seed_input,
            quality=quality,
            max_iter=max_iter,
            views=views,
            lr=lr,
            method=method,
            input_modifiers=input_modifiers,
            grad_modifier=grad_modifier,
            backprop_modifier=backprop_modifier,
            callbacks=callbacks,
            verbose=verbose,
            progress=progress,
            autocast=autocast,
            image_ema=image_ema,
            lr_schedule=lr_schedule,
            betas=betas,
            skip_gradient=skip_gradient,
        )
