"""The high-level entry points, each a thin wrapper over `visualize_activation_with_losses`.

Each builds one `featvis.prepared.PreparedModel` for its call (or uses the one it is
given), and shares its settings through `featvis.Settings`.

Examples:
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> flamingo = featvis.visualize_activation(lite0.model, "_fc", 130, preprocess=lite0.preprocess)
    >>> flamingo.shape, flamingo.dtype
    ((224, 224, 3), dtype('uint8'))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
import dataclasses
import os
from pathlib import Path
import re

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from featvis.errors import FeatvisValueError, bad_type, bad_value, check_int, check_number, known_keywords
from featvis.image import check_seed_range, resize, to_array, to_unit_tensor
from featvis.model.prepared import PreparedModel, input_size, preparing
from featvis.model.targets import LayerSpec, OutputPick
from featvis.optvis.input_modifiers import InputModifier
from featvis.optvis.losses import (
    ActivationMaximization,
    Loss,
    LossContext,
    UnitPerImage,
    WeightedSum,
    as_losses,
    layer_key,
)
from featvis.optvis.optimizer import (
    FROM_QUALITY,
    Callback,
    FromQuality,
    Result,
    Settings,
    optimize,
    show_progress,
)
from featvis.optvis.params import make_parameterization
from featvis.optvis.regularizers import LpNorm, TotalVariation
from featvis.rng import Streams, derive_key, seed_or_fresh

DEFAULT_TV_WEIGHT = 1.0


@known_keywords
def visualize_activation_with_losses(
    model: nn.Module | PreparedModel,
    losses: Loss | Sequence[tuple[Loss, float]],
    *,
    seed_input: object = None,
    size: int | tuple[int, ...] | None = None,
    batch_size: int = 1,
    seed: int | None = None,
    return_result: bool = False,
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
    input_modifiers: Sequence[InputModifier | Callable] | None = None,
    grad_modifier: str | Callable | None = None,
    backprop_modifier: str | Callable | None | FromQuality = FROM_QUALITY,
    callbacks: Sequence[Callback] | None = None,
    verbose: bool = False,
    progress: bool | None = None,
    autocast: torch.dtype | None = None,
    image_ema: float | None | FromQuality = FROM_QUALITY,
    lr_schedule: str | Callable[[int, int], float] | None = None,
    betas: tuple[float, float] | FromQuality = FROM_QUALITY,
    skip_gradient: float | None = None,
) -> np.ndarray | Result:
    """Minimize a weighted sum of losses over an input image (keras-vis's research entry point).

    Returns the image as (H, W, C) in `input_range` (uint8 when both ends are ints),
    or (B, H, W, C) when ``batch_size > 1``; ``return_result=True`` returns the
    full `Result` (images in [0, 1], loss history, transparency map, the seed used).
    `seed` (None: a fresh one, returned in the result) fixes the initial images and every
    random transform; image i of the batch draws from the stream of (seed, i).

    The model's conventions, `input_range` to `output`, are `featvis.prepared.PreparedModel`'s
    (`channels` by default read from the model's first convolution; `inputs` for a model of
    several inputs: fixed values and inputs optimized along, see `featvis.inputs`, whose
    optimized values the result's ``inputs`` holds); a model prepared already keeps its own.
    The optimization's settings, `quality` to `skip_gradient`, are `featvis.Settings`'s: a
    ``quality=`` preset (`featvis.optimizer.QUALITY`) sets `max_iter`, `views`, `method`,
    `backprop_modifier`, `image_ema` and `betas` where they are not given.

    Examples:
        >>> losses = [(ActivationMaximization("_fc", 130), 1), (TotalVariation(), 0.5)]
        >>> image = visualize_activation_with_losses(model, losses, preprocess=lite0.preprocess)
    """
    loss = as_losses(losses)
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
    settings = Settings.take(
        dict(
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
    )
    return _with_losses(model, loss, conventions, settings, seed_input, size, batch_size, seed, return_result)


def _with_losses(
    model, loss, conventions, settings, seed_input, size, batch_size, seed, return_result
) -> np.ndarray | Result:
    """`visualize_activation_with_losses` once its options are checked: one batch on a prepared model."""
    check_int("batch_size", batch_size, 1)
    seed = seed_or_fresh(seed)
    with preparing(model, **conventions) as prepared:
        prepared.require_input_range("activation maximization")
        keys = [derive_key(seed, "image", index) for index in range(batch_size)]
        return _run(prepared, loss, settings, keys, seed, seed_input, size, return_result)


def _run(prepared, loss, settings, keys, seed, seed_input, size, return_result) -> np.ndarray | Result:
    """Optimize one batch (one image per key) on a prepared model; the array or the `Result`."""
    batch_size = len(keys)
    init = None
    if seed_input is not None:
        if prepared.spatial_dims == 2:
            init = to_unit_tensor(seed_input, "seed_input", prepared.input_range, prepared.channels)
            check_seed_range(seed_input, init, prepared.input_range)
        else:
            init = prepared.load_images(seed_input).cpu()
        if init.shape[0] not in (1, batch_size):
            raise bad_value("seed_input", f"a batch of {init.shape[0]}", f"1 or {batch_size} images")
        if size is not None:
            init = resize(init, input_size(size, prepared.spatial_dims))
        init = init.expand(batch_size, *init.shape[1:]).to(prepared.device)
        shape = tuple(init.shape[2:])
    else:
        shape = size_of(prepared, size)
        prepared.probe_size(shape, "size", size is None)  # a model that takes one size is told size=
    streams = Streams(keys, prepared.device)
    param = make_parameterization(
        settings.method,
        batch_size,
        prepared.channels,
        shape,
        init=init,
        streams=streams,
        device=prepared.device,
    )
    optimized = prepared.inputs.optimized if prepared.inputs is not None else {}
    others = {  # a model's other optimized inputs: their own parameterizations and draws
        name: make_parameterization(
            spec.method,
            batch_size,
            spec.shape[0],
            spec.shape[1:],
            streams=Streams([derive_key(key, "input", name) for key in keys], prepared.device),
            device=prepared.device,
        )
        for name, spec in optimized.items()
    }
    result = optimize(prepared, loss, param, settings, streams, seed=seed, others=others)
    if return_result:
        return result
    array = to_array(result.images, prepared.input_range)
    return array[0] if batch_size == 1 else array


def size_of(prepared: PreparedModel, size: object) -> tuple[int, ...]:
    """The input size for `prepared`'s model: `PreparedModel.size_for` (`size` checked, or the
    default: 224 x 224 images, 128-sample signals, 32^3 volumes; a tuple's length sets the input's axes).

    Examples:
        >>> size_of(PreparedModel(conv1d_net), 256)
        (256,)
    """
    return prepared.size_for(size)


def _regularized(objective: Loss, act_max_weight, tv_weight, lp_norm_weight) -> Loss:
    for name, weight in zip(
        ("act_max_weight", "tv_weight", "lp_norm_weight"), (act_max_weight, tv_weight, lp_norm_weight)
    ):
        check_number(name, weight, minimum=0)
    return WeightedSum(
        [(objective, act_max_weight), (TotalVariation(), tv_weight), (LpNorm(6), lp_norm_weight)]
    )


@known_keywords
def visualize_activation(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    filter_indices: int | Sequence[int] | None = None,
    *,
    act_max_weight: float = 1.0,
    tv_weight: float = DEFAULT_TV_WEIGHT,
    lp_norm_weight: float = 0.0,
    unit_axis: int | None = None,
    token: int | None = None,
    seed_input: object = None,
    size: int | tuple[int, ...] | None = None,
    batch_size: int = 1,
    seed: int | None = None,
    return_result: bool = False,
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
    input_modifiers: Sequence[InputModifier | Callable] | None = None,
    grad_modifier: str | Callable | None = None,
    backprop_modifier: str | Callable | None | FromQuality = FROM_QUALITY,
    callbacks: Sequence[Callback] | None = None,
    verbose: bool = False,
    progress: bool | None = None,
    autocast: torch.dtype | None = None,
    image_ema: float | None | FromQuality = FROM_QUALITY,
    lr_schedule: str | Callable[[int, int], float] | None = None,
    betas: tuple[float, float] | FromQuality = FROM_QUALITY,
    skip_gradient: float | None = None,
) -> np.ndarray | Result:
    """Generate the input that maximizes the chosen units of `layer` (keras-vis's main API).

    `filter_indices`: a unit/channel index, a list (one image maximizing them
    together), or None (all units). Units lie on the layer's unit axis: axis 1 of conv
    and dense outputs, the last axis of (N, tokens, features) outputs (a ViT's MLP or
    block); ``unit_axis`` overrides it, ``verbose=True`` prints it. A unit is averaged
    over tokens (or space); ``token=0`` takes one token (a ViT's class token). The loss is ``act_max_weight *
    ActivationMaximization + tv_weight * TotalVariation + lp_norm_weight * LpNorm``;
    a weight of 0 switches a term off. The other arguments, `seed_input` on, are those of
    `visualize_activation_with_losses`.

    Examples:
        >>> image = visualize_activation(lite0.model, "_fc", 130, preprocess=lite0.preprocess, seed=0)
        >>> count_up = visualize_activation(counter, "head", 0, input_range=(0.0, 1.0), size=32)
        >>> count_down = visualize_activation(counter, "head", 0, grad_modifier="negate", size=32)
        >>> neuron = visualize_activation(vit, "encoder.layers.encoder_layer_5.mlp.0", 7, verbose=True)
    """
    objective = ActivationMaximization(layer, filter_indices, unit_axis=unit_axis, token=token)
    loss = _regularized(objective, act_max_weight, tv_weight, lp_norm_weight)
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
    settings = Settings.take(
        dict(
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
    )
    return _with_losses(model, loss, conventions, settings, seed_input, size, batch_size, seed, return_result)


MEMORY_ENV = "FEATVIS_MEMORY"  # bytes a process may use for its batches ("512M", "8G"): overrides the probe


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes this process may use on `device`: ``FEATVIS_MEMORY`` if set; on a GPU its free memory
    (``torch.cuda.mem_get_info``); on the CPU the machine's available memory (``MemAvailable`` of
    /proc/meminfo, within a cgroup's limit), shared by the ranks on the machine (``LOCAL_WORLD_SIZE``).

    Examples:
        >>> available_memory("cpu") > 0
        True
    """
    device = torch.device(device)
    text = os.environ.get(MEMORY_ENV)
    if text:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
        if not match or float(match.group(1)) <= 0:
            raise FeatvisValueError(
                f"{MEMORY_ENV}={text!r}: expected a size in bytes above 0, e.g. 512M or 8G"
            )
        return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = _meminfo_available()
    for limit, used in (("memory.max", "memory.current"), ("memory.limit_in_bytes", "memory.usage_in_bytes")):
        try:
            room = int(Path("/sys/fs/cgroup", limit).read_text()) - int(
                Path("/sys/fs/cgroup", used).read_text()
            )
        except (OSError, ValueError):  # no cgroup file, or "max": no limit
            continue
        free = min(free, max(0, room))
    return max(1, free // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 2 * 2**30


def auto_batch_size(prepared: PreparedModel, shape: tuple[int, int], views: int = 1) -> int:
    """Images per batch: what fits in half of `available_memory` (activation bytes x4 for the backward,
    per view), at most 64 on GPU, 4 on CPU.

    Examples:
        >>> with PreparedModel(lite0.model, preprocess=lite0.preprocess) as prepared:
        ...     auto_batch_size(prepared, (224, 224))
        4
    """
    per_image = prepared.activation_bytes(shape) * max(1, views)
    most = 64 if prepared.device.type == "cuda" else 4  # on CPUs, per-image time grows past a few images
    budget = available_memory(prepared.device) * 0.5
    return int(max(1, min(most, budget // max(1, 4 * per_image))))


@known_keywords
def visualize_layer(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    units: Sequence[int] | None = None,
    *,
    batch_size: int | None = None,
    act_max_weight: float = 1.0,
    tv_weight: float = DEFAULT_TV_WEIGHT,
    lp_norm_weight: float = 0.0,
    size: int | tuple[int, ...] | None = None,
    seed: int | None = None,
    return_result: bool = False,
    unit_axis: int | None = None,
    token: int | None = None,
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
    input_modifiers: Sequence[InputModifier | Callable] | None = None,
    grad_modifier: str | Callable | None = None,
    backprop_modifier: str | Callable | None | FromQuality = FROM_QUALITY,
    callbacks: Sequence[Callback] | None = None,
    verbose: bool = False,
    progress: bool | None = None,
    autocast: torch.dtype | None = None,
    image_ema: float | None | FromQuality = FROM_QUALITY,
    lr_schedule: str | Callable[[int, int], float] | None = None,
    betas: tuple[float, float] | FromQuality = FROM_QUALITY,
    skip_gradient: float | None = None,
) -> np.ndarray | Result:
    """One image per unit of `layer` (all units by default), many units per batch.

    Units lie on the layer's unit axis (see `visualize_activation`; `unit_axis` and
    `token` as there).

    Each image of a batch maximizes its own unit with its own random transforms, and
    a unit's random draws depend only on (seed, layer, unit), not on its batch.
    `batch_size` (at most this many images per batch) defaults to what fits in
    memory; the units are split into batches of near-equal size (`layer_batches`),
    so no batch runs nearly empty. The batches are a plan of the units and
    `batch_size` alone (never of free memory), so give `batch_size` to get the same
    images on any machine. The model is prepared (probed, folded, checked)
    once for all batches. Returns (N, H, W, C) (``return_result=True``: a `Result`
    with every unit's image and the seed); after Ctrl-C, the images of the batches
    run so far (the last one as it was). The model's conventions and the optimization's
    settings, `input_range` on, as in `visualize_activation_with_losses`.

    Examples:
        >>> images = visualize_layer(lite0.model, "_blocks.10", units=range(16), preprocess=lite0.preprocess)
        >>> images.shape
        (16, 224, 224, 3)
    """
    seed = seed_or_fresh(seed)
    if units is not None and (isinstance(units, str) or not isinstance(units, Iterable)):
        raise bad_type("units", units, "a list of unit indices or None")
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
    settings = Settings.take(
        dict(
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
    )
    with preparing(model, **conventions) as prepared:
        prepared.require_input_range("activation maximization")
        shape = size_of(prepared, size)
        prepared.probe_size(shape, "size", size is None)  # at the size it will run: some models take no other
        target = prepared.resolve(layer)
        units = list(range(prepared.unit_count(layer, shape, unit_axis)) if units is None else units)
        if not units:
            raise bad_value("units", units, "at least one unit index")
        if batch_size is None:
            batch_size = auto_batch_size(prepared, shape)
        check_int("batch_size", batch_size, 1)
        chunks = layer_batches(units, batch_size)
        several = len(chunks) > 1  # a bar of the batches; of one batch, the bar of its steps
        quiet = dataclasses.replace(settings, progress=False) if several else settings
        show = several and show_progress(settings.progress)
        results = []
        for chunk in tqdm(chunks, desc=f"layer {layer}", disable=not show):
            objective = UnitPerImage(layer, chunk, unit_axis=unit_axis, token=token)
            loss = _regularized(objective, act_max_weight, tv_weight, lp_norm_weight)
            keys = [derive_key(seed, target.key, unit) for unit in chunk]
            results.append(_run(prepared, loss, quiet, keys, seed, None, shape, True))
            if results[-1].interrupted:  # Ctrl-C: keep what is done, start no further batch
                break
    images = torch.cat([r.images for r in results])
    if return_result:
        return Result(images=images, interrupted=results[-1].interrupted, seed=seed)
    return to_array(images, prepared.input_range)


def layer_batches(units: Sequence[int], batch_size: int) -> list[list[int]]:
    """The fewest batches of at most `batch_size` units, their sizes differing by at most one.

    Examples:
        >>> [len(batch) for batch in layer_batches(range(112), 64)]
        [56, 56]
    """
    units = list(units)
    count = -(-len(units) // batch_size)
    size, extra = divmod(len(units), count)
    bounds = [i * size + min(i, extra) for i in range(count + 1)]
    return [units[start:end] for start, end in zip(bounds, bounds[1:])]


@known_keywords
def activations_reached(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    units: Sequence[int],
    images: np.ndarray,
    *,
    unit_axis: int | None = None,
    token: int | None = None,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> np.ndarray:
    """The mean activation of ``units[i]`` on ``images[i]``, with no random transform.

    Units on the layer's unit axis (`unit_axis` overrides it), averaged over the other
    axes (or at one `token`). The model's conventions, `input_range` on, as in
    `visualize_activation_with_losses`.

    Examples:
        >>> activations_reached(model, "_blocks.10", range(16), images, preprocess=lite0.preprocess)
    """
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
        batch = prepared.load_images(np.asarray(images), "images")
        units = list(units)
        if len(units) != batch.shape[0]:
            raise bad_value("units", units, f"one unit per image ({batch.shape[0]})")
        out = prepared.layer_output(layer, batch)
        target = prepared.resolve(layer)
        loss = UnitPerImage(layer, units, unit_axis=unit_axis, token=token)
        ctx = LossContext(
            images=batch, views=1, activations={target.key: out}, targets={layer_key(layer): target}
        )
        return (-loss(ctx)).cpu().numpy()
