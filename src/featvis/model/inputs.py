"""Models with several inputs: which input is the image, which are optimized along, which stay fixed.

``inputs=`` (an argument of activation maximization, `activations_reached` and the
attention maps, kept by `featvis.prepared.PreparedModel`)
gives the model's inputs as a dict by name or a tuple in forward order. A tensor (or
array) is a fixed value: one example, with a batch axis of 1, fed beside every image. An
`Optimized` with a shape (or a bare shape tuple) is optimized along with the image, with
its own parameterization and range. The image, the input that ``seed_input``, ``size``,
``input_range``, ``preprocess`` and ``method`` describe (and that attention maps
attribute to), is the one marked ``Optimized()`` without a shape, or the one a dict
leaves out.

Examples:
    >>> meta = torch.tensor([[0.3, 1.0]])
    >>> image = featvis.visualize_activation(model, "head", 0, inputs={"meta": meta}, input_range=(0, 1))
    >>> both = featvis.visualize_activation(
    ...     model, "head", 0, inputs={"meta": featvis.Optimized((2,))}, return_result=True
    ... )
    >>> both.inputs["meta"].shape   # in the meta's range, as the model takes it
    torch.Size([1, 2])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
import inspect

import numpy as np
import torch
from torch import nn

from featvis.errors import FeatvisValueError, bad_type, bad_value, close_matches, is_int
from featvis.image import check_range


@dataclass(frozen=True)
class Optimized:
    """An input featvis optimizes: `shape` of one example (no batch axis), values in `input_range`,
    made by the parameterization `method` (a name in `featvis.params.METHODS` or a factory; "pixel":
    one parameter per value, for vectors and small tensors). Without a shape it marks the image input,
    whose size, range and parameterization are the call's ``size``, ``input_range`` and ``method``.

    Examples:
        >>> featvis.Optimized((2,), input_range=(-1.0, 1.0))   # a vector of two values in [-1, 1]
        >>> featvis.Optimized()                                # the image
    """

    shape: tuple[int, ...] | None = None
    input_range: tuple[float, float] = (0.0, 1.0)
    method: str | Callable = "pixel"

    def __post_init__(self):
        if self.shape is None:
            if self.input_range != (0.0, 1.0) or self.method != "pixel":
                raise bad_value(
                    "Optimized",
                    self,
                    "a shape with input_range or method; the image input (no shape) takes the "
                    "call's input_range= and method=",
                )
            return
        shape = self.shape
        if (
            isinstance(shape, str)
            or not isinstance(shape, Sequence)
            or not shape
            or not all(is_int(s) and s >= 1 for s in shape)
        ):
            raise bad_type("shape", shape, "a tuple of ints >= 1: one example's shape, no batch axis")
        object.__setattr__(self, "shape", tuple(int(s) for s in shape))
        object.__setattr__(self, "input_range", check_range(self.input_range))

    @property
    def is_image(self) -> bool:
        return self.shape is None


def input_names(model: nn.Module) -> tuple[list[str], bool]:
    """The model's input names in forward order (a Keras model's ``model.inputs`` names, else the
    parameters of ``forward``), and whether more may be given by position (``*args``)."""
    if is_keras(model):
        return [str(t.name) for t in getattr(model, "inputs", None) or []], False
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return [], True
    names = [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return names, any(p.kind == p.VAR_POSITIONAL for p in parameters)


class ModelInputs:
    """How a model of several inputs is called: the image (fed by featvis as usual), fixed values,
    and the current values of the optimized inputs. Built by `featvis.prepared.PreparedModel`.

    Examples:
        >>> spec = ModelInputs(model, {"meta": torch.tensor([[0.3, 1.0]])})
        >>> spec.image, list(spec.fixed)
        ('image', ['meta'])
    """

    def __init__(self, model: nn.Module, inputs: Mapping[str, object] | Sequence[object]):
        self.keras = is_keras(model)
        names, open_ended = input_names(model)
        if isinstance(inputs, Mapping):
            given = self._from_dict(inputs, names)
            self.by_keyword = not self.keras
        elif isinstance(inputs, Sequence) and not isinstance(inputs, str | bytes):
            if len(inputs) < 2:
                raise bad_value(
                    "inputs",
                    f"a tuple of {len(inputs)}",
                    "the inputs of a model of several (a one-input model needs none)",
                )
            if len(inputs) > len(names) and not open_ended:
                raise bad_value(
                    "inputs",
                    f"a tuple of {len(inputs)}",
                    f"the model's {len(names)} inputs in forward order ({', '.join(names)})",
                )
            labels = names[: len(inputs)] + [f"input{i}" for i in range(len(names), len(inputs))]
            given = dict(zip(labels, inputs))
            self.by_keyword = False
        else:
            raise bad_type("inputs", inputs, "a dict {input name: value} or a tuple in forward order")
        if self.keras and len(given) != len(names):
            missing = [n for n in names if n not in given]
            raise bad_value(
                "inputs", list(given), f"a value for each of the Keras model's inputs: missing {missing}"
            )
        images = [name for name, value in given.items() if isinstance(value, Optimized) and value.is_image]
        if len(images) != 1:
            raise bad_value(
                "inputs",
                {name: _kind(value) for name, value in given.items()},
                "exactly one image input: the one marked featvis.Optimized() (no shape), or the one a "
                f"dict leaves out (found {len(images)}); others are fixed tensors or Optimized(shape)",
            )
        self.image = images[0]
        self.names = list(given)
        self.index = names.index(self.image) if self.image in names else self.names.index(self.image)
        self.optimized = {
            name: Optimized(tuple(value)) if _is_shape(value) else value
            for name, value in given.items()
            if name != self.image and (_is_shape(value) or isinstance(value, Optimized))
        }
        self.fixed = {
            name: _fixed_value(name, value)
            for name, value in given.items()
            if name != self.image and name not in self.optimized
        }
        if self.keras:
            self._check_keras_shapes(model)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.current: dict[str, torch.Tensor] = {}
        self.reset()

    def _from_dict(self, inputs: Mapping[str, object], names: list[str]) -> dict[str, object]:
        """The given inputs in forward order, the image added where the dict leaves it out."""
        for name in inputs:
            if name not in names:
                listed = ", ".join(names) or "none readable"
                raise bad_value(
                    "inputs",
                    name,
                    f"names of the model's inputs ({listed}){close_matches(str(name), names)}",
                )
        given = {name: inputs[name] for name in names if name in inputs}
        has_image = any(isinstance(v, Optimized) and v.is_image for v in given.values())
        left_out = [name for name in names if name not in inputs]
        if not has_image and left_out:
            given[left_out[0]] = Optimized()
            given = {name: given[name] for name in names if name in given}
        return given

    def _check_keras_shapes(self, model: nn.Module) -> None:
        """Each value's shape against the shape its Keras input declares (None: any size)."""
        declared = {str(t.name): tuple(t.shape) for t in model.inputs}
        shapes = {name: tuple(value.shape) for name, value in self.fixed.items()}
        shapes.update({name: (1, *spec.shape) for name, spec in self.optimized.items()})
        for name, shape in shapes.items():
            wanted = declared[name]
            if len(shape) != len(wanted) or any(
                w is not None and w != s for s, w in zip(shape[1:], wanted[1:])
            ):
                raise bad_value(
                    f"inputs[{name!r}]",
                    f"shape {shape}",
                    f"the shape the model's input {name!r} declares, {wanted} (None: any size)",
                )

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the fixed values to the model's device (floating ones to its dtype)."""
        self.fixed = {
            name: value.to(device, dtype if value.is_floating_point() else value.dtype)
            for name, value in self.fixed.items()
        }
        self.device, self.dtype = device, dtype
        self.reset()

    def refuse_optimized(self, why: str) -> None:
        """Raise, naming `inputs`, when any input besides the image is optimized (`why` says why
        only fixed ones are allowed here).

        Examples:
            >>> ModelInputs(model, {"meta": torch.zeros(1, 2)}).refuse_optimized("dataset examples")
        """
        if self.optimized:
            raise bad_value(
                "inputs",
                {name: "optimized" for name in self.optimized},
                f"fixed tensors beside the image: {why}",
            )

    def reset(self) -> None:
        """The optimized inputs back at the middle of their ranges (what a pass outside an optimization sees)."""
        self.set(
            {
                name: torch.full((1, *spec.shape), 0.5, device=self.device)
                for name, spec in self.optimized.items()
            }
        )

    def set(self, values: Mapping[str, torch.Tensor]) -> None:
        """The optimized inputs' values in [0, 1] (batch 1, or that of the images fed) for the next passes."""
        self.current.update({name: self.scaled(name, value) for name, value in values.items()})

    def scaled(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """An optimized input's value in [0, 1] scaled to its range, in the model's dtype."""
        low, high = self.optimized[name].input_range
        return (low + (high - low) * value).to(self.dtype)

    def call(self, model: nn.Module, x: torch.Tensor):
        """Call `model` with `x` as the image and the other inputs beside it (batch-1 values repeated)."""
        values = {self.image: x}
        for name, value in {**self.fixed, **self.current}.items():
            if value.shape[0] != x.shape[0]:
                if value.shape[0] != 1:
                    raise FeatvisValueError(
                        f"inputs[{name!r}] has a batch of {value.shape[0]} where the image's is {x.shape[0]}"
                    )
                value = value.expand(x.shape[0], *value.shape[1:])
            values[name] = value
        if self.keras:
            return model([values[name] for name in self.names])
        if self.by_keyword:
            return model(**values)
        return model(*(values[name] for name in self.names))

    def describe(self, x: torch.Tensor) -> str:
        """The shapes of one call's inputs, for error messages: ``image (1, 3, 32, 32), meta (1, 2)``."""
        shapes = {
            self.image: tuple(x.shape),
            **{n: tuple(v.shape) for n, v in {**self.fixed, **self.current}.items()},
        }
        return ", ".join(f"{name} {shapes[name]}" for name in self.names)


def _kind(value: object) -> str:
    if isinstance(value, Optimized):
        return "Optimized()" if value.is_image else f"Optimized({value.shape})"
    return f"shape {value}" if _is_shape(value) else f"fixed {type(value).__name__}"


def _is_shape(value: object) -> bool:
    return isinstance(value, tuple | torch.Size) and bool(value) and all(map(is_int, value))


def _fixed_value(name: str, value: object) -> torch.Tensor:
    """A fixed input as a tensor of one example (batch axis 1)."""
    allowed = "a tensor or array (a fixed value), Optimized(shape) or a shape tuple"
    if isinstance(value, str | bytes) or value is None:
        raise bad_type(f"inputs[{name!r}]", value, allowed)
    try:
        tensor = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise bad_type(f"inputs[{name!r}]", value, allowed) from err
    if tensor.ndim == 0 or tensor.shape[0] != 1:
        raise bad_value(
            f"inputs[{name!r}]",
            f"a tensor of shape {tuple(tensor.shape)}",
            f"one example with a batch axis of 1, e.g. shape (1, {', '.join(map(str, tensor.shape)) or '...'})",
        )
    return tensor.detach()


def is_keras(model: nn.Module) -> bool:
    """A Keras 3 model on the torch backend: layers by Keras name, channels-last images."""
    return (
        type(model).__module__.startswith("keras")
        and hasattr(model, "get_layer")
        and hasattr(model, "layers")
    )
