"""Heat maps over images: `overlay` blends a [0, 1] map, resized to the image, in a matplotlib colormap.

Examples:
    >>> featvis.save_image(overlay("cat.jpg", cam[0], colormap="jet", alpha=0.5), "cam.png")
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from featvis.errors import bad_value
from featvis.image import to_unit_tensor


def overlay(image, heatmap: np.ndarray, colormap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] heat map (resized to the image) over an image; returns (H, W, 3) uint8.

    Examples:
        >>> featvis.save_image(overlay(cat, cam[0]), "cat_cam.png")
    """
    from matplotlib import colormaps

    if colormap not in colormaps:
        raise bad_value("colormap", colormap, "a matplotlib colormap name such as 'jet' or 'viridis'")
    if not 0 <= alpha <= 1:
        raise bad_value("alpha", alpha, "a number in [0, 1]")
    base = to_unit_tensor(image, "image", (0, 255) if not _is_unit_float(image) else (0.0, 1.0))
    if base.shape[0] != 1:
        raise bad_value("image", f"a batch of {base.shape[0]}", "one image")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2 or not np.isfinite(heat).all():
        raise bad_value("heatmap", f"an array of shape {heat.shape}", "a finite (H, W) map")
    heat_t = torch.from_numpy(heat)[None, None]
    heat_t = F.interpolate(heat_t, size=base.shape[-2:], mode="bilinear", align_corners=False)[0, 0].clamp(
        0, 1
    )
    colored = colormaps[colormap](heat_t.numpy())[..., :3]
    rgb = base[0].expand(3, -1, -1).permute(1, 2, 0).numpy()
    return np.rint(255 * ((1 - alpha) * rgb + alpha * colored)).clip(0, 255).astype(np.uint8)


def _is_unit_float(image) -> bool:
    return (
        isinstance(image, np.ndarray | torch.Tensor)
        and not _is_int_dtype(image)
        and float(image.max()) <= 1.0
    )


def _is_int_dtype(image) -> bool:
    if isinstance(image, np.ndarray):
        return np.issubdtype(image.dtype, np.integer)
    return not image.is_floating_point()
