"""Finding layers, capturing their outputs, and leaving the model as it was.

A *layer* is given as a qualified module name (``"_blocks.10"``), a module
object, or an int. An int indexes the calls of the model's leaf modules in the
order they run in a forward pass (``0`` is the first, ``-1`` the last;
`layer_names` lists them). A module that runs more than once per forward pass
is chosen by call with a ``#k`` suffix: ``"_blocks.1._swish#0"`` is its first
call, ``"#1"`` the second; `layer_names` lists every call that way.

Examples:
    >>> featvis.layer_names(model, input_shape=(3, 224, 224))[:3]
    ['_conv_stem.static_padding', '_conv_stem', '_bn0']
    >>> featvis.find_layer_idx(model, "_fc", input_shape=(3, 224, 224))
    ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
import contextlib
from dataclasses import dataclass, field
import itertools
import warnings

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from featvis.errors import (  # FeatvisWarning re-exported: featvis.targets.FeatvisWarning
    FeatvisError,
    FeatvisWarning,
    LayerNotFoundError,
    ModelError,
    bad_type,
    bad_value,
    close_matches,
)
from featvis.model.inputs import ModelInputs, is_keras  # is_keras re-exported

LayerSpec = str | int | nn.Module
OutputPick = str | int | Callable[[object], torch.Tensor] | None


@dataclass(frozen=True)
class Target:
    """A resolved layer: its qualified name, its module and which call of it."""

    name: str
    module: nn.Module
    call: int = 0
    unit_axis: int = 1  # where its units lie in its (channels-first for Keras) output; see `unit_axis`

    @property
    def key(self) -> str:
        return f"{self.name}#{self.call}"

    def __str__(self) -> str:
        return self.name or "<model output>"


class ModelGuard(contextlib.AbstractContextManager):
    """Puts the model in eval mode with frozen weights, and restores everything on exit.

    Training flags, ``requires_grad`` flags and hooks are restored however the
    block ends (exceptions and Ctrl-C included).

    Examples:
        >>> with ModelGuard(model) as guard:
        ...     guard.add_hook(model.fc.register_forward_hook(fn))
    """

    def __init__(self, model: nn.Module, inputs: ModelInputs | None = None, output: OutputPick = None):
        if not isinstance(model, nn.Module):
            raise bad_type("model", model, "a torch.nn.Module")
        self.model = model
        self.inputs = inputs  # how a model of several inputs is called (see featvis.inputs)
        self.output = check_output_pick(output)  # which part of a structured model output to read
        self._handles: list = []

    def __enter__(self) -> ModelGuard:
        self._training = [(m, m.training) for m in self.model.modules()]
        self._requires_grad = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.eval()
        for p, _ in self._requires_grad:
            p.requires_grad_(False)
        return self

    def add_hook(self, handle) -> None:
        self._handles.append(handle)

    @contextlib.contextmanager
    def hooks(
        self,
        forward: Iterable[tuple[nn.Module, Callable]] = (),
        pre: Iterable[tuple[nn.Module, Callable]] = (),
    ) -> Iterator[None]:
        """Forward hooks and forward pre-hooks, each a (module, hook) pair, for the block. They are
        the guard's: removed when the block ends and, whatever happens, when the guard exits.

        Examples:
            >>> with guard.hooks(forward=[(model.fc, lambda module, inputs, output: output * 2)]):
            ...     doubled = model(x)
        """
        handles = []
        try:
            for module, hook in forward:
                handles.append(module.register_forward_hook(hook))
                self.add_hook(handles[-1])
            for module, hook in pre:
                handles.append(module.register_forward_pre_hook(hook))
                self.add_hook(handles[-1])
            yield
        finally:
            for handle in handles:
                handle.remove()  # a second removal (after the guard's exit) does nothing
            self._handles = [h for h in self._handles if all(h is not handle for handle in handles)]

    def hook_ids(self) -> set[int]:
        """The ids of the hooks added through `add_hook` and not yet removed (featvis's own)."""
        return {handle.id for handle in self._handles}

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, training in self._training:
            module.training = training
        for p, flag in self._requires_grad:
            p.requires_grad_(flag)


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The original module of a `torch.compile`d model (featvis hooks its layers), with a warning saying so."""
    original = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(original, nn.Module):
        warnings.warn(
            "the model was compiled with torch.compile; featvis runs its original module "
            "(model._orig_mod), whose layers it can hook",
            FeatvisWarning,
            stacklevel=3,
        )
        return original
    return model


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter or buffer (float32 for none)."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


def infer_channels(model: nn.Module, index: int = 0) -> int:
    """The input channel count read from the model: a Keras model's input shape (of input `index`),
    else the `in_channels` of its first convolution (in module order); 3 when neither tells.

    Examples:
        >>> infer_channels(nn.Sequential(nn.Conv2d(1, 8, 3)))
        1
    """
    if is_keras(model):
        shape = _keras_input_shape(model, index)
        return int(shape[-1]) if shape and shape[-1] is not None else 3
    conv = _first_conv(model)
    return 3 if conv is None else int(conv.in_channels)


def infer_spatial_dims(model: nn.Module, index: int = 0) -> int:
    """How many spatial axes the model's input has: a Keras model's input rank less 2 (of input
    `index`), else that of its first convolution (Conv1d: 1, signals; Conv2d: 2, images; Conv3d: 3,
    volumes); 2 when neither tells.

    Examples:
        >>> infer_spatial_dims(nn.Sequential(nn.Conv1d(1, 8, 5)))
        1
    """
    if is_keras(model):
        shape = _keras_input_shape(model, index)
        return max(1, len(shape) - 2) if shape else 2
    conv = _first_conv(model)
    return 2 if conv is None else len(conv.kernel_size)


def _keras_input_shape(model: nn.Module, index: int) -> tuple | None:
    inputs = getattr(model, "inputs", None) or []
    return getattr(inputs[index], "shape", None) if len(inputs) > index else None


def _first_conv(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return next((t.device for t in tensors), torch.device("cpu"))


def resolve_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    """The device to run on: the model's by default, else a valid and available one."""
    if device is None:
        return model_device(model)
    try:
        resolved = torch.device(device)
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available on this machine")
    except (RuntimeError, TypeError, ValueError) as err:
        raise bad_value(
            "device", device, f"an available torch device such as 'cpu' or 'cuda' ({err})"
        ) from err
    return resolved


MODEL_HINT = (
    "check the model and preprocess=, input_range=, channels= and size= (and inputs= for a model of "
    "several inputs)"
)


def size_hint(argument: str, shape: Sequence[int], default: bool) -> str:
    """The hint of a probe that ran on a random input of `shape` (N, C, *size): the argument that sets
    the size (``size`` or ``input_shape``), for a model that takes one input size only."""
    size = " x ".join(map(str, shape[2:]))
    example = (
        f"input_shape=({shape[1]}, {', '.join(['64'] * (len(shape) - 2))})"
        if argument == "input_shape"
        else "size=64"
    )
    why = "the default, as none was given" if default else f"as {argument}= gave"
    return (
        f"it ran on a random {size} input ({why}): a model that takes one input size needs "
        f"{argument}= with that size (e.g. {example}); also {MODEL_HINT}"
    )


class StopForward(Exception):
    """Raised by a hook to end a forward pass early, once every output it wants has run."""


@contextlib.contextmanager
def forward_hooks(modules: Iterable[nn.Module], hook: Callable) -> Iterator[None]:
    """`hook` as a forward hook on each of `modules` for the block, removed however it ends;
    a `StopForward` raised in the block ends it quietly.

    Examples:
        >>> with forward_hooks([model.fc], lambda module, inputs, output: print(output.shape)):
        ...     model(x)
    """
    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def forward_pre_hooks(modules: Iterable[nn.Module], hook: Callable) -> Iterator[None]:
    """`hook` as a forward pre-hook on each of `modules` for the block, removed however it ends."""
    handles = [module.register_forward_pre_hook(hook) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


_SOFTMAXES = {
    torch.softmax,
    torch.log_softmax,
    torch.nn.functional.softmax,
    torch.nn.functional.log_softmax,
    torch.Tensor.softmax,
    torch.Tensor.log_softmax,
}


# what an attention computes its weights with: a softmax over token pairs, or a fused kernel
_ATTENTIONS = {
    torch.nn.functional.scaled_dot_product_attention,
    torch.nn.functional.multi_head_attention_forward,
}


class SoftmaxRecorder(TorchFunctionMode):
    """Remembers the input of every softmax call, so a target can be read before it; `on_attention`
    (if given) is called at every attention: a softmax of a tensor of rank 3 or more (weights over
    token pairs, per head), or a fused attention kernel."""

    def __init__(self, on_attention: Callable[[], None] | None = None):
        super().__init__()
        self.inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.on_attention = on_attention

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        softmax = func in _SOFTMAXES and isinstance(out, torch.Tensor)
        if softmax:
            self.inputs[id(out)] = (out, args[0])
        if self.on_attention is not None and (func in _ATTENTIONS or (softmax and out.ndim >= 3)):
            self.on_attention()
        return out

    def pre_softmax(self, tensor: torch.Tensor) -> torch.Tensor | None:
        found = self.inputs.get(id(tensor))
        return found[1] if found is not None and found[0] is tensor else None


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    """Each module of the model and its name ('' for the model; Keras layers by their Keras name)."""
    names: dict[nn.Module, str] = {model: ""}
    if is_keras(model):
        for layer in model.layers:
            names.setdefault(layer, layer.name)
        return names
    for name, module in model.named_modules():
        names.setdefault(module, name)
    return names


def _is_leaf(model: nn.Module, module: nn.Module) -> bool:
    if is_keras(model):
        return module is not model
    return not any(True for _ in module.children())


def run_model(model: nn.Module, x: torch.Tensor, inputs: ModelInputs | None = None):
    """Call the model on NCHW images (NCL signals, NCDHW volumes), channels-last for a Keras model;
    with `inputs`, the images are one input and the model's others are fed beside them."""
    if is_keras(model) and x.ndim >= 3:
        x = x.movedim(1, -1)
    return model(x) if inputs is None else inputs.call(model, x)


def _channels_first(model: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """Keras outputs are channels-last; featvis works channels-first (N, C, ...)."""
    return output.movedim(-1, 1) if is_keras(model) and output.ndim >= 3 else output


def check_output_pick(output: object) -> OutputPick:
    """`output` as given, when it is a field name, a tuple index, a function or None."""
    if output is None or callable(output) or isinstance(output, str):
        return output
    if isinstance(output, int) and not isinstance(output, bool):
        return output
    raise bad_type(
        "output", output, "a field name (e.g. 'logits'), a tuple index, a function of the output, or None"
    )


def _fields(output: object) -> list[str]:
    if isinstance(output, Mapping):
        return [str(k) for k, v in output.items() if isinstance(v, torch.Tensor)]
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return [f for f in output._fields if isinstance(getattr(output, f), torch.Tensor)]
    return []


def select_output(output: object, pick: OutputPick = None, name: str = "") -> torch.Tensor:
    """The tensor featvis reads from a layer's output (`name`; '' is the model's own output).

    A tensor is read as it is. Otherwise, with ``pick=None``: a Hugging Face ``ModelOutput``,
    a dict or a named tuple gives its ``logits`` field (``last_hidden_state`` for a layer
    that has no logits), a tuple or list its first element. For the model's output `pick`
    chooses another part: a field name (``"pooler_output"``), a tuple index, or a function
    of the output that returns a tensor.

    Examples:
        >>> select_output({"logits": torch.ones(1, 3), "hidden": torch.zeros(1, 8)}).shape
        torch.Size([1, 3])
        >>> select_output((torch.ones(1, 3), torch.zeros(1, 8)), 1).shape
        torch.Size([1, 8])
    """
    label = f"layer={name!r}'s output" if name else "the model's output"
    if name == "" and pick is not None:
        if callable(pick):
            found = pick(output)
            if not isinstance(found, torch.Tensor):
                raise bad_value(
                    "output", pick, f"a function that returns a tensor (it returned {type(found).__name__})"
                )
            return found
        found = _pick_field(output, pick)
        if found is None:
            fields = _fields(output) or (
                [str(i) for i in range(len(output))] if isinstance(output, tuple | list) else []
            )
            raise bad_value(
                "output",
                pick,
                f"a part of the model's {type(output).__name__} output that is a tensor"
                + (f": {', '.join(repr(f) for f in fields)}" if fields else " (it has none to choose)"),
            )
        return found
    if isinstance(output, torch.Tensor):
        return output
    for field_name in ("logits", "last_hidden_state"):
        found = _pick_field(output, field_name) if _fields(output) else None
        if found is not None:
            return found
    if (
        isinstance(output, tuple | list)
        and not _fields(output)
        and output
        and isinstance(output[0], torch.Tensor)
    ):
        return output[0]
    fields = _fields(output)
    hint = (
        f"choose one with output= ({', '.join(repr(f) for f in fields)})"
        if fields and not name
        else "choose a layer that outputs one tensor"
        + (" or pass output= (a field name, an index or a function)" if not name else "")
    )
    raise LayerNotFoundError(f"{label} is a {type(output).__name__}, not a tensor; {hint}")


def _pick_field(output: object, pick: str | int) -> torch.Tensor | None:
    if isinstance(pick, str):
        if isinstance(output, Mapping):
            found = output.get(pick)
        else:
            found = getattr(output, pick, None) if _fields(output) else None
    elif isinstance(output, tuple | list) and -len(output) <= pick < len(output):
        found = output[pick]
    elif isinstance(output, Mapping) and 0 <= pick < len(output):
        found = list(output.values())[pick]
    else:
        found = None
    return found if isinstance(found, torch.Tensor) else None


@dataclass
class Probe:
    """What one forward pass showed: leaf execution order and calls per module."""

    order: list[str]  # leaf calls in the order they run: 'name', or 'name#k' for a module run several times
    calls: dict[str, int]
    softmax_outputs: set[str]
    events: list[tuple[str, int, tuple[int, ...] | None, bool]] = field(default_factory=list)
    attention_modules: set[str] = field(default_factory=set)  # the modules that compute an attention
    starts: dict[str, int] = field(default_factory=dict)  # 'name#call': how many events came before it began
    structured: set[str] = field(
        default_factory=set
    )  # 'name#call' whose output is a tuple, dict or ModelOutput
    input_shape: tuple[int, ...] | None = None  # the shape of the (first) model input probed

    def _end(self, name: str, call: int) -> int | None:
        """The index of the event of call `call` of module `name` (None when it never ran)."""
        return next((i for i, (n, c, _, _) in enumerate(self.events) if n == name and c == call), None)

    def unit_axis(self, name: str, call: int, *, names_to_modules: dict[str, nn.Module]) -> int:
        """The axis of the units of a layer's output: its features, not its tokens or positions.

        The last module run up to this call that sets a unit count (a convolution or norm over
        channels: axis 1; a Linear, LayerNorm or Embedding: the last axis) gives the count, and
        the output's axis of that size (axis 1 or the last) is the unit axis. So a conv's
        channels are axis 1, the features of (N, tokens, features) outputs the last axis, and a
        block whose last layer is a Linear followed by a permute back to channels-first, axis 1.

        Examples:
            >>> prepared.seen.unit_axis("encoder.layers.encoder_layer_5.mlp.0", 0, names_to_modules=...)
            -1
        """
        end = self._end(name, call)
        if end is None:
            return 1
        shape = self.events[end][2]
        if shape is None or len(shape) <= 2:
            return 1
        for event_name, _, _, leaf in reversed(self.events[: end + 1]):
            module = names_to_modules.get(event_name)
            found = _defining_units(module) if module is not None and leaf else None
            if found is not None:
                return unit_axis_of(shape, *found)
        return 1

    def rows(self, name: str, call: int) -> int | None:
        """How many rows (axis 0) a call's map or token output (rank 3 or more) had for the probe's one
        image; None for other outputs or a call that never ran."""
        end = self._end(name, call)
        shape = self.events[end][2] if end is not None else None
        return shape[0] if shape is not None and len(shape) >= 3 else None

    def outputs_before(self, target: Target) -> list[tuple[str, tuple[int, ...]]]:
        """('name#call', output shape) of the module calls with a tensor output (one tensor, not a
        tuple or a ModelOutput) that finished before `target` did, last first: leaves and blocks (a
        residual block's output, which no leaf of it gives when its last step is the addition), not
        the model itself."""
        end = self._end(target.name, target.call)
        return [
            (f"{name}#{call}", shape)
            for name, call, shape, _ in reversed(self.events[:end] if end is not None else [])
            if name and shape is not None and f"{name}#{call}" not in self.structured
        ]


_CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_FEATURE_NORMS = tuple(c for c in (nn.LayerNorm, getattr(nn, "RMSNorm", None)) if c is not None)


def _defining_units(module: nn.Module) -> tuple[int, int] | None:
    """(unit count, conventional axis) of a module that sets where units lie, else None."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return int(module.out_channels), 1
    if isinstance(module, nn.GroupNorm):
        return int(module.num_channels), 1
    if isinstance(module, _CHANNEL_NORMS):
        return int(module.num_features), 1
    if isinstance(module, nn.Linear | nn.Bilinear):
        return int(module.out_features), -1
    if isinstance(module, nn.Embedding):
        return int(module.embedding_dim), -1
    if isinstance(module, nn.MultiheadAttention):
        return int(module.embed_dim), -1
    if isinstance(module, _FEATURE_NORMS):
        shape = module.normalized_shape
        return (int(shape[-1]), -1) if shape else None
    return None


def unit_axis_of(shape: Sequence[int], units: int, convention: int) -> int:
    """Where `units` lie in an output of `shape`: axis 1 or the last axis, whichever has that size
    (when both or neither do: the one of more than one element, else the defining module's
    `convention`); 1 for outputs of rank <= 2."""
    if len(shape) <= 2:
        return 1
    first, last = shape[1] == units, shape[-1] == units
    if first == last and (shape[1] == 1) != (shape[-1] == 1):  # not on an axis of one (a single token)
        return -1 if shape[1] == 1 else 1
    return convention if first == last else (1 if first else -1)


def _tensor_or_none(output: object, name: str, pick: OutputPick) -> torch.Tensor | None:
    try:
        return select_output(output, pick, name)
    except FeatvisError:
        return None


def probe(
    model: nn.Module,
    example: torch.Tensor,
    inputs: ModelInputs | None = None,
    output_pick: OutputPick = None,
    hint: str | None = None,
) -> Probe:
    """Run one forward pass (no gradients) and record which modules run, in order.

    The model must already be in the state featvis runs it in (see `ModelGuard`); `inputs`
    feeds a model of several inputs (see `run_model`); `output_pick` picks the model's output
    tensor from a structured output (see `select_output`); `hint` ends the error of a model
    that raises (what to check; by default `MODEL_HINT`).
    """
    names = module_names(model)
    calls: dict[str, int] = {}
    softmax_outputs: set[str] = set()
    running: list[nn.Module] = []  # the modules whose forward is running, innermost last
    attention_modules: set[str] = set()
    starts: dict[str, int] = {}
    structured: set[str] = set()

    def attention_seen() -> None:  # in the innermost running module with layers of its own (not a Softmax)
        inner = next((m for m in reversed(running) if not _is_leaf(model, m)), None)
        if inner is not None:
            attention_modules.add(names[inner])

    recorder = SoftmaxRecorder(attention_seen)
    events = []

    def enter(module, inputs):
        running.append(module)
        name = names[module]
        starts[f"{name}#{calls.get(name, 0)}"] = len(events)

    def hook(module, inputs, output):
        if running:
            running.pop()
        name = names[module]
        count = calls.get(name, 0)
        calls[name] = count + 1
        tensor = _tensor_or_none(output, name, output_pick)
        shape = tuple(_channels_first(model, tensor).shape) if tensor is not None else None
        events.append((name, count, shape, _is_leaf(model, module)))
        if tensor is not None and not isinstance(output, torch.Tensor):
            structured.add(f"{name}#{count}")
        if isinstance(output, torch.Tensor) and recorder.pre_softmax(output) is not None:
            softmax_outputs.add(f"{name}#{count}")

    # TorchScript takes no Python hooks
    hooked = [module for module in names if not isinstance(module, torch.jit.ScriptModule)]
    try:
        with forward_pre_hooks(hooked, enter), forward_hooks(hooked, hook), torch.no_grad(), recorder:
            run_model(model, example, inputs)
    except FeatvisError:
        raise
    except Exception as err:
        if inputs is None:
            given, hint = f"a (preprocessed) input of shape {tuple(example.shape)}", hint or MODEL_HINT
        else:
            given, hint = (
                f"(preprocessed) inputs {inputs.describe(example)}",
                hint or "check the model and inputs=, preprocess=, input_range=, channels= and size=",
            )
        raise ModelError(f"model raised {type(err).__name__} on {given}: {err}; {hint}") from err
    order = [name if calls[name] == 1 else f"{name}#{call}" for name, call, _, leaf in events if leaf]
    return Probe(
        order=order,
        calls=calls,
        softmax_outputs=softmax_outputs,
        events=events,
        attention_modules=attention_modules,
        starts=starts,
        structured=structured,
        input_shape=tuple(example.shape) if isinstance(example, torch.Tensor) else None,
    )


def split_call(spec: str) -> tuple[str, int | None]:
    """'name#k' -> ('name', k); a name without a call -> (name, None)."""
    if "#" in spec:
        name, _, call = spec.rpartition("#")
        if call.isdigit():
            return name, int(call)
    return spec, None


def resolve_layer(model: nn.Module, layer: LayerSpec, seen: Probe, argument: str = "layer") -> Target:
    """Turn a name, int index or module into a `Target`, with clear errors naming `argument`."""
    names = module_names(model)
    by_name = {name: module for module, name in names.items()}
    call: int | None = None
    if isinstance(layer, bool) or not isinstance(layer, str | int | nn.Module):
        raise bad_type(argument, layer, "a module name (str), an int index or an nn.Module")
    if isinstance(layer, int) and is_keras(model):
        if not -len(model.layers) <= layer < len(model.layers):
            raise LayerNotFoundError(
                f"{argument}={layer} is out of range: model.layers has {len(model.layers)} layers"
            )
        name = model.layers[layer].name
    elif isinstance(layer, int):
        if not -len(seen.order) <= layer < len(seen.order):
            raise LayerNotFoundError(
                f"{argument}={layer} is out of range: the model makes {len(seen.order)} "
                f"leaf-module calls, so an index must lie in [{-len(seen.order)}, "
                f"{len(seen.order) - 1}] (see featvis.layer_names)"
            )
        name, call = split_call(seen.order[layer])
    elif isinstance(layer, nn.Module):
        if layer not in names:
            raise LayerNotFoundError(
                f"{argument}={type(layer).__name__}(...) is a module that is not part of the model"
            )
        name = names[layer]
    else:  # a name: by_name holds each module under the name named_modules (or Keras) gives it
        name, call = split_call(layer)
        if name not in by_name:
            raise LayerNotFoundError(
                f"{argument}={layer!r} is not a module of the model"
                f"{close_matches(name, [n for n in by_name if n], see='featvis.layer_names(model)')}"
            )

    module = by_name[name]
    if isinstance(module, torch.jit.ScriptModule):
        raise LayerNotFoundError(
            f"{argument}={name!r} is inside a TorchScript module, whose layers featvis cannot read; "
            "visualize the model output (layer='') or load the Python model"
        )
    count = seen.calls.get(name, 0)
    label = name or "<model output>"
    if count == 0:
        raise LayerNotFoundError(f"{argument}={label!r} never runs in the model's forward pass")
    if call is None:
        if count > 1:
            choices = ", ".join(f"'{name}#{k}'" for k in range(count))
            raise LayerNotFoundError(
                f"{argument}={label!r} runs {count} times in one forward pass; choose a call: {choices}"
            )
        call = 0
    elif call >= count:
        raise LayerNotFoundError(
            f"{argument}={layer!r} asks for call {call}, but the module runs only {count} time(s)"
        )
    rows = seen.rows(name, call)
    if rows is not None and rows != 1:
        raise bad_value(
            argument,
            layer if isinstance(layer, str | int) else name,
            f"a layer with one row per image: {label!r} gives {rows} rows for one image (the model "
            "folds patches or windows into the batch axis there, as MobileViT's transformers and "
            "Swin's window attention do); choose the block that holds it",
        )
    axis = 1 if is_keras(model) else seen.unit_axis(name, call, names_to_modules=by_name)
    return Target(name=name, module=module, call=call, unit_axis=axis)


class Capture:
    """Forward hooks that collect target outputs and stop the pass once all have run.

    Examples:
        >>> capture = Capture(targets, guard, pre_softmax=set())
        >>> activations = capture.run(model, x)
    """

    def __init__(self, targets: Sequence[Target], guard: ModelGuard, pre_softmax: set[str]):
        self.targets = list(targets)
        self.channels_last = is_keras(guard.model)
        self.inputs = guard.inputs
        self.output_pick = guard.output
        self.pre_softmax = pre_softmax
        self.recorder = SoftmaxRecorder() if pre_softmax else None
        self._wanted = {t.key for t in self.targets}
        self._calls: dict[nn.Module, int] = {}
        self._active = False  # hooks of a capture that is not running stay silent
        self.outputs: dict[str, torch.Tensor] = {}
        self.raw_outputs: dict[str, torch.Tensor] = {}  # as the model made them (Keras: channels-last)
        for name, module in {t.name: t.module for t in self.targets}.items():
            guard.add_hook(module.register_forward_hook(self._hook_for(name)))

    def _hook_for(self, name: str):
        def hook(module, inputs, output):
            if not self._active:
                return
            call = self._calls.get(module, 0)
            self._calls[module] = call + 1
            key = f"{name}#{call}"
            if key not in self._wanted:
                return
            output = select_output(output, self.output_pick, name)
            if key in self.pre_softmax:  # then recorder is set
                output = self.recorder.pre_softmax(output)
            self.raw_outputs[key] = output
            self.outputs[key] = output.movedim(-1, 1) if self.channels_last and output.ndim >= 3 else output
            if len(self.outputs) == len(self._wanted):  # stop the forward pass here
                raise StopForward

        return hook

    def run(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on `x` and return {target key: output}."""
        self._calls.clear()
        self.outputs, self.raw_outputs = {}, {}
        self._active = True
        try:
            with self.recorder or contextlib.nullcontext():
                run_model(model, x, self.inputs)
        except StopForward:
            pass
        except FeatvisError:
            raise
        except Exception as err:
            raise ModelError(f"model raised {type(err).__name__}: {err}; {MODEL_HINT}") from err
        finally:
            self._active = False
        missing = self._wanted - set(self.outputs)
        if missing:
            raise LayerNotFoundError(f"layer(s) {sorted(missing)} did not run in this forward pass")
        if self.recorder is not None:
            self.recorder.inputs.clear()
        return self.outputs


def warn_pre_softmax(keys: set[str]) -> None:
    """Tell the user that softmax outputs are read before the softmax."""
    if keys:
        warnings.warn(
            f"layer(s) {sorted(k.rsplit('#', 1)[0] or '<model output>' for k in keys)} "
            "end in a softmax; featvis visualizes the values before it (the logits)",
            FeatvisWarning,
            stacklevel=3,
        )
