"""Directions from data: the top PCA or NMF components of a layer's activations over your images.

A unit is one axis of a layer's channel space; the data often varies along
directions that mix many units. `activation_directions` reads a layer over a
dataset (each spatial position a sample by default) and returns its top `k`
components as a (k, channels) tensor, ready for `featvis.losses.Direction`.

Examples:
    >>> found = activation_directions(lite0.model, "_blocks.10", "photos/", k=4, preprocess=lite0.preprocess)
    >>> found.vectors.shape, found.explained_variance_ratio
    (torch.Size([4, 112]), tensor([0.21, 0.09, 0.06, 0.05]))
    >>> image = featvis.visualize_activation_with_losses(lite0.model, found.objective(0), preprocess=...)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
import numbers
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from featvis.data.examples import SkippedImagesWarning
from featvis.data.sources import DataSummary, ImageSource, collate, image_source
from featvis.errors import (
    FeatvisError,
    FeatvisTypeError,
    FeatvisValueError,
    bad_type,
    bad_value,
    check_int,
    known_keywords,
)
from featvis.model.prepared import PreparedModel, preparing
from featvis.model.targets import LayerSpec, OutputPick
from featvis.model.units import resolve_axis
from featvis.optvis.losses import Direction

METHODS = ("pca", "nmf")
REDUCTIONS = (None, "mean", "max")


def units_first(out: torch.Tensor, prepared: PreparedModel, layer: LayerSpec) -> torch.Tensor:
    """A layer output (or its gradient) as (N, units, positions): the unit axis second, the rest flat
    (one position for a dense layer)."""
    if out.ndim == 1:
        out = out[:, None]
    axis = resolve_axis(out, None, prepared.resolve(layer), layer)
    out = out.movedim(axis, 1)
    return out.flatten(2) if out.ndim > 2 else out[..., None]


def reduce_positions(out: torch.Tensor, reduce: str | None) -> torch.Tensor:
    """(N, C, P) -> samples (S, C): each position (None), or one per image (its mean or max)."""
    if reduce is None:
        return out.permute(0, 2, 1).reshape(-1, out.shape[1])
    return out.mean(2) if reduce == "mean" else out.amax(2)


def check_reduce(reduce: object, allowed: tuple = REDUCTIONS) -> str | None:
    if reduce not in allowed:
        names = ", ".join("None (each position a sample)" if r is None else repr(r) for r in allowed)
        raise bad_value("reduce", reduce, f"one of {names}")
    return reduce


def image_batches(
    prepared: PreparedModel, data: object, argument: str, *, size: int | None, batch_size: int
) -> Iterator[torch.Tensor]:
    """Batches of `data` (anything `featvis.data.sources.image_source` reads) as (B, C, H, W) in [0, 1]
    on the model's device; unreadable items are skipped with a `SkippedImagesWarning`, and no readable
    image at all is an error that names `argument`."""
    prepared.require_input_range(f"reading {argument}")
    low, high = prepared.input_range
    try:
        source = image_source(data, channels=prepared.channels, size=size, input_range=(low, high))
    except (FeatvisValueError, FeatvisTypeError) as err:  # the message names `data`: name the argument
        text = str(err)
        if text.startswith("data"):
            raise type(err)(argument + text[len("data") :]) from None
        raise
    summary = DataSummary()
    if isinstance(source, ImageSource):
        loader = DataLoader(source, batch_size=batch_size, num_workers=0, collate_fn=collate)
        for images, _, notes in loader:
            for position, ok, note in notes:
                summary.add(position, note, ok, source.describe)
            if len(images):
                yield images.to(prepared.device)
    else:  # the user's DataLoader: batches of images (or (images, labels)) in input_range
        for batch in source:
            images = batch[0] if isinstance(batch, tuple | list) else batch
            if not isinstance(images, torch.Tensor) or images.ndim != 4:
                raise bad_type(argument, batch, "a DataLoader whose batches are image tensors (N, C, H, W)")
            summary.used += len(images)
            yield ((images.float() - low) / (high - low)).to(prepared.device)
    if summary.used == 0:
        raise bad_value(argument, f"data with no readable image ({summary})", "at least one readable image")
    if summary.skipped:
        warnings.warn(f"{argument}: {summary}", SkippedImagesWarning, stacklevel=4)


def layer_samples(
    prepared: PreparedModel,
    layer: LayerSpec,
    data: object,
    argument: str,
    *,
    reduce: str | None,
    size: int | None,
    batch_size: int,
    max_samples: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, int]:
    """The layer's activations over `data` as float32 samples (S, channels) on the CPU
    (`reduce_positions`), and how many there were: with `max_samples`, a uniform random
    subset of at most that many (each sample draws a random key and the smallest keys stay),
    so memory stays bounded however large the data."""
    generator = torch.Generator().manual_seed(seed)
    kept, keys, seen = None, None, 0
    for images in image_batches(prepared, data, argument, size=size, batch_size=batch_size):
        out = units_first(prepared.layer_output(layer, images), prepared, layer).float()
        samples = reduce_positions(out, reduce).cpu()
        seen += len(samples)
        fresh = torch.rand(len(samples), generator=generator)
        kept = samples if kept is None else torch.cat([kept, samples])
        keys = fresh if keys is None else torch.cat([keys, fresh])
        if max_samples is not None and len(kept) > max_samples:
            chosen = torch.topk(keys, max_samples, largest=False).indices
            kept, keys = kept[chosen], keys[chosen]
    return kept, seen


@dataclass
class Directions:
    """The top directions of a layer's activations: ``vectors`` (k, channels), unit rows, strongest first.

    ``explained_variance`` and ``explained_variance_ratio`` (PCA: each component's
    variance and its share of the total; None for NMF), ``mean`` (channels,) of the
    samples, ``samples``: how many activation vectors were fitted. Indexing and
    iterating give the rows; ``objective(i)`` is a `featvis.losses.Direction` on row i.

    Examples:
        >>> found.vectors @ found.vectors.T  # PCA: the identity
        >>> featvis.visualize_activation_with_losses(model, found.objective(0, cossim_pow=2))
    """

    layer: LayerSpec
    method: str
    vectors: torch.Tensor
    mean: torch.Tensor
    samples: int
    explained_variance: torch.Tensor | None = None
    explained_variance_ratio: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.vectors)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.vectors[index]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.vectors)

    def objective(self, index: int, **options) -> Direction:
        """A `featvis.losses.Direction` that grows direction `index` (`options`: ``cossim_pow``, ``x``, ...).

        Examples:
            >>> loss = found.objective(0) + 0.5 * featvis.TotalVariation()
        """
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise bad_type("index", index, f"an int in [0, {len(self) - 1}]")
        if not 0 <= index < len(self):
            raise bad_value("index", index, f"an int in [0, {len(self) - 1}]")
        return Direction(self.layer, self.vectors[index], **options)


def _pca(samples: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Components (k, C), their variances, variance ratios and the mean, in float64 for the covariance."""
    x = samples.double()
    mean = x.mean(0)
    centered = x - mean
    covariance = centered.T @ centered / max(1, len(x) - 1)
    values, vectors = torch.linalg.eigh(covariance)
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    components = vectors[:, :k].T.clone()
    total = values.sum()
    return components, values[:k], values[:k] / total if total > 0 else values[:k] * 0, mean


def _orient(components: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Flip each component so the data's mean projects positively on it (its largest entry positive when
    the mean is orthogonal to it): a sign that PCA alone leaves free."""
    signs = torch.sign(components @ mean)
    largest = components.gather(1, components.abs().argmax(1, keepdim=True))[:, 0]
    signs = torch.where(signs == 0, torch.sign(largest), signs)
    return components * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]


def _nmf(samples: torch.Tensor, k: int, layer: LayerSpec, seed: int, max_iter: int) -> torch.Tensor:
    """NMF components (k, C), unit rows, ordered by how much of the data each carries."""
    from sklearn.decomposition import NMF

    x = samples.double().numpy()
    lowest = float(x.min())
    if lowest < -1e-6 * max(1.0, float(np.abs(x).max())):
        raise bad_value(
            "method",
            "nmf",
            f"'pca' for layer {layer!r}, whose activations go negative (min {lowest:.3g}): NMF needs "
            "nonnegative ones (a layer after a ReLU)",
        )
    model = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning at max_iter: the components stand
        weights = model.fit_transform(np.clip(x, 0, None))
    components = torch.from_numpy(model.components_).double()
    norms = components.norm(dim=1).clamp(min=1e-12)
    carried = torch.from_numpy(weights).double().sum(0) * norms
    order = torch.argsort(carried, descending=True)
    return (components / norms[:, None])[order]


@known_keywords
def activation_directions(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    data: object,
    k: int = 4,
    method: str = "pca",
    *,
    reduce: str | None = None,
    max_samples: int = 200_000,
    seed: int = 0,
    size: int | None = None,
    batch_size: int = 32,
    max_iter: int = 400,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> Directions:
    """The top `k` PCA or NMF components of `layer`'s activations over `data`.

    `data`: what `featvis.dataset_examples` takes (a folder, a list of paths, PIL images or arrays,
    a torch Dataset or DataLoader, an array (N, H, W, C) / tensor (N, C, H, W) in `input_range`,
    None for scikit-image's photos). Each spatial position (or token) of each image is a
    sample (`reduce` ``"mean"`` or ``"max"``: one sample per image); at most `max_samples`
    of them, drawn at random with `seed`, are fitted. ``method="pca"``: the principal axes
    of the centered samples, strongest first, each signed so that the mean activation
    projects positively on it; ``"nmf"``: scikit-learn's NMF of the (nonnegative)
    activations, ordered by how much of the data each component carries. `size`: the side images
    read from files are resized and cropped to (as in `featvis.dataset_examples`); `batch_size`
    images per forward; `max_iter` bounds NMF's iterations.
    The model's conventions, `input_range` to `output`, are `featvis.prepared.PreparedModel`'s (a
    model prepared already keeps its own); the model is left as it was.

    Examples:
        >>> found = featvis.concepts.activation_directions(net, "conv2", images, k=3, method="nmf")
        >>> found.vectors.shape
        torch.Size([3, 16])
        >>> loss = featvis.losses.Direction("conv2", found.vectors[0])
    """
    check_int("k", k, 1)
    if method not in METHODS:
        raise bad_value("method", method, "'pca' or 'nmf'")
    check_reduce(reduce)
    check_int("max_samples", max_samples, 1)
    check_int("seed", seed, 0)
    check_int("batch_size", batch_size, 1)
    check_int("max_iter", max_iter, 1)
    if size is not None:
        check_int("size", size, 1)
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
        samples, seen = layer_samples(
            prepared,
            layer,
            data,
            "data",
            reduce=reduce,
            size=size,
            batch_size=batch_size,
            max_samples=max_samples,
            seed=seed,
        )
    channels = samples.shape[1]
    if k > channels:
        raise bad_value("k", k, f"at most the layer's {channels} channels")
    if len(samples) < 2:
        raise bad_value("data", f"{seen} activation sample", "at least 2 samples (images or positions)")
    if not torch.isfinite(samples).all():
        raise FeatvisError(f"layer {layer!r} gives NaN or infinite activations on this data")
    if method == "pca":
        components, variance, ratio, mean = _pca(samples, k)
        components = _orient(components, mean)
        return Directions(
            layer, method, components.float(), mean.float(), len(samples), variance.float(), ratio.float()
        )
    components = _nmf(samples, k, layer, seed, max_iter)
    return Directions(layer, method, components.float(), samples.mean(0), len(samples))
