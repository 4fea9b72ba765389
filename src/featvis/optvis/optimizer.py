"""The optimization loop shared by every activation-maximization entry point.

A batch of images, each with its own objective, is optimized at once: the loss
is a sum of per-image terms and Adam's state is per element, so every image
steps as if it were alone. The forward pass stops as soon as every layer the
loss reads has run, and the model's weights get no gradients.

Examples:
    >>> with PreparedModel(model) as prepared:
    ...     result = optimize(prepared, loss, FourierImage(1, 3, (224, 224)), Settings(max_iter=64), streams)
    >>> result.images.shape, list(result.history)
    (torch.Size([1, 3, 224, 224]), ['ActivationMaximization', 'TotalVariation', 'LpNorm', 'total'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
import io
import math
import sys
import warnings

import torch

from featvis.errors import (
    FeatvisTypeError,
    FeatvisValueError,
    FeatvisWarning,
    NonFiniteError,
    bad_type,
    bad_value,
    check_int,
    check_number,
    close_matches,
)
from featvis.image import stitch_images, to_array, to_pil
from featvis.model.prepared import PreparedModel
from featvis.optvis import backprop_modifiers, grad_modifiers
from featvis.optvis.callbacks import (
    FunctionCallback,
    ImageAverage,
    ProgressBar,
    StepCallback,
    Stepped,
    Transparency,
    VerbosePrint,
)
from featvis.optvis.input_modifiers import InputModifier, apply_modifiers, standard_transforms
from featvis.optvis.losses import Loss, LossContext
from featvis.optvis.params import Parameterization, default_lr, method_factory
from featvis.registry import Registry
from featvis.rng import Streams

Callback = Callable[[int, dict[str, float], torch.Tensor], None]


@dataclass
class Result:
    """What an optimization returns.

    `images`: (B, C, H, W) in [0, 1]; `history`: per term name (and 'total') the
    batch-mean value at each step; `transparency`: (B, H, W) accumulated |d loss /
    d image| (MACO's transparency map); `interrupted`: True after Ctrl-C; `seed`: the
    seed the images came from (pass it as ``seed=`` to make them again); `inputs`: a model's
    other optimized inputs (``inputs={"meta": Optimized((2,))}``) by name, (B, *shape) in
    their ranges, as the model takes them.
    """

    images: torch.Tensor
    history: dict[str, list[float]] = field(default_factory=dict)
    transparency: torch.Tensor | None = None
    interrupted: bool = False
    seed: int | None = None
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)

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
        frames = list(to_array(self.images, (0, 255)))
        buffer = io.BytesIO()
        to_pil(frames[0] if len(frames) == 1 else stitch_images(frames)).save(buffer, format="PNG")
        return buffer.getvalue()


class FromQuality:
    """The default of an option that the ``quality=`` preset sets: the preset's value (see `QUALITY`).

    Examples:
        >>> featvis.visualize_activation(model, "fc", 3, quality="best")  # max_iter, views, ... of "best"
    """

    def __repr__(self) -> str:
        return "<the quality's>"


FROM_QUALITY = FromQuality()


@dataclass(frozen=True)
class Settings:
    """How an activation maximization runs: the options every entry point shares, declared once.

    `max_iter` steps of `views` random views per image (128 x 1 = 128 forward+backward
    passes per image); `lr` (None: the parameterization's `default_lr`); `method`: a
    name in `featvis.params.METHODS` or a factory (default "coarse_to_fine"); `input_modifiers` (None:
    `standard_transforms()`; ``[]`` for none); `grad_modifier`, `backprop_modifier`: a
    name or a callable (default ``"leaky"``: 5% of the gradient passes where a ReLU is
    off, so the images transfer better to other networks; None: plain gradients; see
    `featvis.backprop_modifiers.leaky`); `callbacks`: functions ``f(step, terms, images)`` (an ``on_end()``
    method of one is called when the optimization ends; see `featvis.callbacks`); `verbose`
    prints every term at every step; `progress` shows a bar (None: whenever stderr is a
    terminal, `show_progress`); `autocast` (e.g. ``torch.bfloat16``) runs the model in reduced
    precision; `image_ema` (default 0.95) returns the moving average of the images over
    the second half of the steps (None: the last step's images); `betas`: Adam's
    (default (0.3, 0.999): little momentum, which our 128-step images need); `lr_schedule` multiplies
    the rate at each step (None: constant; "cosine": `warmup_cosine_lr`; or ``f(step,
    steps)``); `skip_gradient` (e.g. 0.5) multiplies the gradient into the residual branches of
    the model's blocks, so the image leans on what the skip connections carry and transfers
    better to other networks (`featvis.backprop_modifiers.skip_gradient`; None: plain
    gradients). The defaults are the "fast" of the `QUALITY` presets, which entry points
    take as ``quality=``.

    Examples:
        >>> Settings(max_iter=64, views=2, method="pixel").learning_rate
        0.02
    """

    max_iter: int = 128
    views: int = 1
    lr: float | None = None
    method: str | Callable = "coarse_to_fine"
    input_modifiers: Sequence[InputModifier | Callable] | None = None
    grad_modifier: str | Callable | None = None
    backprop_modifier: str | Callable | None = "leaky"
    callbacks: Sequence[Callback] | None = None
    verbose: bool = False
    progress: bool | None = None
    autocast: torch.dtype | None = None
    image_ema: float | None = 0.95
    lr_schedule: str | Callable[[int, int], float] | None = None
    betas: tuple[float, float] = (0.3, 0.999)
    skip_gradient: float | None = None

    def __post_init__(self):
        schedule = self.lr_schedule
        if isinstance(schedule, str) and schedule not in SCHEDULES:
            raise bad_value("lr_schedule", schedule, f"one of {', '.join(SCHEDULES)}, a callable or None")
        if not isinstance(schedule, str) and schedule is not None and not callable(schedule):
            raise bad_type("lr_schedule", schedule, "a name, a function f(step, steps) -> factor, or None")
        check_int("max_iter", self.max_iter, 1)
        check_int("views", self.views, 1)
        betas = self.betas
        if not isinstance(betas, tuple | list) or len(betas) != 2:
            raise bad_type("betas", betas, "Adam's (beta1, beta2), two numbers in [0, 1)")
        if not all(0 <= check_number("betas", beta) < 1 for beta in betas):
            raise bad_value("betas", betas, "Adam's (beta1, beta2), two numbers in [0, 1)")
        if self.lr is not None:
            check_number("lr", self.lr, positive=True)
        if self.skip_gradient is not None and not 0 < check_number("skip_gradient", self.skip_gradient) <= 1:
            raise bad_value("skip_gradient", self.skip_gradient, "a number in (0, 1] or None")
        if self.image_ema is not None:
            check_number("image_ema", self.image_ema, minimum=0)
            if not self.image_ema < 1:
                raise bad_value("image_ema", self.image_ema, "a decay in [0, 1), or None")
        method_factory(self.method)
        _check_functions("input_modifiers", self.input_modifiers, "InputModifier objects or functions")
        _check_functions("callbacks", self.callbacks, "functions f(step, terms, images)")
        grad_modifiers.get(self.grad_modifier)
        backprop_modifiers.get(self.backprop_modifier)
        if self.autocast is not None and not isinstance(self.autocast, torch.dtype):
            raise bad_type("autocast", self.autocast, "a torch dtype such as torch.bfloat16, or None")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def take(cls, options: dict, allowed: Sequence[str] = ()) -> Settings:
        """Settings from keyword options (removing them); any other option not in `allowed` is an error.

        ``quality`` (a name in `QUALITY`) picks a preset; options given beside it win, except
        those left at `FROM_QUALITY` (the entry points' default of every option a preset sets).

        Examples:
            >>> settings = Settings.take({"quality": "fast", "lr": 0.03})
            >>> settings.max_iter, settings.views, settings.lr
            (128, 1, 0.03)
        """
        names = [*cls.names(), "quality"]
        unknown = [k for k in options if k not in names and k not in allowed]
        if unknown:
            raise FeatvisTypeError(
                f"unexpected keyword argument {unknown[0]!r}"
                f"{close_matches(unknown[0], [*names, *allowed], see='help(featvis.Settings)')}"
            )
        quality = options.pop("quality", "fast")
        if not isinstance(quality, str) or quality not in QUALITY:
            raise bad_value(
                "quality",
                quality,
                f"one of {', '.join(map(repr, QUALITY))}{close_matches(str(quality), QUALITY)}",
            )
        given = {k: options.pop(k) for k in list(options) if k in cls.names()}
        given = {k: value for k, value in given.items() if value is not FROM_QUALITY}
        return cls(**{**QUALITY[quality], **given})

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else default_lr(self.method)

    @property
    def lr_factor(self) -> Callable[[int, int], float]:
        """The learning rate's multiplier at each step, ``f(step, steps)``."""
        schedule = self.lr_schedule or "constant"
        return SCHEDULES[schedule] if isinstance(schedule, str) else schedule

    @property
    def transforms(self) -> list[InputModifier | Callable]:
        return standard_transforms() if self.input_modifiers is None else list(self.input_modifiers)


def _check_functions(argument: str, functions: object, allowed: str) -> None:
    """None or a list of callables, else the standard error (naming the first bad item)."""
    if functions is not None and (isinstance(functions, str | bytes) or not isinstance(functions, Sequence)):
        raise bad_type(argument, functions, f"a list of {allowed}")
    for function in functions or ():
        if not callable(function):
            raise bad_type(argument, function, allowed)


def constant_lr(step: int, steps: int) -> float:
    """The same learning rate at every step."""
    return 1.0


def warmup_cosine_lr(step: int, steps: int, warmup: float = 0.1, floor: float = 0.05) -> float:
    """A linear warm-up over the first `warmup` of the steps, then a cosine decay to `floor`.

    Examples:
        >>> [round(warmup_cosine_lr(s, 10), 2) for s in (0, 1, 5, 9)]
        [1.0, 1.0, 0.61, 0.08]
    """
    ramp = max(1, round(warmup * steps))
    if step < ramp:
        return (step + 1) / ramp
    progress = (step - ramp) / max(1, steps - ramp)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


SCHEDULES: Registry[Callable[[int, int], float]] = Registry(
    "learning-rate schedule", "lr_schedule", {"constant": constant_lr, "cosine": warmup_cosine_lr}
)
"""The named learning-rate schedules ``f(step, steps) -> factor``; `SCHEDULES.register` adds one."""


def _check_preset(preset: object) -> dict:
    """A quality preset: a dict of `Settings` options, checked by building the settings it makes."""
    if not isinstance(preset, dict):
        raise bad_type("preset", preset, "a dict of Settings options, e.g. {'max_iter': 64}")
    unknown = [name for name in preset if name not in Settings.names()]
    if unknown:
        raise FeatvisTypeError(
            f"unexpected Settings option {unknown[0]!r} in the preset"
            f"{close_matches(unknown[0], Settings.names(), see='help(featvis.Settings)')}"
        )
    Settings(**preset)
    return preset


_FOURIER_ADAM = dict(method="fourier", image_ema=0.9, betas=(0.9, 0.999))  # the 0.1 recipe's
QUALITY: Registry[dict] = Registry(
    "quality preset",
    "quality",
    {
        "preview": dict(max_iter=32, views=1, backprop_modifier=None, **_FOURIER_ADAM),
        "fast": {},  # the defaults of Settings: 128 x 1 coarse-to-fine steps, beta1 0.3, "leaky"
        "best": dict(max_iter=128, views=4, **_FOURIER_ADAM),  # 0.1's default with the "leaky" modifier
    },
    convert=_check_preset,
)
"""Named presets of `Settings` (``quality=`` in every activation-maximization entry point).

Forward+backward passes per image and what EfficientNet-Lite2 recognized of Lite0's 20
benchmark class images (top-1 / top-5, ``benchmarks/quality.py``; see benchmarks/RESULTS.md):
"preview" 32 passes (25% / 44%, four seeds, H200), "fast" 128 (the default, with the
``"leaky"`` backprop modifier: 96% / 98% over twelve seeds on an H200, 95% / 95% over
four on a CPU), "best" 512 (featvis 0.1's default recipe with the ``"leaky"`` modifier:
98.75% / 98.75% over four seeds on a CPU; 0.1's plain gradients gave 89% / 92.5% there).
The time grows with the passes: on 2 CPU cores a 224 px class image takes about 4.1 s at
"fast", four per call (6.6 s alone), and 17 s at "best" alone.
"""


def _term_names(terms: Sequence[Loss]) -> list[str]:
    names: list[str] = []
    for term in terms:
        name = term.name
        count = sum(1 for n in names if n == name or n.startswith(f"{name}["))
        names.append(name if count == 0 else f"{name}[{count}]")
    return names


def show_progress(progress: bool | None) -> bool:
    """Whether to show a progress bar: `progress` when given, else whenever stderr is a terminal,
    so work of any length shows its progress there, and pipes, log files and notebooks get no bar.

    Examples:
        >>> show_progress(None) == sys.stderr.isatty(), show_progress(False)
        (True, False)
    """
    return sys.stderr.isatty() if progress is None else bool(progress)


def optimize(
    prepared: PreparedModel,
    loss: Loss,
    param: Parameterization,
    settings: Settings,
    streams: Streams,
    *,
    seed: int | None = None,
    others: dict[str, Parameterization] | None = None,
) -> Result:
    """Minimize `loss` over the images `param` makes; see the module docstring.

    `streams` hold one random stream per image (the transforms' draws); `seed` is only
    recorded in the result. `others` make the values of a model's other optimized inputs
    (see `featvis.inputs`), optimized along with the images at their own learning rates
    and without transforms. The model runs as `prepared` chose: the fused copy where its
    outputs agree with the model's, channels-last input where that helps (see
    `featvis.fusion.choose_runner`), the forward pass stopped after the last layer the
    loss reads. Each step is `Optimization.step`; what else happens at a step (the image
    average, the transparency map, the verbose print, the progress bar, ``callbacks``) is
    a `featvis.callbacks.StepCallback`. Ctrl-C ends the steps and returns the images so far.
    """
    run = Optimization(prepared, loss, param, settings, streams, others or {})
    average = ImageAverage(settings.image_ema) if settings.image_ema is not None else None
    transparency = Transparency()
    show = settings.progress
    if show is None:  # verbose prints a line per step instead
        show = show_progress(None) and not settings.verbose
    bar = ProgressBar(settings.max_iter, show)
    callbacks: list[StepCallback] = [
        *([average] if average is not None else []),
        transparency,
        *([VerbosePrint(settings.max_iter, run.terms, run.targets)] if settings.verbose else []),
        *(FunctionCallback(function) for function in settings.callbacks or ()),
        bar,
    ]
    interrupted = False
    try:
        for step in range(settings.max_iter):
            stepped = run.step(step)
            for callback in callbacks:
                callback.on_step(stepped)
    except KeyboardInterrupt:
        run.log.flush()
        interrupted = True
        warnings.warn(
            "interrupted: returning the images as they were at the last step",
            FeatvisWarning,
            stacklevel=2,
        )
    finally:
        bar.close()
        prepared.set_inputs({})
    for callback in callbacks:  # keras-vis's on_end: e.g. GifGenerator writes its file
        callback.on_end()
    images, inputs = run.outcome()
    return Result(
        images=images if average is None or average.images is None else average.images,
        history=run.log.history,
        transparency=transparency.total,
        interrupted=interrupted,
        seed=seed,
        inputs=inputs,
    )


class Optimization:
    """One optimization's working state (the model's runner, Adam, the step log); `step` makes a step.

    Examples:
        >>> run = Optimization(prepared, loss, FourierImage(1, 3, (224, 224)), Settings(), streams, {})
        >>> run.step(0).terms
        {'ActivationMaximization': -0.41, 'TotalVariation': 0.0003, 'total': -0.4097}
    """

    def __init__(
        self,
        prepared: PreparedModel,
        loss: Loss,
        param: Parameterization,
        settings: Settings,
        streams: Streams,
        others: dict[str, Parameterization],
    ):
        if len(streams) != param.batch:
            raise bad_value("streams", f"{len(streams)} streams", f"one per image ({param.batch})")
        self.prepared, self.param, self.others, self.settings = prepared, param, others, settings
        self.steps, self.views = settings.max_iter, settings.views
        self.grad_fn = grad_modifiers.get(settings.grad_modifier)
        self.rule = backprop_modifiers.get(settings.backprop_modifier)
        self.transforms = settings.transforms
        self.weighted = [(term, weight) for term, weight in loss.terms if weight != 0]
        self.terms = [term for term, _ in self.weighted]
        self.rows = streams.per_view(self.views)
        self.made = (param, *others.values())  # every parameterization the steps move
        with torch.no_grad():
            first = param()[:1]
            prepared.set_inputs({name: other()[:1] for name, other in others.items()})
        prepared.probe(first)
        self.targets = prepared.resolve_all(layer for term in self.terms for layer in term.layers())
        wanted = list(self.targets.values())
        self.runner, self.capture, self.channels_last = (
            prepared.runner(wanted, first.shape[1:]) if wanted else (None, None, False)
        )
        self.layer_keys = [target.key for target in wanted]
        self.optimizer, self.rates = self._adam()
        self.parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.log = _StepLog(_term_names(self.terms), [str(t) for t in wanted], settings.autocast is not None)

    def _adam(self) -> tuple[torch.optim.Adam, list[float]]:
        """Adam over the images' parameters and each other input's, each at its own rate."""
        groups = [{"params": list(self.param.parameters()), "lr": self.settings.learning_rate}] + [
            {
                "params": list(other.parameters()),
                "lr": default_lr(self.prepared.inputs.optimized[name].method),
            }
            for name, other in self.others.items()
        ]
        parameters = [p for group in groups for p in group["params"]]
        # one fused kernel per step on a GPU rather than a handful over the whole spectrum
        fused = all(p.is_cuda and p.is_floating_point() for p in parameters) or None
        optimizer = torch.optim.Adam(groups, betas=tuple(self.settings.betas), fused=fused)
        return optimizer, [group["lr"] for group in groups]

    def step(self, step: int) -> Stepped:
        """One step on the batch: render the images, run the model on their views, score the loss,
        backward (through the grad and backprop modifiers), update the parameters; the non-finite
        checks run on the device and are read back every few steps (or when a callback reads
        `Stepped.terms`)."""
        for each in self.made:
            each.at_step(step, self.steps)
        images = self.param()
        images.retain_grad()
        finite = torch.ones(len(self.terms) + 1, dtype=torch.bool, device=images.device)
        with (
            backprop_modifiers.modify_backprop(self.rule),
            backprop_modifiers.skip_gradient(self.settings.skip_gradient),
        ):
            activations = self._forward(images, finite)
            values = self._loss_values(images, activations, finite)
            total = sum(weight * value for (_, weight), value in zip(self.weighted, values)).sum()
            self._backward(total)
        grads = [p.grad.neg_() for p in self.parameters if p.grad is not None]
        means = torch.stack([v.detach().mean() for v in values] + [total.detach() / images.shape[0]])
        params_finite = torch.stack([g.isfinite().all() for g in grads]).all()
        layers_finite = [activations[key].isfinite().all() for key in self.layer_keys]  # what the model gave
        self.log.add(step, means, torch.stack([*finite, params_finite, *layers_finite]))
        scored = images.detach().clone()  # a pixel image is its parameter, which the update moves
        self._update(step)
        if (step + 1) % _SYNC_EVERY == 0 or step == self.steps - 1:
            self.log.flush()  # one device sync per block of steps
        return Stepped(
            step=step,
            steps=self.steps,
            images=scored,
            image_gradient=images.grad.detach().abs().mean(1),
            activations=activations,
            read_terms=lambda: dict(zip(self.log.names, self.log.flush())),
        )

    def _forward(self, images: torch.Tensor, finite: torch.Tensor) -> dict[str, torch.Tensor]:
        """The outputs of the layers the loss reads, on the transformed views of `images` (float32)."""
        # the model path gets its own node, so a grad modifier changes only the
        # gradient that comes through the model, not the regularizers' own
        through_model = images.view_as(images)
        _watch_gradient(through_model, finite, len(self.terms))
        extra = {}  # a model's other optimized inputs, each its own node (a pixel one is the leaf)
        for name, other in self.others.items():
            value = other()
            extra[name] = value.view_as(value)
        if self.grad_fn is not None:  # backward runs on the score (-loss): flip in and out
            for node in (through_model, *extra.values()):
                node.register_hook(lambda g: -self.grad_fn(-g))
        views = self.views
        batch = through_model.repeat_interleave(views, dim=0) if views > 1 else through_model
        self.prepared.set_inputs(
            {name: value.repeat_interleave(views, dim=0) for name, value in extra.items()}
        )
        x = self.prepared.model_input(apply_modifiers(self.transforms, batch, self.rows))
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = self.settings.autocast
        with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            activations = self.capture.run(self.runner, x) if self.layer_keys else {}
        return {key: value.float() for key, value in activations.items()}

    def _loss_values(
        self, images: torch.Tensor, activations: dict[str, torch.Tensor], finite: torch.Tensor
    ) -> list[torch.Tensor]:
        """Each term's per-image values; each term reads its own view of `images`, whose gradient is watched."""
        values = []
        for index, term in enumerate(self.terms):
            own = images.view_as(images)
            _watch_gradient(own, finite, index)
            ctx = LossContext(images=own, views=self.views, activations=activations, targets=self.targets)
            values.append(ctx.per_image(term(ctx)))
        return values

    def _backward(self, total: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if not total.requires_grad:
            raise FeatvisValueError(
                "losses do not depend on the input image; check the layers and filter_indices they read"
            )
        # backward of the score, so backprop modifiers see the gradient of what is maximized
        (-total).backward()

    def _update(self, step: int) -> None:
        """Adam's step at this step's learning rate, then each parameterization's projection."""
        for group, rate in zip(self.optimizer.param_groups, self.rates):
            group["lr"] = rate * self.settings.lr_factor(step, self.steps)
        self.optimizer.step()
        for each in self.made:
            each.project()

    def outcome(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The images as they are now, and the other optimized inputs scaled to their ranges."""
        with torch.no_grad():
            images = self.param().detach()
            inputs = {name: self.prepared.inputs.scaled(name, other()) for name, other in self.others.items()}
        return images, inputs


def _watch_gradient(node: torch.Tensor, finite: torch.Tensor, index: int) -> None:
    """Record in ``finite[index]`` whether the gradient reaching `node` is finite (no host sync)."""

    def hook(grad: torch.Tensor) -> None:
        finite[index] = grad.isfinite().all()

    node.register_hook(hook)


_SYNC_EVERY = 16


class _StepLog:
    """Per-step term means kept on the device and read back in blocks, checked for NaN/inf."""

    def __init__(self, names: list[str], layers: list[str] | None = None, autocast: bool = False):
        self.names = [*names, "total"]
        self.layers = layers or []  # the layers the terms read, whose outputs are checked too
        self.autocast = autocast
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
            if not all(ok) or not all(math.isfinite(v) for v in values):
                _raise_non_finite(step, self.names[:-1], values, ok, self.layers, self.autocast)
            for name, value in zip(self.names, values):
                self.history[name].append(value)
        return rows[-1]


def _raise_non_finite(
    step: int,
    names: list[str],
    values: list[float],
    finite: list[bool],
    layers: Sequence[str] = (),
    autocast: bool = False,
) -> None:
    """Name the step and the first culprit: the model's output on the image (where lowering lr cannot
    help), a term's value, a term's gradient, the model's gradient, the image parameters' gradient.
    `finite`: each term's gradient, the model's gradient, the parameters' gradient, each layer's output."""
    bad_layers = [layer for layer, ok in zip(layers, finite[len(names) + 2 :]) if not ok]
    if bad_layers:
        image = "the starting image" if step == 0 else f"the image of step {step + 1}, in input_range"
        raise NonFiniteError(
            f"step {step + 1}: the output of layer(s) {', '.join(map(repr, bad_layers))} is NaN or infinite "
            f"on {image}: the model outputs inf/nan on this input (not a divergence of the optimization); "
            f"check the model, preprocess and input_range{' (and autocast=)' if autocast else ''}"
        )
    bad_values = [n for n, v in zip([*names, "total"], values) if not math.isfinite(v)]
    bad_grads = [n for n, ok in zip(names, finite) if not ok]
    if bad_values:
        where = f"term(s) {', '.join(bad_values)}"
    elif bad_grads:
        where = f"the gradient of term(s) {', '.join(bad_grads)}"
    elif not finite[len(names)]:
        where = "the gradient that comes back through the model (before the grad modifier)"
    else:
        where = "the gradient of the image parameters"
    raise NonFiniteError(f"step {step + 1}: {where} became NaN or infinite; lower lr or the loss weights")
