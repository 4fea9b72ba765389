"""Regularizers: losses on the image itself that keep it natural-looking.

Both work on the image in [0, 1] before any transform and are normalized per
pixel, so their weights do not depend on the image size.

Examples:
    >>> loss = ActivationMaximization("_fc", 130) + 0.5 * TotalVariation() + 0.1 * LpNorm(6)
"""

from __future__ import annotations

import torch

from featvis.errors import bad_value
from featvis.optvis.losses import Loss, LossContext


class TotalVariation(Loss):
    """Mean over pixels of (dx^2 + dy^2)^(beta/2): penalizes high-frequency noise (signals and volumes:
    the differences along each of their axes, see `total_variation_nd`).

    Examples:
        >>> TotalVariation(beta=2)
    """

    name = "TotalVariation"

    def __init__(self, beta: float = 2.0):
        if not beta > 0:
            raise bad_value("beta", beta, "a number > 0")
        self.beta = float(beta)

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        if ctx.images.ndim != 4:
            return total_variation_nd(ctx.images, self.beta)
        return _TotalVariation.apply(ctx.images, self.beta)


def total_variation_nd(images: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Per-image TV of signals (N, C, L) or volumes (N, C, D, H, W): the mean over positions of the
    squared differences to the next sample along each spatial axis, summed, to the power beta/2.

    Examples:
        >>> total_variation_nd(torch.rand(2, 1, 128)).shape
        torch.Size([2])
    """
    dims = images.ndim - 2
    inner = tuple(slice(0, -1) for _ in range(dims))
    squared = 0
    for axis in range(dims):
        ahead = tuple(slice(1, None) if a == axis else slice(0, -1) for a in range(dims))
        diff = images[(..., *ahead)] - images[(..., *inner)]
        squared = squared + diff * diff
    powered = squared if beta == 2 else (squared + 1e-8) ** (beta / 2)
    return powered.flatten(1).mean(1)


class _TotalVariation(torch.autograd.Function):
    """Per-image TV with a hand-written backward: a few passes over the image where autograd
    through the four slices would make about forty (it matters on GPUs, where they are the cost)."""

    @staticmethod
    def forward(ctx, images: torch.Tensor, beta: float) -> torch.Tensor:
        dx = images[..., :-1, 1:] - images[..., :-1, :-1]
        dy = images[..., 1:, :-1] - images[..., :-1, :-1]
        squared = dx * dx + dy * dy
        # beta = 2 needs no power (and no epsilon against a zero base)
        powered = squared if beta == 2 else (squared + 1e-8) ** (beta / 2)
        ctx.save_for_backward(dx, dy, None if beta == 2 else squared)
        ctx.beta, ctx.shape = beta, images.shape
        return powered.flatten(1).mean(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        dx, dy, squared = ctx.saved_tensors
        per_pixel = grad.view(-1, *[1] * (dx.ndim - 1)) / dx[0].numel()
        if squared is None:
            weight = 2 * per_pixel
        else:
            weight = ctx.beta * per_pixel * (squared + 1e-8) ** (ctx.beta / 2 - 1)
        gx, gy = weight * dx, weight * dy
        result = gx.new_zeros(ctx.shape)
        result[..., :-1, 1:] += gx
        result[..., 1:, :-1] += gy
        result[..., :-1, :-1] -= gx + gy
        return result, None


class LpNorm(Loss):
    """(mean |x|^p)^(1/p) of the image mapped to [-1, 1]: keeps pixels off the extremes.

    Examples:
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
