"""Regularizers: losses on the image itself that keep it natural-looking.

Both work on the image in [0, 1] before any transform and are normalized per
pixel, so their weights do not depend on the image size.

Example:
    >>> loss = ActivationMaximization("_fc", 130) + 0.5 * TotalVariation() + 0.1 * LpNorm(6)
"""

from __future__ import annotations

import torch

from .errors import bad_value
from .losses import Loss, LossContext


class TotalVariation(Loss):
    """Mean over pixels of (dx^2 + dy^2)^(beta/2): penalizes high-frequency noise.

    Example:
        >>> TotalVariation(beta=2)
    """

    name = "TotalVariation"

    def __init__(self, beta: float = 2.0):
        if not beta > 0:
            raise bad_value("beta", beta, "a number > 0")
        self.beta = float(beta)

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        img = ctx.images
        dx = img[..., :-1, 1:] - img[..., :-1, :-1]
        dy = img[..., 1:, :-1] - img[..., :-1, :-1]
        squared = dx.square() + dy.square()
        if self.beta != 2:  # beta = 2 needs no power (and no epsilon against a zero base)
            squared = (squared + 1e-8) ** (self.beta / 2)
        return squared.flatten(1).mean(1)


class LpNorm(Loss):
    """(mean |x|^p)^(1/p) of the image mapped to [-1, 1]: keeps pixels off the extremes.

    Example:
        >>> LpNorm(p=6)
    """

    name = "LpNorm"

    def __init__(self, p: float = 6.0):
        if not p >= 1:
            raise bad_value("p", p, "a number >= 1")
        self.p = float(p)

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        centered = (ctx.images * 2 - 1).abs().flatten(1)
        return ((centered**self.p).mean(1) + 1e-12) ** (1 / self.p)
