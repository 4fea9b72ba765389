"""The optimization loop shared by every activation-maximization entry point.

A batch of images, each with its own objective, is optimized at once: the loss
is a sum of per-image terms and Adam's state is per element, so every image
steps as if it were alone. The forward pass stops as soon as every layer the
loss reads has run, and the model's weights get no gradients.

Example:
    >>> result = optimize(model, loss, FourierImage(1, 3, (224, 224)), steps=128)
    >>> result.images.shape, list(result.history)
    (torch.Size([1, 3, 224, 224]), ['ActivationMaximization', 'TotalVariation', 'LpNorm', 'total'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
import sys
import warnings

import torch
from torch import nn
from tqdm.auto import tqdm

from . import backprop_modifiers, grad_modifiers
from .errors import FeatvisValueError, NonFiniteError, bad_type, bad_value, check_int, check_number
from .fusion import choose_runner
from .input_modifiers import InputModifier, apply_modifiers
from .losses import Loss, LossContext, layer_key
from .params import Parameterization
from .targets import FeatvisWarning, ModelGuard, probe, resolve_layer, warn_pre_softmax

Callback = Callable[[int, dict[str, float], torch.Tensor], None]


@dataclass
class Result:
    """What an optimization returns.

    `images`: (B, C, H, W) in [0, 1]; `history`: per term name (and 'total') the
    batch-mean value at each step; `transparency`: (B, H, W) accumulated |d loss /
    d image| (MACO's transparency map); `interrupted`: True after Ctrl-C.
    """

    images: torch.Tensor
    history: dict[str, list[float]] = field(default_factory=dict)
    transparency: torch.Tensor | None = None
    interrupted: bool = False

    def __repr__(self) -> str:
        """One short line: shapes and term names, not the tensors' values."""

        def shape(tensor) -> str:
            return "None" if tensor is None else str(tuple(tensor.shape))

        steps = max((len(values) for values in self.history.values()), default=0)
        return (
            f"Result(images={shape(self.images)} in [0, 1], steps={steps}, "
            f"history={list(self.history)}, transparency={shape(self.transparency)}, "
            f"interrupted={self.interrupted})"
        )

    def _repr_png_(self) -> bytes:
        """Jupyter shows a result as its images, tiled."""
        import io

        from .image import stitch_images, to_array, to_pil

        frames = list(to_array(self.images, (0, 255)))
        buffer = io.BytesIO()
        to_pil(frames[0] if len(frames) == 1 else stitch_images(frames)).save(buffer, format="PNG")
        return buffer.getvalue()


def _term_names(terms: Sequence[tuple[Loss, float]]) -> list[str]:
    names: list[str] = []
    for term, _ in terms:
        name = term.name
        count = sum(1 for n in names if n == name or n.startswith(f"{name}["))
        names.append(name if count == 0 else f"{name}[{count}]")
    return names


def _to_model_input(views: torch.Tensor, input_range: tuple[float, float], preprocess) -> torch.Tensor:
    low, high = input_range
    x = low + (high - low) * views
    return preprocess(x) if preprocess is not None else x


def optimize(
    model: nn.Module,
    loss: Loss,
    param: Parameterization,
    *,
    steps: int = 256,
    lr: float = 0.05,
    input_modifiers: Sequence[InputModifier | Callable] = (),
    views: int = 1,
    input_range: tuple[float, float] = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    grad_modifier=None,
    backprop_modifier=None,
    callbacks: Sequence[Callback] = (),
    verbose: bool = False,
    progress: bool | None = None,
    seed: int | None = None,
    autocast: torch.dtype | None = None,
    channels_last: bool | None = None,
    fuse: bool = True,
    image_ema: float | None = None,
) -> Result:
    """Minimize `loss` over the images `param` makes; see the module docstring.

    `autocast` (e.g. ``torch.bfloat16``) runs the model under `torch.autocast` on
    the images' device; losses are computed in float32. `channels_last=True` feeds
    the model channels-last input (the model's weights are not touched); None
    (default) does so where it was measured to help and the model gives the same outputs
    with it: on the CPU, and on CUDA GPUs for the fused copy (`featvis.fusion.choose_runner`).
    `fuse` runs a copy of the model with batch norms and zero pads folded into its
    convolutions (sharing the model's weights; see `featvis.fusion`) when the copy's
    outputs agree with the model's. `image_ema` (e.g. 0.9) returns an exponential
    moving average of the images over the second half of the steps rather than the
    last step's images: no extra passes, and smoother images that other networks
    recognize better (``benchmarks/quality.py``).
    """
    check_int("steps", steps, 1)
    check_int("views", views, 1)
    check_number("lr", lr, positive=True)
    if image_ema is not None:
        check_number("image_ema", image_ema, minimum=0)
        if not image_ema < 1:
            raise bad_value("image_ema", image_ema, "a decay in [0, 1), or None")
    if preprocess is not None and not callable(preprocess):
        raise bad_type("preprocess", preprocess, "a function of the image batch, or None")
    if (
        isinstance(callbacks, str | bytes)
        or not isinstance(callbacks, Sequence)
        or not all(map(callable, callbacks))
    ):
        raise bad_type("callbacks", callbacks, "a list of functions f(step, terms, images)")
    grad_fn = grad_modifiers.get(grad_modifier)
    rule = backprop_modifiers.get(backprop_modifier)
    terms = [(term, weight) for term, weight in loss.terms if weight != 0]
    names = _term_names(terms)
    layers = [layer for term, _ in terms for layer in term.layers()]
    seed = seed if seed is not None else torch.seed()
    if progress is None:
        progress = steps >= 64 and sys.stderr.isatty() and not verbose

    with ModelGuard(model) as guard:
        with torch.no_grad():
            first = param()[:1]
            example = _to_model_input(first, input_range, preprocess)
            noise = torch.rand(first.shape, generator=torch.Generator().manual_seed(0))
            check_input = _to_model_input(noise.to(first), input_range, preprocess)
        generator = torch.Generator(device=first.device).manual_seed(seed)  # transforms draw there
        seen = probe(model, example)
        targets = {layer_key(spec): resolve_layer(model, spec, seen) for spec in layers}
        pre_softmax = {t.key for t in targets.values()} & seen.softmax_outputs
        warn_pre_softmax(pre_softmax)
        runner, capture, channels_last = choose_runner(
            model,
            check_input,
            seen,
            list({t.key: t for t in targets.values()}.values()),
            guard,
            pre_softmax,
            fuse=fuse,
            channels_last=channels_last,
        )

        # one fused kernel per step on a GPU rather than a handful over the whole spectrum
        fused_adam = all(p.is_cuda and p.is_floating_point() for p in param.parameters()) or None
        optimizer = torch.optim.Adam(param.parameters(), lr=lr, fused=fused_adam)
        log = _StepLog(names)
        transparency = None
        average = None  # of the images, when image_ema is set
        interrupted = False
        bar = tqdm(total=steps, disable=not progress, desc="featvis", leave=False)
        try:
            for step in range(steps):
                images = param()
                images.retain_grad()
                if image_ema is not None and step >= steps // 2:
                    current = images.detach()
                    average = current.clone() if average is None else average.lerp_(current, 1 - image_ema)
                # the model path gets its own node, so a grad modifier changes only the
                # gradient that comes through the model, not the regularizers' own
                through_model = images.view_as(images)
                if grad_fn is not None:  # backward runs on the score (-loss): flip in and out
                    through_model.register_hook(lambda g: -grad_fn(-g))
                batch = through_model.repeat_interleave(views, dim=0) if views > 1 else through_model
                x = _to_model_input(
                    apply_modifiers(input_modifiers, batch, generator), input_range, preprocess
                )
                if channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with backprop_modifiers.modify_backprop(rule):
                    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
                        activations = capture.run(runner, x) if targets else {}
                    activations = {key: value.float() for key, value in activations.items()}
                    ctx = LossContext(images=images, views=views, activations=activations, targets=targets)
                    values = [ctx.per_image(term(ctx)) for term, _ in terms]
                    total = sum(weight * value for (_, weight), value in zip(terms, values)).sum()
                    optimizer.zero_grad(set_to_none=True)
                    if not total.requires_grad:
                        raise FeatvisValueError(
                            "losses do not depend on the input image; check the layers and "
                            "filter_indices they read"
                        )
                    # backward of the score, so backprop modifiers see the gradient of what is maximized
                    (-total).backward()
                grads = [p.grad.neg_() for p in param.parameters()]
                means = torch.stack([v.detach().mean() for v in values] + [total.detach() / images.shape[0]])
                log.add(
                    step,
                    means,
                    torch.stack([means.isfinite().all()] + [g.isfinite().all() for g in grads]).all(),
                )
                optimizer.step()
                param.project()
                magnitude = images.grad.detach().abs().mean(1)
                transparency = magnitude if transparency is None else transparency + magnitude
                if verbose or callbacks or (step + 1) % _SYNC_EVERY == 0 or step == steps - 1:
                    latest = log.flush()  # one device sync per block of steps, or per step when watched
                    if verbose:
                        terms_text = "  ".join(f"{n} {v:.4g}" for n, v in zip(names, latest))
                        print(f"step {step + 1}/{steps}  {terms_text}  total {latest[-1]:.4g}")
                    for callback in callbacks:
                        callback(step, dict(zip([*names, "total"], latest)), images.detach())
                bar.update(1)
        except KeyboardInterrupt:
            log.flush()
            interrupted = True
            warnings.warn(
                "interrupted: returning the images as they were at the last step",
                FeatvisWarning,
                stacklevel=2,
            )
        finally:
            bar.close()
        with torch.no_grad():
            final = param().detach() if average is None else average
    return Result(images=final, history=log.history, transparency=transparency, interrupted=interrupted)


_SYNC_EVERY = 16


class _StepLog:
    """Per-step term means kept on the device and read back in blocks, checked for NaN/inf."""

    def __init__(self, names: list[str]):
        self.names = [*names, "total"]
        self.history: dict[str, list[float]] = {name: [] for name in self.names}
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def add(self, step: int, means: torch.Tensor, finite: torch.Tensor) -> None:
        self._pending.append((step, means, finite))

    def flush(self) -> list[float]:
        """Record the pending steps; raise at the first non-finite one. Returns the last step's values."""
        if not self._pending:
            return [values[-1] for values in self.history.values()]
        steps = [step for step, _, _ in self._pending]
        rows = torch.stack([means for _, means, _ in self._pending]).tolist()
        finite = torch.stack([ok for _, _, ok in self._pending]).tolist()
        self._pending.clear()
        for step, values, ok in zip(steps, rows, finite):
            if not ok:
                _raise_non_finite(step, self.names[:-1], values)
            for name, value in zip(self.names, values):
                self.history[name].append(value)
        return rows[-1]


def _raise_non_finite(step: int, names: list[str], values: list[float]) -> None:
    bad = [n for n, v in zip([*names, "total"], values) if not torch.isfinite(torch.tensor(v))]
    where = f"term(s) {', '.join(bad)}" if bad else "the gradient of the image parameters"
    raise NonFiniteError(f"step {step + 1}: {where} became NaN or infinite; lower lr or the loss weights")
