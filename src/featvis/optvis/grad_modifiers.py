"""Gradient modifiers: transform d(loss)/d(input image) before the optimizer step.

Named as in keras-vis; any function ``f(grads) -> grads`` works too. The modifier
acts on the gradient that comes back through the model (the objective's); the
regularizers' own gradients are left alone, so ``'negate'`` lowers a regression
output while total variation still keeps the image smooth (keras-vis modified
both, which made ``'negate'`` maximize the regularizers as well).

Examples:
    >>> featvis.visualize_activation(model, "head", 0, grad_modifier="negate")  # decrease a regression output
    >>> featvis.visualize_activation(model, "head", 0, grad_modifier=lambda g: g * 2)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from featvis.registry import Registry

GradModifier = Callable[[torch.Tensor], torch.Tensor]

EPSILON = 1e-7


def negate(grads: torch.Tensor) -> torch.Tensor:
    """Flip the sign: minimizing the loss becomes maximizing it (e.g. decrease a regression output)."""
    return -grads


def absolute(grads: torch.Tensor) -> torch.Tensor:
    """Magnitude only: every pixel's gradient becomes non-negative."""
    return grads.abs()


def invert(grads: torch.Tensor) -> torch.Tensor:
    """1 / (grads + eps): small gradients become large and the reverse."""
    return 1.0 / (grads + EPSILON)


def relu(grads: torch.Tensor) -> torch.Tensor:
    """Keep positive gradients, zero the rest."""
    return grads.clamp(min=0)


def small_values(grads: torch.Tensor) -> torch.Tensor:
    """|1 / (grads + eps)|: highlights the pixels whose change affects the loss least."""
    return absolute(invert(grads))


GRAD_MODIFIERS: Registry[GradModifier] = Registry(
    "grad modifier",
    "grad_modifier",
    {"negate": negate, "absolute": absolute, "invert": invert, "relu": relu, "small_values": small_values},
)
"""The named grad modifiers; ``GRAD_MODIFIERS.register("name", f)`` adds one (and to the CLI's choices)."""


def get(modifier: str | GradModifier | None) -> GradModifier | None:
    """Resolve a name or callable to a grad modifier (None means none)."""
    return GRAD_MODIFIERS.resolve(modifier)
