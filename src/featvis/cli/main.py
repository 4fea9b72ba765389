"""The entry point: `main()` runs the `featvis` group with every command registered; bad input exits with status 2 and one line.

Examples:
    >>> main(["activation", "--layer", "_fc", "--filter", "130", "--out", "flamingo.png"])
"""

from __future__ import annotations

import sys

import click

from featvis.cli import activation, atlas, attribution, data  # noqa: F401 (the commands register)
from featvis.cli.common import cli
from featvis.errors import FeatvisError


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
