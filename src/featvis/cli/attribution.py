"""Attention maps: `saliency` and `cam` (the registered methods, with `--option NAME=VALUE`).

Examples:
    $ featvis cam --image cat.jpg --filter 285 --out cam.png
"""

from __future__ import annotations

import click
import numpy as np
import torch

import featvis.attribution as attribution
from featvis.cli.common import (
    attention_options,
    check_output,
    cli,
    method_options,
    parse_filters,
    parse_size,
    registered_method,
    registered_name,
    registry_option,
    with_common,
    with_options,
)
from featvis.image import resize, save_image, to_array, to_unit_tensor
from featvis.model.prepared import preparing
from featvis.optvis import backprop_modifiers


def _attention_output(photo, heatmap, out, overlay_it):
    """The map at the photo's own size, over the photo or alone."""
    if overlay_it:
        picture = attribution.overlay(photo, heatmap)  # resizes the map to the photo
    else:
        heat = torch.from_numpy(np.asarray(heatmap, dtype=np.float32))[None, None]
        heat = resize(heat, tuple(photo.shape[:2]))[0, 0].clamp(0, 1).numpy()
        picture = (heat * 255).round().astype("uint8")
    save_image(picture, out)
    click.echo(f"wrote {out}")


@cli.command(
    epilog="""\b
Examples:
  featvis saliency --image cat.jpg --filter 285 --out map.png
  featvis saliency --image cat.jpg --filter "Egyptian cat" --smooth 20 --out smooth.png
  featvis saliency --image cat.jpg --filter 285 --backprop-modifier guided --no-overlay --out guided.png
  featvis saliency --image cat.jpg --filter 285 --method integrated_gradients --option steps=32 --out ig.png
"""
)
@click.option("--smooth", type=int, default=0, show_default=True, help="SmoothGrad samples (0: vanilla).")
@registry_option(
    "--backprop-modifier",
    backprop_modifiers.BACKPROP_MODIFIERS,
    default=None,
    help="How gradients pass the ReLUs.",
)
@with_options(method_options(attribution.SALIENCY_METHODS))
@with_options(attention_options)
@with_common
def saliency(
    image_path,
    layer,
    filters,
    smooth,
    backprop_modifier,
    method,
    method_option,
    size,
    overlay_it,
    out,
    common,
):
    """Saliency map: which pixels change the chosen units most."""
    check_output("--out", out)
    photo, image = _photo_and_model_image(image_path, size, common.channels)
    loaded, api = common.load()
    indices = parse_filters(filters, loaded)
    backprop_modifier = registered_name(
        "--backprop-modifier", backprop_modifier, backprop_modifiers.BACKPROP_MODIFIERS
    )
    if method_option and backprop_modifier is not None:  # the method object takes it
        method_option = (*method_option, f"backprop_modifier={backprop_modifier!r}")
        backprop_modifier = None
    heatmap = attribution.visualize_saliency(
        loaded.model,
        layer,
        indices,
        image,
        method=registered_method(attribution.SALIENCY_METHODS, method, method_option),
        smooth_samples=smooth,
        backprop_modifier=backprop_modifier,
        seed=common.seed,
        **api,
    )[0]
    _attention_output(photo, heatmap, out, overlay_it)


@cli.command(
    epilog="""\b
Examples:
  featvis cam --image cat.jpg --filter 285 --out cam.png
  featvis cam --image cat.jpg --filter espresso --method gradcam++ --out campp.png
  featvis cam --image cat.jpg --filter 285 --guided --out guided_cam.png
  featvis cam --image cat.jpg --filter 285 --size 224x224 --out cam.png   # a model that needs 224x224
  featvis cam --image cat.jpg --filter 285 --method scorecam --aug-smooth --metrics --out scorecam.png
"""
)
@click.option("--penultimate", default=None, help="Layer whose activations are weighted (default: found).")
@with_options(method_options(attribution.CAM_METHODS))
@click.option("--guided", is_flag=True, help="Guided Grad-CAM: guided backprop times the CAM.")
@click.option("--aug-smooth", is_flag=True, help="Average the map over flips and zooms of the image.")
@click.option(
    "--metrics",
    "show_metrics",
    is_flag=True,
    help="Print the map's deletion and insertion areas (featvis.metrics, 16 steps).",
)
@with_options(attention_options)
@with_common
def cam(
    image_path,
    layer,
    filters,
    penultimate,
    method,
    method_option,
    guided,
    aug_smooth,
    show_metrics,
    size,
    overlay_it,
    out,
    common,
):
    """Grad-CAM map: which regions the chosen units rely on."""
    check_output("--out", out)
    photo, image = _photo_and_model_image(image_path, size, common.channels)
    loaded, api = common.load()
    indices = parse_filters(filters, loaded)
    cam_of = attribution.visualize_guided_cam if guided else attribution.visualize_cam
    options = {}
    if not guided:
        method = registered_method(attribution.CAM_METHODS, method, method_option)
        options = {"method": method, "aug_smooth": aug_smooth, "seed": common.seed}
    with preparing(loaded.model, **api) as prepared:  # one for the map and its metrics
        heatmap = cam_of(prepared, layer, indices, image, penultimate_layer=penultimate, **options)[0]
        _attention_output(photo, heatmap, out, overlay_it)
        if show_metrics:
            from featvis.attribution import metrics

            for name, better in (("deletion", "lower"), ("insertion", "higher")):
                curve = getattr(metrics, name)(prepared, layer, indices, image, heatmap, steps=16)
                click.echo(f"{name} area: {curve.areas[0]:.4f} ({better} is better)")


def _photo_and_model_image(image_path, size: str, channels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The photo as read (H, W, C) uint8, and the image fed to the model, resized as `--size` says.

    The photo is read as pixels in [0, 255], whatever `--input-range` is: the
    attention functions get it as a uint8 array in their own `input_range`.
    """
    target = parse_size(size)
    photo = to_unit_tensor(image_path, "--image", (0, 255), channels)
    height, width = photo.shape[-2:]
    if isinstance(target, int):
        scale = target / min(height, width)
        target = (max(1, round(height * scale)), max(1, round(width * scale)))
    return to_array(photo, (0, 255))[0], to_array(resize(photo, target), (0, 255))[0]
