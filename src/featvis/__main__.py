"""``python -m featvis`` (what ``torchrun -m featvis atlas ...`` runs): the command line."""

from featvis.cli.main import main

main()
