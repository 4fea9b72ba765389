"""Dataset examples: the images of the user's own data that drive each unit most and least.

One streaming pass over the data (decoded in DataLoader workers, run under
``torch.inference_mode`` in batches, the forward pass stopped once the deepest
requested layer has run) keeps a running top-k and bottom-k per unit, so memory
grows with units x k, not with the data. Conv units rank images by the unit's
spatial maximum (``reduce="mean"``: its spatial mean); the position of the
maximum is remembered, and `DatasetExamples.images` returns the crop of the
input that the unit's receptive field covers there. The receptive field is
measured on the real network, from the support of the gradient of the unit at a
position with respect to the input (once per model, layer and input size).
Dense units show the whole image.

Units lie on the layer's unit axis, as everywhere in featvis: axis 1 of a conv, the
features (last axis) of a transformer's (N, tokens, features) outputs (`unit_axis`
overrides it). Token units rank images by their maximum over the tokens (``reduce="mean"``:
their mean over the tokens, as `visualize_activation` optimizes them), or by one token's value
with ``token=`` (``token=0``: a ViT's class token); their examples are whole images, since
after self-attention every token sees the whole image.

Examples:
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> ex = featvis.dataset_examples(lite0.model, "_blocks.10", "photos/", k=9, preprocess=lite0.preprocess)
    >>> ex.indices.shape, ex.values[0, 0] >= ex.values[0, 1]
    ((112, 9), True)
    >>> crops = ex.images(7)                 # unit 7's top-9 crops, highest first
    >>> lows = ex.images(7, lowest=True)     # the 9 images where unit 7 is lowest
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
import dataclasses
from dataclasses import dataclass, field
import hashlib
import os
from pathlib import Path
import time
import warnings
import weakref

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, SequentialSampler
from tqdm.auto import tqdm

from featvis.data.sources import DataSummary, ImageSource, array_item, collate, image_source
from featvis.errors import FeatvisValueError, FeatvisWarning, bad_type, bad_value, check_int
from featvis.image import atomic_write
from featvis.model import fusion
from featvis.model.prepared import PreparedModel, preparing
from featvis.model.targets import LayerSpec, OutputPick
from featvis.model.units import check_token, check_unit_axis, layer_key, resolve_axis, select_units
from featvis.optvis.optimizer import show_progress

REDUCTIONS = ("max", "mean")
_CACHED_IMAGES = 64  # decoded images a result keeps while its crops are read (units share images)
_FIELD_IMAGES = 8  # random inputs whose gradient supports are united to measure a receptive field
CHECKPOINT_VERSION = 1


class SkippedImagesWarning(FeatvisWarning):
    """Some items of the data could not be used; the message says how many and which."""


@dataclass(frozen=True)
class ReceptiveField:
    """Where a conv layer's output position looks in the input: ``top = row * stride + offset``.

    Measured on the real network (the gradient's support), in model-input pixels.

    Examples:
        >>> rf = ReceptiveField(size=(5, 5), stride=(1, 1), offset=(-2, -2))
        >>> rf.box(0, 0, (32, 32))       # (top, left, bottom, right), clipped, bottom/right exclusive
        (0, 0, 3, 3)
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def box(self, row: int, col: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        top = row * self.stride[0] + self.offset[0]
        left = col * self.stride[1] + self.offset[1]
        height, width = image_size
        return (
            max(0, top),
            max(0, left),
            min(height, top + self.size[0]),
            min(width, left + self.size[1]),
        )


class _LayerReader:
    """A pass's view of its `PreparedModel`: the layers resolved once, their capture, one layer alone."""

    def __init__(
        self,
        prepared: PreparedModel,
        layers: Sequence[LayerSpec],
        example: torch.Tensor,
        unit_axis: int | None = None,
        token: int | None = None,
    ):
        self.prepared = prepared
        self.model = prepared.model
        self.layers, self.unit_axis, self.token = list(layers), unit_axis, token
        prepared.probe_input(example)
        resolved = prepared.resolve_all(layers)
        self.targets = [resolved[layer_key(layer)] for layer in layers]
        # the fused copy where it agrees with the model (its convolutions apply their activations)
        self._runner, self._capture, self._channels_last = prepared.runner(self.targets, example.shape[1:])
        self.device = example.device

    @property
    def names(self) -> list[str]:
        return [t.name if t.call == 0 else t.key for t in self.targets]

    def read(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's output (units on axis 1) for model input `x`; the forward stops after the
        deepest. On the CPU in chunks of `fusion.chunk_rows` images (a batch of 32 images of
        224 px runs slower than 8 chunks of 4)."""
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        rows = fusion.chunk_rows(x, len(x))
        chunks = [self._capture.run(self._runner, part) for part in x.split(rows)]
        return [
            self.units_first(torch.cat([chunk[t.key] for chunk in chunks]), i)
            for i, t in enumerate(self.targets)
        ]

    def read_one(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Layer `index`'s output alone: the forward stops right after it (other layers need not run)."""
        target = self.targets[index]
        return self.units_first(self.prepared.capture([target]).run(self.model, x)[target.key], index)

    def units_first(self, out: torch.Tensor, index: int) -> torch.Tensor:
        """Layer `index`'s output with its units on axis 1 (its unit axis or `unit_axis`), then
        (N, units, positions...) or, with `token`, (N, units) at that token (position)."""
        if out.ndim == 1:
            return out
        layer = self.layers[index]
        axis = resolve_axis(out, self.unit_axis, self.targets[index], layer)
        return select_units(out, None, layer, axis, self.token)


def _support_box(grad: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the nonzero pixels of (B, C, H, W) gradients, or None."""
    mask = grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    if len(rows) == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _measure_receptive_field(
    reader: _LayerReader, index: int, image_size: tuple[int, int], stacklevel: int
) -> ReceptiveField | None:
    """The receptive field of layer `index` from the gradient's support at two output positions
    (its warnings `stacklevel` frames up).

    The gradient is taken with respect to the model input (after `preprocess`,
    which is taken to work pixel by pixel, as a normalization does). The input
    grows (up to 4x) until the field at the center position touches no image
    border, so its size is the real one; the supports of several random inputs
    are united, so that ReLUs and max pools (whose gradient reaches only some
    pixels for one input) do not hide part of it.
    """
    generator = torch.Generator().manual_seed(0)
    height, width = image_size
    field_found = None
    for scale in (1, 2, 4):
        h, w = height * scale, width * scale
        count = max(2, _FIELD_IMAGES // scale**2)  # about the same pixels at every scale
        images = torch.rand(count, reader.prepared.channels, h, w, generator=generator).to(reader.device)
        with torch.no_grad():
            x = reader.prepared.model_input(images)
        x = x.detach().clone().requires_grad_(True)  # no gradient through preprocess (its caches)
        with torch.enable_grad():
            try:
                out = reader.read_one(x, index)
            except Exception as err:  # the network does not run at this size: keep the last measurement
                if field_found is None:
                    warnings.warn(
                        f"dataset_examples: could not measure the receptive field of layer "
                        f"{reader.names[index]!r} ({type(err).__name__}: {err}); its examples are whole images",
                        FeatvisWarning,
                        stacklevel=stacklevel,
                    )
                break
            if out.ndim != 4 or out.shape[-2] * out.shape[-1] <= 1:
                return None
            if not out.requires_grad:  # a positional encoding: the same for every image
                warnings.warn(
                    f"dataset_examples: layer {reader.names[index]!r} does not depend on the input image, "
                    "so every image drives its units alike; its examples are whole images",
                    FeatvisWarning,
                    stacklevel=stacklevel,
                )
                return None
            oh, ow = out.shape[-2:]
            center = (oh // 2, ow // 2)
            boxes = {}
            for pos in (center, (min(center[0] + 1, oh - 1), min(center[1] + 1, ow - 1))):
                (grad,) = torch.autograd.grad(
                    out[:, :, pos[0], pos[1]].sum(), x, retain_graph=True, allow_unused=True
                )
                boxes[pos] = _support_box(grad) if grad is not None else None
        box = boxes[center]
        if box is None:
            return None
        (r0, c0), (r1, c1) = boxes.keys() if len(boxes) == 2 else (center, center)
        other = boxes.get((r1, c1))
        # the field moves by the stride per output position; an edge clipped by the image stays put
        stride = (
            max(other[0] - box[0], other[2] - box[2]) // (r1 - r0) if other and r1 > r0 else round(h / oh),
            max(other[1] - box[1], other[3] - box[3]) // (c1 - c0) if other and c1 > c0 else round(w / ow),
        )
        stride = (max(1, stride[0]), max(1, stride[1]))
        field_found = ReceptiveField(
            size=(box[2] - box[0], box[3] - box[1]),
            stride=stride,
            offset=(box[0] - r0 * stride[0], box[1] - c0 * stride[1]),
        )
        if box[0] > 0 and box[1] > 0 and box[2] < h and box[3] < w:
            break  # not clipped by the image: this is the full field
    return field_found


_FIELDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(layer, size, ...): field}


def _receptive_field(
    reader: _LayerReader, index: int, image_size: tuple[int, int], stacklevel: int
) -> ReceptiveField | None:
    """`_measure_receptive_field`, measured once per model, layer, input size and channel count;
    its warnings `stacklevel` frames above the caller."""
    fields = _FIELDS.setdefault(reader.model, {})
    key = (reader.names[index], tuple(image_size), reader.prepared.channels, str(reader.device))
    if key not in fields:
        fields[key] = _measure_receptive_field(reader, index, image_size, stacklevel + 2)
    return fields[key]


class _RunningTopK:
    """The k highest scores per unit seen so far, their data positions and spatial positions.

    Equal scores are ranked by data position, so the result does not depend on the batching.
    """

    def __init__(self, units: int, k: int, device: torch.device):
        self.values = torch.full((units, k), -torch.inf, device=device)
        self.indices = torch.full((units, k), -1, dtype=torch.long, device=device)
        self.where = torch.full((units, k), -1, dtype=torch.long, device=device)

    def update(self, scores: torch.Tensor, positions: torch.Tensor, where: torch.Tensor) -> None:
        """scores, where: (N, units); positions: (N,)."""
        k = self.values.shape[1]
        values = torch.cat([self.values, torch.nan_to_num(scores.T, nan=-torch.inf)], dim=1)
        indices = torch.cat([self.indices, positions.expand(len(self.values), -1)], dim=1)
        spots = torch.cat([self.where, where.T], dim=1)
        by_position = indices.argsort(dim=1, stable=True)  # ties go to the earlier item, however split
        values, indices, spots = (t.gather(1, by_position) for t in (values, indices, spots))
        best = values.sort(dim=1, descending=True, stable=True).indices[:, :k]
        self.values = values.gather(1, best)
        self.indices = indices.gather(1, best)
        self.where = spots.gather(1, best)

    def state(self) -> dict:
        return {"values": self.values.cpu(), "indices": self.indices.cpu(), "where": self.where.cpu()}

    def load(self, state: dict) -> None:
        device = self.values.device
        self.values, self.indices, self.where = (state[n].to(device) for n in ("values", "indices", "where"))


@dataclass(repr=False)
class DatasetExamples:
    """The dataset examples of one layer: per unit, the k images that drive it most and least.

    Rows follow `units`: ``indices[i]`` belongs to unit ``units[i]``. `indices` and
    `values` run highest first, `lowest_indices` and `lowest_values` lowest first;
    indices are positions in the data (for a folder, in its sorted file list:
    `sources` gives the paths). For conv layers, `positions` is the (row, col) of
    the unit's maximum in the layer's output and `receptive_field` maps it to the
    input. A unit that saw fewer than k images has fewer columns (``k`` shrinks
    to the number of images used). `seconds` times the pass (``"pass"``) and the
    receptive-field measurement (``"receptive_field"``). A pass over ``directions=`` has one
    "unit" per direction (``units[i] == i``: row i of `directions`, the unit-norm rows it ranked by).

    Examples:
        >>> ex.values[ex.row(7)]           # unit 7's top activations
        >>> ex.images(7)                    # its top crops, (h, w, C) uint8 arrays
        >>> ex.sources(7, lowest=True)      # the files where it is lowest
    """

    layer: str
    units: list[int]
    indices: np.ndarray
    values: np.ndarray
    lowest_indices: np.ndarray
    lowest_values: np.ndarray
    positions: np.ndarray | None
    lowest_positions: np.ndarray | None
    reduce: str
    receptive_field: ReceptiveField | None
    input_size: tuple[int, int]
    summary: DataSummary
    interrupted: bool = False
    seconds: dict[str, float] = field(default_factory=dict)
    directions: np.ndarray | None = None
    _source: object = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        k = self.indices.shape[1] if self.indices.ndim == 2 else 0
        flags = ", interrupted" if self.interrupted else ""
        units = f"units=[{_short(self.units)}]"
        if self.directions is not None:
            units = f"directions={len(self.directions)}"
        return (
            f"DatasetExamples(layer={self.layer!r}, {units}, k={k}, "
            f"reduce={self.reduce!r}, {self.summary}{flags})"
        )

    def row(self, unit: int) -> int:
        """The row of `unit` in `indices`, `values`, ... (`units` lists them)."""
        if unit not in self._rows:
            raise bad_value("unit", unit, f"one of the units of this result ({_short(self.units)})")
        return self._rows[unit]

    @property
    def _rows(self) -> dict[int, int]:
        return {u: i for i, u in enumerate(self.units)}

    def boxes(self, unit: int, lowest: bool = False) -> list[tuple[int, int, int, int]]:
        """(top, left, bottom, right) of each example's crop in model-input pixels (whole image for dense)."""
        row = self.row(unit)
        height, width = self.input_size
        positions = self.lowest_positions if lowest else self.positions
        count = (self.lowest_indices if lowest else self.indices).shape[1]
        if positions is None or self.receptive_field is None:
            return [(0, 0, height, width)] * count
        return [self.receptive_field.box(int(r), int(c), self.input_size) for r, c in positions[row]]

    def images(self, unit: int, lowest: bool = False, crop: bool = True) -> list[np.ndarray]:
        """Unit `unit`'s examples: a list of (h, w, C) uint8 arrays, one per example (highest first;
        lowest first with ``lowest=True``), as the model saw them, cropped to the receptive field.

        A list, not one array: crops clipped at an image's border are smaller. ``crop=False`` gives
        the whole images. The images are read again from the data.

        Examples:
            >>> featvis.save_image(featvis.stitch_images(ex.images(7), cols=3), "unit7.png")
        """
        row = self.row(unit)
        indices = (self.lowest_indices if lowest else self.indices)[row]
        boxes = self.boxes(unit, lowest) if crop else [None] * len(indices)
        out = []
        for position, box in zip(indices, boxes):
            image = self._image(int(position))
            if box is not None:
                top, left, bottom, right = box
                image = image[top:bottom, left:right]
            out.append(image.copy())
        return out

    def _image(self, position: int) -> np.ndarray:
        """The whole image at `position` as (H, W, C) uint8; the last few are kept (units share images)."""
        cache = self.__dict__.setdefault("_cache", {})
        if position not in cache:
            if len(cache) >= _CACHED_IMAGES:
                cache.pop(next(iter(cache)))
            image = _load_for_display(self._source, position)
            cache[position] = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        return cache[position]

    def sources(self, unit: int, lowest: bool = False) -> list[str]:
        """What each example is: its file path, or ``'item N'`` for arrays and datasets."""
        indices = (self.lowest_indices if lowest else self.indices)[self.row(unit)]
        describe = getattr(self._source, "describe", lambda p: f"item {p}")
        return [describe(int(p)) for p in indices]


def merge_examples(parts: Sequence[DatasetExamples], k: int | None = None) -> DatasetExamples:
    """One layer's examples from the results of several shares of the same data (one per process).

    Per unit, the `k` highest (and lowest) of all the shares (default: as many as the
    widest share kept), an item found by two shares counted once, ties broken by the
    item's position, so the result does not depend on how the data was split.

    Examples:
        >>> merged = merge_examples([ex_rank0, ex_rank1], k=9)
    """
    if not parts or any(p.layer != parts[0].layer or p.units != parts[0].units for p in parts):
        raise bad_value("parts", f"{len(parts)} results", "results of the same layer and units")
    k = k or max(p.indices.shape[1] for p in parts)

    def best(indices, values, positions, highest):
        rows_i, rows_v, rows_p = [], [], []
        for row in range(len(parts[0].units)):
            seen: dict[int, tuple] = {}
            for part_i, part_v, part_p in zip(indices, values, positions):
                for column, index in enumerate(part_i[row]):
                    if index >= 0 and int(index) not in seen:
                        where = part_p[row][column] if part_p is not None else None
                        seen[int(index)] = (float(part_v[row][column]), where)
            order = sorted(seen, key=lambda i: ((-1 if highest else 1) * seen[i][0], i))[:k]
            rows_i.append(order)
            rows_v.append([seen[i][0] for i in order])
            rows_p.append([seen[i][1] for i in order])
        width = min(len(r) for r in rows_i)  # as a single pass: k shrinks to the images used
        stack = np.array([r[:width] for r in rows_i], dtype=np.int64).reshape(len(rows_i), width)
        kept = np.array([r[:width] for r in rows_v], dtype=np.float32).reshape(len(rows_v), width)
        where = None if positions[0] is None else np.array([r[:width] for r in rows_p]).reshape(-1, width, 2)
        return stack, kept, where

    top = best([p.indices for p in parts], [p.values for p in parts], [p.positions for p in parts], True)
    low = best(
        [p.lowest_indices for p in parts],
        [p.lowest_values for p in parts],
        [p.lowest_positions for p in parts],
        False,
    )
    summary = DataSummary.combined(p.summary for p in parts)
    return dataclasses.replace(
        parts[0],
        indices=top[0],
        values=top[1],
        positions=top[2],
        lowest_indices=low[0],
        lowest_values=low[1],
        lowest_positions=low[2],
        summary=summary,
        interrupted=any(p.interrupted for p in parts),
    )


def _short(units: Sequence[int]) -> str:
    return ", ".join(map(str, units[:8])) + (", ..." if len(units) > 8 else "")


def _load_for_display(source: object, position: int) -> torch.Tensor:
    """The image at `position` as (C, H, W) in [0, 1], as the pass fed it to the model."""
    if isinstance(source, ImageSource):
        return source.load(position)[0]
    if isinstance(source, _UserLoader):
        loader = source.loader
        if not isinstance(loader.sampler, SequentialSampler):
            raise FeatvisValueError(
                "data is a DataLoader whose sampler is not sequential, so its positions do not name "
                "dataset items; pass loader.dataset (or a Dataset, folder or array) to see the images"
            )
        item = loader.dataset[position]
        item = item[0] if isinstance(item, tuple | list) else item
        return array_item(item, source.channels, source.input_range)
    raise bad_type("data", source, "the data of the pass")


@dataclass
class _UserLoader:
    """A user's DataLoader (batches in `input_range`) and how to read its items back."""

    loader: DataLoader
    input_range: tuple[float, float]
    channels: int

    def describe(self, position: int) -> str:
        return f"item {position}"


def dataset_fingerprint(source: object) -> dict:
    """What identifies the data (for a checkpoint, an atlas): its length and, for files, a digest of the paths."""
    if isinstance(source, ImageSource):
        digest = hashlib.sha1("\n".join(source.names or []).encode()).hexdigest() if source.names else ""
        return {"count": len(source.items), "paths": digest}
    dataset = source.dataset
    return {"count": len(dataset) if hasattr(dataset, "__len__") else -1, "paths": ""}


def _digest(order: list[int]) -> str:
    """A short hash of a sampler's items, in order: a checkpoint resumes the same share only."""
    return hashlib.blake2b(np.asarray(order, dtype=np.int64).tobytes(), digest_size=8).hexdigest()


def _digest_directions(directions: torch.Tensor) -> str:
    """A short hash of the directions (shape and values): a checkpoint resumes the same directions only."""
    array = directions.cpu().numpy()
    return f"{array.shape[0]}x{array.shape[1]}:" + hashlib.blake2b(array.tobytes(), digest_size=8).hexdigest()


def _load_checkpoint(path: Path, settings: dict) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad file
        raise FeatvisValueError(
            f"checkpoint={str(path)!r} is not a readable featvis checkpoint: {err}"
        ) from err
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise FeatvisValueError(f"checkpoint={str(path)!r} is not a featvis dataset-examples checkpoint")
    for name, value in settings.items():
        if state["settings"].get(name) != value:
            raise FeatvisValueError(
                f"checkpoint={str(path)!r} was made with {name}={state['settings'].get(name)!r}, "
                f"and this call has {name}={value!r}; use another checkpoint path or delete it"
            )
    return state


def _to_nchw(batch: object, channels: int) -> torch.Tensor:
    if isinstance(batch, tuple | list):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise bad_type("data", batch, "a DataLoader whose batches are image tensors (N, C, H, W)")
    if batch.ndim == 4 and batch.shape[1] != channels and batch.shape[-1] == channels:
        batch = batch.permute(0, 3, 1, 2)
    return batch.float()


def _direction_matrix(directions: object) -> torch.Tensor:
    """`dataset_examples`'s ``directions`` as a (k, channels) float tensor of unit rows: a matrix (tensor,
    array, nested list; one direction per row, or one vector), an object with ``vectors`` (a
    `featvis.concepts.Directions`), or a list of vectors or of objects with a ``vector`` (CAVs).

    Examples:
        >>> _direction_matrix([[3.0, 4.0], [0.0, 2.0]])
        tensor([[0.6000, 0.8000],
                [0.0000, 1.0000]])
    """
    given = getattr(directions, "vectors", directions)
    if isinstance(given, list | tuple) and any(hasattr(row, "vector") for row in given):
        given = [getattr(row, "vector", row) for row in given]
    try:
        if isinstance(given, list | tuple) and given and all(isinstance(r, torch.Tensor) for r in given):
            matrix = torch.stack([r.detach().float().flatten().cpu() for r in given])
        else:
            matrix = torch.as_tensor(np.asarray(given, dtype=np.float32))
    except (TypeError, ValueError, RuntimeError) as err:
        raise bad_type(
            "directions",
            directions,
            "a (k, channels) matrix (one direction per row), a featvis.concepts.Directions or a list of "
            "CAVs or vectors of the same length",
        ) from err
    if matrix.ndim == 1 and matrix.numel():
        matrix = matrix[None]
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise bad_value(
            "directions",
            f"a tensor of shape {tuple(matrix.shape)}",
            "a (k, channels) matrix with at least one direction (one per row)",
        )
    norms = matrix.double().norm(dim=1)
    if not torch.isfinite(matrix).all() or (norms == 0).any():
        bad = [int(i) for i in torch.nonzero((norms == 0) | ~torch.isfinite(norms)).flatten()]
        raise bad_value("directions", f"rows {bad} zero or not finite", "finite non-zero directions")
    return (matrix.double() / norms[:, None]).float()


def dataset_examples(
    model: nn.Module | PreparedModel,
    layer: LayerSpec | Sequence[LayerSpec],
    data: object = None,
    units: Sequence[int] | None = None,
    k: int = 9,
    *,
    reduce: str = "max",
    input_range: tuple[float, float] = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    size: int | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    sampler: Sampler | None = None,
    unit_axis: int | None = None,
    token: int | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
    directions: object = None,
) -> DatasetExamples | dict[str, DatasetExamples]:
    """For every unit of `layer` (or `units`), the k images of `data` that activate it most and least.

    One streaming pass (a `DatasetPass`, run to its end): `data` (a folder, searched recursively;
    a list of paths; a torch Dataset or DataLoader; an array or tensor of images in
    `input_range`; ``None``: scikit-image's sample photos, the ``photos`` extra) is
    decoded in `num_workers` DataLoader workers (default: up to 4 for files, none
    for arrays), fed in batches of `batch_size` through ``preprocess`` under
    ``torch.inference_mode``, and the forward pass stops after the deepest layer (through the
    fused copy where it agrees with the model; on the CPU in chunks of `fusion.chunk_rows`).
    Files are converted to RGB (or gray: `channels`, by default read from the model's first
    convolution, as `PreparedModel` does), and resized so that their shorter side
    is `size` (default 224) and center-cropped to a square; unreadable files are
    skipped and counted, and a `SkippedImagesWarning` lists them at the end.
    Conv units are ranked by their spatial maximum (``reduce="mean"``: the mean).

    Units lie on each layer's unit axis (as in `visualize_activation`: a conv's axis 1, the
    last axis of a transformer's (N, tokens, features) outputs; `unit_axis` overrides it).
    Token units are ranked by their maximum (or mean) over the tokens, or at one
    ``token`` (``token=0``: a ViT's class token); their examples are whole images (after
    self-attention a token's receptive field is the whole image).

    A list of layers costs one pass and returns ``{layer: DatasetExamples}``.
    Ctrl-C returns what was seen so far (``interrupted=True``). With
    ``checkpoint="run.pt"`` the running top-k is saved atomically every
    `checkpoint_every` batches (and at the end or on Ctrl-C); a call with the same
    path and settings resumes from there.

    A model of several inputs takes `inputs=` as in `visualize_activation`, the others than the
    image fixed tensors (one example, fed beside every image of `data`). A model with a structured
    output (a Hugging Face ``ModelOutput``) is read through `output=` as everywhere (see
    `PreparedModel`), so a zoo bundle's ``**bundle.conventions`` fit. `model` may be a
    `PreparedModel`, shared with other calls: its conventions (``input_range``, ``preprocess``,
    ``channels``, ``device``, ``inputs``, ``output``) are used (one given here that differs is an error).

    `sampler` (e.g. a ``DistributedSampler``) picks which items this call reads: each
    process of a distributed job ranks its share, and `merge_examples` joins the shares
    (as `featvis.atlas` does). Not with a DataLoader of your own. With `checkpoint` too, the
    checkpoint holds this share's pass (the sampler's items, in its order) and resumes it.

    ``directions`` ranks images by directions of the layer's channel space instead of its units:
    a (k, channels) matrix, one direction per row (or a `featvis.concepts.Directions`, or a list
    of CAVs or vectors). Each direction is a "unit" of the result (``ex.images(i)``: row i's
    examples), scored at each position by the projection of the activation vector on the
    unit-norm direction, and ranked by its maximum over the positions (``reduce="mean"``: the
    mean) with the same crops as a unit's. One layer, and not with `units`.

    Examples:
        >>> ex = dataset_examples(lite0.model, "_fc", "photos/", k=4, preprocess=lite0.preprocess)
        >>> ex.sources(285)[0]
        'photos/cat.jpg'
        >>> vit_ex = dataset_examples(vit, "encoder.layers.encoder_layer_5.mlp.0", "photos/", units=[7])
        >>> vit_ex.values.shape                    # neuron 7 of the MLP (features axis), top 9
        (1, 9)
        >>> with featvis.PreparedModel(lite0.model, preprocess=lite0.preprocess) as prepared:
        ...     ex = dataset_examples(prepared, "_blocks.10", "photos/")
        ...     image = featvis.visualize_layer(prepared, "_blocks.10", ex.units[:4])
        >>> found = featvis.concepts.activation_directions(lite0.model, "_blocks.10", "photos/", k=4)
        >>> along = dataset_examples(lite0.model, "_blocks.10", "photos/", directions=found)
        >>> along.images(0)                         # the top crops along the first direction
    """
    if not isinstance(model, nn.Module | PreparedModel):
        raise bad_type("model", model, "a torch.nn.Module or a featvis.PreparedModel")
    conventions = dict(
        input_range=input_range,
        preprocess=preprocess,
        channels=channels,
        device=device,
        inputs=inputs,
        output=output,
    )
    with preparing(model, **conventions) as prepared:
        return DatasetPass(
            prepared,
            layer,
            data,
            units,
            k,
            reduce=reduce,
            size=size,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            sampler=sampler,
            unit_axis=unit_axis,
            token=token,
            directions=directions,
        )._run(stacklevel=3)


class DatasetPass:
    """The pass of `dataset_examples` as an object: iterate it, `checkpoint` it, `finish` it.

    Each step of the iteration reads one batch of `data` and gives the number of items done so
    far; `checkpoint()` saves the running top-k (also every `checkpoint_every` batches, when
    `checkpoint` names a file); `finish()` returns the examples of what was read
    (``interrupted=True`` unless the data ran out). ``run()`` is all three, with Ctrl-C ending the
    iteration: it is what `dataset_examples` calls. The arguments are `dataset_examples`'s,
    on a `PreparedModel` (open while the pass runs); `layer` is one layer or a list.

    Examples:
        >>> with featvis.PreparedModel(lite0.model, preprocess=lite0.preprocess) as prepared:
        ...     scan = DatasetPass(prepared, "_blocks.10", "photos/", k=4, checkpoint="run.pt")
        ...     for done in scan:              # one batch per step
        ...         if done >= 256:              # a budget of our own: stop, keep what was seen
        ...             break
        ...     ex = scan.finish()               # ex.interrupted: True; the same call resumes
    """

    def __init__(
        self,
        prepared: PreparedModel,
        layer: LayerSpec | Sequence[LayerSpec],
        data: object = None,
        units: Sequence[int] | None = None,
        k: int = 9,
        *,
        reduce: str = "max",
        size: int | None = None,
        batch_size: int = 32,
        num_workers: int | None = None,
        progress: bool | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 50,
        sampler: Sampler | None = None,
        unit_axis: int | None = None,
        token: int | None = None,
        directions: object = None,
    ):
        if not isinstance(prepared, PreparedModel):
            raise bad_type(
                "prepared", prepared, "a featvis.PreparedModel (dataset_examples takes a plain nn.Module)"
            )
        self.several = isinstance(layer, list | tuple)
        self.layers = list(layer) if self.several else [layer]
        if not self.layers:
            raise bad_value("layer", layer, "a layer or a non-empty list of layers")
        self.k = check_int("k", k, 1)
        self.checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
        check_int("batch_size", batch_size, 1)
        if size is not None:
            check_int("size", size, 1)
        if num_workers is not None:
            check_int("num_workers", num_workers, 0)
        self.unit_axis, self.token = check_unit_axis(unit_axis), check_token(token)
        if reduce not in REDUCTIONS:
            raise bad_value("reduce", reduce, "'max' (the unit's spatial maximum) or 'mean'")
        self.reduce = reduce
        self.units = _checked_units(units)
        self.directions = _checked_directions(directions, self.units, self.layers)
        prepared.require_input_range("dataset examples (data is read in it)")
        if prepared.inputs is not None:
            prepared.inputs.refuse_optimized("dataset examples rank the images of data and optimize nothing")
        self.prepared = prepared
        self.source = image_source(
            data, channels=prepared.channels, size=size, input_range=prepared.input_range
        )
        self.own_loader = isinstance(self.source, ImageSource)
        if sampler is not None and not self.own_loader:
            raise bad_value(
                "sampler",
                sampler,
                "a sampler over data that is not a DataLoader (given a DataLoader as data)",
            )
        self.order = [int(i) for i in sampler] if sampler is not None else None  # the share, in its order
        self.checkpoint_path = Path(checkpoint) if checkpoint is not None else None
        self.settings = self._settings(size, batch_size)
        self.state = _load_checkpoint(self.checkpoint_path, self.settings) if self.checkpoint_path else None
        start = self.state["next"] if self.state else 0
        self.loader, self.total = self._loader(start, batch_size, num_workers)
        self.summary = _saved_summary(self.state) if self.state else DataSummary()
        self.position = start  # the next item of the data (a user's DataLoader: of its batches)
        self.done = start  # items of the share done (with a sampler, a checkpoint's `next` counts these)
        self.input_size = (size, size) if size else None
        self.show = show_progress(progress)
        self.reader: _LayerReader | None = None
        self.tops: list[_RunningTopK] = []
        self.lows: list[_RunningTopK] = []
        self.chosen: list[list[int]] = []
        self.spatial: list[tuple[int, ...] | None] = []
        self.exhausted = False
        self.seconds = {"pass": 0.0}
        self._batches_done = 0
        self._stream: Iterator | None = None  # the loader's batches, shared by every iteration
        self._skip = start if not self.own_loader else 0  # a resumed user DataLoader: items to pass over

    def _settings(self, size: int | None, batch_size: int) -> dict:
        """What a checkpoint must match to be resumed by this pass."""
        prepared, layers = self.prepared, self.layers
        fixed = (
            {}
            if prepared.inputs is None
            else {  # the shape and sum of each fixed input
                name: [list(value.shape), float(value.double().sum())]
                for name, value in prepared.inputs.fixed.items()
            }
        )
        output = prepared.output
        picked = getattr(output, "__qualname__", "a function") if callable(output) else output
        return {
            "layers": [str(x) if not isinstance(x, nn.Module) else type(x).__name__ for x in layers],
            "units": self.units,
            "k": self.k,
            "reduce": self.reduce,
            "unit_axis": self.unit_axis,
            "token": self.token,
            "size": size,
            "channels": prepared.channels,
            "input_range": list(prepared.input_range),
            "batch_size": batch_size,
            **({"directions": _digest_directions(self.directions)} if self.directions is not None else {}),
            **({"inputs": fixed} if fixed else {}),
            **({"output": picked} if output is not None else {}),
            **dataset_fingerprint(self.source),
            **({"sampler": _digest(self.order)} if self.order is not None else {}),
        }

    def _loader(self, start: int, batch_size: int, num_workers: int | None) -> tuple[DataLoader, int | None]:
        """The DataLoader over what is left (`start` items done) and the length of the whole pass."""
        source = self.source
        if not self.own_loader:
            self.source = _UserLoader(source, self.prepared.input_range, self.prepared.channels)
            return source, len(source.dataset) if hasattr(source.dataset, "__len__") else None
        sampler = None
        if self.order is None:
            source.start = start
        else:  # `start` items of the share are done: the rest of it
            sampler = self.order[start:]
        workers = num_workers
        if workers is None:
            workers = min(4, os.cpu_count() or 1) if source.names is not None else 0
        loader = DataLoader(
            source,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.prepared.device.type == "cuda",
        )
        return loader, len(self.order) if self.order is not None else len(source.items)

    def __iter__(self) -> Iterator[int]:
        """One step per batch of the data: feed it, count it, checkpoint every `checkpoint_every`
        batches; each step gives the number of items done. A new iteration goes on where the last
        one stopped."""
        if self._stream is None:
            self._stream = _batches(self.loader, self.summary)
        bar = tqdm(
            total=self.total,
            initial=self.done,
            unit="img",
            desc="dataset examples",
            disable=not self.show,
            leave=False,
        )
        started = time.perf_counter()
        try:
            for batch in self._stream:
                fed = self._step(batch, bar)
                self.seconds["pass"] += time.perf_counter() - started  # the batch's wait and step
                if fed:
                    yield self.done
                started = time.perf_counter()  # not the caller's time between steps
            self.exhausted = True
        finally:
            bar.close()

    def _step(self, batch: object, bar: tqdm) -> bool:
        """Feed and count one of the loader's batches (None: one that raised); False for a batch
        skipped unread (it failed, or a resumed user DataLoader had it done)."""
        if batch is None:  # the loader raised on a batch: its items are counted as skipped
            self.position += self.loader.batch_size or 0
            self.done += self.loader.batch_size or 0
            return False
        images, positions, notes, after = self._unpack(batch)
        if not self.own_loader and self._skip > 0:  # a resumed user DataLoader: a batch already done
            self._skip -= len(images)
            self.position = after
            return False
        if len(images):
            self.feed(images, positions)
        for p, ok, note in notes:  # the batch is done: count it
            self.summary.add(p, note, ok, self.source.describe)
        self.position = after
        self.done += len(notes)
        bar.update(len(notes))
        self._batches_done += 1
        if self._batches_done % self.checkpoint_every == 0:
            self.checkpoint()
        return True

    def _unpack(self, batch: object) -> tuple[torch.Tensor, torch.Tensor, list, int]:
        """A loader's batch as images, their positions in the data, per item (position, used, note),
        and the position after it."""
        if self.own_loader:
            images, positions, notes = batch
            return images, positions, notes, max(p for p, _, _ in notes) + 1
        images = _to_nchw(batch, self.prepared.channels)
        positions = torch.arange(self.position, self.position + len(images))
        notes = [(int(p), True, "") for p in positions]
        return images, positions, notes, self.position + len(images)

    def feed(self, images: torch.Tensor, positions: torch.Tensor) -> None:
        """Rank one batch of `images` (N, C, H, W) at data `positions` (N,) into the running top-k."""
        prepared = self.prepared
        images = images.to(prepared.device, non_blocking=True)
        with torch.no_grad():  # outside inference mode: a preprocess may cache tensors
            x = prepared.model_input(images, in_range=not self.own_loader)
        if self.reader is None:
            self._open(x)
            self.input_size = tuple(images.shape[-2:])
        with torch.inference_mode():
            outputs = self.reader.read(x)
            if not self.tops:
                self._start(outputs)
            positions = positions.to(prepared.device)
            for index, out in enumerate(outputs):
                scores, where = _scores(out, self.chosen[index], self.reduce, self.directions)
                self.tops[index].update(scores, positions, where)
                self.lows[index].update(-scores, positions, where)

    def _open(self, x: torch.Tensor) -> None:
        """Resolve the layers and choose how to run them, for model input like `x` (outside
        inference mode: the fused copy's check needs version counters)."""
        self.reader = _LayerReader(self.prepared, self.layers, x[:1], self.unit_axis, self.token)

    def _start(self, outputs: list[torch.Tensor]) -> None:
        """Per layer, the units ranked and an empty running top-k and bottom-k (or the checkpoint's)."""
        device, directions = self.prepared.device, self.directions
        for out, name in zip(outputs, self.reader.names):
            count = 1 if out.ndim == 1 else int(out.shape[1])
            if directions is not None and directions.shape[1] != count:
                raise bad_value(
                    "directions",
                    f"{len(directions)} direction(s) of {directions.shape[1]} channels",
                    f"directions of {count} channels, the units of layer {name!r}",
                )
            layer_units = list(range(count)) if self.units is None else list(self.units)
            if directions is not None:
                layer_units = list(range(len(directions)))
            bad = [u for u in layer_units if u >= count]
            if bad:
                raise bad_value("units", bad, f"unit indices below {count}, the units of layer {name!r}")
            self.chosen.append(layer_units)
            self.spatial.append(tuple(out.shape[2:]) if out.ndim > 2 else None)
            self.tops.append(_RunningTopK(len(layer_units), self.k, device))
            self.lows.append(_RunningTopK(len(layer_units), self.k, device))
        if self.state:
            for running, saved in zip(self.tops + self.lows, self.state["top"] + self.state["low"]):
                running.load(saved)
        if directions is not None:
            self.directions = directions.to(device)

    def checkpoint(self, complete: bool = False) -> None:
        """Save the running top-k to the `checkpoint` file, atomically (nothing without one, or before
        the first batch); `complete`: the pass has read all its data."""
        if self.checkpoint_path is None or self.reader is None:
            return
        summary = self.summary
        payload = {
            "version": CHECKPOINT_VERSION,
            "settings": self.settings,
            "next": self.position if self.order is None else self.done,
            "complete": complete,
            "input_size": list(self.input_size),
            "top": [t.state() for t in self.tops],
            "low": [t.state() for t in self.lows],
            "summary": {
                "used": summary.used,
                "skipped": [list(s) for s in summary.skipped],
                "converted": summary.converted,
            },
        }
        atomic_write(self.checkpoint_path, lambda tmp: torch.save(payload, tmp))

    def run(self) -> DatasetExamples | dict[str, DatasetExamples]:
        """Read the data to its end (Ctrl-C stops early, keeping what was seen), then `finish`."""
        return self._run(stacklevel=3)

    def finish(self) -> DatasetExamples | dict[str, DatasetExamples]:
        """The examples of what was read (``interrupted=True`` unless the data ran out), the checkpoint
        saved; ``{layer: DatasetExamples}`` for a list of layers."""
        return self._finish(stacklevel=3)

    def _run(self, stacklevel: int) -> DatasetExamples | dict[str, DatasetExamples]:
        try:
            for _ in self:
                pass
        except KeyboardInterrupt:
            pass
        return self._finish(stacklevel + 1)

    def _finish(self, stacklevel: int) -> DatasetExamples | dict[str, DatasetExamples]:
        """`finish`, its warning `stacklevel` frames up (the user's call)."""
        if self.reader is None and self.state:  # a finished pass resumed: the state is the checkpoint's
            example = _first_image(self.source, self.own_loader, self.prepared.channels, self.prepared.device)
            with torch.no_grad():
                x = self.prepared.model_input(example, in_range=not self.own_loader)
            self._open(x)
            self.input_size = tuple(self.state["input_size"])
            with torch.inference_mode():
                self._start(self.reader.read(x))
        if self.reader is None and self.done == 0 and not self.exhausted:
            raise FeatvisValueError(
                "the pass has read nothing yet: iterate it (`for done in scan: ...`) or call run() before finish()"
            )
        if self.reader is None:
            raise FeatvisValueError(
                f"data: none of the {self.summary.total} items could be used ({self.summary})"
            )
        if self.total is not None and self.done >= self.total:  # a break after the last batch
            self.exhausted = True
        self.checkpoint(complete=self.exhausted)
        started = time.perf_counter()
        fields = []
        for index, spatial in enumerate(self.spatial):
            planar = spatial is not None and len(spatial) == 2
            fields.append(
                _receptive_field(self.reader, index, self.input_size, stacklevel) if planar else None
            )
        seconds = {**self.seconds, "receptive_field": time.perf_counter() - started}
        if self.summary.skipped:
            warnings.warn(f"dataset_examples: {self.summary}", SkippedImagesWarning, stacklevel=stacklevel)
        names, results = self.reader.names, {}
        for index, spec in enumerate(self.layers):
            key = spec if isinstance(spec, str) else names[index]
            results[key] = _result(
                names[index],
                self.chosen[index],
                self.tops[index],
                self.lows[index],
                self.spatial[index],
                fields[index],
                self.reduce,
                self.input_size,
                self.summary,
                not self.exhausted,
                seconds,
                self.source,
                self.directions,
            )
        return results if self.several else results[next(iter(results))]


def _checked_units(units: object) -> list[int] | None:
    if units is None:
        return None
    if isinstance(units, str) or not isinstance(units, Sequence | range):
        raise bad_type("units", units, "a list of unit indices or None")
    checked = [check_int("units", u, 0) for u in units]
    if not checked:
        raise bad_value("units", units, "at least one unit index")
    return checked


def _checked_directions(directions: object, units: list[int] | None, layers: list) -> torch.Tensor | None:
    """`directions` as (k, channels) unit rows (None: none); with units= or several layers, an error."""
    if directions is None:
        return None
    if units is not None:
        raise FeatvisValueError(
            "directions= and units= were both given: pass one (with directions, unit i is direction i)"
        )
    if len(layers) > 1:
        raise FeatvisValueError(
            f"directions= lie in one layer's channel space, and layer= lists {len(layers)} layers: pass one layer"
        )
    return _direction_matrix(directions)


def _saved_summary(state: dict) -> DataSummary:
    saved = state["summary"]
    return DataSummary(
        used=saved["used"], skipped=[tuple(s) for s in saved["skipped"]], converted=dict(saved["converted"])
    )


_FAILED_BATCHES = 5  # a loader that fails this many batches in a row is broken: the pass ends there


def _batches(loader: DataLoader, summary: DataSummary):
    """The loader's batches; a batch that raises (a user's Dataset may) is reported and yields None."""
    iterator = iter(loader)
    failures = 0
    while True:
        start = summary.total
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as err:  # a bad batch must not throw the pass away
            failures += 1
            size = loader.batch_size or 0
            reason = f"its batch raised {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            summary.skipped.extend((f"item {start + i}", reason) for i in range(max(1, size)))
            if failures >= _FAILED_BATCHES:
                warnings.warn(
                    f"dataset_examples: the data loader failed {failures} batches in a row; the pass "
                    f"stops there with what it has ({err})",
                    SkippedImagesWarning,
                    stacklevel=5,  # _batches, DatasetPass.__iter__, ._run, dataset_examples, the user
                )
                return
            yield None
            continue
        failures = 0
        yield batch


def _first_image(source, own_loader, channels, device) -> torch.Tensor:
    if own_loader:
        for position in range(len(source.items)):
            try:
                return source.load(position)[0][None].to(device)
            except Exception:  # noqa: S112 - an unusable item: try the next one
                continue
        raise FeatvisValueError("data: none of the items could be used")
    return _to_nchw(next(iter(source.loader)), channels)[:1].to(device)


def _scores(
    out: torch.Tensor, units: list[int], reduce: str, directions: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and unit, the score and the flat spatial index of the unit's maximum (0 for dense);
    with `directions` (k, channels), a unit is a direction: the projection on it, one matmul."""
    if out.ndim == 1:
        out = out[:, None]
    if directions is not None:
        picked = (out.float().movedim(1, -1) @ directions.T).movedim(-1, 1)
    elif units == list(range(out.shape[1])):
        picked = out.float()  # every unit: no copy
    else:
        picked = out.index_select(1, torch.tensor(units, device=out.device)).float()
    if picked.ndim == 2:
        return picked, torch.zeros_like(picked, dtype=torch.long)
    flat = picked.flatten(2)
    values, where = flat.max(dim=2)
    if reduce == "mean":
        values = flat.mean(dim=2)
    return values, where


def _result(
    name, units, top, low, spatial, rf, reduce, input_size, summary, interrupted, seconds, source, directions
):
    used = int((top.indices[0] >= 0).sum()) if len(top.indices) else 0
    kept = max(used, 0)

    def trim(t: torch.Tensor) -> np.ndarray:
        return t[:, :kept].cpu().numpy()

    def grid(where: torch.Tensor) -> np.ndarray | None:
        if spatial is None or len(spatial) != 2:
            return None
        flat = where[:, :kept].cpu().numpy()
        return np.stack(np.unravel_index(np.maximum(flat, 0), spatial), axis=-1)

    return DatasetExamples(
        layer=name,
        units=list(units),
        indices=trim(top.indices),
        values=trim(top.values),
        lowest_indices=trim(low.indices),
        lowest_values=-trim(low.values),
        positions=grid(top.where),
        lowest_positions=grid(low.where),
        reduce=reduce,
        receptive_field=rf,
        input_size=tuple(input_size),
        summary=summary,
        interrupted=interrupted,
        seconds=seconds,
        directions=None if directions is None else directions.cpu().numpy(),
        _source=source,
    )
