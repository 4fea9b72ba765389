"""A faster stand-in for the model during a visualization: batch norms and zero pads folded into convolutions.

In eval mode a `BatchNorm2d` right after a `Conv2d` is an affine map per channel,
so it can be folded into the convolution's weights and bias, and a symmetric
`ZeroPad2d` right before a convolution can become the convolution's own padding.
On EfficientNet-Lite0 up to `_blocks.10` (224 px, batch 4, 2 CPU cores) that
makes a forward+backward about 1.7x faster, and 2.3x with channels-last input.

Without gradients on the CPU, a convolution whose output goes straight into a ReLU,
ReLU6/Hardtanh, SiLU or GELU module also applies that activation in its own oneDNN pass
(the kernel PyTorch's compiler uses), which saves a read and a write of every activation:
on Lite0 at 112 px, batch 16, 1.5x more masked forwards per second for Score-CAM.

`fused_copy` builds a copy of the model that shares every parameter and buffer
tensor, and every module it does not change, with it (only folded convolutions
get new, frozen weights); the user's model is never changed. Modules the
objective reads, and modules run more than once, are left as they are.
`optimize` runs the copy and the model on one random input first and uses the
copy only when the targets' outputs agree (`tolerance`).

Examples:
    >>> x = lite0.preprocess(255 * torch.rand(1, 3, 224, 224))
    >>> with ModelGuard(lite0.model):
    ...     fast = fused_copy(lite0.model, x, probe(lite0.model, x).calls, keep={"_blocks.10"})
    >>> sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    0
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
import copy
import itertools
import math

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from featvis.errors import LayerNotFoundError, ModelError
from featvis.model.targets import Capture, ModelGuard, Probe, StopForward, Target, forward_hooks, is_keras


def _has_hooks(model: nn.Module, ignore: Collection[int] = ()) -> bool:
    """Whether any module carries hooks (the user's or anyone's) other than those whose ids are in
    `ignore` (featvis's own captures, silent unless their own pass runs): a copy would not run them."""
    tables = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(
        key not in ignore
        for module in model.modules()
        for table in tables
        for key in (getattr(module, table, None) or {})
    )


def _pointwise(module: nn.Module) -> tuple[str, list[float], str] | None:
    """oneDNN's name, scalars and algorithm for an activation module it can apply in a convolution."""
    if isinstance(module, nn.ReLU):
        return "relu", [], ""
    if isinstance(module, nn.Hardtanh):  # ReLU6 too
        return "hardtanh", [float(module.min_val), float(module.max_val)], ""
    if isinstance(module, nn.SiLU):
        return "swish", [], ""
    if isinstance(module, nn.GELU):
        return "gelu", [], module.approximate
    return None


def _pointwise_convolution_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _find_pairs(
    model: nn.Module, example: torch.Tensor, calls: dict[str, int], keep: Collection[str]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(conv, batch norm), (pad, conv) and (conv, activation) pairs seen in one forward pass on
    `example`; an activation is paired with a conv when its input is the conv's output (or that
    of the batch norm folded into it), unchanged since.

    The pass stops after the last call of every module in `keep` (what runs later
    is never run by the visualization either).
    """
    names = {module: name for name, module in model.named_modules()}
    remaining = {name: calls.get(name, 0) for name in keep}
    last_conv: dict[str, tuple[str, torch.Tensor]] = {}
    folds: list[tuple[str, str]] = []
    pads: list[tuple[str, str]] = []
    activated: list[tuple[str, str]] = []
    pad_outputs: dict[int, tuple[str, torch.Tensor]] = {}
    conv_outputs: dict[int, tuple[str, torch.Tensor, int]] = {}  # id -> (conv, output, its version)

    def foldable(name: str) -> bool:
        return calls.get(name, 0) == 1 and name not in keep

    def hook(module, inputs, output):
        name = names[module]
        if name in remaining:
            remaining[name] -= 1
            if not any(count > 0 for count in remaining.values()):
                raise StopForward
        if _pointwise(module) is not None and name not in keep and inputs:
            source = inputs[0]
            conv_name, conv_output, version = conv_outputs.pop(id(source), ("", None, -1))
            if conv_output is source and source._version == version:
                activated.append((conv_name, name))
            return
        if not foldable(name) or not isinstance(output, torch.Tensor):
            return
        if isinstance(module, nn.ZeroPad2d) and len(set(module.padding)) == 1:
            pad_outputs[id(output)] = (name, output)
        elif isinstance(module, nn.Conv2d):
            last_conv["conv"] = (name, output)
            conv_outputs[id(output)] = (name, output, output._version)
            source = inputs[0] if inputs else None
            children = list(module.named_children())
            if (
                module.padding_mode == "zeros"
                and tuple(module.padding) == (0, 0)
                and isinstance(source, torch.Tensor)
            ):
                if len(children) == 1 and isinstance(children[0][1], nn.ZeroPad2d):
                    inner = f"{name}.{children[0][0]}"
                    if foldable(inner) and len(set(children[0][1].padding)) == 1:
                        pads.append((inner, name))
                elif not children and id(source) in pad_outputs and pad_outputs[id(source)][1] is source:
                    pads.append((pad_outputs[id(source)][0], name))
        elif isinstance(module, nn.BatchNorm2d) and "conv" in last_conv:
            conv_name, conv_output = last_conv.pop("conv")
            if (
                inputs
                and inputs[0] is conv_output
                and module.running_mean is not None
                and not module.training
            ):
                folds.append((conv_name, name))
                if id(conv_output) in conv_outputs:  # in the copy the conv gives what the norm gave
                    conv_outputs[id(output)] = (conv_name, output, output._version)

    with forward_hooks(names, hook), torch.no_grad():
        model(example)
    if not _pointwise_convolution_available():
        activated = []
    return folds, pads, activated


def _two(value) -> list[int]:
    """A conv2d argument (an int or a pair) as oneDNN's list of two."""
    return list(value) if isinstance(value, tuple | list) else [value, value]


class _ConvolutionWithActivation(TorchFunctionMode):
    """Inside a conv module's forward: its `torch.conv2d` call on `weight` done by oneDNN with the
    activation applied in the same pass (`applied` says whether it was)."""

    def __init__(self, weight: torch.Tensor, activation: tuple[str, list[float], str]):
        super().__init__()
        self.weight, self.activation, self.applied = weight, activation, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.conv2d and not self.applied:
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            given = dict(zip(names, args), **kwargs)
            x, padding = given["input"], given.get("padding", 0)
            if given["weight"] is self.weight and x.ndim == 4 and not isinstance(padding, str):
                self.applied = True
                attr, scalars, algorithm = self.activation
                return torch.ops.mkldnn._convolution_pointwise(
                    x,
                    self.weight,
                    given.get("bias"),
                    _two(padding),
                    _two(given.get("stride", 1)),
                    _two(given.get("dilation", 1)),
                    given.get("groups", 1),
                    attr,
                    scalars,
                    algorithm,
                )
        return func(*args, **kwargs)


def _apply_in_convolution(conv: nn.Module, activation: nn.Module) -> None:
    """Make `conv` and `activation`, modules of the copy, apply the activation inside the
    convolution when it runs without gradients on the CPU in float32: the activation then passes
    that output through (anything else it is given, it applies itself to)."""
    kind = _pointwise(activation)
    patched = "_applied_by_convs" in activation.__dict__  # by another conv feeding it
    done: dict[int, tuple[torch.Tensor, int | None]] = activation.__dict__.setdefault("_applied_by_convs", {})
    conv_forward, activation_forward = conv.forward, activation.forward

    def forward_with_activation(x, *args, **kwargs):
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32:
            return conv_forward(x, *args, **kwargs)
        mode = _ConvolutionWithActivation(conv.weight, kind)
        with mode:
            out = conv_forward(x, *args, **kwargs)
        if mode.applied:  # inference tensors keep no version: in-place changes go unseen there
            done[id(conv)] = (out, None if out.is_inference() else out._version)
        return out

    def activation_unless_applied(x, *args, **kwargs):
        for key, (out, version) in list(done.items()):
            if out is x:
                del done[key]
                if version is not None and x._version != version:  # a branch the pairing pass did not take
                    raise ModelError(
                        f"the model changed the output of {type(conv).__name__} in place before its "
                        f"{type(activation).__name__}, which featvis's fused copy had moved into the "
                        "convolution; pass fuse=False to run the model as it is"
                    )
                return x
        return activation_forward(x, *args, **kwargs)

    conv.forward = forward_with_activation
    if not patched:
        activation.forward = activation_unless_applied


def _fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Give `conv` (a module of the copy) new frozen weights that include `norm`."""
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = -norm.running_mean.double() * scale
        if norm.bias is not None:
            shift = shift + norm.bias.double()
        if conv.bias is not None:
            shift = shift + conv.bias.double() * scale
        weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.ndim - 1)))
        conv.weight = nn.Parameter(weight.to(conv.weight.dtype), requires_grad=False)
        conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)


def _copy_along(model: nn.Module, names: Collection[str]) -> nn.Module:
    """A copy of `model` in which the named modules and their ancestors are new module objects
    (shallow copies with their own child, parameter and buffer tables and no hooks) and every
    other module, parameter and buffer is the model's own. Changing a named module of the copy
    (its weights, a child, an attribute) leaves the model alone; the copy costs a few hundred
    microseconds where a deep copy of a whole network costs tens of milliseconds."""
    paths = {""}
    for name in names:
        parts = name.split(".") if name else []
        paths.update(".".join(parts[:i]) for i in range(len(parts) + 1))

    def copy_of(module: nn.Module, prefix: str) -> nn.Module:
        new = copy.copy(module)  # its own attribute table
        new._parameters = dict(module._parameters)
        new._buffers = dict(module._buffers)
        for key, value in module.__dict__.items():
            if "hook" in key and isinstance(value, dict):
                setattr(new, key, type(value)())
        new._modules = {}
        for child_name, child in module._modules.items():
            path = f"{prefix}.{child_name}" if prefix else child_name
            new._modules[child_name] = copy_of(child, path) if child is not None and path in paths else child
        return new

    return copy_of(model, "")


def fused_copies(
    model: nn.Module,
    example: torch.Tensor,
    calls: dict[str, int],
    keep: Collection[str],
    own_hooks: Collection[int] = (),
) -> Iterator[nn.Module]:
    """Copies of `model` with batch norms and symmetric zero pads folded into convolutions, fastest
    first: the first also has the convolutions that feed an activation apply it (when they run
    without gradients on the CPU), the second, when there is one, does not. The pairs to fold are
    found now; each copy is built when it is asked for.

    `calls` counts how often each module ran (from `targets.probe`); modules run
    more than once and those named in `keep` are not touched. Returns no copy when
    there is nothing to fold or the model carries hooks other than `own_hooks` (the ids of
    featvis's own capture hooks, which stay silent outside their own pass, so a copy that
    shares their modules is not changed by them). The model must be in eval mode (see
    `targets.ModelGuard`).

    Examples:
        >>> fast, *slower = fused_copies(model, x[:1], probe(model, x[:1]).calls, keep={"_blocks.10"})
    """
    if _has_hooks(model, own_hooks) or any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
        return iter(())  # a copy would not run the hooks; TorchScript takes no Python hooks
    folds, pads, activated = _find_pairs(model, example, calls, keep)
    variants = [activated, []] if activated and (folds or pads) else [activated]
    copies = (_folded_copy(model, folds, pads, pairs, keep) for pairs in variants if folds or pads or pairs)
    return (fused for fused in copies if fused is not None)


def fused_copy(
    model: nn.Module,
    example: torch.Tensor,
    calls: dict[str, int],
    keep: Collection[str],
    own_hooks: Collection[int] = (),
) -> nn.Module | None:
    """The fastest of `fused_copies`, or None.

    Examples:
        >>> fast = fused_copy(model, x[:1], probe(model, x[:1]).calls, keep={"_blocks.10"})
    """
    return next(fused_copies(model, example, calls, keep, own_hooks), None)


def _folded_copy(model, folds, pads, activated, keep) -> nn.Module | None:
    changed = {name for pair in (*folds, *pads, *activated) for name in pair}
    try:
        fused = _copy_along(model, changed | set(keep))
    except Exception:  # a model that cannot be copied is run as it is
        return None
    for conv_name, norm_name in folds:
        _fold_batch_norm(fused.get_submodule(conv_name), fused.get_submodule(norm_name))
    for pad_name, conv_name in pads:
        amount = fused.get_submodule(pad_name).padding[0]
        fused.get_submodule(conv_name).padding = (amount, amount)
    for conv_name, activation_name in activated:
        _apply_in_convolution(fused.get_submodule(conv_name), fused.get_submodule(activation_name))
    for name in [norm for _, norm in folds] + [pad for pad, _ in pads]:  # folded in: now an identity
        parent, _, attribute = name.rpartition(".")
        setattr(
            fused.get_submodule(parent), attribute, nn.Identity().train(fused.get_submodule(name).training)
        )
    return fused


# Without gradients on the CPU, a forward runs fastest in chunks of about 16 images of 112 px,
# whose activations stay in the caches (Lite0's fused copy, 2 cores, images per second, median
# of 8: 480 at 16 rows of 112 px, 350 at 64 rows; at 224 px 103 at 4 rows, 77 at 32 rows).
CPU_CHUNK_PIXELS = 16 * 112 * 112


def chunk_rows(x: torch.Tensor, elsewhere: int) -> int:
    """How many rows of `x` (N, C, *size) to run per forward: on the CPU as many as hold
    `CPU_CHUNK_PIXELS`, on other devices `elsewhere`."""
    return max(1, CPU_CHUNK_PIXELS // math.prod(x.shape[2:])) if x.device.type == "cpu" else elsewhere


def relative_difference(reference: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> float:
    """The largest |difference| between two sets of target outputs, relative to each target's largest
    |output| (infinite when a target is missing or has another shape)."""
    worst = 0.0
    for key, expected in reference.items():
        got = outputs.get(key)
        if got is None or got.shape != expected.shape:
            return float("inf")
        scale = expected.abs().max().item() + 1e-6
        worst = max(worst, (got - expected).abs().max().item() / scale)
    return worst


def tolerance(device: torch.device) -> float:
    """How far a stand-in's outputs may be from the model's, relative to their largest value.

    On NVIDIA GPUs PyTorch runs float32 convolutions in TF32 by default, which moves the
    outputs of two equivalent graphs apart by about 1e-3; a wrong fold moves them by
    far more (tests/test_fusion.py).
    """
    return 2e-2 if device.type == "cuda" else 1e-3


def choose_runner(
    model: nn.Module,
    check_input: torch.Tensor,
    seen: Probe,
    targets: Collection[Target],
    guard: ModelGuard,
    pre_softmax: set[str],
    *,
    fuse: bool,
    channels_last: bool | None,
) -> tuple[nn.Module, Capture, bool]:
    """The module to run, its `Capture`, and whether to feed it channels-last input.

    With ``fuse=True`` the first of `fused_copies` whose targets' outputs on
    `check_input` agree with the model's is used. ``channels_last=None`` turns
    channels-last input on when the outputs agree too: on the CPU for either, on a
    CUDA GPU for the fused copy only (the measured cases: on an H100, Lite0's fused
    copy ran 1.2x faster channels-last and the model itself 7% slower). True or
    False is obeyed as given.

    Examples:
        >>> runner, capture, channels_last = choose_runner(model, x, seen, targets, guard, set(),
        ...                                                fuse=True, channels_last=None)
        >>> activations = capture.run(runner, x)
    """
    targets = list(targets)
    image_input = check_input.ndim == 4
    automatic = channels_last is None and image_input and check_input.device.type in ("cpu", "cuda")
    copies: Iterator[nn.Module] = iter(())
    if targets and fuse and image_input and not is_keras(model):  # before featvis's hooks go on
        copies = fused_copies(
            model, check_input, seen.calls, keep={t.name for t in targets}, own_hooks=guard.hook_ids()
        )
    capture = Capture(targets, guard, pre_softmax)
    if not targets:
        return model, capture, False
    model_automatic = automatic and check_input.device.type == "cpu"
    first = next(copies, None)
    if first is None and not model_automatic:
        return model, capture, bool(channels_last)
    with torch.no_grad():
        reference = {k: v.clone() for k, v in capture.run(model, check_input).items()}

    def candidates() -> Iterator[tuple[nn.Module, Capture, bool]]:  # (runner, its capture, channels-last)
        layouts = [True, False] if automatic else [bool(channels_last)]
        for fused in itertools.chain([first] if first is not None else [], copies):
            moved = [Target(t.name, fused.get_submodule(t.name), t.call) for t in targets]
            fused_capture = Capture(moved, guard, pre_softmax)
            yield from ((fused, fused_capture, layout) for layout in layouts)
        if model_automatic or channels_last:  # the model itself channels-last: worth a try, or asked for
            yield model, capture, True

    for runner, runner_capture, layout in candidates():
        x = check_input.contiguous(memory_format=torch.channels_last) if layout else check_input
        try:
            with torch.no_grad():
                outputs = runner_capture.run(runner, x)
        except (ModelError, LayerNotFoundError):
            if runner is model and channels_last:
                raise  # channels-last input asked for and the model cannot take it
            continue
        if relative_difference(reference, outputs) <= tolerance(check_input.device):
            return runner, runner_capture, layout
    return model, capture, bool(channels_last)
