"""The dataset pass: `examples` (the images of a folder that drive each unit most).

Examples:
    $ featvis examples --layer _blocks.10 --data photos/ --out examples/
"""

from __future__ import annotations

import click

from featvis.cli.common import check_output, cli, parse_filters, with_common
from featvis.site import gallery


@cli.command(
    epilog="""\b
Examples:
  featvis examples --layer _blocks.10 --data photos/ --k 9 --out site/
  featvis examples --layer _fc --layer _blocks.12 --units 285,1 --out site/   # scikit-image's photos
  featvis examples --layer _blocks.10 --data photos/ --checkpoint run.pt --out site/  # resumable
"""
)
@click.option("--layer", "layers", multiple=True, required=True, help="Layer (repeat for several; one pass).")
@click.option(
    "--data",
    type=click.Path(exists=True),
    default=None,
    help='Folder of images, searched recursively (default: scikit-image\'s photos, pip install "featvis[photos]").',
)
@click.option("--units", default=None, help="Comma list of units (default: all).")
@click.option("--k", type=int, default=9, show_default=True, help="Top and bottom images per unit.")
@click.option(
    "--reduce",
    type=click.Choice(["max", "mean"]),
    default="max",
    show_default=True,
    help="Rank conv units by their spatial max or mean.",
)
@click.option("--size", type=int, default=224, show_default=True, help="Images are resized to this size.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--workers", type=int, default=None, help="Decoding workers (default: up to 4).")
@click.option(
    "--checkpoint", type=click.Path(dir_okay=False), default=None, help="Save/resume the pass here."
)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder of the pages.")
@with_common
def examples(
    layers,
    data,
    units,
    k,
    reduce,
    size,
    batch_size,
    workers,
    checkpoint,
    out,
    common,
):
    """Dataset examples: the images (crops) of your data that drive each unit most and least."""
    check_output("--out", out, folder=True)
    loaded, api = common.load()
    pages = gallery.write_examples(
        loaded.model,
        list(layers),
        data,
        out,
        units=parse_filters(units, None, "--units"),
        k=k,
        reduce=reduce,
        size=size,
        batch_size=batch_size,
        num_workers=workers,
        checkpoint=checkpoint,
        **api,
    )
    for page in pages:
        click.echo(f"wrote {page}")
