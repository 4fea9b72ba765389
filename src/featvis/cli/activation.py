"""Commands of activation maximization: `activation` (one image of units), `layer` (a grid of a layer's units), `gallery` (a page of several layers).

Examples:
    $ featvis activation --layer _fc --filter flamingo --seed 0 --out flamingo.png
"""

from __future__ import annotations

import click

from featvis.cli.common import (
    OUT_HELP,
    check_output,
    cli,
    parse_filters,
    quality_arguments,
    quality_options,
    registered_name,
    registry_option,
    unit_options,
    with_common,
    with_options,
)
from featvis.image import save_image, stitch_images, to_array
from featvis.optvis import backprop_modifiers, grad_modifiers, params, visualization, watch
from featvis.optvis.optimizer import Settings
from featvis.site import gallery

EPILOG_ACTIVATION = """\b
Examples:
  featvis activation --layer _fc --filter 130 --out flamingo.png
  featvis activation --layer _fc --filter "flamingo,pelican" --steps 128 --out two.png
  featvis activation --layer _blocks.10 --filter 7 --method pixel --out ch7.png
  featvis activation --model mypkg.models:make_net --preprocess none --input-range 0,1 \\
      --layer head --filter 0 --size 32 --out up.png
  featvis activation --model timm:convnext_tiny --weights convnext_tiny.safetensors \\
      --layer "" --filter goldfish --out goldfish.png
"""


@cli.command(epilog=EPILOG_ACTIVATION)
@click.option(
    "--layer", required=True, help="Module name (as in model.named_modules()), '#k' for the k-th call."
)
@click.option(
    "--filter", "filters", default=None, help="Unit/channel/class: index, class name, comma list, or 'all'."
)
@with_options(unit_options)
@with_options(quality_options)
@click.option("--size", type=int, default=224, show_default=True)
@registry_option(
    "--method",
    params.METHODS,
    default=None,
    help=f"Image parameterization (default: the preset's; {Settings.method} at --quality fast).",
)
@click.option("--tv-weight", type=float, default=visualization.DEFAULT_TV_WEIGHT, show_default=True)
@click.option("--lp-weight", type=float, default=0.0, show_default=True)
@registry_option(
    "--grad-modifier", grad_modifiers.GRAD_MODIFIERS, default=None, help="How gradients are changed."
)
@registry_option(
    "--backprop-modifier",
    backprop_modifiers.BACKPROP_MODIFIERS,
    extra=("none",),
    default=None,
    help=f"How gradients pass the ReLUs (default: the preset's; {Settings.backprop_modifier} at --quality "
    "fast; none: plain gradients).",
)
@click.option("--verbose", is_flag=True, help="Print every loss term at every step.")
@click.option(
    "--gif", type=click.Path(dir_okay=False), default=None, help="Also write a GIF of the optimization."
)
@click.option("--gif-every", type=int, default=4, show_default=True, help="Steps between GIF frames.")
@click.option(
    "--plot", type=click.Path(dir_okay=False), default=None, help="Also plot every loss term (PNG)."
)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help=OUT_HELP)
@with_common
def activation(
    layer,
    filters,
    unit_axis,
    token,
    quality,
    steps,
    views,
    setting_texts,
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
    common,
):
    """Generate the image that maximizes units of a layer (activation maximization)."""
    for option, path in (("--out", out), ("--gif", gif), ("--plot", plot)):
        check_output(option, path)
    loaded, api = common.load()
    indices = parse_filters(filters, loaded)
    method = registered_name("--method", method, params.METHODS)
    grad_modifier = registered_name("--grad-modifier", grad_modifier, grad_modifiers.GRAD_MODIFIERS)
    backprop_modifier = registered_name(
        "--backprop-modifier", backprop_modifier, backprop_modifiers.BACKPROP_MODIFIERS, ("none",)
    )
    recorder = watch.GifRecorder(every=gif_every) if gif else None
    result = visualization.visualize_activation(
        loaded.model,
        layer,
        indices,
        unit_axis=unit_axis,
        token=token,
        **quality_arguments(
            quality,
            steps,
            views,
            setting_texts,
            method=method,
            grad_modifier=grad_modifier,
            backprop_modifier=backprop_modifier,
        ),
        size=size,
        tv_weight=tv_weight,
        lp_norm_weight=lp_weight,
        verbose=verbose,
        seed=common.seed,
        callbacks=[recorder] if recorder else None,
        progress=None if not verbose else False,
        return_result=True,
        **api,
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
@with_options(unit_options)
@with_options(quality_options)
@click.option("--size", type=int, default=224, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Images per batch (default: what fits).")
@click.option("--cols", type=int, default=None, help="Columns of the grid.")
@click.option(
    "--out", type=click.Path(dir_okay=False), required=True, help="Output PNG grid; its folder must exist."
)
@with_common
def layer(
    layer,
    units,
    unit_axis,
    token,
    quality,
    steps,
    views,
    setting_texts,
    size,
    batch_size,
    cols,
    out,
    common,
):
    """Visualize every unit of a layer, many per batch, as one labeled grid.

    \b
    Examples:
      featvis layer --layer _blocks.10 --units 0,1,2,3 --steps 64 --out grid.png
    """
    check_output("--out", out)
    chosen = parse_filters(units, None, "--units")
    loaded, api = common.load()
    images = visualization.visualize_layer(
        loaded.model,
        layer,
        chosen,
        unit_axis=unit_axis,
        token=token,
        **quality_arguments(quality, steps, views, setting_texts),
        size=size,
        batch_size=batch_size,
        seed=common.seed,
        **api,
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
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Folder of the site (index.html); it may be new, the folder holding it must exist.",
)
@click.option(
    "--data",
    type=click.Path(exists=True),
    default=None,
    help="Folder of images: show each unit's top dataset crops beside it (most negative on a click).",
)
@click.option("--k", type=int, default=9, show_default=True, help="Dataset examples per unit (with --data).")
@with_common
def gallery_command(
    layers,
    units,
    steps,
    size,
    batch_size,
    out,
    data,
    k,
    common,
):
    """Render every unit of layers into a static HTML gallery; rerun to add layers."""
    check_output("--out", out, folder=True)
    chosen = parse_filters(units, None, "--units")
    loaded, api = common.load()
    index = gallery.write_gallery(
        loaded.model,
        list(layers),
        out,
        units=chosen,
        size=size,
        max_iter=steps,
        seed=common.seed,
        batch_size=batch_size,
        data=data,
        k=k,
        **api,
    )
    click.echo(f"wrote {index}")
