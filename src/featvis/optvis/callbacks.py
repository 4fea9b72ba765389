"""keras-vis's optimizer callbacks: `Print` the loss terms as they go, `GifGenerator` writes a GIF;
and the optimizer's own, which see each whole `Stepped`.

A featvis callback is any function ``f(step, terms, images)`` passed in ``callbacks=``;
one with an ``on_end()`` method is also told when the optimization ends (as keras-vis's
``OptimizerCallback.on_end``). `images` are the images the step scored, (B, C, H, W) in
[0, 1], before its update.

The optimizer runs every extra of a step as a `StepCallback` (``on_step(stepped)``,
``on_end()``): the image average, the transparency map, the verbose print, the progress
bar, and each function of ``callbacks=`` through `FunctionCallback`.

Examples:
    >>> featvis.visualize_activation(model, "fc", 3, callbacks=[Print(), GifGenerator("fc3.gif")])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
import os
from pathlib import Path
import sys
from typing import TextIO

import torch
from tqdm.auto import tqdm

from featvis.errors import bad_type, check_int
from featvis.model.targets import Target
from featvis.optvis.losses import Loss
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


@dataclass
class Stepped:
    """What one optimization step did, as a `StepCallback` sees it.

    `step` counts from 0 of `steps`; `images`: the images the step scored, (B, C, H, W) in
    [0, 1], before its update (a copy); `image_gradient`: (B, H, W) the mean over channels of
    |d loss / d image|; `activations`: the layer outputs the loss read, by target key. `terms`
    reads the loss terms back from the device (one sync), only when a callback asks.

    Examples:
        >>> class Last(StepCallback):
        ...     def on_step(self, stepped): self.images = stepped.images
    """

    step: int
    steps: int
    images: torch.Tensor
    image_gradient: torch.Tensor
    activations: dict[str, torch.Tensor]
    read_terms: Callable[[], dict[str, float]] = field(repr=False)

    @property
    def terms(self) -> dict[str, float]:
        """Each loss term's batch mean at this step, and the ``"total"``."""
        return self.read_terms()


class StepCallback:
    """A callback of the optimizer's: `on_step` after every step, `on_end` when the optimization ends.

    Examples:
        >>> class Count(StepCallback):
        ...     steps = 0
        ...     def on_step(self, stepped): self.steps += 1
    """

    def on_step(self, stepped: Stepped) -> None:
        """Called after every step."""

    def on_end(self) -> None:
        """Called once when the optimization ends (after the last step or Ctrl-C), not after an error."""


class FunctionCallback(StepCallback):
    """A function ``f(step, terms, images)`` of ``callbacks=`` (and its ``on_end()``, if it has one).

    Examples:
        >>> FunctionCallback(Print(every=10))
    """

    def __init__(self, function: Callable[[int, Mapping[str, float], torch.Tensor], None]):
        self.function = function

    def on_step(self, stepped: Stepped) -> None:
        self.function(stepped.step, stepped.terms, stepped.images)

    def on_end(self) -> None:
        on_end = getattr(self.function, "on_end", None)
        if callable(on_end):
            on_end()


class ImageAverage(StepCallback):
    """The moving average of the images over the second half of the steps (`decay`: ``image_ema``).

    Examples:
        >>> average = ImageAverage(0.95)   # average.images: None until the second half
    """

    def __init__(self, decay: float):
        self.decay = decay
        self.images: torch.Tensor | None = None

    def on_step(self, stepped: Stepped) -> None:
        if stepped.step < stepped.steps // 2:
            return
        if self.images is None:
            self.images = stepped.images.clone()
        else:
            self.images.lerp_(stepped.images, 1 - self.decay)


class Transparency(StepCallback):
    """MACO's transparency map: |d loss / d image| summed over the steps, (B, H, W).

    Examples:
        >>> transparency = Transparency()   # transparency.total: None before the first step
    """

    def __init__(self):
        self.total: torch.Tensor | None = None

    def on_step(self, stepped: Stepped) -> None:
        gradient = stepped.image_gradient
        self.total = gradient if self.total is None else self.total + gradient


class VerbosePrint(StepCallback):
    """``verbose=True``: where each term's units lie (once), then every term and the total at every step.

    Examples:
        >>> VerbosePrint(128, terms, targets)
        step 1/128  ActivationMaximization -0.41  TotalVariation 0.0003  total -0.4097
    """

    def __init__(self, steps: int, terms: Sequence[Loss], targets: Mapping[str, Target]):
        self.steps, self.terms, self.targets = steps, list(terms), dict(targets)

    def on_step(self, stepped: Stepped) -> None:
        if stepped.step == 0:
            shapes = {key: tuple(value.shape) for key, value in stepped.activations.items()}
            for term in self.terms:
                if hasattr(term, "units_line"):
                    print(term.units_line(self.targets, shapes))
        terms = stepped.terms
        text = "  ".join(f"{name} {value:.4g}" for name, value in terms.items() if name != "total")
        print(f"step {stepped.step + 1}/{self.steps}  {text}  total {terms['total']:.4g}")


class ProgressBar(StepCallback):
    """A bar of the steps on stderr (`show` False: none); `close` takes it away, also after an error.

    Examples:
        >>> bar = ProgressBar(128, show=True)
    """

    def __init__(self, steps: int, show: bool):
        self.bar = tqdm(total=steps, disable=not show, desc="featvis", leave=False)

    def on_step(self, stepped: Stepped) -> None:
        self.bar.update(1)

    def on_end(self) -> None:
        self.close()

    def close(self) -> None:
        self.bar.close()
