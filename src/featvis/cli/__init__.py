"""The ``featvis`` command: activation, layer, cam, saliency, examples, gallery, atlas.

Examples:
    $ featvis activation --layer _fc --filter flamingo --seed 0 --out flamingo.png
"""

from featvis.cli.main import cli, main

__all__ = ["cli", "main"]
