"""The CAM family: how a layer's activations become a class activation map.

Each method is a `CamMethod` object (see `featvis.attribution.cam`) that says what it needs:
Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM and HiRes-CAM weigh the activations by the score's
gradient (their formulas are the plain functions ``(activations, gradients) -> map`` below);
Score-CAM and Ablation-CAM score masked images or ablated activations with the model (batched,
many masks per forward in chunks of ``ctx.batch_size`` rows, without gradients, stopped at the
score's layer); Eigen-CAM needs no gradient. `CAM_METHODS` names them (as pytorch-grad-cam does,
in lower case) for ``visualize_cam(..., method="name")`` and ``featvis cam --method``;
`register_cam` adds one: a `CamMethod` class or object, or a plain function
``(activations, gradients) -> map`` as tf-keras-vis takes.

Examples:
    >>> cams = ScoreCam(batch_size=32).attribute(prepared, loss, images)  # (N, H, W), not normalized
    >>> gradcam(activations, gradients).shape                            # (N, h, w)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featvis.attribution.cam import CamContext, CamMethod
from featvis.errors import bad_type, check_int
from featvis.model import fusion
from featvis.registry import Registry


@dataclass(frozen=True)
class ContextMethod(CamMethod):
    """A CAM method made of a function of the `CamContext`: ``function(ctx) -> (N, h, w)``, with the
    score's gradient in ``ctx.gradients`` when ``gradients=True``.

    Examples:
        >>> register_cam("mean", ContextMethod(lambda ctx: ctx.activations.mean(1), gradients=False))
    """

    function: Callable[[CamContext], torch.Tensor]
    gradients: bool = False

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"gradients"}) if self.gradients else frozenset()

    def map(self, ctx: CamContext) -> torch.Tensor:
        return self.function(ctx)


@dataclass(frozen=True)
class FunctionCam(CamMethod):
    """A CAM method made of a plain function ``(activations, gradients) -> map``, both (N, C, h, w),
    map (N, h, w): what a plain function registered or passed as ``method=`` becomes.

    Examples:
        >>> featvis.visualize_cam(model, "fc", 3, image, method=FunctionCam(lambda a, g: (a * g).sum(1).relu()))
    """

    function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def map(self, ctx: CamContext) -> torch.Tensor:
        return self.function(ctx.activations, ctx.gradients)


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


class GradCam(CamMethod):
    """Grad-CAM (`gradcam`).

    Examples:
        >>> featvis.visualize_cam(model, "fc", 3, image, method=GradCam())  # or method="gradcam"
    """

    name = "gradcam"

    def map(self, ctx: CamContext) -> torch.Tensor:
        return gradcam(ctx.activations, ctx.gradients)


class GradCamPlusPlus(CamMethod):
    """Grad-CAM++ (`gradcam_plus_plus`).

    Examples:
        >>> featvis.visualize_cam(model, "fc", 3, image, method=GradCamPlusPlus())  # or method="gradcam++"
    """

    name = "gradcam++"

    def map(self, ctx: CamContext) -> torch.Tensor:
        return gradcam_plus_plus(ctx.activations, ctx.gradients)


class XGradCam(CamMethod):
    """XGrad-CAM (`xgradcam`).

    Examples:
        >>> featvis.visualize_cam(model, "fc", 3, image, method=XGradCam())  # or method="xgradcam"
    """

    name = "xgradcam"

    def map(self, ctx: CamContext) -> torch.Tensor:
        return xgradcam(ctx.activations, ctx.gradients)


class LayerCam(CamMethod):
    """Layer-CAM (`layercam`).

    Examples:
        >>> featvis.visualize_cam(model, "fc", 3, image, method=LayerCam())  # or method="layercam"
    """

    name = "layercam"

    def map(self, ctx: CamContext) -> torch.Tensor:
        return layercam(ctx.activations, ctx.gradients)


class HiResCam(CamMethod):
    """HiRes-CAM (`hirescam`).

    Examples:
        >>> featvis.visualize_cam(model, "fc", 3, image, method=HiResCam())  # or method="hirescam"
    """

    name = "hirescam"

    def map(self, ctx: CamContext) -> torch.Tensor:
        return hirescam(ctx.activations, ctx.gradients)


class ScoreCam(CamMethod):
    """Score-CAM (`_scorecam`): no gradient; `batch_size` masked images per forward (None: on the CPU
    as many as hold 16 images of 112 px, `fusion.chunk_rows`, its fastest there; elsewhere 64).

    Examples:
        >>> featvis.visualize_cam(model, "fc", 3, images, method=ScoreCam(batch_size=32))
    """

    name = "scorecam"
    needs = frozenset()

    def __init__(self, batch_size: int | None = None):
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size, 1)

    def rows_per_forward(self, images: torch.Tensor) -> int:
        return self.batch_size if self.batch_size is not None else fusion.chunk_rows(images, 64)

    def map(self, ctx: CamContext) -> torch.Tensor:
        return _scorecam(ctx)


class AblationCam(CamMethod):
    """Ablation-CAM (`_ablationcam`): no gradient; the layer's own (N, C, *spatial) output, ablated
    channel by channel, `batch_size` ablations per forward (None: 64).

    Examples:
        >>> featvis.visualize_cam(model, "fc", 3, images, method=AblationCam(batch_size=16))
    """

    name = "ablationcam"
    needs = frozenset({"channels"})

    def __init__(self, batch_size: int | None = None):
        self.batch_size = None if batch_size is None else check_int("batch_size", batch_size, 1)

    def rows_per_forward(self, images: torch.Tensor) -> int:
        return self.batch_size if self.batch_size is not None else 64

    def map(self, ctx: CamContext) -> torch.Tensor:
        return _ablationcam(ctx)


class EigenCam(CamMethod):
    """Eigen-CAM (`_eigencam`): class-agnostic, no gradient.

    Examples:
        >>> featvis.visualize_cam(model, "fc", 3, image, method=EigenCam())  # or method="eigencam"
    """

    name = "eigencam"
    needs = frozenset()

    def map(self, ctx: CamContext) -> torch.Tensor:
        return _eigencam(ctx)


scorecam = ScoreCam()
ablationcam = AblationCam()
eigencam = EigenCam()


def _check_cam_method(method: object) -> object:
    if not callable(method):
        raise bad_type(
            "method", method, "a CamMethod class or object, or a function (activations, gradients) -> map"
        )
    return method


CAM_METHODS: Registry[object] = Registry(
    "CAM method",
    "method",
    {
        "gradcam": GradCam,
        "gradcam++": GradCamPlusPlus,
        "xgradcam": XGradCam,
        "layercam": LayerCam,
        "hirescam": HiResCam,
        "scorecam": ScoreCam,
        "ablationcam": AblationCam,
        "eigencam": EigenCam,
    },
    convert=_check_cam_method,
)
"""The CAM methods by name: `CamMethod` classes (built without options), `CamMethod` objects, or
plain functions ``(activations, gradients) -> map``; `register_cam` adds one."""


def register_cam(name: str, method: object = None, *, replace: bool = False) -> object:
    """Add a CAM method under `name`, for ``visualize_cam(..., method=name)`` and ``featvis cam
    --method name``: a `CamMethod` subclass or object, a `ContextMethod`, or a plain function
    ``(activations, gradients) -> map``, both (N, C, H, W), map (N, H, W). Without `method`, a
    decorator. A name registered already is an error unless ``replace=True``.

    Examples:
        >>> register_cam("gradxact", lambda a, g: F.relu((a * g).sum(1)))
        >>> featvis.visualize_cam(model, "fc", 3, image, method="gradxact")
        >>> @register_cam("energy")
        ... class Energy(CamMethod):
        ...     def map(self, ctx):
        ...         return (ctx.activations * ctx.gradients.square()).sum(1)
    """
    return CAM_METHODS.register(name, method, replace=replace)


def as_cam_method(method: object) -> CamMethod:
    """The `CamMethod` object `method` stands for: a registered name, a `CamMethod` class (built
    without options) or object, or a plain function ``(activations, gradients) -> map``.

    Examples:
        >>> as_cam_method("scorecam")
        <featvis.attribution.cam_methods.ScoreCam object at ...>
    """
    entry = CAM_METHODS[method] if isinstance(method, str) else method
    if isinstance(entry, type) and issubclass(entry, CamMethod):
        return entry()
    if isinstance(entry, CamMethod):
        return entry
    if callable(entry):
        return FunctionCam(entry)
    raise bad_type("method", method, f"one of {', '.join(CAM_METHODS)}, a CamMethod or a function")
