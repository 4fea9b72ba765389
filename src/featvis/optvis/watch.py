"""Watching an optimization: a GIF of the images and a plot of every loss term.

Examples:
    >>> gif = GifRecorder(every=4)
    >>> result = featvis.visualize_activation(model, "_fc", 130, callbacks=[gif], return_result=True)
    >>> gif.save("flamingo.gif")
    >>> plot_history(result.history, "losses.png")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from featvis.errors import bad_value
from featvis.image import atomic_write, stitch_images, to_array, to_pil


class GifRecorder:
    """A callback that keeps one frame every `every` steps (the whole batch tiled in one frame).

    Examples:
        >>> gif = GifRecorder(every=2)
        >>> featvis.visualize_activation(model, "fc", 0, callbacks=[gif]); gif.save("run.gif")
    """

    def __init__(self, every: int = 1, duration_ms: int = 80):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise bad_value("every", every, "an int >= 1")
        self.every, self.duration_ms = every, duration_ms
        self.frames: list[np.ndarray] = []
        self.steps: list[int] = []

    def __call__(self, step: int, terms: Mapping[str, float], images: torch.Tensor) -> None:
        if step % self.every == 0:
            frames = to_array(images, (0, 255))
            self.frames.append(frames[0] if len(frames) == 1 else stitch_images(list(frames)))
            self.steps.append(step)

    def save(self, path: str | Path) -> Path:
        """Write the animated GIF atomically, one frame per saved step."""
        if not self.frames:
            raise bad_value("frames", 0, "at least one recorded step (pass the recorder in callbacks)")
        pictures = [to_pil(frame).convert("RGB") for frame in self.frames]
        return atomic_write(
            Path(path),
            lambda tmp: pictures[0].save(
                tmp,
                format="GIF",
                save_all=True,
                append_images=pictures[1:],
                duration=self.duration_ms,
                loop=0,
            ),
        )


def history_figure(history: Mapping[str, Sequence[float]], *, title: str | None = None):
    """A matplotlib figure with every loss term against the step (one line per term).

    Examples:
        >>> figure = history_figure(result.history)   # shows itself in Jupyter
    """
    from matplotlib.figure import Figure

    terms = {name: values for name, values in history.items() if name != "total"}
    if not terms:
        raise bad_value("history", list(history), "at least one loss term")
    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.subplots()
    for name, values in terms.items():
        axes.plot(range(1, len(values) + 1), values, label=name)
    total = history.get("total") or []
    axes.set_xlabel("step")
    axes.set_ylabel("loss term (minimized)")
    axes.set_title(title or (f"final total {total[-1]:.4g}" if total else "loss terms"))
    axes.legend()
    figure.tight_layout()
    return figure


def plot_history(
    history: Mapping[str, Sequence[float]], path: str | Path, *, title: str | None = None
) -> Path:
    """Save `history_figure` as a PNG, atomically.

    Examples:
        >>> plot_history(result.history, "losses.png")
    """
    figure = history_figure(history, title=title)
    return atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png"))
