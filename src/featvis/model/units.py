"""Units and their axes: which axis of a layer's output holds its units (features, channels), which
token or position to read, and the units a loss selects. Used by the prepared model, the losses and
the dataset pass alike.

Examples:
    >>> select_units(torch.zeros(2, 17, 96), [5], "blocks.1.mlp.0", axis=-1).shape
    torch.Size([2, 1, 17])
"""

from __future__ import annotations

from collections.abc import Sequence
import numbers

import torch

from featvis.errors import bad_type, bad_value
from featvis.model.targets import LayerSpec, Target


def layer_key(layer: LayerSpec) -> object:
    """A hashable key for a layer spec (modules hash by identity)."""
    return layer if isinstance(layer, str | int) else id(layer)


def select_units(
    act: torch.Tensor, indices: list[int] | None, layer: object, axis: int, token: int | None = None
) -> torch.Tensor:
    """Select units along `axis` (all with ``indices=None``; one position of the rest with `token`);
    returns (rows, k, ...).

    Examples:
        >>> select_units(torch.zeros(2, 17, 96), [5], "blocks.1.mlp.0", axis=-1).shape
        torch.Size([2, 1, 17])
    """
    if act.ndim == 1:
        if indices is not None:
            raise bad_value("filter_indices", indices, f"None, since layer {layer!r} has one value per image")
        return act[:, None]
    act = act.movedim(axis, 1)
    if token is not None:
        if act.ndim == 2:
            raise bad_value(
                "token", token, f"None: layer {layer!r} has one value per unit (no tokens or positions)"
            )
        positions = act.flatten(2)
        if not -positions.shape[2] <= token < positions.shape[2]:
            raise bad_value(
                "token",
                token,
                f"a token (position) index in [0, {positions.shape[2] - 1}] of layer {layer!r}",
            )
        act = positions[:, :, token]
    if indices is None:
        return act
    units = act.shape[1]
    if max(indices) >= units:
        raise bad_value(
            "filter_indices",
            indices,
            f"indices in [0, {units - 1}] for layer {layer!r} (units on axis {axis})",
        )
    return act[:, indices]


def check_unit_axis(unit_axis: object, argument: str = "unit_axis") -> int | None:
    """None (the layer's own unit axis) or an int axis other than 0 (the batch)."""
    if unit_axis is None:
        return None
    if isinstance(unit_axis, bool) or not isinstance(unit_axis, numbers.Integral):
        raise bad_type(argument, unit_axis, "an int axis of the layer's output (1, -1, ...) or None")
    if unit_axis == 0:
        raise bad_value(argument, unit_axis, "an axis other than 0 (the batch): 1, -1, ... or None")
    return int(unit_axis)


def check_token(token: object) -> int | None:
    """None (average over tokens/positions) or an int position index."""
    if token is None:
        return None
    if isinstance(token, bool) or not isinstance(token, numbers.Integral):
        raise bad_type("token", token, "an int token index (0: the class token) or None")
    return int(token)


def resolve_axis(act: torch.Tensor, given: int | None, target: Target | None, layer: object) -> int:
    """The unit axis for `act`: the given one (checked against its rank) or the layer's default."""
    if given is None:
        return target.unit_axis if target is not None and act.ndim > 1 else 1
    if not (-act.ndim < given < act.ndim) or given == 0 or given == -act.ndim:
        allowed = f"an axis in 1..{act.ndim - 1} or -1..-{act.ndim - 1}"
        raise bad_value(
            "unit_axis",
            given,
            f"{allowed} of layer {layer!r}, whose output has shape {tuple(act.shape)} (axis 0 is the batch)",
        )
    return given


def describe_axis(shape: Sequence[int], axis: int) -> str:
    """'axis -1 (64 units) of (N, 65, 64)': a short phrase for verbose output."""
    if len(shape) <= 1:
        return "one value per image"
    dims = ", ".join(["N", *map(str, shape[1:])])
    return f"axis {axis} ({shape[axis]} units) of ({dims})"
