"""Image parameterizations: small objects that turn parameters into an image batch.

Each has ``parameters()`` for the optimizer, ``__call__()`` returning images in
[0, 1] of shape (B, C, H, W), ``project()`` run after every step, and a
``default_lr``. `METHODS` is the registry of named ones (the CLI's choices come from
it); `register` adds one. Random initial images are drawn from `featvis.rng.Streams`,
one stream per image.

Examples:
    >>> param = FourierImage(batch=4, channels=3, size=(224, 224))
    >>> param().shape
    torch.Size([4, 3, 224, 224])
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from importlib import resources
import math

import numpy as np
import torch
import torch.nn.functional as F

from featvis.errors import bad_type, bad_value, check_number, known_keywords
from featvis.registry import Registry
from featvis.rng import Streams, derive_key, fresh_seed


@cache
def natural_statistics() -> dict[str, np.ndarray]:
    """Color and spectrum statistics estimated from photographs (see scripts/)."""
    with resources.files("featvis").joinpath("assets/natural_stats.npz").open("rb") as f:
        stats = np.load(f)
        return {key: stats[key] for key in stats.files}


class Parameterization:
    """Base: a batch of images made from trainable tensors.

    Examples:
        >>> class Gray(Parameterization):
        ...     default_lr = 0.02
        ...     def __init__(self, batch, channels, size, *, init=None, streams=None, device=None):
        ...         super().__init__(batch, channels, size)
        ...         self.value = torch.full((batch, 1, *size), 0.5, device=device, requires_grad=True)
        ...     def parameters(self): return [self.value]
        ...     def __call__(self): return self.value.clamp(0, 1).expand(-1, self.channels, -1, -1)
    """

    default_lr: float = 0.05

    def __init__(self, batch: int, channels: int, size: tuple[int, int]):
        self.batch, self.channels, self.size = batch, channels, size

    def parameters(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def __call__(self) -> torch.Tensor:
        raise NotImplementedError

    def project(self) -> None:
        """Keep parameters valid after an optimizer step (a no-op for most)."""

    def at_step(self, step: int, steps: int) -> None:
        """Told before step `step` (from 0) of `steps` makes its images (a no-op for most)."""


def _draw(streams: Streams | None, batch: int, kind: str, *shape: int, device=None) -> torch.Tensor:
    """`batch` draws of `shape` from the streams (one per image), or from a fresh seed when none are given."""
    if streams is None:
        streams = Streams([derive_key(fresh_seed(), i) for i in range(batch)], device or "cpu")
    if len(streams) != batch:
        raise bad_value("streams", f"{len(streams)} streams", f"one per image ({batch})")
    values = streams.normal(*shape) if kind == "normal" else streams.uniform(*shape)
    return values.to(device)


def _color_matrix(channels: int, device: torch.device) -> torch.Tensor:
    if channels != 3:
        return torch.eye(channels, device=device)
    return torch.tensor(natural_statistics()["color_sqrt"], device=device)


class PixelImage(Parameterization):
    """One parameter per pixel, clipped to [0, 1] after each step (keras-vis's way).

    Examples:
        >>> PixelImage(1, 3, (224, 224), streams=Streams([0]))
    """

    default_lr = 0.02

    def __init__(self, batch, channels, size, *, init=None, streams=None, device=None):
        super().__init__(batch, channels, size)
        if init is None:
            init = 0.5 + 0.1 * _draw(streams, batch, "normal", channels, *size, device=device)
        self.pixels = init.detach().clone().clamp(0, 1).to(device).requires_grad_(True)

    def parameters(self):
        return [self.pixels]

    def __call__(self):
        return self.pixels

    def project(self):
        with torch.no_grad():
            self.pixels.clamp_(0, 1)


def _frequencies(size: tuple[int, ...], device) -> torch.Tensor:
    """Each point's frequency (cycles per sample, radial) on the rfftn grid of `size` (any number of axes)."""
    axes = [torch.fft.fftfreq(n, device=device) for n in size[:-1]] + [
        torch.fft.rfftfreq(size[-1], device=device)
    ]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.sqrt(sum(g**2 for g in grids))


def _frequency_scale(size: tuple[int, ...], decay: float, device) -> torch.Tensor:
    """1/frequency^decay on the rfftn grid of `size` (signals, images, volumes)."""
    return 1.0 / torch.clamp(_frequencies(size, device), min=1.0 / max(size)) ** decay


def _mix_colors(matrix: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Each pixel's channels multiplied by `matrix` (C, C), as one batched product without copies."""
    return (matrix @ images.flatten(2)).view_as(images)


def _logit(images: torch.Tensor) -> torch.Tensor:
    """The sigmoid's inverse, of values clamped to [0.05, 0.95]: a seed pixel at 0 or 1 would sit where
    the sigmoid is flat, and an all-black seed would stay black for hundreds of steps."""
    images = images.clamp(0.05, 0.95)
    return torch.log(images / (1 - images))


class FourierImage(Parameterization):
    """Spectrum parameters scaled by 1/frequency^decay, optionally in decorrelated color.

    The image is ``sigmoid(color @ irfft2(scale * spectrum) / 4)``: low frequencies
    move first, which gives smoother, more natural images than pixels. `size` may have
    one axis (signals), two (images) or three (volumes): the FFT runs over all of them.

    Examples:
        >>> FourierImage(1, 3, (224, 224), decay=1.0, decorrelate=True)
    """

    def __init__(
        self,
        batch,
        channels,
        size,
        *,
        decay: float = 1.0,
        decorrelate: bool = True,
        init=None,
        streams=None,
        device=None,
        sd: float = 0.01,
    ):
        super().__init__(batch, channels, size)
        self.axes = tuple(range(-len(size), 0))
        self.scale = _frequency_scale(size, decay, device)
        self.color = _color_matrix(channels, device) if decorrelate else torch.eye(channels, device=device)
        if init is None:
            shape = (*size[:-1], size[-1] // 2 + 1)
            spectrum = sd * _draw(streams, batch, "normal", channels, *shape, 2, device=device)
            spectrum = torch.view_as_complex(spectrum)
        else:
            spatial = _mix_colors(torch.linalg.inv(self.color), _logit(init.to(device)))
            spectrum = torch.fft.rfftn(spatial * 4, dim=self.axes, norm="ortho") / self.scale
        self.spectrum = torch.view_as_real(spectrum).contiguous().requires_grad_(True)

    def parameters(self):
        return [self.spectrum]

    def __call__(self):
        return self.render(self.spectrum)

    def render(self, spectrum: torch.Tensor) -> torch.Tensor:
        """The images of a spectrum (as `spectrum`: real and imaginary parts on the last axis)."""
        spatial = torch.fft.irfftn(
            torch.view_as_complex(spectrum) * self.scale, s=self.size, dim=self.axes, norm="ortho"
        )
        return torch.sigmoid(_mix_colors(self.color, spatial / 4))


class CoarseToFineImage(FourierImage):
    """A Fourier image whose steps move the low frequencies first and open up to all of them.

    At step k of n only frequencies up to ``start + (1 - start) * k / (opening * n)`` of
    the highest (radially) get a gradient; after the first `opening` share of the steps,
    all do, as in `FourierImage`. A given `init` is kept whole: only the steps are coarse
    first. With Adam's beta1 at 0.3 and the image average at 0.95, Lite2 recognized 90%
    (top-5 94.6%) of Lite0's 20 benchmark class images made in 128 one-view steps (12
    seeds, on a GPU), where a plain Fourier image with beta1 0.9 made 77% / 87%
    (benchmarks/RESULTS.md). The other arguments are `FourierImage`'s.

    Examples:
        >>> CoarseToFineImage(1, 3, (224, 224), opening=0.5)
    """

    @known_keywords
    def __init__(
        self,
        batch,
        channels,
        size,
        *,
        opening: float = 0.5,
        start: float = 0.1,
        decay: float = 1.0,
        decorrelate: bool = True,
        init=None,
        streams=None,
        device=None,
        sd: float = 0.01,
    ):
        super().__init__(
            batch,
            channels,
            size,
            decay=decay,
            decorrelate=decorrelate,
            init=init,
            streams=streams,
            device=device,
            sd=sd,
        )
        check_number("opening", opening, minimum=0)
        check_number("start", start, minimum=0)
        self.radius = (_frequencies(size, self.spectrum.device) / (0.5 * len(size) ** 0.5))[..., None]
        self.opening, self.start, self.cutoff = opening, start, start

    def at_step(self, step: int, steps: int) -> None:
        opened = step / (self.opening * steps) if self.opening else 1.0
        self.cutoff = self.start + (1 - self.start) * min(opened, 1.0)

    def __call__(self):
        if self.cutoff >= 1:
            return super().__call__()
        return self.render(torch.where(self.radius <= self.cutoff, self.spectrum, self.spectrum.detach()))


def natural_magnitude(channels: int, size: tuple[int, int], device=None) -> torch.Tensor:
    """The mean photograph spectrum magnitude, resampled to `size`, shape (C, H, W//2+1)."""
    magnitude = torch.tensor(natural_statistics()["magnitude"])
    if channels != 3:
        magnitude = magnitude.mean(0, keepdim=True).expand(channels, -1, -1)
    h, w = size
    # the stored spectrum is for 224x224; resample it in normalized frequency
    full = torch.cat([magnitude, magnitude[:, :, 1:-1].flip(-1)], dim=-1)  # (C, 224, 224), fftshift-free
    shifted = torch.fft.fftshift(full, dim=(-2, -1))[None]
    resized = F.interpolate(shifted, size=(h, w), mode="bilinear", align_corners=False)[0]
    unshifted = torch.fft.ifftshift(resized, dim=(-2, -1))[..., : w // 2 + 1]
    return unshifted.contiguous().to(device)


class MacoImage(Parameterization):
    """MACO: only the spectrum's phase is optimized; its magnitude stays that of photographs.

    The magnitude is `natural_magnitude` (estimated from scikit-image photographs,
    see ``scripts/estimate_natural_statistics.py``). The image is the inverse FFT,
    standardized per image, through a sigmoid.

    Examples:
        >>> MacoImage(1, 3, (224, 224))
    """

    default_lr = 0.5

    def __init__(self, batch, channels, size, *, init=None, streams=None, device=None):
        if len(size) != 2:
            raise bad_value(
                "method",
                "maco",
                f"'fourier' or 'pixel' for {len(size)}-D input: MACO's magnitude is a photograph's",
            )
        super().__init__(batch, channels, size)
        h, w = size
        self.magnitude = natural_magnitude(channels, size, device)
        if init is None:
            phase = _draw(streams, batch, "uniform", channels, h, w // 2 + 1, device=device)
            phase = (phase * 2 - 1) * math.pi
        else:
            phase = torch.angle(torch.fft.rfft2(_logit(init), norm="ortho"))
        self.phase = phase.to(device).requires_grad_(True)

    def parameters(self):
        return [self.phase]

    def __call__(self):
        spectrum = torch.polar(self.magnitude.expand_as(self.phase), self.phase)
        spatial = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        mean = spatial.mean(dim=(2, 3), keepdim=True)
        std = spatial.flatten(1).std(1).view(-1, 1, 1, 1)
        return torch.sigmoid((spatial - mean) / (std + 1e-8) * 1.5 + torch.logit(torch.tensor(0.45)))


def _check_factory(factory: object) -> Callable[..., Parameterization]:
    if not callable(factory):
        raise bad_type("factory", factory, "a Parameterization class or factory")
    return factory


METHODS: Registry[Callable[..., Parameterization]] = Registry(
    "parameterization",
    "method",
    {"pixel": PixelImage, "fourier": FourierImage, "coarse_to_fine": CoarseToFineImage, "maco": MacoImage},
    convert=_check_factory,
)
"""The named parameterizations (``method=``; the CLI's ``--method`` choices)."""


def register(
    name: str, factory: Callable[..., Parameterization] | None = None, *, replace: bool = False
) -> Callable[..., Parameterization]:
    """Add a named parameterization (it appears in ``method=`` and the CLI's ``--method`` choices);
    without `factory`, a class decorator. A name registered already is an error unless ``replace=True``.

    Examples:
        >>> register("gray", Gray)
        >>> @register("gray2")
        ... class Gray2(PixelImage): ...
    """
    return METHODS.register(name, factory, replace=replace)


def default_lr(method: str | type[Parameterization]) -> float:
    """The learning rate a parameterization was tuned with (its ``default_lr``; 0.05 for a bare factory)."""
    factory = METHODS.get(method) if isinstance(method, str) else method
    return float(getattr(factory, "default_lr", Parameterization.default_lr))


def make_parameterization(method, batch, channels, size, *, init=None, streams=None, device=None):
    """Build the parameterization named `method` (see `METHODS`) or call a factory with the same arguments.

    Examples:
        >>> make_parameterization("fourier", 2, 3, (64, 64), streams=Streams([0, 1])).spectrum.shape
        torch.Size([2, 3, 64, 33, 2])
    """
    return method_factory(method)(batch, channels, size, init=init, streams=streams, device=device)


def method_factory(method: object) -> Callable[..., Parameterization]:
    """The parameterization `method` names in `METHODS`, or `method` itself when it is a factory;
    otherwise the standard error naming ``method``.

    Examples:
        >>> method_factory("fourier")
        <class 'featvis.params.FourierImage'>
    """
    factory = METHODS.resolve(method)
    if not callable(factory):
        raise bad_type("method", method, f"one of {', '.join(METHODS)} or a callable")
    return factory
