"""The ``featvis`` command line.

Example:
    $ featvis activation --layer _fc --filter flamingo --steps 256 --size 224 --seed 0 --out flamingo.png
"""

from __future__ import annotations

from dataclasses import dataclass
import importlib
from pathlib import Path
import sys

import click
import torch

from . import attention, backprop_modifiers, gallery, grad_modifiers, params, visualization, watch, zoo
from .errors import FeatvisError, FeatvisValueError, bad_value
from .image import save_image, stitch_images, to_array, to_unit_tensor
from .optimizer import Settings

EPILOG_ACTIVATION = """\b
Examples:
  featvis activation --layer _fc --filter 130 --out flamingo.png
  featvis activation --layer _fc --filter "flamingo,pelican" --steps 128 --out two.png
  featvis activation --layer _blocks.10 --filter 7 --method pixel --out ch7.png
  featvis activation --model mypkg.models:make_net --preprocess none --input-range 0,1 \\
      --layer head --filter 0 --size 32 --out up.png
"""


class ScriptedModel(torch.nn.Module):
    """A TorchScript module in a Python module, so its output (layer '') can be visualized."""

    def __init__(self, scripted: torch.nn.Module):
        super().__init__()
        self.scripted = scripted

    def forward(self, x):
        return self.scripted(x)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: object
    class_names: tuple[str, ...] | None


def load_model(spec: str | None, preprocess: str) -> LoadedModel:
    """The embedded Lite0 (spec None), a .keras file, a TorchScript file, or a ``module:factory`` path."""
    norm = zoo.Normalize() if preprocess == "imagenet" else None
    if spec is None:
        lite0 = zoo.efficientnet_lite0()
        return LoadedModel(lite0.model, norm, lite0.class_names)
    path = Path(spec)
    if path.suffix == ".keras":
        return LoadedModel(_load_keras(path), norm, None)
    if path.suffix in (".pt", ".pth", ".ts", ".jit") or path.exists():
        if not path.is_file():
            raise FeatvisValueError(f"--model {spec!r}: no such file")
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # torch raises several types for a bad file
            raise FeatvisValueError(f"--model {spec!r} is not a TorchScript file: {err}") from err
        return LoadedModel(ScriptedModel(model), norm, None)
    module_name, _, factory = spec.partition(":")
    if not factory:
        raise bad_value("--model", spec, "a TorchScript file or 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise FeatvisValueError(f"--model {spec!r}: cannot import {module_name!r}: {err}") from err
    if not hasattr(module, factory):
        raise FeatvisValueError(f"--model {spec!r}: {module_name!r} has no attribute {factory!r}")
    try:
        model = getattr(module, factory)()
    except Exception as err:  # the user's factory may raise anything
        raise FeatvisValueError(f"--model {spec!r}: {factory}() raised {type(err).__name__}: {err}") from err
    if not isinstance(model, torch.nn.Module):
        raise FeatvisValueError(
            f"--model {spec!r}: {factory}() returned {type(model).__name__}, not an nn.Module"
        )
    return LoadedModel(model, norm, None)


def _load_keras(path: Path) -> torch.nn.Module:
    """A saved Keras 3 model, loaded on the torch backend."""
    import os

    if not path.is_file():
        raise FeatvisValueError(f"--model {str(path)!r}: no such file")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as err:
        raise FeatvisValueError(f"--model {str(path)!r}: a .keras file needs the keras package") from err
    if keras.backend.backend() != "torch":
        raise FeatvisValueError(
            f"--model {str(path)!r}: set KERAS_BACKEND=torch (it is {keras.backend.backend()!r})"
        )
    try:
        return keras.saving.load_model(path)
    except Exception as err:  # keras raises many types for a bad file
        raise FeatvisValueError(f"--model {str(path)!r} is not a readable Keras model: {err}") from err


def parse_range(text: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise bad_value("--input-range", text, "two numbers 'low,high', e.g. 0,255")
    try:
        values = [int(p) if p.strip().lstrip("-").isdigit() else float(p) for p in parts]
    except ValueError as err:
        raise bad_value("--input-range", text, "two numbers 'low,high', e.g. 0,255") from err
    return values[0], values[1]


def parse_filters(text: str | None, class_names) -> list[int] | None:
    if text is None or text.strip().lower() == "all":
        return None
    indices = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise bad_value("--filter", text, "indices or class names separated by commas")
        if part.lstrip("-").isdigit():
            index = int(part)
            if index < 0:
                raise bad_value("--filter", text, "indices >= 0")
        elif class_names is None:
            raise bad_value("--filter", part, "an index: this model has no class names")
        else:
            index = zoo.class_index(part)
        indices.append(index)
    return indices


common_options = [
    click.option(
        "--model",
        "model_spec",
        default=None,
        help="A .keras file (torch backend), a TorchScript file or module:factory (default: embedded EfficientNet-Lite0).",
    ),
    click.option(
        "--preprocess",
        type=click.Choice(["imagenet", "none"]),
        default="imagenet",
        show_default=True,
        help="Normalization of the model input.",
    ),
    click.option(
        "--input-range",
        default="0,255",
        show_default=True,
        help="Range of the image values fed before preprocessing.",
    ),
    click.option("--device", default=None, help="torch device, e.g. cpu or cuda (default: the model's)."),
    click.option(
        "--seed",
        type=int,
        default=0,
        show_default=True,
        help="Random seed: the same seed gives the same image.",
    ),
]


attention_options = [
    click.option("--image", "image_path", required=True, type=click.Path(), help="Image file."),
    click.option("--layer", default="_fc", show_default=True, help="Layer whose units are explained."),
    click.option("--filter", "filters", required=True, help="Unit/class index or class name (comma list)."),
    click.option("--size", type=int, default=224, show_default=True, help="Resize the image to this size."),
    click.option("--overlay/--no-overlay", "overlay_it", default=True, help="Blend the map over the image."),
    click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output PNG."),
    *common_options,
]


def with_options(options):
    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


with_common = with_options(common_options)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="featvis")
def cli() -> None:
    """featvis: see what a unit, a channel or a class of a vision model has learned."""


@cli.command(epilog=EPILOG_ACTIVATION)
@click.option(
    "--layer", required=True, help="Module name (as in model.named_modules()), '#k' for the k-th call."
)
@click.option(
    "--filter", "filters", default=None, help="Unit/channel/class: index, class name, comma list, or 'all'."
)
@click.option("--steps", type=int, default=Settings.max_iter, show_default=True)
@click.option("--views", type=int, default=Settings.views, show_default=True, help="Random views per step.")
@click.option("--size", type=int, default=224, show_default=True)
@click.option(
    "--method",
    type=click.Choice(list(params.METHODS)),
    default=Settings.method,
    show_default=True,
)
@click.option("--tv-weight", type=float, default=visualization.DEFAULT_TV_WEIGHT, show_default=True)
@click.option("--lp-weight", type=float, default=0.0, show_default=True)
@click.option("--grad-modifier", type=click.Choice(list(grad_modifiers.GRAD_MODIFIERS)), default=None)
@click.option(
    "--backprop-modifier", type=click.Choice(list(backprop_modifiers.BACKPROP_MODIFIERS)), default=None
)
@click.option("--verbose", is_flag=True, help="Print every loss term at every step.")
@click.option(
    "--gif", type=click.Path(dir_okay=False), default=None, help="Also write a GIF of the optimization."
)
@click.option("--gif-every", type=int, default=4, show_default=True, help="Steps between GIF frames.")
@click.option(
    "--plot", type=click.Path(dir_okay=False), default=None, help="Also plot every loss term (PNG)."
)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output PNG.")
@with_common
def activation(
    layer,
    filters,
    steps,
    views,
    size,
    method,
    tv_weight,
    lp_weight,
    grad_modifier,
    backprop_modifier,
    verbose,
    gif,
    gif_every,
    plot,
    out,
    model_spec,
    preprocess,
    input_range,
    device,
    seed,
):
    """Generate the image that maximizes units of a layer (activation maximization)."""
    loaded = load_model(model_spec, preprocess)
    recorder = watch.GifRecorder(every=gif_every) if gif else None
    result = visualization.visualize_activation(
        loaded.model,
        layer,
        parse_filters(filters, loaded.class_names),
        max_iter=steps,
        views=views,
        size=size,
        method=method,
        tv_weight=tv_weight,
        lp_norm_weight=lp_weight,
        grad_modifier=grad_modifier,
        backprop_modifier=backprop_modifier,
        verbose=verbose,
        input_range=parse_range(input_range),
        preprocess=loaded.preprocess,
        device=device,
        seed=seed,
        callbacks=[recorder] if recorder else None,
        progress=None if not verbose else False,
        return_result=True,
    )
    save_image(to_array(result.images, (0, 255))[0], out)
    click.echo(f"wrote {out}")
    if recorder:
        click.echo(f"wrote {recorder.save(gif)}")
    if plot:
        click.echo(f"wrote {watch.plot_history(result.history, plot)}")


@cli.command()
@click.option("--layer", required=True, help="Module name of the layer.")
@click.option("--units", default=None, help="Comma list of units (default: all).")
@click.option("--steps", type=int, default=Settings.max_iter, show_default=True)
@click.option("--size", type=int, default=224, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Images per batch (default: what fits).")
@click.option("--cols", type=int, default=None, help="Columns of the grid.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output PNG grid.")
@with_common
def layer(
    layer, units, steps, size, batch_size, cols, out, model_spec, preprocess, input_range, device, seed
):
    """Visualize every unit of a layer, many per batch, as one labeled grid.

    \b
    Example:
      featvis layer --layer _blocks.10 --units 0,1,2,3 --steps 64 --out grid.png
    """
    loaded = load_model(model_spec, preprocess)
    chosen = parse_filters(units, None)
    images = visualization.visualize_layer(
        loaded.model,
        layer,
        chosen,
        max_iter=steps,
        size=size,
        batch_size=batch_size,
        input_range=parse_range(input_range),
        preprocess=loaded.preprocess,
        device=device,
        seed=seed,
    )
    labels = [str(u) for u in (chosen if chosen is not None else range(len(images)))]
    save_image(stitch_images(list(images), cols=cols, labels=labels), out)
    click.echo(f"wrote {out}")


@cli.command(
    name="gallery",
    epilog="""\b
Examples:
  featvis gallery --layer _blocks.10 --out site/
  featvis gallery --layer _blocks.4 --layer _blocks.6 --units 0,1,2,3 --steps 32 --size 128 --out site/
""",
)
@click.option("--layer", "layers", multiple=True, required=True, help="Layer to render (repeat for several).")
@click.option("--units", default=None, help="Comma list of units (default: all).")
@click.option("--steps", type=int, default=64, show_default=True)
@click.option("--size", type=int, default=160, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Images per batch (default: what fits).")
@click.option(
    "--out", type=click.Path(file_okay=False), required=True, help="Folder of the site (index.html)."
)
@with_common
def gallery_command(
    layers, units, steps, size, batch_size, out, model_spec, preprocess, input_range, device, seed
):
    """Render every unit of layers into a static HTML gallery; rerun to add layers."""
    loaded = load_model(model_spec, preprocess)
    index = gallery.write_gallery(
        loaded.model,
        list(layers),
        out,
        units=parse_filters(units, None),
        preprocess=loaded.preprocess,
        input_range=parse_range(input_range),
        size=size,
        max_iter=steps,
        seed=seed,
        batch_size=batch_size,
        device=device,
    )
    click.echo(f"wrote {index}")


def _attention_output(image, heatmap, out, overlay_it):
    picture = attention.overlay(image, heatmap) if overlay_it else (heatmap * 255).round().astype("uint8")
    save_image(picture, out)
    click.echo(f"wrote {out}")


@cli.command(
    epilog="""\b
Examples:
  featvis saliency --image cat.jpg --filter 285 --out map.png
  featvis saliency --image cat.jpg --filter "Egyptian cat" --smooth 20 --out smooth.png
  featvis saliency --image cat.jpg --filter 285 --backprop-modifier guided --no-overlay --out guided.png
"""
)
@click.option("--smooth", type=int, default=0, show_default=True, help="SmoothGrad samples (0: vanilla).")
@click.option(
    "--backprop-modifier", type=click.Choice(list(backprop_modifiers.BACKPROP_MODIFIERS)), default=None
)
@with_options(attention_options)
def saliency(
    image_path,
    layer,
    filters,
    smooth,
    backprop_modifier,
    size,
    overlay_it,
    out,
    model_spec,
    preprocess,
    input_range,
    device,
    seed,
):
    """Saliency map: which pixels change the chosen units most."""
    loaded = load_model(model_spec, preprocess)
    image = _resized(image_path, size)
    heatmap = attention.visualize_saliency(
        loaded.model,
        layer,
        parse_filters(filters, loaded.class_names),
        image,
        smooth_samples=smooth,
        backprop_modifier=backprop_modifier,
        input_range=parse_range(input_range),
        preprocess=loaded.preprocess,
        device=device,
        seed=seed,
    )[0]
    _attention_output(image, heatmap, out, overlay_it)


@cli.command(
    epilog="""\b
Examples:
  featvis cam --image cat.jpg --filter 285 --out cam.png
  featvis cam --image cat.jpg --filter espresso --method gradcam++ --out campp.png
  featvis cam --image cat.jpg --filter 285 --guided --out guided_cam.png
  featvis cam --image cat.jpg --filter 285 --method scorecam --aug-smooth --metrics --out scorecam.png
"""
)
@click.option("--penultimate", default=None, help="Layer whose activations are weighted (default: found).")
@click.option(
    "--method", type=click.Choice(list(attention.CAM_METHODS)), default="gradcam", show_default=True
)
@click.option("--guided", is_flag=True, help="Guided Grad-CAM: guided backprop times the CAM.")
@click.option("--aug-smooth", is_flag=True, help="Average the map over flips and zooms of the image.")
@click.option(
    "--metrics",
    "show_metrics",
    is_flag=True,
    help="Print the map's deletion and insertion areas (featvis.metrics, 16 steps).",
)
@with_options(attention_options)
def cam(
    image_path,
    layer,
    filters,
    penultimate,
    method,
    guided,
    aug_smooth,
    show_metrics,
    size,
    overlay_it,
    out,
    model_spec,
    preprocess,
    input_range,
    device,
    seed,
):
    """Grad-CAM map: which regions the chosen units rely on."""
    loaded = load_model(model_spec, preprocess)
    image = _resized(image_path, size)
    common = dict(
        input_range=parse_range(input_range),
        preprocess=loaded.preprocess,
        device=device,
        penultimate_layer=penultimate,
    )
    indices = parse_filters(filters, loaded.class_names)
    if guided:
        heatmap = attention.visualize_guided_cam(loaded.model, layer, indices, image, **common)[0]
    else:
        heatmap = attention.visualize_cam(
            loaded.model, layer, indices, image, method=method, aug_smooth=aug_smooth, **common
        )[0]
    _attention_output(image, heatmap, out, overlay_it)
    if show_metrics:
        from . import metrics

        del common["penultimate_layer"]
        for name, curve in (
            ("deletion", metrics.deletion(loaded.model, layer, indices, image, heatmap, steps=16, **common)),
            (
                "insertion",
                metrics.insertion(loaded.model, layer, indices, image, heatmap, steps=16, **common),
            ),
        ):
            better = "lower" if name == "deletion" else "higher"
            click.echo(f"{name} area: {curve.areas[0]:.4f} ({better} is better)")


def _resized(image_path, size):
    from .image import resize

    if size < 1:
        raise bad_value("--size", size, "an int >= 1")
    return to_array(resize(to_unit_tensor(image_path, "--image", (0, 255)), (size, size)), (0, 255))[0]


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input exits with status 2 and one line on stderr, no traceback."""
    try:
        cli.main(args=argv, prog_name="featvis", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("featvis: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"featvis: error: {err.format_message()}", err=True)
        sys.exit(2)
    except (FeatvisError, OSError) as err:
        click.echo(f"featvis: error: {err}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
