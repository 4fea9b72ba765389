"""Losses: what the optimization minimizes, composable with arithmetic.

Every loss maps a `LossContext` to one value per image (or per view, which
featvis averages per image) and is *minimized*. `ActivationMaximization` is
minus an activation, so maximizing a unit means minimizing it. Losses add,
subtract and scale like numbers, and a plain function ``f(ctx) -> Tensor``
works wherever a loss does.

Examples:
    >>> loss = channel("_blocks.10", 3) + 0.5 * TotalVariation() + 100 * diversity("_blocks.10")
    >>> [(term.name, weight) for term, weight in loss.terms]
    [('channel', 1.0), ('TotalVariation', 0.5), ('diversity', 100.0)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
import math
import numbers

import torch
import torch.nn.functional as F

from featvis.errors import FeatvisValueError, bad_type, bad_value
from featvis.model.targets import LayerSpec, Target
from featvis.model.units import (  # re-exported: featvis.losses.select_units, ...
    check_token,
    check_unit_axis,
    describe_axis,
    layer_key,
    resolve_axis,
    select_units,
)


@dataclass
class LossContext:
    """What a loss sees at one step.

    `images` are the batch before transforms, in [0, 1], shape (B, C, H, W);
    `activations` hold every target layer's output for the transformed views,
    ``views`` rows per image (rows ``i * views ... i * views + views - 1`` are image i),
    or, when `row_images` is given, one row per entry of it, row r a changed copy of
    image ``row_images[r]`` (the masked, occluded or interpolated copies that attention
    maps score, any number per image, in any order).
    """

    images: torch.Tensor
    views: int
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    targets: dict[object, Target] = field(default_factory=dict)
    row_images: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def rows(self) -> int:
        return len(self.row_images) if self.row_images is not None else self.batch_size * self.views

    def activation(self, layer: LayerSpec) -> torch.Tensor:
        """The output of `layer` for every view, shape (rows, ...)."""
        return self.activations[self.targets[layer_key(layer)].key]

    def target(self, layer: LayerSpec) -> Target | None:
        """The resolved `Target` of `layer` (its name, module, call and unit axis)."""
        return self.targets.get(layer_key(layer))

    def image_of_row(self) -> torch.Tensor:
        """For each row of an activation, the index of its image in the batch."""
        if self.row_images is not None:
            return self.row_images
        return torch.arange(self.rows, device=self.images.device) // self.views

    def per_row(self, values: torch.Tensor) -> torch.Tensor:
        """One value per row: per-row values pass through, per-image values are repeated for each
        row of their image, a scalar for every row.

        Examples:
            >>> ctx.per_row(loss(ctx))  # the score of each masked copy, with its own image's unit
        """
        if values.ndim == 0:
            return values.expand(self.rows)
        if values.shape[0] == self.rows:
            return values
        if values.shape[0] == self.batch_size:
            return values[self.image_of_row()]
        raise FeatvisValueError(
            f"a loss returned {values.shape[0]} values; expected one per image "
            f"({self.batch_size}) or one per row ({self.rows})"
        )

    def per_image(self, values: torch.Tensor) -> torch.Tensor:
        """Average per-view values over each image's views; per-image values pass through."""
        if values.ndim == 0:
            return values.expand(self.batch_size)
        if values.shape[0] == self.rows and self.views > 1:
            return values.view(self.batch_size, self.views).mean(1)
        if values.shape[0] != self.batch_size:
            raise FeatvisValueError(
                f"a loss returned {values.shape[0]} values; expected one per image "
                f"({self.batch_size}) or one per view ({self.rows})"
            )
        return values


class Loss:
    """Base class: subclass and implement `__call__(ctx)` returning per-image values.

    Examples:
        >>> class Brightness(Loss):
        ...     name = "Brightness"
        ...     def __call__(self, ctx):
        ...         return -ctx.images.mean(dim=(1, 2, 3))
    """

    name: str = "Loss"

    def layers(self) -> tuple[LayerSpec, ...]:
        """The layers whose outputs this loss reads."""
        return ()

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        raise NotImplementedError

    @property
    def terms(self) -> list[tuple[Loss, float]]:
        """This loss as a flat list of (loss, weight) pairs."""
        return [(self, 1.0)]

    def __add__(self, other: object) -> Loss:
        if isinstance(other, numbers.Number) and other == 0:
            return self
        return WeightedSum(self.terms + as_loss(other, "other").terms)

    __radd__ = __add__

    def __mul__(self, weight: object) -> Loss:
        if not isinstance(weight, numbers.Real) or isinstance(weight, bool):
            return NotImplemented
        return WeightedSum([(term, w * float(weight)) for term, w in self.terms])

    __rmul__ = __mul__

    def __truediv__(self, divisor: object) -> Loss:
        if not isinstance(divisor, numbers.Real) or divisor == 0:
            return NotImplemented
        return self * (1.0 / float(divisor))

    def __neg__(self) -> Loss:
        return self * -1.0

    def __sub__(self, other: object) -> Loss:
        return self + (-as_loss(other, "other"))

    def __rsub__(self, other: object) -> Loss:
        return as_loss(other, "other") + (-self)

    def __repr__(self) -> str:
        return self.name


class WeightedSum(Loss):
    """A flat sum of weighted terms; what loss arithmetic produces."""

    name = "WeightedSum"

    def __init__(self, terms: Sequence[tuple[Loss, float]]):
        self._terms = [(as_loss(term, "losses"), float(weight)) for term, weight in terms]

    @property
    def terms(self) -> list[tuple[Loss, float]]:
        return list(self._terms)

    def layers(self) -> tuple[LayerSpec, ...]:
        return tuple(layer for term, _ in self._terms for layer in term.layers())

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        total = torch.zeros(ctx.batch_size, device=ctx.images.device)
        for term, weight in self._terms:
            if weight != 0:
                total = total + weight * ctx.per_image(term(ctx))
        return total

    def __repr__(self) -> str:
        return " + ".join(f"{w:g} * {t!r}" for t, w in self._terms)


class FunctionLoss(Loss):
    """A plain function ``f(ctx) -> Tensor`` as a loss, reading the given layers.

    Examples:
        >>> bright = FunctionLoss(lambda ctx: -ctx.images.mean(dim=(1, 2, 3)), name="bright")
    """

    def __init__(
        self,
        function: Callable[[LossContext], torch.Tensor],
        name: str | None = None,
        layers: Sequence[LayerSpec] = (),
    ):
        self.function = function
        self.name = name or getattr(function, "__name__", "function")
        self._layers = tuple(layers)

    def layers(self) -> tuple[LayerSpec, ...]:
        return self._layers

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        return self.function(ctx)


def as_loss(value: object, argument: str) -> Loss:
    """Accept a `Loss` or a plain callable; anything else is a clear error."""
    if isinstance(value, Loss):
        return value
    if callable(value):
        return FunctionLoss(value)
    raise bad_type(argument, value, "a featvis Loss or a callable f(ctx) -> Tensor")


def as_losses(losses: object) -> Loss:
    """A `Loss`, a callable, or a non-empty list of (loss, weight) pairs, as one `Loss`.

    Examples:
        >>> as_losses([(ActivationMaximization("_fc", 130), 1.0), (TotalVariation(), 0.5)])
    """
    if isinstance(losses, Loss) or callable(losses):
        return as_loss(losses, "losses")
    if not isinstance(losses, Sequence) or isinstance(losses, str) or not losses:
        raise bad_type("losses", losses, "a Loss or a non-empty list of (loss, weight) pairs")
    pairs = []
    for item in losses:
        if not isinstance(item, tuple) or len(item) != 2:
            raise bad_type("losses", item, "(loss, weight) pairs")
        loss, weight = item
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise bad_value("losses", weight, "finite numeric weights")
        pairs.append((as_loss(loss, "losses"), float(weight)))
    return WeightedSum(pairs)


def _check_indices(indices: object, argument: str) -> list[int] | None:
    if indices is None:
        return None
    if isinstance(indices, bool) or not isinstance(indices, numbers.Integral | Sequence):
        raise bad_type(argument, indices, "an int, a list of ints or None")
    values = [indices] if isinstance(indices, numbers.Integral) else list(indices)
    if not values:
        raise bad_value(argument, indices, "at least one unit index")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise bad_type(argument, value, "int unit indices")
        if value < 0:
            raise bad_value(argument, indices, "unit indices >= 0")
    return [int(v) for v in values]


def _units_line(loss, chosen: str, targets: dict, shapes: dict) -> str:
    target = targets.get(layer_key(loss.layer))
    shape = shapes.get(target.key) if target is not None else None
    if target is None or shape is None:
        return f"{loss.name}: layer {loss.layer!r}"
    axis = loss.unit_axis if loss.unit_axis is not None else (target.unit_axis if len(shape) > 1 else 1)
    where = "averaged over the other axes" if loss.token is None else f"at token {loss.token}"
    return (
        f"{loss.name}: layer {target.name or '<model output>'!r}, {chosen} on "
        f"{describe_axis(shape, axis)}, {where}"
    )


class _OneLayer(Loss):
    """A loss that reads one layer, `self.layer`: its units on `unit_axis` (None: the layer's unit
    axis), averaged over the other axes or at one `token`."""

    unit_axis: int | None = None
    token: int | None = None

    def layers(self) -> tuple[LayerSpec, ...]:
        return (self.layer,)

    @property
    def channel_axis(self) -> int | None:
        """keras-vis's name of `unit_axis`."""
        return self.unit_axis

    def _place_units(self, unit_axis: int | None, token: int | None, channel_axis: int | None) -> None:
        """Check and keep where the units lie (`channel_axis`: keras-vis's name of `unit_axis`)."""
        if unit_axis is not None and channel_axis is not None and unit_axis != channel_axis:
            raise bad_value("channel_axis", channel_axis, f"None or the same axis as unit_axis={unit_axis}")
        self.unit_axis = check_unit_axis(unit_axis if unit_axis is not None else channel_axis)
        self.token = check_token(token)

    def _chosen(self, ctx: LossContext, indices: list[int] | None) -> torch.Tensor:
        """The layer's units `indices` (None: all) on the unit axis (at one position with `token`)."""
        raw = ctx.activation(self.layer)
        axis = resolve_axis(raw, self.unit_axis, ctx.target(self.layer), self.layer)
        return select_units(raw, indices, self.layer, axis, self.token)


class ActivationMaximization(_OneLayer):
    """Minus the mean activation of the chosen units of a layer (keras-vis's loss).

    Units lie on the layer's unit axis: axis 1 for dense (N, C) and conv (N, C, ...)
    outputs, the last axis for (N, tokens, features) outputs of a Linear, LayerNorm or
    attention and for channels-last blocks (see `featvis.targets.Probe.unit_axis`);
    `unit_axis` (alias `channel_axis`) overrides it. A unit is averaged over the other
    axes (space, tokens); `token` picks one position instead (``token=0``: a ViT's class
    token). `batch` restricts the loss to some images of the batch (others get 0).

    Examples:
        >>> ActivationMaximization("_fc", [130, 285])  # one image: flamingo and cat together
        >>> ActivationMaximization("encoder.layers.encoder_layer_5.mlp.0", 7)  # MLP neuron 7
        >>> ActivationMaximization("encoder.layers.encoder_layer_5", 7, token=0)  # on the class token
    """

    name = "ActivationMaximization"

    def __init__(
        self,
        layer: LayerSpec,
        filter_indices: int | Sequence[int] | None = None,
        *,
        batch: int | Sequence[int] | None = None,
        unit_axis: int | None = None,
        token: int | None = None,
        channel_axis: int | None = None,
    ):
        self.layer = layer
        self.filter_indices = _check_indices(filter_indices, "filter_indices")
        self.batch = _check_indices(batch, "batch")
        self._place_units(unit_axis, token, channel_axis)

    def units_line(self, targets: dict, shapes: dict) -> str:
        """One line for verbose output: the layer, its output shape and the axis its units lie on."""
        chosen = "all units" if self.filter_indices is None else f"units {self.filter_indices}"
        return _units_line(self, chosen, targets, shapes)

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        values = -self._chosen(ctx, self.filter_indices).flatten(1).mean(1)
        if self.batch is None:
            return values
        keep = torch.zeros(ctx.batch_size, dtype=values.dtype, device=values.device)
        keep[self.batch] = 1
        return values * keep[ctx.image_of_row()]


class UnitPerImage(_OneLayer):
    """Image i of the batch maximizes unit ``units[i]`` of one layer, in one vectorized term.

    Examples:
        >>> UnitPerImage("_blocks.10", range(16))  # 16 channels, one per image
    """

    name = "UnitPerImage"

    def __init__(
        self,
        layer: LayerSpec,
        units: Sequence[int],
        *,
        unit_axis: int | None = None,
        token: int | None = None,
        channel_axis: int | None = None,
    ):
        self.layer = layer
        self.units = _check_indices(list(units), "units")
        self._place_units(unit_axis, token, channel_axis)
        self._units_on: torch.Tensor | None = None

    def units_line(self, targets: dict, shapes: dict) -> str:
        """One line for verbose output, as `ActivationMaximization.units_line`."""
        return _units_line(self, f"one unit per image {self.units}", targets, shapes)

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        act = self._chosen(ctx, None)
        if max(self.units) >= act.shape[1]:
            raise bad_value("units", self.units, f"indices in [0, {act.shape[1] - 1}]")
        if len(self.units) != ctx.batch_size:
            raise bad_value("units", self.units, f"one unit per image ({ctx.batch_size})")
        if self._units_on is None or self._units_on.device != act.device:  # one copy, not one per step
            self._units_on = torch.tensor(self.units, device=act.device)
        units = self._units_on[ctx.image_of_row()]
        chosen = act[torch.arange(act.shape[0], device=act.device), units]
        return -chosen.flatten(1).mean(1) if chosen.ndim > 1 else -chosen


def channel(layer: LayerSpec, index: int, *, batch: int | None = None) -> Loss:
    """Maximize one channel (conv) or unit (dense), averaged over space.

    Examples:
        >>> channel("_blocks.10", 7)
    """
    loss = ActivationMaximization(layer, index, batch=batch)
    loss.name = "channel"
    return loss


def class_logit(layer: LayerSpec, index: int, *, batch: int | None = None) -> Loss:
    """Maximize one class score (give the layer before any softmax, or featvis reads before it).

    Examples:
        >>> class_logit("_fc", 130)
    """
    loss = ActivationMaximization(layer, index, batch=batch)
    loss.name = "class_logit"
    return loss


class neuron(_OneLayer):
    """Maximize one channel at one spatial position (the center by default).

    Examples:
        >>> neuron("_blocks.10", 7, x=5, y=5)
    """

    name = "neuron"

    def __init__(self, layer: LayerSpec, index: int, x: int | None = None, y: int | None = None):
        self.layer = layer
        self.index = _check_indices(index, "index")[0]
        self.x, self.y = x, y

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        act = self._chosen(ctx, [self.index])[:, 0]
        if act.ndim != 3:
            raise bad_value("layer", self.layer, "a layer with (N, C, H, W) output for neuron()")
        h, w = act.shape[1:]
        y = h // 2 if self.y is None else self.y
        x = w // 2 if self.x is None else self.x
        if not (0 <= y < h and 0 <= x < w):
            raise bad_value("x, y", (x, y), f"a position inside the {h}x{w} map")
        return -act[:, y, x]


def _direction_vector(vector: object) -> torch.Tensor:
    """One finite non-zero vector, unit norm: a tensor, an array, a list of numbers, or an object with a
    ``vector`` attribute (a `featvis.concepts.CAV`)."""
    vector = getattr(vector, "vector", vector)
    try:
        vector = torch.as_tensor(vector, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as err:
        raise bad_type(
            "vector", vector, "a vector of the layer's channel space (tensor, array, list)"
        ) from err
    if sum(size > 1 for size in vector.shape) > 1:
        raise bad_value(
            "vector",
            f"a tensor of shape {tuple(vector.shape)}",
            "one vector (for a (k, channels) set of directions, one Direction per row)",
        )
    vector = vector.flatten()
    if vector.numel() == 0 or vector.norm() == 0 or not torch.isfinite(vector).all():
        raise bad_value("vector", "a zero or non-finite vector", "a finite non-zero vector")
    return vector / vector.norm()


def _position(argument: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise bad_type(argument, value, "an int position >= 0 or None")
    if value < 0:
        raise bad_value(argument, value, "an int position >= 0 or None")
    return int(value)


class Direction(_OneLayer):
    """Grow a direction of a layer's channel space: Lucid's direction objective with cosine weighting.

    At each position the activation vector ``a`` (its channels) scores ``(a . v) * max(cos(a, v),
    0.1) ** cossim_pow`` with ``v`` the unit `vector`: the projection on the direction times its cosine
    similarity to a power, so the image grows the direction itself rather than the magnitude of its
    largest unit (``cossim_pow=0``: the bare projection, `direction`). The score is averaged over the
    positions (space, tokens), or read at one: ``x`` (and ``y`` for a (N, C, H, W) output). `batch`
    restricts the loss to some images of the batch (others get 0). `vector` may be a tensor, an array,
    a list, a row of `featvis.concepts.activation_directions`'s ``vectors`` or a `featvis.concepts.CAV`.

    Examples:
        >>> Direction("_blocks.10", torch.randn(112), cossim_pow=2)
        >>> Direction("_blocks.10", cav, x=7, y=7)  # a concept activation vector, at the center
        >>> [Direction("_blocks.10", v) for v in directions.vectors]  # one objective per direction
    """

    name = "Direction"
    EPS = 1e-4  # Lucid's: keeps the cosine finite at a zero activation

    def __init__(
        self,
        layer: LayerSpec,
        vector: object,
        cossim_pow: float = 1.0,
        batch: int | Sequence[int] | None = None,
        x: int | None = None,
        y: int | None = None,
    ):
        self.layer = layer
        self.vector = _direction_vector(vector)
        if isinstance(cossim_pow, bool) or not isinstance(cossim_pow, numbers.Real):
            raise bad_type("cossim_pow", cossim_pow, "a finite number >= 0")
        if not math.isfinite(cossim_pow) or cossim_pow < 0:
            raise bad_value("cossim_pow", cossim_pow, "a finite number >= 0")
        self.cossim_pow = float(cossim_pow)
        self.batch = _check_indices(batch, "batch")
        self.x, self.y = _position("x", x), _position("y", y)
        if self.y is not None and self.x is None:
            raise bad_value("x", None, "a position with y (x alone for a 1-D map, x and y for a 2-D one)")

    def _at_position(self, act: torch.Tensor) -> torch.Tensor:
        """(rows, C, ...) -> (rows, C, positions): all of them, or the one at x (, y)."""
        if self.x is None:
            return act.flatten(2) if act.ndim > 2 else act[..., None]
        spatial = tuple(act.shape[2:])
        wanted = (self.x,) if self.y is None else (self.y, self.x)
        if len(spatial) != len(wanted):
            given = "x" if self.y is None else "x, y"
            raise bad_value(
                given,
                wanted[::-1],
                f"{len(spatial)} coordinate(s) for layer {self.layer!r}, whose output per unit is "
                f"{spatial or 'one value'} (x for (N, C, L), x and y for (N, C, H, W))",
            )
        if any(not 0 <= w < s for w, s in zip(wanted, spatial, strict=True)):
            raise bad_value(
                "x, y" if self.y is not None else "x", wanted[::-1], f"a position inside {spatial}"
            )
        return act[(slice(None), slice(None), *wanted)][..., None]

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        act = self._chosen(ctx, None)
        if act.shape[1] != self.vector.numel():
            raise bad_value("vector", f"length {self.vector.numel()}", f"length {act.shape[1]}")
        act = self._at_position(act)
        vector = self.vector.to(act.device, act.dtype).view(1, -1, 1)
        dot = (act * vector).sum(1)  # (rows, positions)
        if self.cossim_pow > 0:
            cosine = dot / (act.norm(dim=1) + self.EPS)  # the vector has unit norm
            dot = dot * cosine.clamp(min=0.1) ** self.cossim_pow
        values = -dot.mean(1)
        if self.batch is None:
            return values
        keep = torch.zeros(ctx.batch_size, dtype=values.dtype, device=values.device)
        keep[self.batch] = 1
        return values * keep[ctx.image_of_row()]


class DirectionPerImage(Direction):
    """Image i of the batch grows direction ``vectors[i]``, as `Direction` scores one, in one
    vectorized term (the activation atlas draws all its cells this way, a batch at a time).

    Examples:
        >>> DirectionPerImage("_blocks.15", torch.randn(16, 192))  # 16 directions, one per image
    """

    name = "DirectionPerImage"

    def __init__(
        self,
        layer: LayerSpec,
        vectors: object,
        cossim_pow: float = 1.0,
        x: int | None = None,
        y: int | None = None,
    ):
        try:
            rows = [_direction_vector(vector) for vector in vectors]
        except TypeError as err:
            raise bad_type("vectors", vectors, "a (images, channels) tensor or a list of vectors") from err
        if not rows or len({row.numel() for row in rows}) != 1:
            raise bad_value("vectors", f"{len(rows)} vectors", "at least one, all of one length")
        super().__init__(layer, rows[0], cossim_pow, None, x, y)
        self.vectors = torch.stack(rows)

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        act = self._chosen(ctx, None)
        if act.shape[1] != self.vectors.shape[1]:
            raise bad_value("vectors", f"rows of length {self.vectors.shape[1]}", f"length {act.shape[1]}")
        if len(self.vectors) != ctx.batch_size:
            raise bad_value("vectors", f"{len(self.vectors)} directions", f"one per image ({ctx.batch_size})")
        act = self._at_position(act)
        vectors = self.vectors.to(act.device, act.dtype)[ctx.image_of_row()][..., None]
        dot = (act * vectors).sum(1)
        if self.cossim_pow > 0:
            dot = dot * (dot / (act.norm(dim=1) + self.EPS)).clamp(min=0.1) ** self.cossim_pow
        return -dot.mean(1)


class direction(Direction):
    """Maximize the projection of a layer's activations on a vector of its channel space: `Direction`
    with ``cossim_pow=0`` by default, averaged over positions.

    Examples:
        >>> direction("_blocks.10", torch.randn(112))
    """

    name = "direction"

    def __init__(
        self,
        layer: LayerSpec,
        vector: object,
        cossim_pow: float = 0.0,
        batch: int | Sequence[int] | None = None,
        x: int | None = None,
        y: int | None = None,
    ):
        super().__init__(layer, vector, cossim_pow, batch, x, y)


class diversity(_OneLayer):
    """Penalize images of a batch whose layer activations look alike (Gram cosine similarity).

    Examples:
        >>> channel("_blocks.10", 7) + 100 * diversity("_blocks.10")
    """

    name = "diversity"

    def __init__(self, layer: LayerSpec):
        self.layer = layer

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        act = ctx.activation(self.layer)
        if ctx.batch_size < 2:
            return torch.zeros(ctx.rows, device=act.device)
        flat = act.flatten(2)
        grams = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
        similarity = grams @ grams.T
        image = ctx.image_of_row()
        other = (image[:, None] != image[None, :]).to(similarity.dtype)
        return (similarity * other).sum(1) / other.sum(1)
