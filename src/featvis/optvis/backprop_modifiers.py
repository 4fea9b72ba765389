"""Backprop modifiers: change how gradients flow back through every ReLU, GELU and SiLU of the model.

They act on ``nn.ReLU``/``nn.ReLU6`` modules and on functional calls (``F.relu``,
``torch.relu``, ``Tensor.relu``, their in-place forms, ``F.relu6``, ``F.hardtanh``
with a lower bound of 0) alike, and on ``nn.GELU``/``F.gelu`` and ``nn.SiLU``/``F.silu``
(transformers, ConvNeXt, EfficientNet), whose ``local_grad`` is their own derivative,
through a `torch.overrides.TorchFunctionMode`, so the model is never touched.
A modifier is a function ``rule(x, grad_output, local_grad) -> grad_input``, where
``local_grad`` is the ReLU's own derivative at ``x`` (0 or 1) and ``grad_output``
is the gradient of the score being maximized (minus the loss), so ``'guided'``
keeps what increases the unit, as in Springenberg et al.

Examples:
    >>> with modify_backprop("guided"):
    ...     model(x)[0, 285].backward()
    >>> def my_rule(x, grad_output, local_grad):
    ...     return grad_output * local_grad * (x > 0.1)
    >>> featvis.visualize_saliency(model, "_fc", 285, image, backprop_modifier=my_rule)
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import math
import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from featvis.errors import bad_value, check_number
from featvis.registry import Registry

BackpropRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guided(x: torch.Tensor, grad_output: torch.Tensor, local_grad: torch.Tensor) -> torch.Tensor:
    """Guided backprop: pass a gradient only where the input was positive and the gradient positive
    (times the activation's own derivative: 1 for a ReLU, GELU's or SiLU's there)."""
    return grad_output.clamp(min=0) * local_grad * (x > 0).to(grad_output.dtype)


def rectified(x: torch.Tensor, grad_output: torch.Tensor, local_grad: torch.Tensor) -> torch.Tensor:
    """Rectified (deconvnet) backprop: pass only positive gradients, whatever the input."""
    return grad_output.clamp(min=0)


def leaky(share: float, *, budget: float | None = None) -> BackpropRule:
    """A rule that lets `share` of the gradient through where an activation is off, the full
    gradient where it is on: ``grad_output * (local_grad + share * (1 - local_grad))``.

    `budget` caps the sum of the shares over the activations one forward pass runs: with
    n of them on the path to the target, each lets ``min(share, budget / n)`` through, so
    a deeper model leaks less at each (None: no cap).

    Images made with a little leak transfer better to other networks (a partly linear
    backward pass, as LinBP does at share 1 for transferable adversarial images). The
    ``"leaky"`` rule, activation maximization's default, is ``leaky(0.05, budget=1.65)``:
    0.05 at each of EfficientNet-Lite0's 33 ReLU6s, where it raised what Lite2 recognizes of
    Lite0's class images from 89% to 96% (top-1). The more leaks, the less the steps follow
    the class: on Lite0 a share of 0.15 (a sum of 5) gave images Lite0 itself reads 87% of,
    0.3 none; on Lite2 (43 ReLU6s), 0.1 already failed (benchmarks/RESULTS.md).

    Examples:
        >>> featvis.visualize_activation(model, "fc", 285, backprop_modifier=leaky(0.02))
    """
    return LeakyRule(share, budget)


class LeakyRule:
    """The rule `leaky` makes. Under `modify_backprop` a ReLU runs it in two fused operations
    (ReLU's own backward and a lerp), with the share its block's count of activations allows."""

    def __init__(self, share: float, budget: float | None = None):
        check_number("share", share, minimum=0)
        if share > 1:
            raise bad_value("share", share, "a number in [0, 1]")
        if budget is not None:
            check_number("budget", budget, positive=True)
        self.share, self.budget = float(share), budget

    def share_for(self, count: int) -> float:
        """The share of each of `count` activations: `share`, or less where `budget` caps their sum.

        Examples:
            >>> leaky(0.05, budget=1.65).share_for(33), leaky(0.05, budget=1.65).share_for(66)
            (0.05, 0.025)
        """
        if self.budget is None or count * self.share <= self.budget:
            return self.share
        return self.budget / count

    def with_share(self, share: float) -> BackpropRule:
        """The plain rule ``f(x, grad_output, local_grad)`` at this share."""

        def rule(x: torch.Tensor, grad_output: torch.Tensor, local_grad: torch.Tensor) -> torch.Tensor:
            return grad_output * (local_grad + share * (1 - local_grad))

        return rule

    def __call__(self, x: torch.Tensor, grad_output: torch.Tensor, local_grad: torch.Tensor) -> torch.Tensor:
        return self.with_share(self.share)(x, grad_output, local_grad)

    def __repr__(self) -> str:
        return f"leaky({self.share}, budget={self.budget})"


LEAKY = leaky(0.05, budget=0.05 * 33)
"""The ``"leaky"`` rule: 0.05 at each of up to 33 activations (EfficientNet-Lite0's ReLU6s), less
at each of more."""

BACKPROP_MODIFIERS: Registry[BackpropRule] = Registry(
    "backprop modifier",
    "backprop_modifier",
    {"guided": guided, "relu": rectified, "rectified": rectified, "deconv": rectified, "leaky": LEAKY},
)
"""The named backprop rules; ``BACKPROP_MODIFIERS.register("name", rule)`` adds one."""


def get(modifier: str | BackpropRule | None) -> BackpropRule | None:
    """Resolve a name or callable to a backprop rule (None means plain gradients)."""
    return BACKPROP_MODIFIERS.resolve(modifier)


def _clamp(ctx, x: torch.Tensor, upper: float | None, inplace: bool) -> torch.Tensor:
    """A ReLU's forward inside an autograd function: `x` clamped to [0, upper], in place if asked."""
    if inplace:
        ctx.mark_dirty(x)
        return x.clamp_(0, upper)
    return x.clamp(0, upper)


class _ModifiedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, upper, rule, inplace):
        local = (x > 0) if upper is None else (x > 0) & (x < upper)
        ctx.rule = rule
        out = _clamp(ctx, x, upper, inplace)
        ctx.save_for_backward(local, x if not inplace else out)
        return out

    @staticmethod
    def backward(ctx, grad_output):
        local, x = ctx.saved_tensors
        return ctx.rule(x, grad_output, local.to(grad_output.dtype)), None, None, None


class _LeakyReLU(torch.autograd.Function):
    """A ReLU (clamped at `upper` if given) whose backward lets ``share()`` of the gradient through
    where it is off: ``lerp(grad, relu_backward(grad), 1 - share())``. The share is asked for in
    the backward pass, once the forward pass has counted its activations."""

    @staticmethod
    def forward(ctx, x, upper, share, inplace):
        ctx.upper, ctx.share = upper, share
        out = _clamp(ctx, x, upper, inplace)
        ctx.save_for_backward(out)  # off where out is 0 (or `upper`), as where x is
        return out

    @staticmethod
    def backward(ctx, grad_output):
        (out,) = ctx.saved_tensors
        if ctx.upper is None:
            on = torch.ops.aten.threshold_backward(grad_output, out, 0)
        else:
            on = torch.ops.aten.hardtanh_backward(grad_output, out, 0.0, ctx.upper)
        return torch.lerp(grad_output, on, 1 - ctx.share()), None, None, None


class _ModifiedSmooth(torch.autograd.Function):
    """GELU or SiLU forward as usual; backward through `rule` with the activation's derivative."""

    @staticmethod
    def forward(ctx, x, function, rule, kwargs):
        ctx.rule, ctx.function, ctx.kwargs = rule, function, kwargs
        ctx.save_for_backward(x)
        return function(x, **kwargs)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        local = _derivative(ctx.function, x.detach().float(), ctx.kwargs.get("approximate", "none"))
        return ctx.rule(x, grad_output, local.to(grad_output.dtype)), None, None, None


def _derivative(function, x: torch.Tensor, approximate: str) -> torch.Tensor:
    """SiLU's or GELU's derivative at `x`, in closed form (no autograd inside a backward pass)."""
    if function is F.silu:
        s = torch.sigmoid(x)
        return s * (1 + x * (1 - s))
    if approximate == "tanh":
        c = math.sqrt(2 / math.pi)
        inner = c * (x + 0.044715 * x**3)
        t = torch.tanh(inner)
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return cdf + x * pdf


_SMOOTH = {F.gelu: ("approximate",), F.silu: ()}

_RELUS = {
    torch.relu: (None, False),
    torch.relu_: (None, True),
    torch.Tensor.relu: (None, False),
    torch.Tensor.relu_: (None, True),
    F.relu: (None, None),
    F.relu_: (None, True),
    F.relu6: (6.0, None),
}


class _BackpropMode(TorchFunctionMode):
    def __init__(self, rule: BackpropRule):
        super().__init__()
        self.rule = rule
        self.activations = 0  # those this block ran: a leaky rule's budget is spread over them

    def leaky_share(self) -> float:
        return self.rule.share_for(self.activations)

    def smooth_rule(
        self, x: torch.Tensor, grad_output: torch.Tensor, local_grad: torch.Tensor
    ) -> torch.Tensor:
        if isinstance(self.rule, LeakyRule):
            return self.rule.with_share(self.leaky_share())(x, grad_output, local_grad)
        return self.rule(x, grad_output, local_grad)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args else None
        if not (isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()):
            return func(*args, **kwargs)
        if func in _RELUS:
            upper, inplace = _RELUS[func]
            if inplace is None:  # F.relu's flag, which it hands on as a keyword
                inplace = bool(kwargs.get("inplace", False))
            return self.relu(x, upper, inplace)
        if func in _SMOOTH:
            kept = {k: v for k, v in kwargs.items() if k in _SMOOTH[func]}  # F.gelu's is keyword-only
            self.activations += 1
            return _ModifiedSmooth.apply(x, func, self.smooth_rule, kept)
        if func is F.hardtanh and kwargs.get("min_val") == 0:  # nn.ReLU6 is a Hardtanh(0, 6);
            # F.hardtanh hands on its options as keywords
            return self.relu(x, float(kwargs["max_val"]), bool(kwargs.get("inplace", False)))
        return func(*args, **kwargs)

    def relu(self, x: torch.Tensor, upper: float | None, inplace: bool) -> torch.Tensor:
        self.activations += 1
        if isinstance(self.rule, LeakyRule):
            return _LeakyReLU.apply(x, upper, self.leaky_share, inplace)
        return _ModifiedReLU.apply(x, upper, self.rule, inplace)


@contextlib.contextmanager
def modify_backprop(modifier: str | BackpropRule | None):
    """Within this block, ReLUs backpropagate with the given rule (None: unchanged).

    A leaky rule's budget is spread over the activations the block runs, so a block holds
    one forward pass."""
    rule = get(modifier)
    if rule is None:
        yield
        return
    with _BackpropMode(rule):
        yield


class _ScaleGradient(torch.autograd.Function):
    """The identity forward; the gradient times `factor` backward."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.factor, None


_ADDS = {torch.add, torch.Tensor.add, torch.Tensor.add_}  # `a + b` is Tensor.add, `a += b` Tensor.add_


class _SkipGradientMode(TorchFunctionMode):
    """Residual additions, ``branch + skip`` where the skip is the input of a module (the block's
    own input) and the branch is not a module's input, pass the branch's gradient times `factor`."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor
        self.module_inputs: dict[int, weakref.ref] = {}

    def record(self, module, inputs) -> None:
        for value in inputs:
            if isinstance(value, torch.Tensor):
                self.module_inputs[id(value)] = weakref.ref(value)

    def is_module_input(self, value) -> bool:
        ref = self.module_inputs.get(id(value))
        return ref is not None and ref() is value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ADDS and len(args) == 2 and not kwargs and torch.is_grad_enabled():
            a, b = args
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
                skips = self.is_module_input(a), self.is_module_input(b)
                if skips == (False, True) and a.requires_grad:  # branch + skip
                    if func is torch.Tensor.add_:  # `out += identity`: the sum stays in `out`
                        return a.copy_(_ScaleGradient.apply(a.clone(), self.factor) + b)
                    return func(_ScaleGradient.apply(a, self.factor), b)
                if skips == (True, False) and b.requires_grad:  # skip + branch
                    return func(a, _ScaleGradient.apply(b, self.factor))
        return func(*args, **kwargs)


@contextlib.contextmanager
def skip_gradient(factor: float | None):
    """Within this block, the gradient into the residual branches of a model's blocks is `factor`
    times the plain one, the skip connections' unchanged (the skip gradient method of Wu et al.
    2020, which makes images that transfer better to other networks). A residual addition is
    ``branch + skip`` where the skip is a module's own input (``x + block(x)`` inside a block's
    forward, ResNet's ``out += identity``, a transformer's ``x + attention(x)``). None: unchanged.

    Examples:
        >>> with skip_gradient(0.5):
        ...     model(x)[0, 285].backward()
    """
    if factor is None:
        yield
        return
    mode = _SkipGradientMode(factor)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(mode.record)
    try:
        with mode:
            yield
    finally:
        handle.remove()
