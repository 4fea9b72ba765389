"""The high-level entry points, each a thin wrapper over `visualize_activation_with_losses`.

Example:
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> flamingo = featvis.visualize_activation(lite0.model, "_fc", 130, preprocess=lite0.preprocess)
    >>> flamingo.shape, flamingo.dtype
    ((224, 224, 3), dtype('uint8'))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
import numbers
import sys

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import bad_type, bad_value, check_int, check_number
from .image import check_range, resize, to_array, to_unit_tensor
from .input_modifiers import InputModifier, standard_transforms
from .losses import ActivationMaximization, Loss, UnitPerImage, WeightedSum, as_loss
from .optimizer import Callback, Result, optimize
from .params import make_parameterization
from .regularizers import LpNorm, TotalVariation
from .targets import (
    LayerSpec,
    ModelGuard,
    layer_output,
    module_by_name,
    probe,
    resolve_device,
    resolve_layer,
    run_model,
)

DEFAULT_LR = {"pixel": 0.02, "fourier": 0.05, "maco": 0.5}
DEFAULT_METHOD = "fourier"
DEFAULT_VIEWS = 4  # random views per image and step; 128 steps x 4 views = 512 passes
DEFAULT_STEPS = 128
DEFAULT_TV_WEIGHT = 1.0
DEFAULT_IMAGE_EMA = 0.9  # the result averages the images of the second half of the steps


def _size(size: object, argument: str = "size") -> tuple[int, int]:
    if isinstance(size, bool):
        raise bad_type(argument, size, "an int or (height, width)")
    if isinstance(size, numbers.Integral):
        size = (int(size), int(size))
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(s, numbers.Integral) for s in size)
    ):
        raise bad_type(argument, size, "an int or (height, width) of ints")
    if min(size) < 1:
        raise bad_value(argument, size, "sizes >= 1")
    return int(size[0]), int(size[1])


def _as_losses(losses: object) -> Loss:
    if isinstance(losses, Loss) or callable(losses):
        return as_loss(losses, "losses")
    if not isinstance(losses, Sequence) or isinstance(losses, str) or not losses:
        raise bad_type("losses", losses, "a Loss or a non-empty list of (loss, weight) pairs")
    pairs = []
    for item in losses:
        if not isinstance(item, tuple) or len(item) != 2:
            raise bad_type("losses", item, "(loss, weight) pairs")
        loss, weight = item
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not np.isfinite(weight):
            raise bad_value("losses", weight, "finite numeric weights")
        pairs.append((as_loss(loss, "losses"), float(weight)))
    return WeightedSum(pairs)


def visualize_activation_with_losses(
    model: nn.Module,
    losses: Loss | Sequence[tuple[Loss, float]],
    *,
    seed_input: object = None,
    input_range: tuple[float, float] = (0, 255),
    size: int | tuple[int, int] | None = None,
    channels: int = 3,
    batch_size: int = 1,
    method: str | Callable = DEFAULT_METHOD,
    input_modifiers: Sequence[InputModifier | Callable] | None = None,
    views: int = DEFAULT_VIEWS,
    max_iter: int = DEFAULT_STEPS,
    lr: float | None = None,
    grad_modifier: str | Callable | None = None,
    backprop_modifier: str | Callable | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    callbacks: Sequence[Callback] | None = None,
    verbose: bool = False,
    progress: bool | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    autocast: torch.dtype | None = None,
    channels_last: bool | None = None,
    fuse: bool = True,
    image_ema: float | None = DEFAULT_IMAGE_EMA,
    return_result: bool = False,
) -> np.ndarray | Result:
    """Minimize a weighted sum of losses over an input image (keras-vis's research entry point).

    Returns the image as (H, W, C) in `input_range` (uint8 when both ends are ints),
    or (B, H, W, C) when ``batch_size > 1``; ``return_result=True`` returns the
    full `Result` (images in [0, 1], loss history, transparency map).
    ``autocast=torch.bfloat16`` runs the model in reduced precision on a GPU;
    ``channels_last=True`` feeds channels-last input (None: where it helps and the
    model's outputs agree with it, see `optimize`); ``fuse=False`` runs the model itself rather
    than a copy with batch norms folded into convolutions (see `optimize`);
    ``image_ema=None`` returns the last step's image rather than the average of the
    images over the second half of the steps.

    Example:
        >>> losses = [(ActivationMaximization("_fc", 130), 1), (TotalVariation(), 0.5)]
        >>> image = visualize_activation_with_losses(model, losses, preprocess=lite0.preprocess)
    """
    loss = _as_losses(losses)
    input_range = check_range(input_range)
    check_int("channels", channels, 1)
    check_int("batch_size", batch_size, 1)
    check_int("max_iter", max_iter, 1)
    if seed is not None:
        check_int("seed", seed, 0)
    if not isinstance(model, nn.Module):
        raise bad_type("model", model, "a torch.nn.Module")
    if callbacks is not None and (isinstance(callbacks, str) or not isinstance(callbacks, Sequence)):
        raise bad_type("callbacks", callbacks, "a list of functions f(step, terms, images)")
    target_device = resolve_device(device, model)
    init = None
    if seed_input is not None:
        init = to_unit_tensor(seed_input, "seed_input", input_range, channels)
        if init.shape[0] not in (1, batch_size):
            raise bad_value("seed_input", f"a batch of {init.shape[0]}", f"1 or {batch_size} images")
        if size is not None:
            init = resize(init, _size(size))
        init = init.expand(batch_size, -1, -1, -1).to(target_device)
        shape = tuple(init.shape[-2:])
    else:
        shape = _size(224 if size is None else size)
    if input_modifiers is not None and (
        isinstance(input_modifiers, str) or not isinstance(input_modifiers, Sequence)
    ):
        raise bad_type("input_modifiers", input_modifiers, "a list of InputModifier objects or functions")
    modifiers = standard_transforms() if input_modifiers is None else list(input_modifiers)
    for modifier in modifiers:
        if not callable(modifier):
            raise bad_type("input_modifiers", modifier, "InputModifier objects or functions")
    generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
    if isinstance(method, str) and method not in DEFAULT_LR:
        make_parameterization(method, 1, channels, shape)  # raises the standard error
    param = make_parameterization(
        method, batch_size, channels, shape, init=init, generator=generator, device=target_device
    )
    result = optimize(
        model,
        loss,
        param,
        steps=max_iter,
        lr=lr if lr is not None else DEFAULT_LR.get(method, 0.05),
        input_modifiers=modifiers,
        views=views,
        input_range=input_range,
        preprocess=preprocess,
        grad_modifier=grad_modifier,
        backprop_modifier=backprop_modifier,
        callbacks=list(callbacks or ()),
        verbose=verbose,
        progress=progress,
        seed=int(torch.randint(0, 2**62, (1,), generator=generator)),
        autocast=autocast,
        channels_last=channels_last,
        fuse=fuse,
        image_ema=image_ema,
    )
    if return_result:
        return result
    array = to_array(result.images, input_range)
    return array[0] if batch_size == 1 else array


def _regularized(objective: Loss, act_max_weight, tv_weight, lp_norm_weight) -> Loss:
    for name, weight in (
        ("act_max_weight", act_max_weight),
        ("tv_weight", tv_weight),
        ("lp_norm_weight", lp_norm_weight),
    ):
        check_number(name, weight, minimum=0)
    return WeightedSum(
        [(objective, act_max_weight), (TotalVariation(), tv_weight), (LpNorm(6), lp_norm_weight)]
    )


def visualize_activation(
    model: nn.Module,
    layer: LayerSpec,
    filter_indices: int | Sequence[int] | None = None,
    *,
    act_max_weight: float = 1.0,
    tv_weight: float = DEFAULT_TV_WEIGHT,
    lp_norm_weight: float = 0.0,
    max_iter: int = DEFAULT_STEPS,
    **kwargs,
) -> np.ndarray | Result:
    """Generate the input that maximizes the chosen units of `layer` (keras-vis's main API).

    `filter_indices`: a unit/channel index, a list (one image maximizing them
    together), or None (all units). The loss is ``act_max_weight *
    ActivationMaximization + tv_weight * TotalVariation + lp_norm_weight * LpNorm``;
    a weight of 0 switches a term off. Other keyword arguments are those of
    `visualize_activation_with_losses` (``seed_input``, ``input_range``, ``size``,
    ``method``, ``input_modifiers``, ``grad_modifier``, ``backprop_modifier``,
    ``preprocess``, ``verbose``, ``callbacks``, ``seed``, ...).

    Example:
        >>> image = visualize_activation(lite0.model, "_fc", 130, preprocess=lite0.preprocess, seed=0)
        >>> count_up = visualize_activation(counter, "head", 0, input_range=(0.0, 1.0), size=32)
        >>> count_down = visualize_activation(counter, "head", 0, grad_modifier="negate", size=32)
    """
    objective = ActivationMaximization(layer, filter_indices)
    loss = _regularized(objective, act_max_weight, tv_weight, lp_norm_weight)
    return visualize_activation_with_losses(model, loss, max_iter=max_iter, **kwargs)


def _auto_batch_size(model, layer, shape, channels, device, preprocess, input_range) -> int:
    """Images per batch: what fits (activation bytes x4 for backward), at most 64 on GPU, 4 on CPU."""
    per_image = 0

    def count(module, inputs, output):
        nonlocal per_image
        if isinstance(output, torch.Tensor):
            per_image += output.numel() * output.element_size()

    x = _model_input(channels, shape, device, preprocess, input_range)
    with ModelGuard(model) as guard:
        seen = probe(model, x)
        resolve_layer(model, layer, seen)
        for name in seen.order:
            guard.add_hook(module_by_name(model, name).register_forward_hook(count))
        with torch.no_grad():
            run_model(model, x)
    if device.type == "cuda":
        budget, most = torch.cuda.mem_get_info(device)[0] * 0.5, 64
    else:
        budget, most = 2 * 2**30, 4  # on CPUs, per-image time grows past a few images (cache)
    return int(max(1, min(most, budget // max(1, 4 * per_image))))


def visualize_layer(
    model: nn.Module,
    layer: LayerSpec,
    units: Sequence[int] | None = None,
    *,
    batch_size: int | None = None,
    act_max_weight: float = 1.0,
    tv_weight: float = DEFAULT_TV_WEIGHT,
    lp_norm_weight: float = 0.0,
    channels: int = 3,
    size: int | tuple[int, int] | None = None,
    input_range: tuple[float, float] = (0, 255),
    preprocess: Callable | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    seed: int | None = None,
    **kwargs,
) -> np.ndarray:
    """One image per unit of `layer` (all units by default), many units per batch.

    Each image of a batch maximizes its own unit with its own random transforms.
    `batch_size` (at most this many images per batch) defaults to what fits in
    memory; the units are split into batches of near-equal size (`layer_batches`),
    so no batch runs nearly empty. Returns (N, H, W, C); after
    Ctrl-C, the images of the batches run so far (the last one as it was).

    Example:
        >>> images = visualize_layer(lite0.model, "_blocks.10", units=range(16), preprocess=lite0.preprocess)
        >>> images.shape
        (16, 224, 224, 3)
    """
    target_device = resolve_device(device, model)
    shape = _size(224 if size is None else size)
    check_int("max_iter", kwargs.get("max_iter", DEFAULT_STEPS), 1)
    if units is not None and (isinstance(units, str) or not isinstance(units, Iterable)):
        raise bad_type("units", units, "a list of unit indices or None")
    if units is None:
        units = range(_unit_count(model, layer, channels, shape, target_device, preprocess, input_range))
    units = list(units)
    if not units:
        raise bad_value("units", units, "at least one unit index")
    if batch_size is None:
        batch_size = _auto_batch_size(model, layer, shape, channels, target_device, preprocess, input_range)
    check_int("batch_size", batch_size, 1)
    chunks = layer_batches(units, batch_size)
    show = progress if progress is not None else len(chunks) > 1 and sys.stderr.isatty()
    results = []
    for index, chunk in enumerate(tqdm(chunks, desc=f"layer {layer}", disable=not show)):
        loss = _regularized(UnitPerImage(layer, chunk), act_max_weight, tv_weight, lp_norm_weight)
        result = visualize_activation_with_losses(
            model,
            loss,
            batch_size=len(chunk),
            channels=channels,
            size=shape,
            input_range=input_range,
            preprocess=preprocess,
            device=target_device,
            progress=False,
            seed=None if seed is None else seed + index,
            return_result=True,
            **kwargs,
        )
        results.append(to_array(result.images, input_range))
        if result.interrupted:  # Ctrl-C: keep what is done, start no further batch
            break
    return np.concatenate(results)


def layer_batches(units: Sequence[int], batch_size: int) -> list[list[int]]:
    """The fewest batches of at most `batch_size` units, their sizes differing by at most one.

    Example:
        >>> [len(batch) for batch in layer_batches(range(112), 64)]
        [56, 56]
    """
    units = list(units)
    count = -(-len(units) // batch_size)
    size, extra = divmod(len(units), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [units[start:end] for start, end in zip(bounds, bounds[1:])]


def _model_input(channels, shape, device, preprocess, input_range, images=None) -> torch.Tensor:
    low, high = input_range
    images = torch.rand(1, channels, *shape, device=device) if images is None else images
    x = low + (high - low) * images
    return preprocess(x) if preprocess is not None else x


def _unit_count(model, layer, channels, shape, device, preprocess, input_range) -> int:
    out = layer_output(model, layer, _model_input(channels, shape, device, preprocess, input_range))
    return 1 if out.ndim == 1 else int(out.shape[1])


def activations_reached(
    model: nn.Module,
    layer: LayerSpec,
    units: Sequence[int],
    images: np.ndarray,
    *,
    input_range: tuple[float, float] = (0, 255),
    preprocess: Callable | None = None,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """The mean activation of ``units[i]`` on ``images[i]``, with no random transform.

    Example:
        >>> activations_reached(model, "_blocks.10", range(16), images, preprocess=lite0.preprocess)
    """
    target_device = resolve_device(device, model)
    batch = to_unit_tensor(np.asarray(images), "images", check_range(input_range)).to(target_device)
    units = list(units)
    if len(units) != batch.shape[0]:
        raise bad_value("units", units, f"one unit per image ({batch.shape[0]})")
    out = layer_output(model, layer, _model_input(None, None, target_device, preprocess, input_range, batch))
    chosen = out[torch.arange(len(units)), torch.tensor(units, device=out.device)]
    return chosen.flatten(1).mean(1).cpu().numpy() if chosen.ndim > 1 else chosen.cpu().numpy()
