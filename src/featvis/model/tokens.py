"""Token outputs of transformers as maps: patch tokens back on their grid.

A vision transformer's block outputs (N, tokens, features): a few leading tokens
(the class token, distillation or register tokens) and then one token per image
patch, row by row. `token_grid` finds the (rows, columns) of the patches from the
token count and the input size (or checks one that is given), and `to_grid`
turns a token output into an (N, features, rows, columns) map, dropping the
leading tokens, so Grad-CAM and the other maps work on it as on a conv layer.

Examples:
    >>> token_grid(197, (224, 224))          # ViT-B/16: one class token, 14 x 14 patches
    ((14, 14), 1)
    >>> to_grid(torch.zeros(2, 197, 768), axis=-1, grid=(14, 14), extra=1).shape
    torch.Size([2, 768, 14, 14])
"""

from __future__ import annotations

from collections.abc import Sequence
import math
import numbers

import torch

from featvis.errors import bad_type, bad_value

MAX_EXTRA_TOKENS = 8  # class, distillation and register tokens in front of the patches


def check_token_grid(token_grid: object) -> tuple[int, int] | None:
    """None (inferred) or (rows, columns) of ints >= 1."""
    if token_grid is None:
        return None
    if (
        isinstance(token_grid, str)
        or not isinstance(token_grid, Sequence)
        or len(token_grid) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in token_grid)
    ):
        raise bad_type("token_grid", token_grid, "(rows, columns) of ints, or None to infer it")
    if min(token_grid) < 1:
        raise bad_value("token_grid", token_grid, "(rows, columns) of ints >= 1")
    return int(token_grid[0]), int(token_grid[1])


def token_grid(
    tokens: int, image_size: Sequence[int], given: tuple[int, int] | None = None, layer: object = None
) -> tuple[tuple[int, int], int]:
    """((rows, columns), leading tokens to drop) of a token output with `tokens` tokens.

    Inferred: the fewest leading tokens (at most `MAX_EXTRA_TOKENS`) such that the rest
    make a grid with the aspect ratio of `image_size` (H, W). Given: checked to fit.

    Examples:
        >>> token_grid(50, (32, 32))     # 1 class token + 7 x 7 patches
        ((7, 7), 1)
        >>> token_grid(5, (32, 32), (2, 2))
        ((2, 2), 1)
    """
    label = "" if layer is None else f" of layer {layer!r}"
    if given is not None:
        rows, cols = given
        extra = tokens - rows * cols
        if not 0 <= extra <= MAX_EXTRA_TOKENS:
            raise bad_value(
                "token_grid",
                given,
                f"(rows, columns) with rows * columns = the {tokens} tokens{label} less its "
                f"0..{MAX_EXTRA_TOKENS} class/register tokens (rows * columns in "
                f"[{max(1, tokens - MAX_EXTRA_TOKENS)}, {tokens}])",
            )
        return (rows, cols), extra
    h, w = image_size
    for extra in range(0, min(MAX_EXTRA_TOKENS, tokens - 1) + 1):
        patches = tokens - extra
        rows = round(math.sqrt(patches * h / w))
        for r in (rows - 1, rows, rows + 1):
            if r >= 1 and patches % r == 0 and abs((patches // r) / r - w / h) <= 0.05 * w / h:
                return (r, patches // r), extra
    raise bad_value(
        "token_grid",
        None,
        f"(rows, columns): the {tokens} tokens{label} make no grid with the input's aspect ratio "
        f"{h}x{w} after dropping up to {MAX_EXTRA_TOKENS} leading tokens; give token_grid=(rows, columns)",
    )


def to_grid(output: torch.Tensor, axis: int, grid: tuple[int, int], extra: int) -> torch.Tensor:
    """(N, tokens, features) (units on `axis`) -> (N, features, rows, columns), leading tokens dropped.

    Examples:
        >>> to_grid(torch.zeros(1, 50, 64), axis=-1, grid=(7, 7), extra=1).shape
        torch.Size([1, 64, 7, 7])
    """
    features_first = output.movedim(axis, 1)
    patches = features_first[:, :, extra:]
    return patches.reshape(patches.shape[0], patches.shape[1], *grid)
