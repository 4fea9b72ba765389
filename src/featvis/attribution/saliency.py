"""Saliency: which pixels the score rests on, pixel by pixel. Each method is an object built with
its own options (as Captum's ``IntegratedGradients`` and ``Occlusion`` are) whose `attribute` gives
the maps of a prepared model, a loss and images; `SALIENCY_METHODS` names them for
``visualize_saliency(..., method="name")`` and the CLI's ``featvis saliency --method``.

Vanilla gradients (guided or rectified with a backprop modifier), SmoothGrad, Integrated Gradients
(Sundararajan et al. 2017) and occlusion (Zeiler and Fergus 2014).

Examples:
    >>> maps = featvis.visualize_saliency(model, "fc", 3, image, method=IntegratedGradients(steps=128))
    >>> with featvis.PreparedModel(model, input_range=(0, 1)) as prepared:
    ...     drops = Occlusion(window=8, stride=4).attribute(prepared, loss, images)  # (B, C, H, W)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from featvis.attribution.scoring import (
    check_percentile,
    gradients,
    load_baseline,
    loss_terms,
    normalize,
    path_gradients,
    scorer,
    smoothed,
)
from featvis.errors import bad_type, bad_value, check_int, check_number, close_matches, known_keywords
from featvis.model import fusion
from featvis.model.prepared import PreparedModel, preparing
from featvis.model.targets import LayerSpec, OutputPick
from featvis.optvis import backprop_modifiers, grad_modifiers
from featvis.optvis.losses import ActivationMaximization, Loss, as_losses
from featvis.registry import Registry
from featvis.rng import seed_or_fresh

# Integrated Gradients' rules for the path integral, by Captum's names: Gauss-Legendre (the default,
# Captum's too) and the midpoint Riemann sum (featvis's rule before it; Captum's method="riemann_middle").
QUADRATURES = ("gausslegendre", "riemann_middle")


# Vanilla saliency runs the fused copy (batch norms folded, channels-last) when its passes hold
# at least this many pixels (images x height x width x noisy copies x views): building and
# checking the copy costs a few one-image forwards per call. Measured on the CPU (Lite0, one
# thread, forward and backward of 16 images, median of 3-8 calls): at 224 px the fused copy took
# 0.71 s of CPU with its building, the model as it is 1.0 s; at 112 px the fused copy 0.22 s,
# the model as it is 0.20-0.23 s (channels-last input, with its check, 0.27 s).
FUSED_VANILLA_PIXELS = 8 * 224 * 224


class SaliencyMethod:
    """A saliency method: built with its options, `attribute` gives the (B, C, H, W) maps of a
    prepared model, a loss and images (in featvis's units) before any grad modifier and scaling.

    Subclasses set `sums_channels` (True: the values are attributions, a pixel's share is the sum
    over its channels, as Integrated Gradients' and occlusion's; False: gradients, of which the map
    keeps the max over channels) and `source` (what the map is made of, said when a map is
    constant). `attribute`'s `passes` is how many calls like this one the caller makes (SmoothGrad's
    noisy copies, the views of ``aug_smooth``): a method may spend more on what it builds once.

    Examples:
        >>> @featvis.attention.SALIENCY_METHODS.register("gradient_x_input")
        ... class GradientTimesInput(SaliencyMethod):
        ...     sums_channels = True
        ...     def attribute(self, prepared, loss, images, *, passes=1):
        ...         return Gradients().attribute(prepared, loss, images, passes=passes) * images
        >>> featvis.visualize_saliency(model, "fc", 3, image, method="gradient_x_input")
    """

    sums_channels: bool = False
    source: str = "the attribution of the target to the input"

    def attribute(
        self, prepared: PreparedModel, loss: Loss, images: torch.Tensor, *, passes: int = 1
    ) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define attribute()")

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"


class Gradients(SaliencyMethod):
    """Vanilla saliency (Simonyan et al. 2014): the score's gradient w.r.t. the model input, through
    every activation as it is or as `backprop_modifier` says (``"guided"``: guided backprop).

    Without a backprop modifier it runs the fused copy when the calls hold at least
    `FUSED_VANILLA_PIXELS` pixels in all.

    Examples:
        >>> featvis.visualize_saliency(model, "fc", 3, image, method=Gradients(backprop_modifier="guided"))
    """

    source = "the gradient of the target with respect to the input"

    def __init__(self, backprop_modifier: str | Callable | None = None):
        backprop_modifiers.get(backprop_modifier)
        self.backprop_modifier = backprop_modifier

    def attribute(
        self, prepared: PreparedModel, loss: Loss, images: torch.Tensor, *, passes: int = 1
    ) -> torch.Tensor:
        if self.backprop_modifier is not None:
            return gradients(
                prepared, loss, images, backprop_modifier=self.backprop_modifier, model_space=True
            )
        fused = passes * images[:, 0].numel() >= FUSED_VANILLA_PIXELS  # plain gradients: fused if it pays
        prepared.probe(images)  # before resolving the loss's layers
        terms, targets = loss_terms(prepared, loss)
        return path_gradients(prepared, terms, targets, images, None, images, model_space=True, fused=fused)


class SmoothGrad(SaliencyMethod):
    """SmoothGrad (Smilkov et al. 2017): `method`'s values (vanilla gradients by default) averaged over
    `samples` copies of the images with Gaussian noise of std `noise` times each image's range;
    image i's noise from the stream of (`seed`, i), None a fresh seed for this object. The values
    are averaged as they are (a grad modifier acts on the average, as in Captum's NoiseTunnel);
    ``visualize_saliency(..., smooth_samples=n)`` instead averages the modified maps of any method.

    Examples:
        >>> featvis.visualize_saliency(model, "fc", 3, image, method=SmoothGrad(samples=50, noise=0.1))
    """

    def __init__(
        self,
        method: SaliencyMethod | None = None,
        *,
        samples: int = 20,
        noise: float = 0.15,
        seed: int | None = 0,
    ):
        if method is not None and not isinstance(method, SaliencyMethod):
            raise bad_type("method", method, "a SaliencyMethod object such as Gradients(), or None")
        self.method = Gradients() if method is None else method
        self.samples = check_int("samples", samples, 1)
        self.noise = check_number("noise", noise, minimum=0)
        self.seed = seed_or_fresh(seed)

    @property
    def sums_channels(self) -> bool:
        return self.method.sums_channels

    @property
    def source(self) -> str:
        return self.method.source

    def attribute(
        self, prepared: PreparedModel, loss: Loss, images: torch.Tensor, *, passes: int = 1
    ) -> torch.Tensor:
        return smoothed(
            lambda x: self.method.attribute(prepared, loss, x, passes=passes * self.samples),
            images,
            smooth_samples=self.samples,
            smooth_noise=self.noise,
            aug_smooth=False,
            seed=self.seed,
            label="smoothgrad",
        )


class IntegratedGradients(SaliencyMethod):
    """Integrated Gradients (Sundararajan et al. 2017): (input - baseline) times the integral of the
    score's gradient along the straight path from `baseline`, a weighted sum over `steps` points
    by the rule `quadrature`, `batch_size` points per forward and backward; see
    `integrated_gradients` for each option.

    Examples:
        >>> featvis.visualize_saliency(model, "fc", 3, image, method=IntegratedGradients(steps=128, baseline=0.5))
    """

    sums_channels = True
    source = "the gradient of the target along the path from the baseline (Integrated Gradients)"

    def __init__(
        self,
        steps: int = 64,
        quadrature: str = "gausslegendre",
        baseline: object = None,
        batch_size: int | None = None,
    ):
        self.steps = check_int("steps", steps, 1)
        _check_quadrature(quadrature)
        if batch_size is not None:
            check_int("batch_size", batch_size, 1)
        self.quadrature, self.baseline, self.batch_size = quadrature, baseline, batch_size

    def attribute(
        self, prepared: PreparedModel, loss: Loss, images: torch.Tensor, *, passes: int = 1
    ) -> torch.Tensor:
        base = load_baseline(self.baseline, images, prepared)
        return _integrated_gradients(
            prepared, loss, images, base, self.steps, self.batch_size, self.quadrature
        )


class Occlusion(SaliencyMethod):
    """Occlusion (Zeiler and Fergus 2014, Captum's `Occlusion`): the score's drop when a `window` x
    `window` square is replaced by `baseline`, averaged over the windows (every `stride` pixels)
    covering each pixel, the same in every channel; `batch_size` rows per forward (see `occlusion`).

    Examples:
        >>> featvis.visualize_saliency(model, "fc", 3, image, method=Occlusion(window=8, stride=4))
    """

    sums_channels = True
    source = "the target's change when any part of the image is occluded"

    def __init__(
        self, window: int = 16, stride: int = 8, baseline: object = None, batch_size: int | None = None
    ):
        self.window = check_int("window", window, 1)
        self.stride = check_int("stride", stride, 1)
        if batch_size is not None:
            check_int("batch_size", batch_size, 1)
        self.baseline, self.batch_size = baseline, batch_size

    def drops(self, prepared: PreparedModel, loss: Loss, images: torch.Tensor) -> torch.Tensor:
        """The (B, H, W) averaged drops."""
        base = load_baseline(self.baseline, images, prepared)
        return _occlusion(prepared, loss, images, base, self.window, self.stride, self.batch_size)

    def attribute(
        self, prepared: PreparedModel, loss: Loss, images: torch.Tensor, *, passes: int = 1
    ) -> torch.Tensor:
        return self.drops(prepared, loss, images)[:, None].expand_as(images)


def _check_method_class(factory: object) -> type[SaliencyMethod]:
    if not (isinstance(factory, type) and issubclass(factory, SaliencyMethod)):
        raise bad_type("factory", factory, "a SaliencyMethod subclass")
    return factory


SALIENCY_METHODS: Registry[type[SaliencyMethod]] = Registry(
    "saliency method",
    "method",
    {
        "vanilla": Gradients,
        "smoothgrad": SmoothGrad,
        "integrated_gradients": IntegratedGradients,
        "occlusion": Occlusion,
    },
    convert=_check_method_class,
)
"""The saliency methods by name: classes, built with the options of `visualize_saliency` their
signature takes; ``SALIENCY_METHODS.register("name", cls)`` (or as a class decorator) adds one,
to ``method=`` and the CLI's ``featvis saliency --method``."""


def _saliency_method(method: str | SaliencyMethod, options: dict) -> SaliencyMethod:
    """The method object `method` names, built with the `options` its class takes (the others are
    for other methods); a backprop modifier given to a method that does not take one is an error."""
    modifier = options["backprop_modifier"]
    if isinstance(method, SaliencyMethod):
        if modifier is not None:
            raise bad_value(
                "backprop_modifier", modifier, "None with a method object (give it to the object)"
            )
        return method
    if not isinstance(method, str):
        raise bad_type("method", method, f"one of {', '.join(SALIENCY_METHODS)} or a SaliencyMethod object")
    taken = SALIENCY_METHODS.options(method)
    if modifier is not None and "backprop_modifier" not in taken:
        raise bad_value("backprop_modifier", modifier, f"None with method={method!r}")
    return SALIENCY_METHODS.create(method, {k: v for k, v in options.items() if k in taken})


@known_keywords
def input_gradients(
    model: nn.Module | PreparedModel,
    losses,
    seed_input,
    *,
    backprop_modifier: str | Callable | None = None,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> torch.Tensor:
    """d(-loss)/d(image) for each image, in the units of `input_range`, as (B, C, H, W), unnormalized.

    `backprop_modifier` (``"guided"``, ``"rectified"`` or a function) changes how the gradient
    passes the activations. The model's conventions, `input_range` to
    `output`, are `featvis.prepared.PreparedModel`'s; a model prepared already keeps its own.

    Examples:
        >>> grads = input_gradients(net, ActivationMaximization("fc", 3), image, backprop_modifier="guided")
    """
    loss = as_losses(losses)
    conventions = dict(
        input_range=input_range,
        preprocess=preprocess,
        channels=channels,
        device=device,
        fuse=fuse,
        channels_last=channels_last,
        inputs=inputs,
        output=output,
    )
    with preparing(model, **conventions) as prepared:
        images = prepared.load_images(seed_input)
        low, high = prepared.input_range if prepared.input_range is not None else (0.0, 1.0)
        return gradients(prepared, loss, images, backprop_modifier=backprop_modifier) / (high - low)


@known_keywords
def integrated_gradients(
    model: nn.Module | PreparedModel,
    losses,
    seed_input,
    *,
    steps: int = 64,
    quadrature: str = "gausslegendre",
    baseline: object = None,
    batch_size: int | None = None,
    return_delta: bool = False,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Integrated Gradients (Sundararajan et al. 2017): (input - baseline) times the integral of the
    score's gradient along the straight path from the baseline, as (B, C, H, W).

    The integral is a weighted sum of the gradient at `steps` points of the path: by default
    Gauss-Legendre nodes and weights on [0, 1] (``quadrature="gausslegendre"``, Captum's
    default), or the midpoint Riemann sum (``"riemann_middle"``, Captum's ``method="riemann_middle"``
    and featvis's rule before Gauss-Legendre: to reproduce earlier maps). The attributions of an
    image sum to score(input) - score(baseline) (completeness) up to the rule's error; the score
    is minus the losses, as in `input_gradients`. ``return_delta=True`` also returns that error
    per image, ``attributions.sum() - (score(input) - score(baseline))`` (B,), as Captum's
    ``return_convergence_delta`` (two more forwards per image, without gradients; raise `steps`
    when it is large against the score difference: the error falls with more steps but not
    steadily on a network of ReLU6s, whose gradient jumps along the path). `baseline`: None is a black image (the low end of
    `input_range`, before `preprocess`; zeros with ``input_range=None``), a number a flat image,
    or an image (or batch) like `seed_input`. `batch_size` path points run per forward and
    backward (None: 32, on the CPU `fusion.chunk_rows`: 4 at 224 px, where Lite0's 64 steps of 4
    images took 1.3 s against 2.4 s at 32). The model's conventions, `input_range` to
    `output`, are `featvis.prepared.PreparedModel`'s; a model prepared already keeps its own.

    Examples:
        >>> attributions = integrated_gradients(net, ActivationMaximization("fc", 3), image, steps=64)
        >>> coffee = skimage.data.coffee()  # 400 x 600 px, Lite0's espresso (967); black baseline
        >>> espresso = ActivationMaximization("_fc", 967)
        >>> attributions, delta = integrated_gradients(
        ...     lite0.model, espresso, coffee, preprocess=lite0.preprocess, return_delta=True
        ... )
        >>> attributions.sum(), delta  # the logit rises by 1.959 from black: 3.9% short at 64 steps
        (tensor(1.8838), tensor([-0.0755]))
        >>> integrated_gradients(lite0.model, espresso, coffee, steps=256, preprocess=..., return_delta=True)[1]
        tensor([-0.0304])
    """
    loss = as_losses(losses)
    method = IntegratedGradients(steps=steps, quadrature=quadrature, baseline=baseline, batch_size=batch_size)
    if not isinstance(return_delta, bool):
        raise bad_type("return_delta", return_delta, "True or False")
    conventions = dict(
        input_range=input_range,
        preprocess=preprocess,
        channels=channels,
        device=device,
        fuse=fuse,
        channels_last=channels_last,
        inputs=inputs,
        output=output,
    )
    with preparing(model, **conventions) as prepared:
        images = prepared.load_images(seed_input)
        attributions = method.attribute(prepared, loss, images)
        if not return_delta:
            return attributions
        base = load_baseline(baseline, images, prepared)
        score = scorer(prepared, loss, images, fusion.chunk_rows(images, 32))
        index = torch.arange(len(images), device=images.device)
        difference = score(index).double() - score(index, base).double()
        delta = attributions.flatten(1).double().sum(1) - difference
        return attributions, delta.to(attributions.dtype)


def _check_quadrature(quadrature) -> None:
    if quadrature not in QUADRATURES:
        hint = close_matches(quadrature, QUADRATURES) if isinstance(quadrature, str) else ""
        raise bad_value("quadrature", quadrature, f"one of {', '.join(QUADRATURES)}{hint}")


def _path_rule(quadrature: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The points of the path (fractions of the way from the baseline, in (0, 1)) and their weights
    (summing to 1) of `quadrature` with `steps` points, in float64.

    Examples:
        >>> _path_rule("riemann_middle", 4)
        (array([0.125, 0.375, 0.625, 0.875]), array([0.25, 0.25, 0.25, 0.25]))
    """
    _check_quadrature(quadrature)
    if quadrature == "riemann_middle":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1 / steps)
    nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1], weights summing to 2
    return (nodes + 1) / 2, weights / 2


def _integrated_gradients(
    prepared, loss, images, base, steps, batch_size, quadrature="gausslegendre"
) -> torch.Tensor:
    """The attributions: the path points of all images in chunks of `batch_size` rows, one forward
    and one backward per chunk through the fused runner, each row scored with its own image's
    units; the gradients weighted by the rule's weights and summed per image."""
    nodes, weights = _path_rule(quadrature, steps)
    alphas = torch.from_numpy(nodes).to(device=images.device, dtype=images.dtype)
    weights = torch.from_numpy(weights).to(device=images.device, dtype=images.dtype)
    n = len(images)
    rows_image = torch.arange(n * steps, device=images.device) // steps
    rows_alpha, rows_weight = alphas.repeat(n), weights.repeat(n)
    if batch_size is None:
        batch_size = fusion.chunk_rows(images, 32)
    prepared.probe(images)  # before resolving: a model of one input size is probed at that size
    terms, targets = loss_terms(prepared, loss)
    total = torch.zeros_like(images)
    shape = (-1, *[1] * (images.ndim - 1))
    for start in range(0, n * steps, batch_size):
        index = rows_image[start : start + batch_size]
        alpha = rows_alpha[start : start + batch_size].view(shape)
        path = base[index] + alpha * (images[index] - base[index])
        grads = path_gradients(prepared, terms, targets, images, index, path)
        total.index_add_(0, index, grads * rows_weight[start : start + batch_size].view(shape))
    return (images - base) * total


@known_keywords
def occlusion(
    model: nn.Module | PreparedModel,
    losses,
    seed_input,
    *,
    window: int = 16,
    stride: int = 8,
    baseline: object = None,
    batch_size: int | None = None,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> torch.Tensor:
    """Occlusion (Zeiler and Fergus 2014, Captum's `Occlusion`): the score's drop when a
    `window` x `window` square (all channels) is replaced by the baseline, averaged over the
    windows (every `stride` pixels) covering each pixel; (B, H, W). All windows of all images
    run in batches of `batch_size` rows, without gradients (None: on the CPU
    `fusion.chunk_rows`, 4 rows at 224 px: Lite0, 4 images, 2 cores, 7.0 s against 12.9 s at
    256 rows; elsewhere as many rows as hold the pixels of 256 images of 224 x 224, at most 1024).
    `baseline` as in `integrated_gradients`. The model's conventions, `input_range` to
    `output`, are `featvis.prepared.PreparedModel`'s; a model prepared already keeps its own.

    Examples:
        >>> drops = occlusion(net, ActivationMaximization("fc", 3), image, window=8, stride=4)
    """
    loss = as_losses(losses)
    method = Occlusion(window=window, stride=stride, baseline=baseline, batch_size=batch_size)
    conventions = dict(
        input_range=input_range,
        preprocess=preprocess,
        channels=channels,
        device=device,
        fuse=fuse,
        channels_last=channels_last,
        inputs=inputs,
        output=output,
    )
    with preparing(model, **conventions) as prepared:
        return method.drops(prepared, loss, prepared.load_images(seed_input))


def _occlusion(prepared, loss, images, base, window, stride, batch_size) -> torch.Tensor:
    if images.ndim != 4:
        raise bad_value("method", "occlusion", "'vanilla' or 'integrated_gradients' for 1-D and 3-D input")
    n, _, h, w = images.shape
    if window > min(h, w):
        raise bad_value("window", window, f"an int <= the image size {min(h, w)}")
    if batch_size is None:
        batch_size = fusion.chunk_rows(images, max(1, min(1024, 256 * 224 * 224 // (h * w))))
    prepared.probe(images)  # before the scorer resolves the loss's layers
    score = scorer(prepared, loss, images, batch_size)
    plain = score(torch.arange(n, device=images.device))
    tops = list(range(0, h - window + 1, stride)) + ([h - window] if (h - window) % stride else [])
    lefts = list(range(0, w - window + 1, stride)) + ([w - window] if (w - window) % stride else [])
    boxes = torch.zeros(len(tops) * len(lefts), h, w, device=images.device)
    for k, (top, left) in enumerate((t, left) for t in tops for left in lefts):
        boxes[k, top : top + window, left : left + window] = 1
    m = len(boxes)
    drops = torch.empty(n, m, device=images.device)
    rows_image = torch.arange(n * m, device=images.device) // m
    for start in range(0, n * m, batch_size):
        index = rows_image[start : start + batch_size]
        box = boxes[torch.arange(start, start + len(index), device=images.device) % m][:, None]
        occluded = torch.lerp(images[index], base[index], box)
        drops.view(-1)[start : start + len(index)] = plain[index].to(drops) - score(index, occluded).to(drops)
    counts = boxes.sum(0).clamp(min=1)
    return torch.einsum("nm,mhw->nhw", drops, boxes) / counts


@known_keywords
def visualize_saliency_with_losses(
    model: nn.Module | PreparedModel,
    losses,
    seed_input,
    *,
    method: str | SaliencyMethod = "vanilla",
    backprop_modifier: str | Callable | None = None,
    grad_modifier: str | Callable | None = "absolute",
    keepdims: bool = False,
    smooth_samples: int = 0,
    smooth_noise: float = 0.15,
    aug_smooth: bool = False,
    steps: int = 64,
    quadrature: str = "gausslegendre",
    baseline: object = None,
    window: int = 16,
    stride: int = 8,
    batch_size: int | None = None,
    percentile: float | None = 99.0,
    seed: int | None = 0,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> np.ndarray:
    """Saliency of a weighted sum of losses: the score's (minus the losses') attribution per pixel, modified
    by `grad_modifier` (default ``"absolute"``; ``"negate"`` shows what lowers the score), normalized per image.

    `method`: a name in `SALIENCY_METHODS`, built with the options here that its class takes:
    ``"vanilla"`` (`Gradients`: d(-loss)/d(input); guided or rectified with `backprop_modifier`),
    ``"smoothgrad"`` (`SmoothGrad`, with `seed`), ``"integrated_gradients"``
    (`IntegratedGradients`: `steps`, `quadrature`, `baseline`, see `integrated_gradients`) or
    ``"occlusion"`` (`Occlusion`: `window`, `stride`, `baseline`, see `occlusion`); or a
    `SaliencyMethod` object with its own options (``IntegratedGradients(steps=128)``). `batch_size` rows per
    forward (None: on the CPU as many as hold 16 images of 112 px, `fusion.chunk_rows`;
    elsewhere 32 for Integrated Gradients, for occlusion 256 at 224 px, up to 1024 on smaller
    images). Gradient maps keep the max over channels, attributions their sum. ``smooth_samples > 0`` averages the map over
    noisy copies (SmoothGrad; noise std ``smooth_noise`` times the image's range, image i's
    noise from the stream of (seed, i)); ``aug_smooth=True`` over flips and zooms too.
    `percentile`: maps are scaled from their min to this percentile, above it clipped (None:
    min-max). Returns (B, H, W), or (B, H, W, C) with ``keepdims=True``. The model's conventions,
    `input_range` to `output`, are `featvis.prepared.PreparedModel`'s (``input_range=None``: tensors
    fed to the model as given); a model prepared already keeps its own.

    Examples:
        >>> maps = visualize_saliency_with_losses(model, [(ActivationMaximization("_fc", 285), 1)], cat)
    """
    loss = as_losses(losses)
    modifier = grad_modifiers.get(grad_modifier)
    backprop_modifiers.get(backprop_modifier)
    check_int("smooth_samples", smooth_samples, 0)
    check_number("smooth_noise", smooth_noise, minimum=0)
    check_int("steps", steps, 1)
    _check_quadrature(quadrature)
    check_int("window", window, 1)
    check_int("stride", stride, 1)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    percentile = check_percentile(percentile)
    if not isinstance(aug_smooth, bool):
        raise bad_type("aug_smooth", aug_smooth, "True or False")
    seed = seed_or_fresh(seed)
    options = dict(
        backprop_modifier=backprop_modifier,
        steps=steps,
        quadrature=quadrature,
        baseline=baseline,
        window=window,
        stride=stride,
        batch_size=batch_size,
        seed=seed,
    )
    attribution = _saliency_method(method, options)
    conventions = dict(
        input_range=input_range,
        preprocess=preprocess,
        channels=channels,
        device=device,
        fuse=fuse,
        channels_last=channels_last,
        inputs=inputs,
        output=output,
    )
    with preparing(model, **conventions) as prepared:
        images = prepared.load_images(seed_input)
        passes = max(1, smooth_samples) * (4 if aug_smooth else 1)

        def mapped(x: torch.Tensor) -> torch.Tensor:
            values = attribution.attribute(prepared, loss, x, passes=passes)
            if attribution.sums_channels:  # attributions: the sum over channels is the pixel's
                values = values.sum(1, keepdim=True).expand_as(x)
            return modifier(values) if modifier is not None else values

        grads = smoothed(
            mapped,
            images,
            smooth_samples=smooth_samples,
            smooth_noise=smooth_noise,
            aug_smooth=aug_smooth,
            seed=seed,
            label="saliency",
        )
    source = attribution.source
    if keepdims:
        return np.moveaxis(normalize(grads, percentile, source), 1, -1)
    return normalize(grads.max(dim=1).values, percentile, source)


@known_keywords
def visualize_saliency(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    filter_indices,
    seed_input,
    *,
    unit_axis: int | None = None,
    token: int | None = None,
    method: str | SaliencyMethod = "vanilla",
    backprop_modifier: str | Callable | None = None,
    grad_modifier: str | Callable | None = "absolute",
    keepdims: bool = False,
    smooth_samples: int = 0,
    smooth_noise: float = 0.15,
    aug_smooth: bool = False,
    steps: int = 64,
    quadrature: str = "gausslegendre",
    baseline: object = None,
    window: int = 16,
    stride: int = 8,
    batch_size: int | None = None,
    percentile: float | None = 99.0,
    seed: int | None = 0,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> np.ndarray:
    """Saliency map of the chosen units of `layer` for each image (keras-vis's API, plus SmoothGrad,
    Integrated Gradients and occlusion).

    `unit_axis` and `token` choose the units as in `featvis.visualize_activation`; the other
    arguments, `method` on (the model's conventions included), are those of
    `visualize_saliency_with_losses`.

    Examples:
        >>> vanilla = visualize_saliency(lite0.model, "_fc", 285, cat, preprocess=lite0.preprocess)
        >>> guided = visualize_saliency(lite0.model, "_fc", 285, cat, backprop_modifier="guided", preprocess=...)
        >>> smooth = visualize_saliency(lite0.model, "_fc", 285, cat, smooth_samples=20, preprocess=...)
        >>> ig = visualize_saliency(lite0.model, "_fc", 285, cat, method="integrated_gradients", steps=64,
        ...                         preprocess=...)
    """
    objective = ActivationMaximization(layer, filter_indices, unit_axis=unit_axis, token=token)
    return visualize_saliency_with_losses(
        model,
        objective,
        seed_input,
        method=method,
        backprop_modifier=backprop_modifier,
        grad_modifier=grad_modifier,
        keepdims=keepdims,
        smooth_samples=smooth_samples,
        smooth_noise=smooth_noise,
        aug_smooth=aug_smooth,
        steps=steps,
        quadrature=quadrature,
        baseline=baseline,
        window=window,
        stride=stride,
        batch_size=batch_size,
        percentile=percentile,
        seed=seed,
        input_range=input_range,
        preprocess=preprocess,
        channels=channels,
        device=device,
        fuse=fuse,
        channels_last=channels_last,
        inputs=inputs,
        output=output,
    )
