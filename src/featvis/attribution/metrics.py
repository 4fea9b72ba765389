"""Which map to trust: faithfulness and sanity measures for attention maps.

- `deletion` and `insertion` (Petsiuk et al. 2018, RISE): remove (or reveal) the pixels in
  the map's order, step by step, and follow the class score; a faithful map makes the
  deletion curve fall fast (small area) and the insertion curve rise fast (large area).
  Every step of every image runs batched, without gradients.
- `pointing_game` (Zhang et al. 2016): is each map's maximum on the object?
- `share_on`: the share of each map's mass on the object.
- `randomization_check` (Adebayo et al. 2018): maps of a copy of the model with
  re-initialized weights should differ from the trained model's (low rank correlation).

Examples:
    >>> cams = featvis.visualize_cam(lite0.model, "_fc", 285, cats, preprocess=lite0.preprocess)
    >>> curve = featvis.metrics.deletion(lite0.model, "_fc", 285, cats, cams, preprocess=lite0.preprocess)
    >>> curve.areas            # one area per image, lower is better
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import copy
from dataclasses import dataclass
import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from featvis.errors import bad_type, bad_value, check_int, known_keywords
from featvis.model.prepared import PreparedModel, input_size, preparing
from featvis.model.targets import LayerSpec, OutputPick, unwrap_compiled
from featvis.optvis.losses import ActivationMaximization, as_losses

SCORES = ("probability", "logit")


@dataclass
class Curve:
    """A deletion or insertion curve per image: `scores` (B, steps + 1) at `fractions`
    (steps + 1,) of the pixels removed or revealed, and `areas` (B,) under each curve."""

    fractions: np.ndarray
    scores: np.ndarray
    areas: np.ndarray


@known_keywords
def deletion(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    filter_indices,
    seed_input,
    maps,
    *,
    steps: int = 32,
    baseline: str | float = "black",
    score: str = "probability",
    batch_size: int = 64,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> Curve:
    """Deletion curve: the score as the map's top pixels are replaced by the baseline, in `steps`
    equal steps (all channels of a pixel at once). Lower area: the map found what matters.

    `score`: ``"probability"`` (softmax over `layer`'s units, as Petsiuk et al.) or ``"logit"``
    (the units' mean value). `baseline`: ``"black"`` (the low end of `input_range`; zeros with
    ``input_range=None``), ``"blur"`` (the image blurred, sigma 5 px) or a number in the
    input's units. `batch_size` images (steps) per forward, without gradients. The model's
    conventions, `input_range` to `output`, are `featvis.prepared.PreparedModel`'s; a model
    prepared already keeps its own.

    Examples:
        >>> deletion(model, "fc", 3, images, maps, steps=16).areas
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
    return _curve(
        model, layer, filter_indices, seed_input, maps, steps, baseline, score, batch_size, conventions, True
    )


@known_keywords
def insertion(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    filter_indices,
    seed_input,
    maps,
    *,
    steps: int = 32,
    baseline: str | float = "blur",
    score: str = "probability",
    batch_size: int = 64,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> Curve:
    """Insertion curve: the score as the map's top pixels are revealed on the baseline (by default
    the blurred image), in `steps` equal steps. Higher area: the map found what matters.
    Arguments as for `deletion`.

    Examples:
        >>> insertion(model, "fc", 3, images, maps, steps=16).areas
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
    return _curve(
        model, layer, filter_indices, seed_input, maps, steps, baseline, score, batch_size, conventions, False
    )


def _curve(
    model, layer, filter_indices, seed_input, maps, steps, baseline, score, batch_size, conventions, delete
):
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    if score not in SCORES:
        raise bad_value("score", score, f"one of {', '.join(SCORES)}")
    loss = as_losses(ActivationMaximization(layer, filter_indices))
    with preparing(model, **conventions) as prepared:
        images = prepared.load_images(seed_input)
        order = _maps(maps, images)
        base = _baseline(baseline, images, prepared)
        n, _, h, w = images.shape
        pixels = h * w
        ranks = torch.empty(n, pixels, dtype=torch.long, device=images.device)
        ranks.scatter_(
            1,
            torch.sort(order.flatten(1), dim=1, descending=True, stable=True).indices,
            torch.arange(pixels, device=images.device).expand(n, -1).contiguous(),
        )
        counts = torch.tensor([round(k * pixels / steps) for k in range(steps + 1)], device=images.device)
        rows = n * (steps + 1)
        values = torch.empty(rows)
        for start in range(0, rows, batch_size):
            index = torch.arange(start, min(start + batch_size, rows), device=images.device)
            image, step = index // (steps + 1), index % (steps + 1)
            changed = (ranks[image] < counts[step][:, None]).view(-1, 1, h, w)
            if delete:
                x = torch.where(changed, base[image], images[image])
            else:
                x = torch.where(changed, images[image], base[image])
            values[start : start + len(index)] = _score(prepared, loss, layer, filter_indices, x, score).cpu()
    scores = values.view(n, steps + 1).numpy()
    fractions = (counts.cpu().numpy() / pixels).astype(np.float64)
    areas = ((scores[:, 1:] + scores[:, :-1]) / 2 * np.diff(fractions)).sum(1)
    return Curve(fractions=fractions, scores=scores, areas=areas)


def _maps(maps, images: torch.Tensor) -> torch.Tensor:
    if not isinstance(maps, np.ndarray | torch.Tensor):
        raise bad_type("maps", maps, "an array (B, H, W) of maps, one per image")
    tensor = torch.as_tensor(np.asarray(maps, dtype=np.float32) if isinstance(maps, np.ndarray) else maps)
    tensor = tensor.float().to(images.device)
    if tensor.ndim == 2:
        tensor = tensor[None]
    expected = (images.shape[0], *images.shape[-2:])
    if tuple(tensor.shape) != expected or not torch.isfinite(tensor).all():
        raise bad_value(
            "maps", f"an array of shape {tuple(tensor.shape)}", f"finite maps of shape {expected}"
        )
    return tensor


def _baseline(baseline, images: torch.Tensor, prepared: PreparedModel) -> torch.Tensor:
    if baseline == "black":
        return torch.zeros_like(images)
    if baseline == "blur":
        return gaussian_blur(images, 5.0)
    if isinstance(baseline, int | float) and not isinstance(baseline, bool) and math.isfinite(baseline):
        low, high = prepared.input_range if prepared.input_range is not None else (0.0, 1.0)
        return torch.full_like(images, (baseline - low) / (high - low))
    raise bad_value("baseline", baseline, "'black', 'blur' or a number in the input's units")


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Images blurred by a Gaussian of `sigma` pixels (separable, reflected borders).

    Examples:
        >>> gaussian_blur(torch.rand(1, 3, 32, 32), 2.0).shape
        torch.Size([1, 3, 32, 32])
    """
    radius = max(1, min(int(3 * sigma), min(images.shape[-2:]) - 1))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _score(prepared: PreparedModel, loss, layer, filter_indices, x: torch.Tensor, score: str) -> torch.Tensor:
    out = prepared.layer_output(layer, x).float()
    if score == "probability":
        if out.ndim != 2:
            raise bad_value("score", score, f"'logit' for layer {layer!r} (its output is not (N, classes))")
        out = out.softmax(1)
    indices = ActivationMaximization(layer, filter_indices).filter_indices
    picked = out if indices is None else out[:, list(indices)]
    return picked.flatten(1).mean(1)


def _maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    maps_a = np.asarray(maps, dtype=np.float64)
    maps_a = maps_a[None] if maps_a.ndim == 2 else maps_a
    masks_a = np.asarray(masks).astype(bool)
    if maps_a.ndim != 3 or masks_a.shape not in (maps_a.shape, maps_a.shape[1:]):
        raise bad_value(
            "masks", f"an array of shape {masks_a.shape}", f"masks of the maps' shape {maps_a.shape}"
        )
    return maps_a, np.broadcast_to(masks_a, maps_a.shape)


def pointing_game(maps, masks, *, tolerance: int = 0) -> np.ndarray:
    """For each map, whether its maximum lies on the object (`masks`, boolean (B, H, W) or (H, W)),
    within `tolerance` pixels (Zhang et al. 2016 use 15). Returns (B,) booleans.

    Examples:
        >>> pointing_game(cams, object_masks).mean()    # the hit rate
    """
    maps_a, masks_a = _maps_and_masks(maps, masks)
    check_int("tolerance", tolerance, 0)
    if tolerance:
        grown = F.max_pool2d(
            torch.from_numpy(masks_a.astype(np.float32))[:, None], 2 * tolerance + 1, 1, tolerance
        )
        masks_a = grown[:, 0].numpy() > 0
    flat = maps_a.reshape(len(maps_a), -1)
    peaks = flat.argmax(1)
    return masks_a.reshape(len(maps_a), -1)[np.arange(len(maps_a)), peaks]


def share_on(maps, masks) -> np.ndarray:
    """The share of each map's total on the object (`masks`, (B, H, W) or (H, W)); (B,) in [0, 1].

    Examples:
        >>> share_on(cams, left_half)
    """
    maps_a, masks_a = _maps_and_masks(maps, masks)
    totals = maps_a.reshape(len(maps_a), -1).sum(1)
    return (maps_a * masks_a).reshape(len(maps_a), -1).sum(1) / np.maximum(totals, 1e-12)


def rank_correlation(a, b) -> np.ndarray:
    """Spearman rank correlation of each pair of maps (B, H, W) (or one pair (H, W)); (B,).

    Examples:
        >>> rank_correlation(featvis_cams, other_cams).min()
    """
    a_t = torch.as_tensor(np.asarray(a, dtype=np.float64))
    b_t = torch.as_tensor(np.asarray(b, dtype=np.float64))
    if a_t.shape != b_t.shape:
        raise bad_value("b", f"maps of shape {tuple(b_t.shape)}", f"the shape of a, {tuple(a_t.shape)}")
    a_t, b_t = a_t.reshape(-1, a_t.shape[-2] * a_t.shape[-1]), b_t.reshape(-1, b_t.shape[-2] * b_t.shape[-1])

    def ranks(x):
        return x.argsort(1).argsort(1).double()

    ra, rb = ranks(a_t), ranks(b_t)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return ((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-12)).numpy()


class RandomizationStep(tuple):
    """One step of `randomization_check`: unpacks as ``(label, correlations)``, and tells what it
    randomized: `parameters` {qualified parameter name: element count}, `randomized` (their total).

    Examples:
        >>> for step in randomization_check(model, explain, layers=["fc", "layer4"]):
        ...     print(step.label, step.correlations.mean(), step.randomized, list(step.parameters))
    """

    def __new__(cls, label: str, correlations: np.ndarray, parameters: dict[str, int]):
        step = super().__new__(cls, (label, correlations))
        step.parameters = parameters
        return step

    @property
    def label(self) -> str:
        return self[0]

    @property
    def correlations(self) -> np.ndarray:
        return self[1]

    @property
    def randomized(self) -> int:
        """How many parameter values this step re-initialized."""
        return sum(self.parameters.values())

    def __repr__(self) -> str:
        return (
            f"RandomizationStep(label={self.label!r}, correlations={self.correlations!r}, "
            f"parameters={len(self.parameters)} tensors, {self.randomized} values)"
        )


@known_keywords
def randomization_check(
    model: nn.Module | PreparedModel,
    explain: Callable[[nn.Module], np.ndarray],
    *,
    layers: Sequence[LayerSpec] | None = None,
    seed: int = 0,
    size: int | tuple[int, ...] | None = None,
    input_range: tuple[float, float] | None = (0.0, 1.0),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> list[RandomizationStep]:
    """The model-randomization sanity check (Adebayo et al. 2018) on a deep copy of `model`.

    ``explain(model) -> maps (B, H, W)`` is called on the trained copy, then after each
    cascading re-initialization: every parameter of each of `layers`, nested ones included
    (any layer spec featvis takes: a name, a block or container, ``name#k``, an int index,
    a module of `model`, a Keras name; randomized in the order given, each step keeping the
    earlier ones random; None: every parameter at once) replaced by Gaussian noise of each
    tensor's own mean and std, drawn from a generator seeded with `seed` (torch's global
    generator untouched). A layer with no parameters is an error. Returns one
    `RandomizationStep` per step, ``(label, rank correlation of each image's map with the
    trained one)`` with ``.parameters`` (the names and sizes of what it randomized): near 0 is
    what a map that explains the model shows; the user's `model` is never modified.

    `layers` are resolved on the model probed once on a random input of `size` (default 224 px)
    with the model's conventions, `input_range` to `output` (`featvis.prepared.PreparedModel`'s;
    `input_range` is (0, 1) by default here: the images are random); a `PreparedModel` is probed
    with its own.

    Examples:
        >>> explain = lambda m: featvis.visualize_cam(m, "_fc", 285, cat, preprocess=lite0.preprocess)
        >>> randomization_check(lite0.model, explain)     # [("all", array([0.05]))]
        >>> randomization_check(lite0.model, explain, layers=["_fc", "_blocks.15"])[1].randomized
        605440
    """
    if not isinstance(model, nn.Module | PreparedModel):
        raise bad_type("model", model, "a torch.nn.Module or a featvis.PreparedModel")
    if not callable(explain):
        raise bad_type("explain", explain, "a function model -> maps (B, H, W)")
    check_int("seed", seed, 0)
    if layers is not None and (isinstance(layers, str) or not isinstance(layers, Sequence)):
        raise bad_type("layers", layers, "a list of layers (names, ints or modules of the model), or None")
    if layers is not None and not layers:
        raise bad_value("layers", layers, "at least one layer, or None for every parameter at once")
    original = model.model if isinstance(model, PreparedModel) else unwrap_compiled(model)
    memo: dict[int, object] = {}
    copied = copy.deepcopy(original, memo)  # before any guard: the copy keeps the model's own state
    parameter_names = {id(p): name for name, p in copied.named_parameters()}
    if layers is None:
        if not parameter_names:
            raise bad_value("model", type(original).__name__, "a model with parameters to randomize")
        steps = [("all", list(copied.parameters()))]
    else:
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
        if isinstance(model, PreparedModel):  # it probes random images in its own input_range
            del conventions["input_range"]
        steps = []
        with preparing(model, **conventions) as prepared:
            if size is not None:
                prepared.probe_size(input_size(size, prepared.spatial_dims), "size")
            for i, spec in enumerate(layers):
                target = prepared.resolve(spec, f"layers[{i}]")
                label = spec if isinstance(spec, str) else str(target)
                parameters = list(memo[id(target.module)].parameters())
                if not parameters:
                    raise bad_value(
                        f"layers[{i}]",
                        spec,
                        f"a layer with parameters to randomize: {label!r} ({type(target.module).__name__}) "
                        "has no parameters, nested ones included",
                    )
                steps.append((label, parameters))
    trained = np.array(explain(copied), copy=True)  # a map may be a view of a weight randomized below
    generator = torch.Generator().manual_seed(seed)
    results = []
    for label, parameters in steps:
        with torch.no_grad():
            for parameter in parameters:
                std = float(parameter.std()) if parameter.numel() > 1 else 1.0
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
                parameter.copy_((float(parameter.mean()) + std * noise).to(parameter))
        randomized = {parameter_names[id(p)]: p.numel() for p in parameters}
        results.append(
            RandomizationStep(label, rank_correlation(trained, np.asarray(explain(copied))), randomized)
        )
    return results
