"""A static HTML gallery of every unit of one or more layers, viewable offline.

Each unit's image is written as a PNG; ``index.html`` shows a grid of thumbnails
labeled with the unit index and the activation reached, and a click opens the
full image. A manifest (``gallery.json``) records the layers; a second run on the
same folder adds its layers to the page instead of wiping what is there.

Example:
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> write_gallery(lite0.model, ["_blocks.10"], "site/", preprocess=lite0.preprocess, max_iter=64)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import html
import json
from pathlib import Path
import re

from torch import nn

from .errors import bad_type
from .image import atomic_write, save_image
from .visualization import activations_reached, visualize_layer

MANIFEST = "gallery.json"


def _slug(layer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer) or "output"


def write_gallery(
    model: nn.Module,
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
    **kwargs,
) -> Path:
    """Render every unit (or `units`) of each layer with the batched engine; return index.html's path.

    Example:
        >>> write_gallery(model, ["_blocks.10", "_blocks.12"], "site", preprocess=lite0.preprocess)
    """
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise bad_type("layers", layers, "a non-empty list of layer names")
    out = Path(out_dir)  # created by the first file written, so a failed run leaves nothing
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"layers": {}}
    for layer in layers:
        images = visualize_layer(
            model,
            layer,
            units,
            preprocess=preprocess,
            input_range=input_range,
            size=size,
            max_iter=max_iter,
            seed=seed,
            **kwargs,
        )
        chosen = list(units) if units is not None else list(range(len(images)))
        reached = activations_reached(
            model, layer, chosen, images, input_range=input_range, preprocess=preprocess
        )
        folder = _slug(layer)
        entries = []
        for unit, image, value in zip(chosen, images, reached):
            name = f"{folder}/unit_{unit:04d}.png"
            save_image(image, out / name)
            entries.append({"unit": unit, "image": name, "activation": float(value)})
        manifest["layers"][layer] = {"units": entries, "steps": max_iter, "size": size}
        atomic_write(manifest_path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    index = out / "index.html"
    page = _render(manifest, title)
    return atomic_write(index, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


def _render(manifest: dict, title: str) -> str:
    sections = []
    for layer, info in manifest["layers"].items():
        cells = "\n".join(
            f'<a class="unit" href="{html.escape(e["image"])}" title="unit {e["unit"]}">'
            f'<img src="{html.escape(e["image"])}" alt="unit {e["unit"]}" loading="eager">'
            f"<span>{e['unit']} · {e['activation']:.3g}</span></a>"
            for e in info["units"]
        )
        sections.append(
            f'<section data-layer="{html.escape(layer)}"><h2>{html.escape(layer)} '
            f"<small>{len(info['units'])} units, {info['steps']} steps, {info['size']} px; "
            f'label: unit · activation reached</small></h2>\n<div class="grid">{cells}</div></section>'
        )
    body = "\n".join(sections)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; background: #fafafa; }}
h2 small {{ font-weight: normal; color: #666; font-size: 0.6em; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, 112px); gap: 6px; }}
.unit {{ display: flex; flex-direction: column; align-items: center; text-decoration: none; color: #333; font-size: 11px; }}
.unit img {{ width: 112px; height: 112px; object-fit: cover; border: 1px solid #ccc; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
</body></html>
"""
