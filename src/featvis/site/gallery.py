"""A static HTML gallery of every unit of one or more layers, viewable offline.

Each unit's image is written as a PNG; ``index.html`` shows a grid of thumbnails
labeled with the unit index and the activation reached, and a click opens the
full image. With `data`, each unit also shows the crops of the user's images that
drive it most (its dataset examples, `featvis.dataset_examples`), and the ones
that drive it least on demand, as Microscope does. A manifest (``gallery.json``)
records the layers and units; a second run on the same folder adds its layers
and units to the page instead of wiping what is there.

Examples:
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> write_gallery(lite0.model, ["_blocks.10"], "site/", preprocess=lite0.preprocess, max_iter=64)
    >>> write_gallery(lite0.model, ["_blocks.10"], "site/", units=[0, 1], data="photos/",
    ...               preprocess=lite0.preprocess)                  # with dataset examples
    >>> write_examples(lite0.model, ["_blocks.10"], "photos/", "site/", preprocess=lite0.preprocess)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import html
import json
import os
from pathlib import Path
import re

import torch
from torch import nn

from featvis.data.examples import DatasetExamples, dataset_examples
from featvis.errors import bad_type, known_keywords
from featvis.image import atomic_write, save_image
from featvis.model.prepared import PreparedModel, preparing
from featvis.model.targets import OutputPick
from featvis.optvis.input_modifiers import InputModifier
from featvis.optvis.optimizer import FROM_QUALITY, FromQuality
from featvis.optvis.visualization import activations_reached, visualize_layer

MANIFEST = "gallery.json"


def _slug(layer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer) or "output"


def _check_layers(layers: object) -> list:
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise bad_type("layers", layers, "a non-empty list of layer names")
    return list(layers)


def _write_examples_of(ex: DatasetExamples, out: Path, folder: str, unit: int) -> dict:
    """Write unit `unit`'s top and bottom crops as PNGs; their manifest entries."""
    entry = {}
    row = ex.row(unit)
    for kind, lowest, values in (("examples", False, ex.values), ("lowest", True, ex.lowest_values)):
        files = []
        for rank, (crop, source) in enumerate(zip(ex.images(unit, lowest=lowest), ex.sources(unit, lowest))):
            name = f"{folder}/{kind}/unit_{unit:04d}_{rank}.png"
            save_image(crop, out / name)
            files.append({"image": name, "value": float(values[row, rank]), "source": source})
        entry[kind] = files
    return entry


@known_keywords
def write_gallery(
    model: nn.Module | PreparedModel,
    layers: Sequence[str],
    out_dir: str | Path,
    *,
    units: Sequence[int] | None = None,
    preprocess: Callable | None = None,
    input_range: tuple[float, float] = (0, 255),
    size: int = 224,
    max_iter: int = 128,
    seed: int | None = 0,
    title: str = "featvis gallery",
    data: object = None,
    k: int = 9,
    examples_size: int | None = None,
    batch_size: int | None = None,
    unit_axis: int | None = None,
    token: int | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
    quality: str = "fast",
    views: int | FromQuality = FROM_QUALITY,
    lr: float | None = None,
    method: str | Callable | FromQuality = FROM_QUALITY,
    input_modifiers: Sequence[InputModifier | Callable] | None = None,
    grad_modifier: str | Callable | None = None,
    backprop_modifier: str | Callable | None | FromQuality = FROM_QUALITY,
    progress: bool | None = None,
    autocast: torch.dtype | None = None,
    image_ema: float | None | FromQuality = FROM_QUALITY,
    lr_schedule: str | Callable[[int, int], float] | None = None,
    betas: tuple[float, float] | FromQuality = FROM_QUALITY,
    skip_gradient: float | None = None,
) -> Path:
    """Render every unit (or `units`) of each layer with the batched engine; return index.html's path.

    With `data` (anything `featvis.dataset_examples` takes), each unit also shows
    its top-`k` dataset crops, and its bottom-`k` behind a click; one pass over
    the data serves all layers (images resized to `examples_size`, 224 for files).
    A rerun adds its layers and units to the page. The model's conventions (``preprocess``,
    ``channels``, ``device``, ...), `batch_size`, `unit_axis`, `token` and the optimization's settings
    (``quality``, ``views``, ``method``, ...; `max_iter` 128 here) are `featvis.visualize_layer`'s.
    `model` may be a `PreparedModel` (its conventions are used; one given here that differs is an
    error). The whole gallery, its dataset examples included, runs through one prepared model.

    Examples:
        >>> write_gallery(model, ["_blocks.10", "_blocks.12"], "site", preprocess=lite0.preprocess)
        >>> write_gallery(model, ["_blocks.10"], "site", units=[5, 6], data="photos/")  # adds units 5, 6
        >>> write_gallery(model, ["_blocks.10"], "site", quality="best", method="fourier")
    """
    layers = _check_layers(layers)
    out = Path(out_dir)  # created by the first file written, so a failed run leaves nothing
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"layers": {}}
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
    axis = {"unit_axis": unit_axis, "token": token}
    settings = dict(
        quality=quality,
        max_iter=max_iter,
        views=views,
        lr=lr,
        method=method,
        input_modifiers=input_modifiers,
        grad_modifier=grad_modifier,
        backprop_modifier=backprop_modifier,
        progress=progress,
        autocast=autocast,
        image_ema=image_ema,
        lr_schedule=lr_schedule,
        betas=betas,
        skip_gradient=skip_gradient,
    )
    with preparing(model, **conventions) as prepared:
        prepared.require_images("the gallery")
        examples = {}  # {layer: DatasetExamples}
        if data is not None:
            examples = dataset_examples(prepared, layers, data, units, k, size=examples_size)
        for layer in layers:
            images = visualize_layer(
                prepared,
                layer,
                units,
                **settings,
                size=size,
                seed=seed,
                batch_size=batch_size,
                **axis,
            )
            chosen = list(units) if units is not None else list(range(len(images)))
            reached = activations_reached(prepared, layer, chosen, images, **axis)
            _add_layer(manifest, out, layer, chosen, images, reached, examples.get(layer), max_iter, size)
            atomic_write(manifest_path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    index = out / "index.html"
    page = _render(manifest, title)
    return atomic_write(index, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


def _add_layer(manifest, out, layer, chosen, images, reached, examples, max_iter, size) -> None:
    """Write one layer's unit images (and its dataset examples, when there are) and enter them in
    `manifest`: a rerun adds units and replaces those it redid."""
    folder = _slug(layer)
    known = {e["unit"]: e for e in manifest["layers"].get(layer, {}).get("units", [])}
    for unit, image, value in zip(chosen, images, reached):
        name = f"{folder}/unit_{unit:04d}.png"
        save_image(image, out / name)
        entry = {"unit": unit, "image": name, "activation": float(value)}
        if examples is not None:
            entry.update(_write_examples_of(examples, out, folder, unit))
            entry["reduce"] = examples.reduce
        known[unit] = entry
    manifest["layers"][layer] = {"units": [known[u] for u in sorted(known)], "steps": max_iter, "size": size}


@known_keywords
def write_examples(
    model: nn.Module | PreparedModel,
    layers: Sequence[str],
    data: object,
    out_dir: str | Path,
    *,
    units: Sequence[int] | None = None,
    k: int = 9,
    preprocess: Callable | None = None,
    input_range: tuple[float, float] = (0, 255),
    title: str = "featvis dataset examples",
    reduce: str = "max",
    size: int | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    unit_axis: int | None = None,
    token: int | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> list[Path]:
    """One page per layer (``examples_<layer>.html``) of every unit's top and bottom dataset crops.

    One pass over `data` serves all layers; the keyword arguments are `featvis.dataset_examples`'s,
    and `model` may be a `PreparedModel` as there. Returns the pages' paths.

    Examples:
        >>> write_examples(lite0.model, ["_blocks.10"], "photos/", "site", preprocess=lite0.preprocess)
        [PosixPath('site/examples__blocks.10.html')]
    """
    layers = _check_layers(layers)
    out = Path(out_dir)
    found = dataset_examples(
        model,
        layers,
        data,
        units,
        k,
        reduce=reduce,
        input_range=input_range,
        preprocess=preprocess,
        channels=channels,
        size=size,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        progress=progress,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        unit_axis=unit_axis,
        token=token,
        inputs=inputs,
        output=output,
    )
    pages = []
    for layer in layers:
        ex = found[layer]
        folder = _slug(layer)
        entries = [{"unit": u, **_write_examples_of(ex, out, folder, u)} for u in ex.units]
        info = {"units": entries, "reduce": ex.reduce, "summary": str(ex.summary)}
        page = _page(f"{title}: {layer}", _section(layer, info, _examples_caption(ex)))
        path = out / f"examples_{folder}.html"
        pages.append(atomic_write(path, lambda tmp, page=page: Path(tmp).write_text(page, encoding="utf-8")))
    return pages


def _examples_caption(ex: DatasetExamples) -> str:
    ranked = "its spatial maximum" if ex.reduce == "max" else "its spatial mean"
    if ex.positions is None:  # a dense layer: one value per image
        ranked = "its value"
    crops = "the crop its receptive field covers" if ex.receptive_field else "the whole image"
    return (
        f"{len(ex.units)} units, top {ex.indices.shape[1]} images per unit, ranked by {ranked}; "
        f"each shows {crops}; {ex.summary}"
    )


def _thumbs(items: list[dict], css: str) -> str:
    return "".join(
        f'<a href="{html.escape(i["image"])}" title="{html.escape(str(i["source"]))} · {i["value"]:.3g}">'
        f'<img class="{css}" src="{html.escape(i["image"])}" alt="{html.escape(str(i["source"]))}" '
        'loading="eager"></a>'
        for i in items
    )


def _cell(e: dict) -> str:
    parts = []
    if "image" in e:
        parts.append(
            f'<a class="vis" href="{html.escape(e["image"])}" title="unit {e["unit"]}">'
            f'<img src="{html.escape(e["image"])}" alt="unit {e["unit"]}" loading="eager"></a>'
        )
    label = f"{e['unit']} · {e['activation']:.3g}" if "activation" in e else f"unit {e['unit']}"
    if "examples" not in e:
        return f'<div class="unit">{"".join(parts)}<span>{label}</span></div>'
    parts.append(f'<div class="examples">{_thumbs(e["examples"], "top")}</div>')
    lowest = (
        f'<details><summary>most negative</summary><div class="examples">{_thumbs(e["lowest"], "low")}</div>'
        "</details>"
    )
    return (
        f'<div class="unit wide"><div class="pair">{"".join(parts)}</div><span>{label}</span>{lowest}</div>'
    )


def _section(layer: str, info: dict, caption: str) -> str:
    cells = "\n".join(_cell(e) for e in info["units"])
    return (
        f'<section data-layer="{html.escape(layer)}"><h2>{html.escape(layer)} '
        f'<small>{html.escape(caption)}</small></h2>\n<div class="grid">{cells}</div></section>'
    )


def _render(manifest: dict, title: str) -> str:
    sections = []
    for layer, info in manifest["layers"].items():
        caption = (
            f"{len(info['units'])} units, {info['steps']} steps, {info['size']} px; "
            "label: unit · activation reached"
        )
        if any("examples" in e for e in info["units"]):
            caption += "; beside each: the dataset crops that drive it most (click: most negative)"
        sections.append(_section(layer, info, caption))
    return _page(title, "\n".join(sections))


def _page(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; background: #fafafa; }}
h2 small {{ font-weight: normal; color: #666; font-size: 0.6em; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(112px, max-content)); gap: 6px; }}
.unit {{ display: flex; flex-direction: column; align-items: center; color: #333; font-size: 11px; }}
.unit img {{ width: 112px; height: 112px; object-fit: cover; border: 1px solid #ccc; }}
.pair {{ display: flex; gap: 4px; align-items: flex-start; }}
.examples {{ display: grid; grid-template-columns: repeat(3, 36px); gap: 2px; }}
.unit .examples img {{ width: 36px; height: 36px; object-fit: contain; background: #eee; }}
details summary {{ cursor: pointer; color: #666; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
</body></html>
"""
