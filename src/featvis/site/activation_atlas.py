"""The activation atlas (Carter et al. 2019): one picture of everything a layer represents.

A layer's activation vectors are sampled at random positions over a dataset, laid out in 2-D
(UMAP, or PCA without umap-learn), and binned on a grid. Each cell's average vector is drawn
with feature visualization, as a direction of the layer's activation space, many cells per
batched call. The result is one large image, and a page that gives each cell's count, the
classes its activations push toward (activation times the logit's gradient, summed over the
cell) and the images its samples came from.

The work is resumable and shards over torchrun like the atlas: the cells are split into
chunks whose images depend only on (seed, chunk), each chunk is written once, and rank 0
lays out the picture and the page.

Examples:
    >>> result = featvis.activation_atlas(lite0.model, "_blocks.15", "photos/", out="atlas15/",
    ...                                   preprocess=lite0.preprocess, class_names=lite0.class_names)
    >>> result.image.shape, len(result.cells)
    ((1280, 1280, 3), 173)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
import html
import json
import os
from pathlib import Path
import warnings

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from featvis.attribution.cam import layer_gradients
from featvis.data.sources import ImageSource, collate, image_source
from featvis.errors import FeatvisWarning, bad_value, check_int
from featvis.image import atomic_write, save_image, to_array
from featvis.model.prepared import PreparedModel, preparing
from featvis.model.targets import LayerSpec
from featvis.optvis.losses import DirectionPerImage, UnitPerImage
from featvis.optvis.regularizers import TotalVariation
from featvis.optvis.visualization import visualize_activation_with_losses
from featvis.rng import derive_key
from featvis.site.atlas import _barrier, _distributed, _end_group

LAYOUTS = ("auto", "umap", "pca")


@dataclass
class AtlasCell:
    """One grid cell: its place, how many samples fell in it, their average activation, the
    classes they push toward (index, name, summed attribution) and the data positions of the
    images most of them came from."""

    row: int
    column: int
    count: int
    mean: torch.Tensor
    classes: list[tuple[int, str, float]] = field(default_factory=list)
    examples: list[int] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)


@dataclass
class ActivationAtlas:
    """What `activation_atlas` made: the cells (each with its rendering in `icons`, in cell
    order), the grid picture, the 2-D layout of every sample and how it was made."""

    layer: str
    grid: int
    layout: str
    coordinates: np.ndarray
    cells: list[AtlasCell]
    icons: np.ndarray
    image: np.ndarray
    page: Path | None = None


@dataclass
class _Samples:
    vectors: torch.Tensor  # (S, C) activation vectors
    images: torch.Tensor  # (S,) data position of the image each came from
    classes: torch.Tensor  # (S, k) the image's top-k predicted classes
    attribution: torch.Tensor  # (S, k) activation . d logit / d activation, at the sample's position
    size: int  # the side of the data's images


def activation_atlas(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    data: object = None,
    *,
    out: str | os.PathLike | None = None,
    grid: int = 16,
    samples: int = 4,
    min_count: int = 3,
    layout: str = "auto",
    top_classes: int = 3,
    class_names: Sequence[str] | None = None,
    icon_size: int | None = None,
    max_iter: int = 128,
    batch_size: int = 16,
    data_size: int | None = None,
    data_batch_size: int = 16,
    cossim_pow: float = 1.0,
    seed: int = 0,
    progress: bool | None = None,
    input_range: tuple[float, float] = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
) -> ActivationAtlas:
    """Lay out `layer`'s activations over `data` on a `grid` x `grid` map and draw every cell.

    `samples` activation vectors are taken per image, at random positions (seeded by
    ``(seed, image position)``) of a spatial layer, the one vector of a flat one. `layout`:
    ``"umap"`` (``pip install "featvis[atlas]"``; cosine metric), ``"pca"`` (the first two
    components), or ``"auto"`` (UMAP when installed, else PCA with a warning that says so).
    Cells with at least `min_count` samples are drawn: their average vector as a
    `DirectionPerImage` objective, `batch_size` cells per call, `max_iter` steps at
    `icon_size` px (default: the data's image size). `data` is what `featvis.dataset_examples` takes (a folder, paths, an
    array, a Dataset; None: scikit-image's photographs), read at `data_size` px (default 224).
    With `out`, the cells' images are written there chunk by chunk (a rerun skips what is
    done; under torchrun each rank draws its share) and rank 0 writes ``atlas.png`` and
    ``index.html``.

    Examples:
        >>> result = featvis.activation_atlas(model, "layer3", images, grid=8, max_iter=64)
        >>> featvis.save_image(result.image, "atlas.png")
    """
    check_int("grid", grid, 2)
    check_int("samples", samples, 1)
    check_int("min_count", min_count, 1)
    check_int("top_classes", top_classes, 1)
    if icon_size is not None:
        check_int("icon_size", icon_size, 1)
    check_int("max_iter", max_iter, 1)
    check_int("batch_size", batch_size, 1)
    check_int("data_batch_size", data_batch_size, 1)
    if layout not in LAYOUTS:
        raise bad_value("layout", layout, f"one of {', '.join(map(repr, LAYOUTS))}")
    conventions = dict(input_range=input_range, preprocess=preprocess, channels=channels, device=device)
    rank, world_size, started = _distributed()
    if world_size > 1 and out is None:
        raise bad_value("out", None, "a folder under torchrun: the ranks share the cells' images through it")
    failed: BaseException | None = None
    try:
        with preparing(model, **conventions) as prepared:
            prepared.require_input_range("the activation atlas")
            source = image_source(
                data, channels=prepared.channels, size=data_size, input_range=prepared.input_range or (0, 1)
            )
            found = _sample(prepared, layer, source, samples, top_classes, data_batch_size, seed)
            name = prepared.resolve(layer).name
            icon_size = found.size if icon_size is None else icon_size
            coordinates, used = _layout(found.vectors, layout, seed)
            cells = _cells(found, coordinates, grid, min_count, class_names)
            icons = _render(
                prepared,
                layer,
                cells,
                out,
                icon_size,
                max_iter,
                batch_size,
                cossim_pow,
                seed,
                rank,
                world_size,
                progress,
            )
            _barrier(world_size, "the cells of the activation atlas")
            if len(icons) < len(cells):  # other ranks drew the rest: read them back
                icons = _read_chunks(Path(out), len(cells), batch_size)
    except BaseException as err:
        failed = err
        raise
    finally:
        _end_group(started, failed)
    picture = _picture(cells, icons, grid, icon_size)
    result = ActivationAtlas(name, grid, used, coordinates, cells, icons, picture)
    if out is not None and rank == 0:
        result.page = _write_page(Path(out), result, source)
    return result


def _sample(prepared, layer, source, samples, top_classes, batch_size, seed) -> _Samples:
    """Activation vectors at random positions of each image, with the image's top classes and
    each vector's attribution to them (activation times the logit's gradient there)."""
    loader = (
        source
        if isinstance(source, DataLoader)
        else DataLoader(source, batch_size=batch_size, collate_fn=collate)
    )
    vectors, images, classes, attribution = [], [], [], []
    side = 0
    for batch in loader:
        pictures, positions = batch[0], batch[1]
        if not len(pictures):
            continue
        pictures, side = pictures.to(prepared.device), int(pictures.shape[-1])
        prepared.probe(pictures)
        prepared.resolve(layer)  # an unknown layer is named as `layer`
        logits = prepared.layer_output("", pictures)
        if logits.ndim != 2:
            raise bad_value("layer", layer, "a layer of a model whose output is (N, classes) logits")
        top = logits.topk(min(top_classes, logits.shape[1]), dim=1).indices
        grads = []
        for j in range(top.shape[1]):  # the gradient of each image's j-th class, from the layer on
            act, grad = layer_gradients(prepared, UnitPerImage("", top[:, j].tolist()), pictures, layer)
            grads.append(torch.zeros_like(act) if grad is None else grad)
        if act.ndim not in (2, 4):
            raise bad_value("layer", layer, "a layer with (N, C) or (N, C, H, W) output")
        rows = torch.arange(len(act), device=act.device)
        for _ in range(samples if act.ndim == 4 else 1):
            if act.ndim == 4:
                where = torch.tensor(
                    [_position(seed, int(p), len(vectors), act.shape[2:]) for p in positions],
                    device=act.device,
                )
                picked = act[rows, :, where[:, 0], where[:, 1]]
                gains = [g.float()[rows, :, where[:, 0], where[:, 1]] for g in grads]
            else:
                picked, gains = act, [g.float() for g in grads]
            vectors.append(picked.cpu())
            images.append(positions.cpu())
            classes.append(top.cpu())
            attribution.append(torch.stack([(picked * g).sum(1) for g in gains], 1).cpu())
    if not vectors:
        raise bad_value("data", "no usable image", "at least one image the model can read")
    return _Samples(torch.cat(vectors), torch.cat(images), torch.cat(classes), torch.cat(attribution), side)


def _position(seed: int, image: int, draw: int, shape) -> tuple[int, int]:
    """A position of a (H, W) map drawn from (seed, image position, draw): the same on any batch or rank."""
    key = derive_key(seed, "atlas-sample", image, draw)
    return key % shape[0], (key // shape[0]) % shape[1]


def _layout(vectors: torch.Tensor, layout: str, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates in [0, 1] for each vector, and the method used."""
    if layout in ("auto", "umap"):
        try:
            import umap
        except ImportError as err:
            if layout == "umap":
                raise bad_value(
                    "layout", "umap", 'installed umap-learn: pip install "featvis[atlas]"'
                ) from err
            warnings.warn(
                'umap-learn is not installed (pip install "featvis[atlas]"): the atlas is laid out by '
                "PCA, which separates less than UMAP",
                FeatvisWarning,
                stacklevel=3,
            )
        else:
            neighbors = max(2, min(20, len(vectors) - 1))
            reducer = umap.UMAP(n_neighbors=neighbors, min_dist=0.01, metric="cosine", random_state=seed)
            return _unit_square(reducer.fit_transform(vectors.numpy())), "umap"
    centered = vectors.double() - vectors.double().mean(0)
    _, _, v = torch.linalg.svd(centered, full_matrices=False)
    return _unit_square((centered @ v[:2].T).numpy()), "pca"


def _unit_square(points: np.ndarray) -> np.ndarray:
    """Points scaled into [0, 1] on each axis, the outer 1% on each side clipped (outliers do not
    squeeze the rest into a few cells)."""
    low, high = np.percentile(points, 1, axis=0), np.percentile(points, 99, axis=0)
    return np.clip((points - low) / np.maximum(high - low, 1e-12), 0.0, 1.0)


def _cells(
    found: _Samples, coordinates: np.ndarray, grid: int, min_count: int, class_names
) -> list[AtlasCell]:
    where = np.minimum((coordinates * grid).astype(int), grid - 1)
    flat = where[:, 0] * grid + where[:, 1]
    cells = []
    for index in np.unique(flat):
        members = np.nonzero(flat == index)[0]
        if len(members) < min_count:
            continue
        totals: dict[int, float] = {}
        for cls, gain in zip(
            found.classes[members].flatten().tolist(), found.attribution[members].flatten().tolist()
        ):
            totals[cls] = totals.get(cls, 0.0) + gain
        best = sorted(totals.items(), key=lambda item: -item[1])[:3]
        names = [
            class_names[c] if class_names is not None and c < len(class_names) else str(c) for c, _ in best
        ]
        images, counts = np.unique(found.images[members].numpy(), return_counts=True)
        cells.append(
            AtlasCell(
                row=int(index // grid),
                column=int(index % grid),
                count=len(members),
                mean=found.vectors[members].mean(0),
                classes=[(c, n, round(g, 4)) for (c, g), n in zip(best, names)],
                examples=[int(images[i]) for i in np.argsort(-counts, kind="stable")[:4]],
                sources=found.images[members].tolist(),
            )
        )
    return cells


def _render(
    prepared, layer, cells, out, size, max_iter, batch_size, cossim_pow, seed, rank, world_size, progress
):
    """Every cell's image (N, size, size, C) uint8, `batch_size` cells per call; with `out` the
    chunks are written (and skipped when there) and each rank draws its own share."""
    chunks = [cells[i : i + batch_size] for i in range(0, len(cells), batch_size)]
    drawn = []
    for index, chunk in enumerate(chunks):
        path = None if out is None else _chunk_path(Path(out), index)
        if path is not None and path.exists():
            drawn.append(np.load(path))
            continue
        if index % world_size != rank:
            continue
        loss = DirectionPerImage(layer, torch.stack([cell.mean for cell in chunk]), cossim_pow)
        result = visualize_activation_with_losses(
            prepared,
            [(loss, 1.0), (TotalVariation(), 1.0)],
            size=size,
            batch_size=len(chunk),
            seed=derive_key(seed, "atlas-chunk", index),
            max_iter=max_iter,
            progress=progress,
            return_result=True,
        )
        icons = to_array(result.images, (0, 255))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp, icons=icons: np.save(open(tmp, "wb"), icons))
        drawn.append(icons)
    return np.concatenate(drawn) if drawn else np.zeros((0, size, size, prepared.channels), np.uint8)


def _chunk_path(out: Path, index: int) -> Path:
    return out / "cells" / f"chunk_{index:05d}.npy"


def _read_chunks(out: Path, count: int, batch_size: int) -> np.ndarray:
    return np.concatenate([np.load(_chunk_path(out, i)) for i in range(-(-count // batch_size))])


def _picture(cells: list[AtlasCell], icons: np.ndarray, grid: int, size: int) -> np.ndarray:
    """The grid picture: each drawn cell's image at its place, white where no cell was drawn."""
    picture = np.full((grid * size, grid * size, icons.shape[-1] if len(icons) else 3), 255, np.uint8)
    for cell, icon in zip(cells, icons):
        picture[cell.row * size : (cell.row + 1) * size, cell.column * size : (cell.column + 1) * size] = icon
    return picture


def _write_page(out: Path, result: ActivationAtlas, source) -> Path:
    """``atlas.png``, each cell's image and example thumbnails, and ``index.html`` over them."""
    out.mkdir(parents=True, exist_ok=True)
    save_image(result.image, out / "atlas.png")
    thumbnails = out / "examples"
    thumbnails.mkdir(exist_ok=True)
    cards = []
    for number, (cell, icon) in enumerate(zip(result.cells, result.icons)):
        save_image(icon, out / "cells" / f"cell_{number:05d}.png")
        examples = []
        for position in cell.examples:
            stem = thumbnails / f"image_{position:06d}.png"
            if not stem.exists() and isinstance(source, ImageSource):
                image, _ = source.load(position)
                save_image(to_array(torch.nn.functional.interpolate(image[None], size=(48, 48)))[0], stem)
            if stem.exists():
                examples.append(f'<img src="examples/{stem.name}" width="48" height="48">')
        classes = ", ".join(f"{html.escape(name)} ({gain:+.2f})" for _, name, gain in cell.classes)
        cards.append(
            f'<div class="cell" style="grid-row:{cell.row + 1};grid-column:{cell.column + 1}" '
            f'title="{cell.count} samples; {classes}"><img src="cells/cell_{number:05d}.png" width="96">'
            f'<div class="info"><b>{cell.count}</b> samples<br>{classes}<br>{"".join(examples)}</div></div>'
        )
    meta = {"layer": result.layer, "grid": result.grid, "layout": result.layout, "cells": len(result.cells)}
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>activation atlas of {html.escape(result.layer)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; background: #fafafa; }}
.atlas {{ display: grid; grid-template-columns: repeat({result.grid}, 96px); gap: 2px; }}
.cell {{ position: relative; }} .cell img {{ display: block; }}
.cell .info {{ display: none; position: absolute; z-index: 1; left: 98px; top: 0; width: 220px;
  background: white; border: 1px solid #ccc; padding: 4px; font-size: 12px; }}
.cell:hover .info {{ display: block; }}
</style></head><body>
<h1>Activation atlas of {html.escape(result.layer)}</h1>
<p>{len(result.cells)} cells drawn of a {result.grid} x {result.grid} grid, laid out by {result.layout};
each cell: its sample count, the classes it pushes toward (attribution) and the images it came from.</p>
<div class="atlas">{"".join(cards)}</div>
<script type="application/json" id="meta">{json.dumps(meta)}</script>
</body></html>
"""
    return atomic_write(out / "index.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
