"""keras-vis's optimizer callbacks: `Print` the loss terms as they go, `GifGenerator` writes a GIF.

A featvis callback is any function ``f(step, terms, images)`` passed in ``callbacks=``;
one with an ``on_end()`` method is also told when the optimization ends (as keras-vis's
``OptimizerCallback.on_end``).

Examples:
    >>> featvis.visualize_activation(model, "fc", 3, callbacks=[Print(), GifGenerator("fc3.gif")])
"""

from __future__ import annotations

from collections.abc import Mapping
import os
from pathlib import Path
import sys
from typing import TextIO

import torch

from featvis.errors import bad_type, check_int
from featvis.optvis.watch import GifRecorder


class Print:
    """Print every loss term and the total every `every` steps (keras-vis's ``callbacks.Print``).

    Examples:
        >>> featvis.visualize_activation(model, "fc", 3, callbacks=[Print(every=10)])
        step 1: ActivationMaximization=-0.41, TotalVariation=0.0003, total=-0.4097
    """

    def __init__(self, every: int = 1, file: TextIO | None = None):
        self.every = check_int("every", every, 1)
        self.file = file

    def __call__(self, step: int, terms: Mapping[str, float], images: torch.Tensor) -> None:
        if step % self.every == 0:
            named = ", ".join(f"{name}={value:.4g}" for name, value in terms.items() if name != "total")
            print(
                f"step {step + 1}: {named}, total={terms.get('total', 0.0):.4g}", file=self.file or sys.stdout
            )


class GifGenerator(GifRecorder):
    """Record the images every `every` steps and write them as an animated GIF at `path` when the
    optimization ends (keras-vis's ``callbacks.GifGenerator``; ``.gif`` is added when missing).

    Examples:
        >>> gif = GifGenerator("flamingo", every=4)
        >>> featvis.visualize_activation(model, "_fc", 130, callbacks=[gif])
        >>> gif.path
        PosixPath('flamingo.gif')
    """

    def __init__(self, path: str | os.PathLike, every: int = 1, duration_ms: int = 80):
        if not isinstance(path, str | os.PathLike):
            raise bad_type("path", path, "a file path (str or os.PathLike)")
        super().__init__(every=every, duration_ms=duration_ms)
        path = Path(path)
        self.path = path if path.suffix.lower() == ".gif" else path.with_name(path.name + ".gif")

    def on_end(self) -> None:
        """Write the GIF (called by featvis when the optimization ends)."""
        self.save(self.path)
