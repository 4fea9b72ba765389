"""One prepared model behind every entry point: guarded, probed once, layers resolved, runners cached.

`PreparedModel` takes a model and its input conventions once and serves many
batches and calls: it puts the model in eval mode with frozen weights (and restores
everything on `close`), probes it once, resolves layers (names, ``#k`` calls, ints,
modules, Keras names), builds and checks the fused copy once per set of target
layers, captures layer outputs with an early exit, and turns images in [0, 1] into
model input (`input_range`, `preprocess`, the model's dtype). Every public function
of featvis builds one for its call; a researcher can build one to share it.

Examples:
    >>> with PreparedModel(lite0.model, preprocess=lite0.preprocess) as prepared:
    ...     a = featvis.visualize_layer(prepared, "_blocks.10", range(16))
    ...     b = featvis.visualize_cam(prepared, "_fc", 285, cat)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
import contextlib
import inspect
import warnings

import numpy as np
import torch
from torch import nn

from featvis.errors import (
    FeatvisValueError,
    FeatvisWarning,
    LayerNotFoundError,
    bad_type,
    bad_value,
    check_int,
    close_matches,
    is_int,
    known_keywords,
)
from featvis.image import check_range, check_seed_range, resize, to_unit_signal, to_unit_tensor
from featvis.model import fusion, targets
from featvis.model.inputs import ModelInputs
from featvis.model.targets import Capture, LayerSpec, ModelGuard, Probe, Target
from featvis.model.units import check_unit_axis, layer_key, resolve_axis

CONVENTIONS = (
    "input_range",
    "preprocess",
    "channels",
    "device",
    "fuse",
    "channels_last",
    "inputs",
    "output",
)


class PreparedModel:
    """A model ready for featvis: see the module docstring.

    A model of several inputs takes ``inputs=``, a dict by input name or a tuple in forward
    order (see `featvis.inputs`): the image input's conventions are those given here, fixed
    inputs are fed beside every image, optimized ones are optimized along (their values at
    the middle of their ranges outside an optimization). Such a model runs unfused.

    A model whose output is not one tensor (a Hugging Face ``ModelOutput``, a dict, a tuple)
    is read through ``output=``: by default its ``logits`` field or first element; a field
    name, a tuple index or a function of the output picks another (`targets.select_output`).
    ``size`` is the model's own input size: images are made at it where a call gives no size (else
    224 x 224), and photos given to it are resized to it.

    Examples:
        >>> prepared = PreparedModel(model, input_range=(0.0, 1.0), channels=1)
        >>> prepared.layer_output("conv2", images).shape
        >>> prepared.close()   # the model is exactly as before
        >>> two = PreparedModel(image_and_meta, inputs={"meta": torch.tensor([[0.3, 1.0]])})
        >>> clip = PreparedModel(clip_vision, output="image_embeds")
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        input_range: tuple[float, float] | None = (0, 255),
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        channels: int | None = None,
        device: str | torch.device | None = None,
        fuse: bool = True,
        channels_last: bool | None = None,
        inputs: Mapping[str, object] | Sequence[object] | None = None,
        output: targets.OutputPick = None,
        size: int | tuple[int, ...] | None = None,
    ):
        if isinstance(model, PreparedModel):
            raise bad_type("model", model, "a torch.nn.Module (this one is prepared already)")
        if not isinstance(model, nn.Module):
            raise bad_type("model", model, "a torch.nn.Module")
        self.model = targets.unwrap_compiled(model)
        self.input_range = None if input_range is None else check_range(input_range)
        if preprocess is not None and not callable(preprocess):
            raise bad_type("preprocess", preprocess, "a function of the image batch, or None")
        if input_range is None and preprocess is not None:
            raise bad_value(
                "preprocess",
                preprocess,
                "None with input_range=None (tensors are then fed to the model as given, already "
                "normalized); to have featvis preprocess, give input_range (e.g. (0, 255))",
            )
        self.preprocess = preprocess
        self.inputs = None if inputs is None else ModelInputs(self.model, inputs)
        self._given_inputs = inputs
        image = 0 if self.inputs is None else self.inputs.index
        self.channels = targets.infer_channels(self.model, image) if channels is None else channels
        check_int("channels", self.channels, 1)
        check_preprocess_channels(preprocess, self.channels)
        self.spatial_dims = targets.infer_spatial_dims(self.model, image)
        self._size = None if size is None else input_size(size, self.spatial_dims)
        self.device = targets.resolve_device(device, self.model)
        self.dtype = targets.model_dtype(self.model)
        if self.inputs is not None:
            self.inputs.to(self.device, self.dtype)
        if channels_last is not None and not isinstance(channels_last, bool):
            raise bad_type("channels_last", channels_last, "True, False or None")
        # the fused copy's checks call the model with one input
        self.fuse, self.channels_last = bool(fuse) and self.inputs is None, channels_last
        self._guard = ModelGuard(self.model, self.inputs, output)
        self._open = False
        self._seen: Probe | None = None
        self._runners: dict[tuple, tuple[nn.Module, Capture, bool]] = {}
        self._captures: dict[tuple, Capture] = {}
        self._warned: set[str] = set()
        _warn_unscaled(self.model, self.input_range, preprocess)

    # -- life cycle -----------------------------------------------------------------------
    def __enter__(self) -> PreparedModel:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Put the model in featvis's state (eval mode, frozen weights); `close` undoes it."""
        if not self._open:
            self._guard.__enter__()
            self._open = True

    def close(self) -> None:
        """Remove every hook featvis added and restore the model's flags; the object can be reopened."""
        if self._open:
            self._guard.__exit__(None, None, None)
            self._open = False
            self._runners.clear()
            self._captures.clear()

    def __repr__(self) -> str:
        return (
            f"PreparedModel({type(self.model).__name__}, input_range={self.input_range}, "
            f"channels={self.channels}, device={self.device}, {'open' if self._open else 'closed'})"
        )

    # -- input conventions ----------------------------------------------------------------
    @property
    def output(self) -> targets.OutputPick:
        """Which part of a structured model output is read (``output=``; None: the logits or first element)."""
        return self._guard.output

    @property
    def conventions(self) -> dict[str, object]:
        """The conventions this model was prepared with, by argument name (`CONVENTIONS`): the channel
        count read from the model and the device it runs on where they were not given.

        Examples:
            >>> PreparedModel(model, input_range=(0, 1)).conventions["input_range"]
            (0, 1)
        """
        return dict(
            input_range=self.input_range,
            preprocess=self.preprocess,
            channels=self.channels,
            device=self.device,
            fuse=self.fuse,
            channels_last=self.channels_last,
            inputs=self._given_inputs,
            output=self.output,
        )

    def model_input(self, images: torch.Tensor, *, in_range: bool = False) -> torch.Tensor:
        """Images in [0, 1] as the model takes them: scaled to `input_range`, preprocessed, in its dtype.

        ``in_range=True``: the images are in `input_range` already (as a user's DataLoader gives
        them) and are only preprocessed. With ``input_range=None`` images are model input already
        (e.g. ImageNet-normalized tensors, as Captum and pytorch-grad-cam take them) and only the
        dtype changes.

        Examples:
            >>> prepared.model_input(torch.rand(2, 3, 224, 224)).shape
            torch.Size([2, 3, 224, 224])
            >>> prepared.model_input(batch_in_0_255, in_range=True)
        """
        x = images
        if self.input_range is not None and not in_range:
            low, high = self.input_range
            x = low + (high - low) * images
        if self.preprocess is not None:
            x = self.preprocess(x)
        return x.to(self.dtype) if x.is_floating_point() and x.dtype != self.dtype else x

    def require_input_range(self, purpose: str) -> None:
        """Refuse ``input_range=None`` (tensors fed as given) where featvis makes the images itself."""
        if self.input_range is None:
            raise bad_value(
                "input_range",
                None,
                f"a pair (low, high) for {purpose}: None (feed tensors as given) is for attention maps",
            )

    def require_images(self, purpose: str) -> None:
        """Refuse a model of 1-D signals or 3-D volumes where featvis writes 2-D pictures (a web page).

        Examples:
            >>> prepared.require_images("an atlas")
            FeatvisValueError: model takes 1-D signals (inputs of 1 spatial axis), and an atlas ...
        """
        if self.spatial_dims != 2:
            axes = self.spatial_dims  # a Keras model's input rank may give any count
            kind = {1: "1-D signals", 3: "3-D volumes"}.get(axes, f"{axes}-D input")
            raise FeatvisValueError(
                f"model takes {kind} (inputs of {axes} spatial {'axes' if axes > 1 else 'axis'}), and {purpose} "
                "shows 2-D images; draw its units with featvis.visualize_layer and save them with "
                "featvis.save_signal or featvis.save_volume"
            )

    def load_images(self, images: object, argument: str = "seed_input") -> torch.Tensor:
        """Images as given to an entry point (a path, PIL image, array, tensor, or a list of them)
        as one (N, C, H, W) batch in [0, 1] on the model's device; for a 1-D or 3-D model,
        signals (N, C, L) or volumes (N, C, D, H, W) (see `featvis.image.to_unit_signal`).
        Float images in [0, 1] under a wide `input_range` such as (0, 255) are refused (they would
        read as almost black; see `featvis.image.check_seed_range`). A model prepared with its own
        input size (``size=``, as zoo models are) gets its images resized to it, as its library's
        preprocessing does.

        Examples:
            >>> prepared.load_images(["cat.jpg", "dog.jpg"]).shape
        """
        if self.spatial_dims != 2:
            loaded = to_unit_signal(images, argument, self.input_range, self.channels, self.spatial_dims)
        elif isinstance(images, Sequence) and not isinstance(images, str | np.ndarray):
            if not images:
                raise bad_value(argument, images, "at least one image")
            loaded = torch.cat(
                [self._sized(to_unit_tensor(i, argument, self.input_range, self.channels)) for i in images]
            )
        else:
            loaded = to_unit_tensor(images, argument, self.input_range, self.channels)
        check_seed_range(images, loaded, self.input_range, argument)
        return self._sized(loaded).to(self.device)

    def _sized(self, images: torch.Tensor) -> torch.Tensor:
        """Images resized to the model's own input size (`size`) when it came with one."""
        return images if self._size is None else resize(images, self._size)

    def size_for(self, size: object, argument: str = "size") -> tuple[int, ...]:
        """The input size of a call: `size` checked (an int, or one int per spatial axis), or
        `default_size` for None. A tuple's length sets the input's axes from then on (a model that
        flattens images into a Conv1d takes ``size=(32, 32)``).

        Examples:
            >>> PreparedModel(conv1d_net).size_for(256)
            (256,)
        """
        if size is None:
            return self.default_size()
        if isinstance(size, Sequence) and not isinstance(size, str) and 1 <= len(size) <= 3:
            self.spatial_dims = len(size)
        return input_size(size, self.spatial_dims, argument)

    def default_size(self) -> tuple[int, ...]:
        """The input size used when none is given: `size` when the model came with one (a zoo
        model's data config), else 224 x 224 images, 128-sample signals, 32^3 volumes."""
        if self._size is not None:
            return self._size
        return {1: (128,), 2: (224, 224), 3: (32, 32, 32)}.get(self.spatial_dims, (224, 224))

    def random_images(self, size: tuple[int, ...], batch: int = 1) -> torch.Tensor:
        """Fixed (seed 0) uniform images in [0, 1] of `size`, for probing and checks; no global RNG used."""
        generator = torch.Generator().manual_seed(0)
        return torch.rand(batch, self.channels, *size, generator=generator).to(self.device)

    def set_inputs(self, values: Mapping[str, torch.Tensor]) -> None:
        """The optimized inputs' values in [0, 1] (see `featvis.inputs.Optimized`) for the next passes;
        ``{}`` puts them back at the middle of their ranges.

        Examples:
            >>> prepared.set_inputs({"meta": torch.tensor([[1.0, 0.0]])})
        """
        if self.inputs is None:
            if values:
                raise bad_value("values", list(values), "{} for a model of one input (no inputs= given)")
            return
        unknown = [name for name in values if name not in self.inputs.optimized]
        if unknown:
            raise bad_value("values", unknown, f"names of the optimized inputs {list(self.inputs.optimized)}")
        if values:
            self.inputs.set(values)
        else:
            self.inputs.reset()

    # -- probing and layers -----------------------------------------------------------------
    def probe(self, images: torch.Tensor) -> Probe:
        """Probe the model on the first image of `images` (in [0, 1]); later calls reuse the probe
        while the images keep its size, and probe again at another size (the layer shapes change)."""
        x = self.model_input(images[:1])
        if self._seen is not None and self._seen.input_shape not in (None, tuple(x.shape)):
            self._seen = None
        return self.probe_input(x)

    def probe_input(self, x: torch.Tensor, hint: str | None = None) -> Probe:
        """Like `probe`, on a model input as the model takes it (already preprocessed); `hint` ends
        the error of a model that raises (`targets.probe`)."""
        self.open()
        if self._seen is None:
            self._seen = targets.probe(self.model, x[:1], self.inputs, self._guard.output, hint)
        return self._seen

    def probe_size(self, size: tuple[int, ...], argument: str = "size", default: bool = False) -> Probe:
        """Like `probe`, on a random input of `size` (once: later calls reuse the probe); a model that
        raises is told to give `argument` (``size`` or ``input_shape``), `default`: the size was not given.

        Examples:
            >>> prepared.probe_size((64, 64)).order[-1]
        """
        if self._seen is None:
            x = self.model_input(self.random_images(size))
            default = default and self._size is None  # a size= this was made with was given
            self.probe_input(x, targets.size_hint(argument, tuple(x.shape), default))
        return self._seen

    @property
    def seen(self) -> Probe:
        """The probe (on a random image of `default_size` when nothing was probed yet)."""
        return self._seen if self._seen is not None else self.probe_size(self.default_size(), default=True)

    def seen_modules(self) -> dict[nn.Module, str]:
        """Each module of the model and the name the probe's events give it."""
        return targets.module_names(self.model)

    def resolve(self, layer: LayerSpec, argument: str = "layer") -> Target:
        """The `Target` a layer spec names, with clear errors naming `argument`."""
        return targets.resolve_layer(self.model, layer, self.seen, argument)

    def resolve_all(self, specs: Iterable[LayerSpec]) -> dict[object, Target]:
        """{layer key: Target} for the layers a loss reads; warns once about layers read before a softmax."""
        resolved = {layer_key(spec): self.resolve(spec) for spec in specs}
        fresh = self._pre_softmax(resolved.values()) - self._warned
        self._warned |= fresh
        targets.warn_pre_softmax(fresh)
        return resolved

    def _pre_softmax(self, wanted: Iterable[Target]) -> set[str]:
        return {t.key for t in wanted} & self.seen.softmax_outputs

    # -- running ----------------------------------------------------------------------------
    def capture(self, wanted: Sequence[Target]) -> Capture:
        """Hooks on the model itself that collect `wanted`'s outputs and stop the pass after them (cached)."""
        self.open()
        wanted = _unique(wanted)
        key = tuple(t.key for t in wanted)
        if key not in self._captures:
            self._captures[key] = Capture(wanted, self._guard, self._pre_softmax(wanted))
        return self._captures[key]

    def hooks(
        self,
        forward: Iterable[tuple[nn.Module, Callable]] = (),
        pre: Iterable[tuple[nn.Module, Callable]] = (),
    ) -> contextlib.AbstractContextManager[None]:
        """Forward hooks and pre-hooks, (module, hook) pairs, for a block, through the model's guard:
        removed when the block ends, and by `close` whatever happens (`targets.ModelGuard.hooks`).

        Examples:
            >>> with prepared.hooks(forward=[(model.fc, lambda module, inputs, output: output * 2)]):
            ...     doubled = prepared.model(x)
        """
        self.open()
        return self._guard.hooks(forward, pre)

    def runner(self, wanted: Sequence[Target], image_shape: Sequence[int]) -> tuple[nn.Module, Capture, bool]:
        """The module to run for `wanted` (the fused copy where it agrees with the model), its capture,
        and whether to feed it channels-last input; chosen once per set of targets and image size."""
        self.open()
        wanted = _unique(wanted)
        key = (tuple(t.key for t in wanted), tuple(image_shape))
        if key not in self._runners:
            check = self.model_input(self.random_images(tuple(image_shape[1:])))
            self._runners[key] = fusion.choose_runner(
                self.model,
                check,
                self.seen,
                wanted,
                self._guard,
                self._pre_softmax(wanted),
                fuse=self.fuse,
                channels_last=self.channels_last,
            )
        return self._runners[key]

    def layer_output(self, layer: LayerSpec, images: torch.Tensor) -> torch.Tensor:
        """The output of `layer` (channels first) for images in [0, 1], without gradients.

        Examples:
            >>> prepared.layer_output("_blocks.10", images).shape
            torch.Size([4, 112, 14, 14])
        """
        self.probe(images)
        target = self.resolve(layer)
        with torch.no_grad():
            return self.capture([target]).run(self.model, self.model_input(images))[target.key]

    def unit_count(self, layer: LayerSpec, size: tuple[int, ...], unit_axis: int | None = None) -> int:
        """How many units `layer` has (along its unit axis, or `unit_axis`; 1 for one value per image).

        Examples:
            >>> prepared.unit_count("encoder.layers.encoder_layer_5.mlp.0", (224, 224))
            3072
        """
        out = self.layer_output(layer, self.random_images(size))
        if out.ndim == 1:
            return 1
        return int(out.shape[resolve_axis(out, check_unit_axis(unit_axis), self.resolve(layer), layer)])

    def observe(
        self, size: tuple[int, ...], hook: Callable, modules: Iterable[nn.Module] | None = None
    ) -> None:
        """One forward of a random image of `size` without gradients, with ``hook(module, inputs,
        output)`` on `modules` (default: the leaf modules that run), in the order they finish.

        Examples:
            >>> prepared.observe((224, 224), lambda module, inputs, output: print(type(module).__name__))
        """
        images = self.random_images(size)
        self.probe(images)
        if modules is None:
            by_name = {name: module for module, name in self.seen_modules().items()}
            modules = [by_name[targets.split_call(label)[0]] for label in dict.fromkeys(self.seen.order)]
        with targets.forward_hooks(modules, hook), torch.no_grad():
            targets.run_model(self.model, self.model_input(images), self.inputs)

    def activation_bytes(self, size: tuple[int, ...]) -> int:
        """Bytes of all leaf outputs of one image of `size` (a bound on what a batch needs).

        Examples:
            >>> prepared.activation_bytes((224, 224))
        """
        total = 0

        def count(module, inputs, output):
            nonlocal total
            if isinstance(output, torch.Tensor):
                total += output.numel() * output.element_size()

        self.observe(size, count)
        return total


_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(PreparedModel).parameters.items()
    if name in CONVENTIONS
}


def _unique(wanted: Sequence[Target]) -> list[Target]:
    return list({t.key: t for t in wanted}.values())


@known_keywords
def prepare(
    model: nn.Module | PreparedModel,
    *,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: targets.OutputPick = None,
) -> tuple[PreparedModel, bool]:
    """A new `PreparedModel` of `model` and its conventions (`PreparedModel`'s arguments), or `model`
    itself when it is prepared already; and whether the caller owns it (and closes it).

    A prepared model keeps the conventions it was made with: a convention given here that differs
    from its own is an error (`check_conventions`); one left at its default is not checked (the
    entry points pass their defaults along).

    Examples:
        >>> prepared, owned = prepare(model, input_range=(0, 255), preprocess=None)
        >>> prepare(prepared, preprocess=other)  # FeatvisValueError: preprocess=... differs from ...
    """
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
    if isinstance(model, PreparedModel):
        check_conventions(model, conventions)
        return model, False
    return PreparedModel(model, **conventions), True


@contextlib.contextmanager
@known_keywords
def preparing(
    model: nn.Module | PreparedModel,
    *,
    input_range: tuple[float, float] | None = (0, 255),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: targets.OutputPick = None,
) -> Iterator[PreparedModel]:
    """`prepare` for the length of a block: a `PreparedModel` made here is closed when it ends.

    Examples:
        >>> with preparing(model, input_range=(0, 255)) as prepared:
        ...     out = prepared.layer_output("fc", images)
    """
    prepared, owned = prepare(
        model,
        input_range=input_range,
        preprocess=preprocess,
        channels=channels,
        device=device,
        fuse=fuse,
        channels_last=channels_last,
        inputs=inputs,
        output=output,
    )
    try:
        yield prepared
    finally:
        if owned:
            prepared.close()


def check_conventions(prepared: PreparedModel, conventions: Mapping[str, object]) -> None:
    """Refuse a convention that differs from the one `prepared` was made with, naming the first:
    a prepared model keeps its own. A value at `PreparedModel`'s default counts as not given.

    Examples:
        >>> check_conventions(PreparedModel(model, input_range=(0, 1)), {"input_range": (-1, 1)})
        FeatvisValueError: input_range=(-1, 1) differs from the prepared model's input_range=(0, 1) ...
    """
    for name, value in conventions.items():
        if _same(value, _DEFAULTS[name]):
            continue
        own = prepared.conventions[name]
        if name == "input_range" and value is not None:
            value = check_range(value)
        elif name == "device" and value is not None:
            value = targets.resolve_device(value, prepared.model)
            if value.type == own.type and value.index in (None, own.index):
                continue
        if not _same(value, own):
            raise FeatvisValueError(
                f"{name}={value!r} differs from the prepared model's {name}={own!r}: a PreparedModel "
                f"keeps the conventions it was made with; pass {name}= to PreparedModel(...) instead"
            )


def _same(a: object, b: object) -> bool:
    """Whether two convention values are the same (equal, or the same object where `==` says nothing)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):  # tensors and arrays compare elementwise
        return False


def layer_names(
    model: nn.Module | PreparedModel,
    input_shape: Sequence[int] | None = None,
    *,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
) -> list[str]:
    """The calls of the model's leaf modules in the order they run; an int `layer` indexes this.

    A module that runs several times is listed once per call, as ``name#k``. Every name listed
    is accepted as a `layer`. `input_shape` is (channels, *size): by default the channel count
    read from the model's first convolution (3 if none) and 224 x 224 images, 128-sample
    signals or 32^3 volumes (a model that takes one input size only needs it). `inputs` feeds
    a model of several inputs (see `featvis.inputs`). A `PreparedModel` is probed as it is:
    one that has probed already keeps its probe, and its conventions win.

    Examples:
        >>> featvis.layer_names(model)[-1]
        '_fc'
        >>> featvis.layer_names(vit_64px, input_shape=(3, 64, 64))
        >>> featvis.layer_names(two_inputs, (3, 32, 32), inputs={"meta": meta})
    """
    shape = None if input_shape is None else tuple(input_shape)
    if shape is not None and (not shape or not all(is_int(n) and n > 0 for n in shape)):
        raise bad_value("input_shape", input_shape, "(channels, *size) of positive ints, e.g. (3, 224, 224)")
    # random images in [0, 1] to probe; a prepared model probes with its own conventions
    probing = {"input_range": (0.0, 1.0), "channels": None if shape is None else shape[0]}
    with preparing(model, inputs=inputs, **({} if isinstance(model, PreparedModel) else probing)) as prepared:
        size = prepared.default_size() if shape is None else shape[1:]
        return prepared.probe_size(size, "input_shape", shape is None).order


def find_layer_idx(
    model: nn.Module | PreparedModel, name: str, input_shape: Sequence[int] | None = None
) -> int:
    """The int index of the layer called `name` (keras-vis's `utils.find_layer_idx`); `model` and
    `input_shape` as in `layer_names`.

    Examples:
        >>> featvis.find_layer_idx(model, "_fc")
        143
    """
    order = layer_names(model, input_shape)
    if name not in order:
        calls = [label for label in order if label.startswith(f"{name}#")]
        if calls:
            raise LayerNotFoundError(
                f"layer={name!r} runs {len(calls)} times in one forward pass; choose a call: {', '.join(calls)}"
            )
        hint = close_matches(name, order, see="featvis.layer_names(model)")
        raise LayerNotFoundError(f"layer={name!r} is not a leaf module that runs{hint}")
    return order.index(name)


_WARNED_UNSCALED: set[str] = set()


def _warn_unscaled(model: nn.Module, input_range, preprocess) -> None:
    """Warn once per model class when it is fed raw 0-255 values with no preprocess (a common mix-up)."""
    kind = type(model).__qualname__
    if (
        input_range is not None
        and preprocess is None
        and input_range[1] - input_range[0] > 2
        and kind not in _WARNED_UNSCALED
    ):
        _WARNED_UNSCALED.add(kind)
        warnings.warn(
            f"{type(model).__name__} is fed raw values in input_range={tuple(input_range)} with no "
            "preprocess; if it was trained on normalized images, pass preprocess= (e.g. "
            "featvis.zoo.Normalize() for ImageNet) or input_range=(0.0, 1.0)",
            FeatvisWarning,
            stacklevel=4,
        )


def check_preprocess_channels(preprocess: object, channels: int) -> None:
    """Refuse a per-channel normalization (a preprocess with a ``mean`` of several values, as
    `featvis.zoo.Normalize` and torchvision's ``Normalize``) of another number of channels than the
    images have: ImageNet's 3 means would broadcast a gray image into 3 channels without a word.

    Examples:
        >>> check_preprocess_channels(featvis.zoo.Normalize(), 1)  # raises FeatvisValueError
    """
    mean = getattr(preprocess, "mean", None)
    if isinstance(mean, torch.Tensor):
        mean = mean.flatten().tolist()
    if not isinstance(mean, Sequence) or isinstance(mean, str) or len(mean) in (1, channels):
        return
    raise FeatvisValueError(
        f"channels={channels}, but preprocess= normalizes {len(mean)} channels (its mean has {len(mean)} "
        f"values: {channels}-channel images would be broadcast into them); pass preprocess= for "
        f"{channels} channel(s) or none, or channels={len(mean)}"
    )


def input_size(size: object, spatial_dims: int = 2, argument: str = "size") -> tuple[int, ...]:
    """An int (the same along every axis) or a tuple of one int per spatial axis of the model's input:
    (L,) for signals, (H, W) for images, (D, H, W) for volumes.

    Examples:
        >>> input_size(128, 1), input_size((16, 32, 32), 3)
        ((128,), (16, 32, 32))
    """
    shapes = {1: "(length,)", 2: "(height, width)", 3: "(depth, height, width)"}
    wanted = f"an int or {shapes.get(spatial_dims, f'{spatial_dims} ints')} of ints"
    if is_int(size):
        size = (int(size),) * spatial_dims
    if not isinstance(size, Sequence) or isinstance(size, str):
        raise bad_type(argument, size, wanted)
    if len(size) != spatial_dims:
        raise bad_value(argument, size, f"{wanted}: the model takes {spatial_dims}-D input")
    if not all(map(is_int, size)):
        raise bad_type(argument, size, wanted)
    if min(size) < 1:
        raise bad_value(argument, size, "sizes >= 1")
    return tuple(int(s) for s in size)


def image_size(size: object, argument: str = "size") -> tuple[int, int]:
    """An int or (height, width) of ints >= 1, as a pair: `input_size` for images."""
    return input_size(size, 2, argument)
