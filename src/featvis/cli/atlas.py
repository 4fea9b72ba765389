"""Whole-model pages: `atlas` (every unit, resumable, sharded under torchrun) and `activation-atlas` (a layer's activations laid out and drawn).

Examples:
    $ torchrun --nproc-per-node 2 -m featvis atlas --out site/
"""

from __future__ import annotations

import os

import click

from featvis.cli.common import (
    check_output,
    cli,
    quality_arguments,
    quality_options,
    with_common,
    with_options,
)
from featvis.errors import bad_value
from featvis.site.activation_atlas import LAYOUTS


@cli.command(
    name="atlas",
    epilog="""\b
Examples:
  featvis atlas --out site/                                  # the whole embedded Lite0
  featvis atlas --layer _blocks.4 --layer _fc --steps 64 --out site/
  torchrun --nproc-per-node 4 -m featvis atlas --out site/  # 4 processes (GPUs or CPU)
""",
)
@click.option(
    "--layer",
    "layers",
    multiple=True,
    help="Layer to include (repeat; default: every block, head, classifier).",
)
@click.option("--all", "all_convolutions", is_flag=True, help="Every conv and linear layer.")
@with_options(quality_options)
@click.option("--size", type=int, default=128, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Units per batch (default 4 on CPU, 32 on GPU).")
@click.option(
    "--data",
    type=click.Path(exists=True),
    default=None,
    help="Folder of images: each unit's card also shows the images that drive it most.",
)
@click.option("--examples", type=int, default=9, show_default=True, help="Dataset examples per unit.")
@click.option(
    "--fed-by",
    type=int,
    default=4,
    show_default=True,
    help="Units of the layer before that feed each unit most, on its card (0: none).",
)
@click.option("--restart", is_flag=True, help="Delete an atlas made with other settings in --out first.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder of the site.")
@with_common
def atlas_command(
    layers,
    all_convolutions,
    quality,
    steps,
    views,
    setting_texts,
    size,
    batch_size,
    data,
    examples,
    fed_by,
    restart,
    out,
    common,
):
    """Visualize every unit of a whole model into a browsable site; resumable, and sharded under torchrun."""
    from featvis.site.atlas import atlas

    if layers and all_convolutions:
        raise bad_value("--all", True, "either --layer or --all, not both")
    check_output("--out", out, folder=True)
    loaded, api = common.load()
    index = atlas(
        loaded.model,
        out,
        list(layers) or None,
        all_convolutions=all_convolutions,
        class_names=loaded.class_names,
        size=size,
        batch_size=batch_size,
        seed=common.seed,
        restart=restart,
        data=data,
        examples=examples,
        fed_by=fed_by,
        **quality_arguments(quality, steps, views, setting_texts),
        **api,
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks
        click.echo(f"wrote {index}")


@cli.command(
    name="activation-atlas",
    epilog="""\b
Examples:
  featvis activation-atlas --layer _blocks.15 --out atlas15/                  # scikit-image's photos
  featvis activation-atlas --layer _blocks.15 --data photos/ --grid 20 --icon-size 96 --out atlas15/
  torchrun --nproc-per-node 2 -m featvis activation-atlas --layer _blocks.15 --out atlas15/
""",
)
@click.option("--layer", required=True, help="The layer whose activations are laid out.")
@click.option(
    "--data",
    type=click.Path(exists=True),
    default=None,
    help="Folder of images (default: scikit-image's photographs, the photos extra).",
)
@click.option("--data-size", type=int, default=None, help="Side the data's images are read at (default 224).")
@click.option("--grid", type=int, default=16, show_default=True, help="Cells per side of the map.")
@click.option("--samples", type=int, default=4, show_default=True, help="Positions sampled per image.")
@click.option("--min-count", type=int, default=3, show_default=True, help="Samples a cell needs to be drawn.")
@click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True)
@click.option("--icon-size", type=int, default=None, help="Side of each cell's image (default: the data's).")
@click.option("--steps", type=int, default=128, show_default=True, help="Optimization steps per cell.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Cells drawn per call.")
@click.option(
    "--out", type=click.Path(file_okay=False), required=True, help="Folder of the picture and page."
)
@with_common
def activation_atlas_command(
    layer, data, data_size, grid, samples, min_count, layout, icon_size, steps, batch_size, out, common
):
    """Lay out a layer's activations over a dataset on a grid and draw every cell (Carter et al. 2019)."""
    from featvis.site.activation_atlas import activation_atlas

    check_output("--out", out, folder=True)
    loaded, api = common.load()
    result = activation_atlas(
        loaded.model,
        layer,
        data,
        out=out,
        data_size=data_size,
        grid=grid,
        samples=samples,
        min_count=min_count,
        layout=layout,
        icon_size=icon_size,
        max_iter=steps,
        batch_size=batch_size,
        class_names=loaded.class_names,
        seed=common.seed if common.seed is not None else 0,
        **api,
    )
    if result.page is not None:
        click.echo(f"wrote {result.page} ({len(result.cells)} cells, laid out by {result.layout})")
