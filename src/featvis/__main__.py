"""``python -m featvis`` (what ``torchrun -m featvis atlas ...`` runs): the command line."""

from .cli import main

main()
