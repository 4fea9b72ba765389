"""Input modifiers: random, differentiable transforms applied to each view every step.

Each image of a batch draws its own transform. A built-in modifier is called as
``modifier(images, streams)``, where `featvis.rng.Streams` holds one random stream
per image (so an image's transforms do not depend on the rest of its batch); a
plain function ``f(images) -> images`` works too. They keep the image size unless their name says otherwise.

Examples:
    >>> modifiers = [Jitter(8), RandomAffine(scale=(0.9, 1.1), degrees=10), Noise(0.02)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math

import torch
import torch.nn.functional as F

from featvis.errors import bad_type, bad_value
from featvis.rng import Streams


class InputModifier:
    """Base class: implement ``__call__(images, streams)`` returning new images.

    Examples:
        >>> class Darken(InputModifier):
        ...     def __call__(self, images, streams):
        ...         return images * streams.uniform(1, 1, 1, low=0.8, high=1.0).to(images.dtype)
    """

    def __call__(self, images: torch.Tensor, streams: Streams) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _pixels(amount: float, size: int) -> int:
    return int(round(amount * size)) if isinstance(amount, float) and amount < 1 else int(amount)


class Jitter(InputModifier):
    """Shift each image by a random offset up to `jitter` (pixels, or a fraction if < 1), wrapping.

    Examples:
        >>> Jitter(16)       # up to 16 px
        >>> Jitter(0.05)     # up to 5% of the size
    """

    def __init__(self, jitter: float = 16):
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or jitter < 0:
            raise bad_value("jitter", jitter, "a number of pixels >= 0 or a fraction in (0, 1)")
        self.jitter = jitter

    def __call__(self, images, streams):
        for axis in range(2, images.ndim):  # each image rolled by its own offset along every spatial axis
            size = images.shape[axis]
            j = _pixels(self.jitter, size)
            if j == 0:
                continue
            shift = streams.integers(-j, j + 1, 1).to(images.device)  # (N, 1)
            index = (torch.arange(size, device=images.device)[None] - shift) % size
            shape = [images.shape[0]] + [1] * (images.ndim - 1)
            shape[axis] = size
            images = images.gather(axis, index.view(shape).expand_as(images))
        return images


class RandomAffine(InputModifier):
    """Per-image random scale, rotation (degrees) and translation (fraction), one resampling.

    Examples:
        >>> RandomAffine(scale=(0.9, 1.1), degrees=10, translate=0.05)
    """

    def __init__(self, scale=(1.0, 1.0), degrees: float = 0.0, translate: float = 0.0):
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise bad_value("scale", scale, "(low, high) with 0 < low <= high")
        self.scale, self.degrees, self.translate = tuple(scale), float(degrees), float(translate)

    def __call__(self, images, streams):
        if images.ndim != 4:
            raise bad_value(
                "input_modifiers",
                self,
                "RandomZoom, Jitter, RandomFlip or Noise for 1-D and 3-D input (rotation is 2-D)",
            )
        draws = streams.uniform(4).to(images.device)
        zoom = self.scale[0] + (self.scale[1] - self.scale[0]) * draws[:, 0]
        angle = (2 * draws[:, 1] - 1) * self.degrees * math.pi / 180
        tx, ty = (2 * draws[:, 2] - 1) * self.translate * 2, (2 * draws[:, 3] - 1) * self.translate * 2
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _resample_window(images: torch.Tensor, side: torch.Tensor, streams: Streams) -> torch.Tensor:
    """Resize a square window of each image (side: fraction of the image side, per image) to full size.

    Windows smaller than the image lie inside it at a random position; larger ones
    are centered and reflect the image at its borders.
    """
    room = (1 - side).clamp(min=0)
    if images.ndim == 3:  # a signal: the same window along its one axis, as a one-row image
        center = streams.uniform(2, low=-1.0, high=1.0).to(images.device)[:, :1] * room[:, None]
        zero, one = torch.zeros_like(side), torch.ones_like(side)
        theta = torch.stack(
            [torch.stack([side, zero, center[:, 0]], 1), torch.stack([zero, one, zero], 1)], 1
        )
        rows = images[:, :, None]
        grid = F.affine_grid(theta.to(images.dtype), list(rows.shape), align_corners=False)
        out = F.grid_sample(rows, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return out[:, :, 0]
    dims = images.ndim - 2
    center = streams.uniform(dims, low=-1.0, high=1.0).to(images.device) * room[:, None]
    theta = torch.cat([torch.diag_embed(side[:, None].expand(-1, dims)), center[:, :, None]], dim=2)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class RandomCrop(InputModifier):
    """Crop a random square part of each image (area fraction drawn from `area`) and resize it back.

    Examples:
        >>> RandomCrop(area=(0.25, 1.0))
    """

    def __init__(self, area=(0.25, 1.0)):
        if len(area) != 2 or not 0 < area[0] <= area[1] <= 1:
            raise bad_value("area", area, "(low, high) with 0 < low <= high <= 1")
        self.area = tuple(area)

    def __call__(self, images, streams):
        side = torch.sqrt(streams.uniform(low=self.area[0], high=self.area[1]).to(images.device))
        return _resample_window(images, side, streams)


class RandomZoom(InputModifier):
    """Show each image through a random square window (side drawn from `side`, as a fraction of
    the image side) resized to full size: below 1 zooms in on a random part, above 1 zooms out
    (the image reflected at its borders).

    Examples:
        >>> RandomZoom(side=(0.3, 1.3))
    """

    def __init__(self, side=(0.316, 1.3)):
        if len(side) != 2 or not 0 < side[0] <= side[1] <= 4:
            raise bad_value("side", side, "(low, high) with 0 < low <= high <= 4")
        self.side = tuple(side)

    def __call__(self, images, streams):
        side = streams.uniform(low=self.side[0], high=self.side[1]).to(images.device)
        return _resample_window(images, side, streams)


class RandomFlip(InputModifier):
    """Mirror each image left-right (a signal in time, a volume along its last axis) with probability
    `p` (each image draws its own).

    Examples:
        >>> RandomFlip(0.5)
    """

    def __init__(self, p: float = 0.5):
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise bad_value("p", p, "a probability in [0, 1]")
        self.p = float(p)

    def __call__(self, images, streams):
        flip = streams.uniform().to(images.device) < self.p
        return torch.where(flip.view(-1, *[1] * (images.ndim - 1)), images.flip(-1), images)


class Pad(InputModifier):
    """Pad every image by `pad` pixels (this one grows the image), reflect or constant.

    Examples:
        >>> Pad(16, mode="constant", value=0.5)
    """

    def __init__(self, pad: int = 16, mode: str = "reflect", value: float = 0.5):
        if mode not in ("reflect", "replicate", "constant"):
            raise bad_value("mode", mode, "'reflect', 'replicate' or 'constant'")
        self.pad, self.mode, self.value = int(pad), mode, value

    def __call__(self, images, streams):
        kwargs = {"value": self.value} if self.mode == "constant" else {}
        return F.pad(images, [self.pad] * 2 * (images.ndim - 2), mode=self.mode, **kwargs)


class Noise(InputModifier):
    """Add Gaussian noise of standard deviation `std` (image units, [0, 1]).

    Examples:
        >>> Noise(0.02)
    """

    def __init__(self, std: float = 0.02):
        if not std >= 0:
            raise bad_value("std", std, "a number >= 0")
        self.std = float(std)

    def __call__(self, images, streams):
        return images + self.std * streams.normal(*images.shape[1:]).to(images.device, images.dtype)


def standard_transforms() -> list[InputModifier]:
    """featvis's default transformation robustness: flips, zooms in and out, jitter, noise.

    Chosen by ``benchmarks/quality.py``: with the image average of the second half of
    the steps it gave the class images that an independent network (EfficientNet-Lite2)
    recognizes best, at one view per step as at four.

    Examples:
        >>> standard_transforms()[1]
        RandomZoom(side=(0.316, 1.3))
    """
    return [RandomFlip(0.5), RandomZoom(side=(0.316, 1.3)), Jitter(0.03), Noise(0.05)]


def apply_modifiers(
    modifiers: Sequence[InputModifier | Callable], images: torch.Tensor, streams: Streams
) -> torch.Tensor:
    """Apply each modifier in turn: built-ins get the streams (one per image), plain functions only images.

    Examples:
        >>> views = apply_modifiers(standard_transforms(), images, Streams(range(len(images))))
    """
    if len(streams) != images.shape[0]:
        raise bad_value("streams", f"{len(streams)} streams", f"one per image ({images.shape[0]})")
    for modifier in modifiers:
        images = modifier(images, streams) if isinstance(modifier, InputModifier) else modifier(images)
        if not isinstance(images, torch.Tensor):
            raise bad_type("input_modifiers", modifier, "modifiers that return a tensor")
    return images
