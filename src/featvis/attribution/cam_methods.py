"""The CAM family: how a layer's activations become a class activation map.

Two kinds of method share one registry (`featvis.attention.CAM_METHODS`):

- a plain function ``(activations, gradients) -> map``, both (N, C, h, w), map (N, h, w):
  Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM, HiRes-CAM;
- a `ContextMethod`, called with a `CamContext` that can also score masked images or
  ablated activations with the model: Score-CAM, Ablation-CAM, and Eigen-CAM (which
  needs no gradient). Their model runs are batched (many masks per forward, in chunks
  of ``ctx.batch_size`` rows), without gradients, and stop at the score's layer.

Names follow pytorch-grad-cam, in lower case.

Examples:
    >>> cams = scorecam(ctx)                    # (N, h, w), not resized, not normalized
    >>> gradcam(activations, gradients).shape   # (N, h, w)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class CamContext:
    """What a `ContextMethod` sees.

    `activations` and `gradients` (None when the method asks for none) are the layer's
    (N, C, h, w) output and the score's gradient w.r.t. it, in float32; `images` the
    batch (N, C, H, W) as featvis holds it. ``score(index)`` scores rows that are copies of
    images ``index`` (a (R,) tensor of image indices, any number of rows per image): one
    score per row (the quantity the map explains, with each image's own units when the loss
    gives each image its own, as `UnitPerImage` does), without gradients;
    ``score(index, masks=masks)`` the same with the model input multiplied by `masks`
    (R, 1, H, W). ``score_ablated(index, scale, fill=None)`` runs image `index` with the layer's
    output multiplied channel-wise by each row of `scale` (K, C), the removed part replaced by
    `fill` (C,) when given, and returns K scores. Both run at most `batch_size` rows per forward.
    """

    activations: torch.Tensor
    gradients: torch.Tensor | None
    images: torch.Tensor
    score: Callable[..., torch.Tensor]
    score_ablated: Callable[..., torch.Tensor]
    batch_size: int


@dataclass(frozen=True)
class ContextMethod:
    """A CAM method that needs the model: ``function(ctx: CamContext) -> (N, h, w)``.

    Examples:
        >>> register_cam("mean", ContextMethod(lambda ctx: ctx.activations.mean(1), gradients=False))
    """

    function: Callable[[CamContext], torch.Tensor]
    gradients: bool = False

    def __call__(self, ctx: CamContext) -> torch.Tensor:
        return self.function(ctx)


def _space(activations: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes of (N, C, *spatial) maps: (2, 3) for images, (2,) for signals, (2, 3, 4) for volumes."""
    return tuple(range(2, activations.ndim))


def _per_channel(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N, C) weights shaped to multiply (N, C, *spatial) maps."""
    return weights.view(*weights.shape, *[1] * (like.ndim - 2))


def gradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al.): channels weighted by their mean gradient, summed, ReLU."""
    weights = gradients.mean(dim=_space(activations), keepdim=True)
    return F.relu((weights * activations).sum(1))


def gradcam_plus_plus(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al.): per-position weights alpha = g^2 / (2 g^2 + sum(A) g^3)
    = 1 / (2 + sum(A) g) (for g != 0; the same value, without g^3 underflowing), summed over the
    positions with g > 0.

    Where 2 + sum(A) g <= 0 alpha is 0: the formula assumes non-negative activations (a ReLU
    output, where the denominator is positive wherever g > 0); on signed layers (a batch-norm
    output with a negative sum) it would give negative or unbounded weights. pytorch-grad-cam
    adds 1e-6 to the denominator instead, which changes alpha wherever 2 g^2 is near 1e-6 or
    below (small gradients, early layers) and leaves the negative ones."""
    space = _space(activations)
    total = activations.sum(dim=space, keepdim=True)
    denominator = 2 + total * gradients
    positive = denominator > 0
    alphas = torch.where(positive, 1 / torch.where(positive, denominator, 1), 0)  # g <= 0: relu(g) is 0
    weights = (alphas * F.relu(gradients)).sum(dim=space, keepdim=True)
    return F.relu((weights * activations).sum(1))


def xgradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al. 2020): weights sum(gradient * activation) / sum(activation) per channel."""
    total = activations.sum(dim=_space(activations), keepdim=True)
    weights = (gradients * activations).sum(dim=_space(activations), keepdim=True) / (total + 1e-7)
    return F.relu((weights * activations).sum(1))


def layercam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Layer-CAM (Jiang et al. 2021): each position weighted by its own positive gradient."""
    return F.relu((F.relu(gradients) * activations).sum(1))


def hirescam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """HiRes-CAM (Draelos and Carin 2020): gradient times activation summed over channels, ReLU."""
    return F.relu((gradients * activations).sum(1))


def _unit_masks(activations: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Each channel upsampled to `size` (bilinear with aligned corners, as pytorch-grad-cam's
    Score-CAM: on a 3x3 map the two conventions weight different channels) and min-max scaled
    to [0, 1]: (N, C, H, W)."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    up = F.interpolate(activations, size=size, mode=mode, align_corners=True)
    flat = up.flatten(2)
    low, high = flat.min(2, keepdim=True).values, flat.max(2, keepdim=True).values
    return ((flat - low) / (high - low + 1e-8)).view_as(up)


def _scorecam(ctx: CamContext) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020): channels weighted by the softmax of the scores of the model
    input masked by each channel (upsampled, scaled to [0, 1]; as pytorch-grad-cam, the mask
    multiplies the input after `preprocess`); every mask of every image batched, each chunk's
    masks made when it runs (all of them at once would take N x C images' memory)."""
    acts, images = ctx.activations, ctx.images
    n, c = acts.shape[:2]
    scores = torch.empty(n * c, device=acts.device)
    rows_per_image = torch.arange(n * c, device=acts.device) // c
    for start in range(0, n * c, ctx.batch_size):
        rows = slice(start, min(start + ctx.batch_size, n * c))
        index = rows_per_image[rows]
        channel = torch.arange(rows.start, rows.stop, device=acts.device) % c
        masks = _unit_masks(acts[index, channel][:, None], tuple(images.shape[2:])).to(images.dtype)
        index = index.to(images.device)
        scores[rows] = ctx.score(index, masks=masks.to(images.device)).float().to(acts.device)
    weights = torch.softmax(scores.view(n, c), dim=1)
    return F.relu((_per_channel(weights, acts) * acts).sum(1))


def _ablationcam(ctx: CamContext) -> torch.Tensor:
    """Ablation-CAM (Desai and Ramaswamy 2020): channel k weighted by the score's relative drop,
    (y - y_k) / y, when channel k of the layer is switched off: set to its lowest level, 0 for a
    channel that never goes below 0 in the image (a ReLU output: the paper's zeroing) and its
    minimum over the image otherwise (a batch-norm output, where 0 is the channel's average level,
    not its absence). The rest of the network runs once per chunk of channels, from the layer's
    output on; each image's unablated score y comes from the same runs (one more row)."""
    acts = ctx.activations
    n, c = acts.shape[:2]
    weights = torch.empty(n, c, device=acts.device)
    scales = torch.cat([torch.ones(1, c, device=acts.device), 1 - torch.eye(c, device=acts.device)])
    lowest = acts.amin(dim=_space(acts)).clamp(max=0)  # (N, C): each channel's "off" level
    for i in range(n):
        scores = ctx.score_ablated(i, scales, lowest[i]).float().to(acts.device)
        base, ablated = scores[0], scores[1:]
        weights[i] = (base - ablated) / torch.where(base != 0, base, torch.ones_like(base))
    return F.relu((_per_channel(weights, acts) * acts).sum(1))


def _first_component(centered: torch.Tensor) -> torch.Tensor:
    """Each (P, C) matrix of `centered` (N, P, C) projected on its first right singular vector:
    (N, P), sign arbitrary. The eigenvector of the top eigenvalue of the smaller Gram matrix
    (C x C, or P x P: then u * sigma), in float64: the same component as an SVD at a fraction
    of its cost (a 40 x 40 eigenproblem instead of the SVD of a 784 x 40 matrix)."""
    x = centered.double()
    if x.shape[1] < x.shape[2]:
        values, vectors = torch.linalg.eigh(x @ x.transpose(1, 2))
        return (vectors[..., -1] * values[..., -1:].clamp(min=0).sqrt()).to(centered.dtype)
    _, vectors = torch.linalg.eigh(x.transpose(1, 2) @ x)
    return (x @ vectors[..., -1:])[..., 0].to(centered.dtype)


def _eigencam(ctx: CamContext) -> torch.Tensor:
    """Eigen-CAM (Muhammad and Yeasin 2020): the activations projected on their first principal
    component (class-agnostic, no gradient), the positions as samples and the channels as
    features, centered per channel, as pytorch-grad-cam does. The component's sign is chosen so
    the map grows with the activations' norm at each position (pytorch-grad-cam keeps the sign
    its SVD returns, which inverts the map on some images)."""
    acts = ctx.activations
    n = acts.shape[0]
    flat = acts.flatten(2).transpose(1, 2)  # (N, hw, C)
    centered = flat - flat.mean(1, keepdim=True)
    projection = _first_component(centered)  # (N, hw)
    energy = flat.norm(dim=2)
    energy = energy - energy.mean(1, keepdim=True)
    sign = torch.sign(((projection - projection.mean(1, keepdim=True)) * energy).sum(1, keepdim=True))
    projection = projection * torch.where(sign == 0, torch.ones_like(sign), sign)
    return F.relu(projection).view(n, *acts.shape[2:])


scorecam = ContextMethod(_scorecam)
ablationcam = ContextMethod(_ablationcam)
eigencam = ContextMethod(_eigencam)
