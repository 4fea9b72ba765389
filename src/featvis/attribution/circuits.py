"""Circuits: which units of an earlier layer a unit is built from, with their signs and sizes.

For a unit of a convolution or a linear layer that reads an earlier layer's output directly
(through elementwise activations, batch norms, dropout or identities at most), the
contribution of each earlier unit is read from the weights, summed over the kernel's space
as OpenAI Microscope shows them (a batch norm between contributes its per-channel scale;
activations between are taken as the identity, and the method says so). Otherwise (a
pooling, a residual sum or any other path between, or a layer without weights) it is
gradient x activation: the unit's mean activation differentiated with respect to the earlier
layer's output, times that output, summed over positions and averaged over the given images
(Olah et al. 2020), or over the unit's own optimized image when no images are given.

Examples:
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> featvis.circuits(lite0.model, "_blocks.5._project_conv", 3, "_blocks.5._depthwise_conv", k=4)
    >>> featvis.circuits(lite0.model, "_blocks.10", 7, "_blocks.9", data=["cat.jpg"], preprocess=...)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from featvis.attribution.cam import layer_gradients
from featvis.errors import bad_value, check_int, is_int, known_keywords
from featvis.model.prepared import PreparedModel, preparing
from featvis.model.targets import LayerSpec, OutputPick, Target
from featvis.optvis.losses import ActivationMaximization
from featvis.optvis.visualization import size_of, visualize_activation

METHODS = ("auto", "weights", "gradient")

# modules that act on each unit alone and keep the unit count: a weight path may pass through them
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Contribution:
    """One earlier unit's part in a unit: its index, its signed contribution, the sign
    (+1 excites, -1 inhibits, 0 none) and how it was measured ("weights ..." or
    "gradient x activation ...")."""

    unit: int
    contribution: float
    sign: int
    method: str


@dataclass(frozen=True)
class Contributions:
    """Every earlier unit's contribution to one unit (`values`, indexed by earlier unit) and the method.

    Examples:
        >>> full = featvis.contributions(model, "conv2", 0, "conv1")
        >>> full.values.shape, full.method
        ((8,), 'weights')
        >>> full.top(2)  # the two largest by size, as `featvis.circuits` gives them
    """

    values: np.ndarray
    method: str

    def top(self, k: int = 8) -> list[Contribution]:
        """The `k` earlier units of largest absolute contribution, largest first."""
        check_int("k", k, 1)
        order = np.argsort(-np.abs(self.values), kind="stable")[:k]
        return [
            Contribution(int(i), float(self.values[i]), int(np.sign(self.values[i])), self.method)
            for i in order
        ]


@known_keywords
def circuits(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    unit: int,
    earlier_layer: LayerSpec,
    k: int = 8,
    data: object = None,
    *,
    method: str = "auto",
    size: int | tuple[int, int] | None = None,
    seed: int | None = 0,
    max_iter: int = 64,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> list[Contribution]:
    """The `k` units of `earlier_layer` that contribute most to `unit` of `layer`, largest first.

    Each `Contribution` has the earlier unit's index, its signed contribution, its sign and the
    method: from the weights where `layer` is a convolution or linear layer fed directly by
    `earlier_layer` (see the module docstring), else gradient x activation over `data` (images
    as featvis takes them) or over the unit's own optimized image. The other arguments, `method`
    on (the model's conventions included), are those of `contributions`, which gives every
    earlier unit's value.

    Examples:
        >>> featvis.circuits(model, "conv2", 0, "conv1", k=2)
        [Contribution(unit=3, contribution=2.0, sign=1, method='weights'),
         Contribution(unit=5, contribution=-1.5, sign=-1, method='weights')]
        >>> featvis.circuits(lite0.model, "_blocks.10", 7, "_blocks.9", data="cat.jpg", preprocess=...)
    """
    check_int("k", k, 1)
    return contributions(
        model,
        layer,
        unit,
        earlier_layer,
        data=data,
        method=method,
        size=size,
        seed=seed,
        max_iter=max_iter,
        input_range=input_range,
        preprocess=preprocess,
        channels=channels,
        device=device,
        fuse=fuse,
        channels_last=channels_last,
        inputs=inputs,
        output=output,
    ).top(k)


@known_keywords
def contributions(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    unit: int,
    earlier_layer: LayerSpec,
    *,
    data: object = None,
    method: str = "auto",
    size: int | tuple[int, int] | None = None,
    seed: int | None = 0,
    max_iter: int = 64,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> Contributions:
    """Every unit of `earlier_layer`'s contribution to `unit` of `layer` (see `circuits`).

    `method`: "auto" (the weights where the path is direct, else gradient x activation),
    "weights" (an error where the path is not direct) or "gradient". `size`, `seed` and
    `max_iter` make the unit's own image when the gradient needs one and no `data` is given;
    `size` also sets the random images that check a weight path when no `data` is given.
    The model's conventions, `input_range` to `output`, are `featvis.prepared.PreparedModel`'s; a
    model prepared already keeps its own.

    Examples:
        >>> full = featvis.contributions(model, "conv2", 0, "conv1", data=images, method="gradient")
        >>> full.values.argmax()
    """
    if not is_int(unit) or unit < 0:
        raise bad_value("unit", unit, "a unit index >= 0")
    if not isinstance(method, str) or method not in METHODS:
        raise bad_value("method", method, f"one of {', '.join(map(repr, METHODS))}")
    check_int("max_iter", max_iter, 1)
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
        if data is not None:
            images = prepared.load_images(data, "data")
        else:
            images = prepared.random_images(size_of(prepared, size))
        prepared.probe(images)
        target = prepared.resolve(layer, "layer")
        earlier = prepared.resolve(earlier_layer, "earlier_layer")
        _check_order(prepared, target, earlier, layer, earlier_layer)
        outputs = prepared.capture([earlier, target]).run(prepared.model, prepared.model_input(images))
        units = _unit_count(outputs[target.key], target)
        if unit >= units:
            raise bad_value("unit", unit, f"a unit index in [0, {units - 1}] of layer {layer!r}")
        if method != "gradient":
            found = _weight_path(prepared, target, earlier, outputs, unit)
            if found is not None:
                return found
            if method == "weights":
                raise bad_value(
                    "method",
                    "weights",
                    f"'auto' or 'gradient': layer {layer!r} is not a convolution or linear layer fed "
                    f"directly by {earlier_layer!r} (through elementwise modules at most)",
                )
        if data is None:
            made = visualize_activation(
                prepared,
                layer,
                unit,
                size=tuple(images.shape[2:]),
                seed=seed,
                max_iter=max_iter,
                return_result=True,
                progress=False,
            )
            images, source = made.images.to(prepared.device), "the unit's optimized image"
        else:
            source = f"{images.shape[0]} image(s)"
        objective = ActivationMaximization(layer, unit)
        acts, grads = layer_gradients(prepared, objective, images, earlier_layer)
        if grads is None:
            values = torch.zeros(acts.shape[earlier.unit_axis])
        else:
            product = (grads * acts).movedim(earlier.unit_axis if acts.ndim > 2 else 1, 1)
            values = product.flatten(2).sum(2).mean(0) if product.ndim > 2 else product.mean(0)
        return Contributions(values.cpu().double().numpy(), f"gradient x activation over {source}")


def _check_order(prepared, target: Target, earlier: Target, layer, earlier_layer) -> None:
    """`earlier` must end before `target` does in the forward pass."""
    ends = {(name, call): i for i, (name, call, _, _) in enumerate(prepared.seen.events)}
    if target.key == earlier.key:
        raise bad_value("earlier_layer", earlier_layer, f"a layer other than layer={layer!r}")
    at, before = ends.get((target.name, target.call)), ends.get((earlier.name, earlier.call))
    if at is not None and before is not None and before > at:
        raise bad_value("earlier_layer", earlier_layer, f"a layer that runs before layer={layer!r}")


def _unit_count(output: torch.Tensor, target: Target) -> int:
    return 1 if output.ndim == 1 else int(output.shape[target.unit_axis if output.ndim > 2 else 1])


def _weight_path(prepared, target: Target, earlier: Target, outputs, unit: int) -> Contributions | None:
    """The contributions read from `target`'s weights when `earlier`'s output feeds it directly
    (the leaf modules that end between the two are elementwise or batch norms, and running them
    and `target`'s module on `earlier`'s output gives `target`'s output); else None."""
    module = target.module
    if not isinstance(module, _WEIGHTED) or target.call != 0:
        return None
    events = prepared.seen.events
    names = {name: m for m, name in prepared.seen_modules().items()}
    ends = [
        i for i, (name, call, _, leaf) in enumerate(events) if (name, call) == (earlier.name, earlier.call)
    ]
    stop = [i for i, (name, call, _, leaf) in enumerate(events) if (name, call) == (target.name, target.call)]
    if not ends or not stop or stop[0] < ends[0]:
        return None
    inside = set(module.modules())  # the weighted module's own children (a static padding) run in it
    between = [names.get(name) for name, _, _, leaf in events[ends[0] + 1 : stop[0]] if leaf]
    between = [m for m in between if m not in inside]
    if not all(isinstance(m, _ELEMENTWISE) or _fixed_norm(m) for m in between):
        return None
    with torch.no_grad():
        x = outputs[earlier.key].clone()
        for m in between:
            x = m(x)
        try:
            again = module(x)
        except Exception:  # noqa: BLE001 - shapes that do not fit: not a direct path
            return None
        if again.shape != outputs[target.key].shape or not torch.allclose(
            again, outputs[target.key], rtol=1e-4, atol=1e-5 * (1 + outputs[target.key].abs().max().item())
        ):
            return None
        weight = module.weight.detach().float()
        if isinstance(module, nn.Linear):
            values = weight[unit].clone()
        else:
            per_group = weight.shape[1]
            group = unit // (module.out_channels // module.groups)
            values = torch.zeros(module.in_channels, device=weight.device)
            values[group * per_group : (group + 1) * per_group] = weight[unit].flatten(1).sum(1)
        notes = []
        for m in between:
            if isinstance(m, _NORMS):
                scale = 1 / torch.sqrt(m.running_var.float() + m.eps)
                if m.weight is not None:
                    scale = scale * m.weight.detach().float()
                values = values * scale
                notes.append(f"{_name(names, m)} scale folded in")
        passed = [_name(names, m) for m in between if not isinstance(m, _NORMS)]
        if passed:
            notes.append(f"{', '.join(passed)} taken as the identity")
    label = "weights" + (f" ({'; '.join(notes)})" if notes else "")
    return Contributions(values.cpu().double().numpy(), label)


def _fixed_norm(module: nn.Module | None) -> bool:
    """A batch norm that scales each unit by fixed numbers (its running statistics)."""
    return isinstance(module, _NORMS) and module.running_var is not None


def _name(names: dict[str, nn.Module], module: nn.Module) -> str:
    return next((name for name, m in names.items() if m is module), type(module).__name__)
