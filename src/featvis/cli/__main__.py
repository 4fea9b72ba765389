"""``python -m featvis.cli``: the command line (as ``python -m featvis``)."""

from featvis.cli.main import main

main()
