"""keras-vis's ``vis.utils.utils`` names: `get_num_filters`, `load_img`, `deprocess_input`,
`lookup_imagenet_labels` (and `find_layer_idx`, `stitch_images` in `featvis` itself).

Examples:
    >>> from featvis.utils import get_num_filters, load_img, lookup_imagenet_labels
    >>> get_num_filters(model, "conv2")
    16
    >>> lookup_imagenet_labels([130, 285])
    ['flamingo', 'Egyptian cat']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
import numbers
import os

import numpy as np
from PIL import Image
import torch
from torch import nn

from featvis.errors import bad_type, bad_value, is_int, known_keywords
from featvis.image import check_range
from featvis.model.prepared import PreparedModel, image_size, input_size, preparing
from featvis.model.targets import LayerSpec, OutputPick


@known_keywords
def get_num_filters(
    model: nn.Module | PreparedModel,
    layer: LayerSpec,
    *,
    input_shape: Sequence[int] | None = None,
    unit_axis: int | None = None,
    input_range: tuple[float, float] | None = (0.0, 1.0),
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    channels: int | None = None,
    device: str | torch.device | None = None,
    fuse: bool = True,
    channels_last: bool | None = None,
    inputs: Mapping[str, object] | Sequence[object] | None = None,
    output: OutputPick = None,
) -> int:
    """How many units (filters, neurons, features) `layer` has: the length of its unit axis
    (a conv's channels, a Linear's outputs, the features of a transformer's tokens).

    `input_shape` is one input without the batch, channels first ((3, 224, 224) by default,
    the channel count read from the model); `unit_axis` overrides the layer's own unit axis.
    The model's conventions, `input_range` to `output`, are `featvis.prepared.PreparedModel`'s,
    `input_range` (0, 1) by default here (the model is probed on random images); a `PreparedModel`
    is probed with its own.

    Examples:
        >>> get_num_filters(model, "conv2")                              # conv: axis 1
        16
        >>> get_num_filters(vit, "encoder.layers.encoder_layer_5.mlp.0")  # tokens: last axis
        3072
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
    if isinstance(model, PreparedModel):  # it probes random images in its own input_range
        del conventions["input_range"]
    if input_shape is not None:
        if isinstance(input_shape, str) or not isinstance(input_shape, Sequence) or len(input_shape) < 2:
            raise bad_type("input_shape", input_shape, "(channels, *size) of ints, e.g. (3, 224, 224)")
        if not is_int(input_shape[0]) or input_shape[0] < 1:
            raise bad_value("input_shape", input_shape, "(channels, *size) with channels an int >= 1")
        if not isinstance(model, PreparedModel):
            conventions["channels"] = int(input_shape[0])
    with preparing(model, **conventions) as prepared:
        if input_shape is None:
            size = prepared.default_size()
        else:
            size = input_size(tuple(input_shape[1:]), len(input_shape) - 1, "input_shape")
        prepared.probe_size(size, "input_shape", input_shape is None)  # a failure names input_shape=
        return prepared.unit_count(layer, size, unit_axis)


def load_img(
    path: str | os.PathLike, grayscale: bool = False, target_size: int | Sequence[int] | None = None
) -> np.ndarray:
    """An image file as a uint8 array: (H, W, 3), or (H, W) with ``grayscale=True``; resized
    (bilinear) to `target_size` = (height, width) or an int when given (keras-vis's ``load_img``).

    Examples:
        >>> cat = load_img("cat.jpg", target_size=(224, 224))
        >>> cat.shape, cat.dtype
        ((224, 224, 3), dtype('uint8'))
    """
    if not isinstance(path, str | os.PathLike):
        raise bad_type("path", path, "a file path (str or os.PathLike)")
    if not os.path.isfile(path):
        raise bad_value("path", str(path), "an existing image file")
    try:
        with Image.open(path) as pil:
            picture = pil.convert("L" if grayscale else "RGB")
    except OSError as err:
        raise bad_value("path", str(path), f"a readable image file ({err})") from err
    if target_size is not None:
        height, width = image_size(target_size, "target_size")
        picture = picture.resize((width, height), Image.BILINEAR)
    return np.asarray(picture, dtype=np.uint8).copy()


def deprocess_input(
    input_array: np.ndarray | torch.Tensor, input_range: tuple[float, float] = (0, 255)
) -> np.ndarray:
    """Make any array displayable, as keras-vis's ``deprocess_input``: standardize it (mean 0, std 0.1),
    shift to 0.5, clip to [0, 1] and scale to `input_range` (a float array; uint8-ready for (0, 255)).

    Examples:
        >>> grads = featvis.input_gradients(model, ActivationMaximization("fc", 3), image)[0]
        >>> featvis.save_image(deprocess_input(grads.permute(1, 2, 0)).astype("uint8"), "grads.png")
    """
    low, high = check_range(input_range)
    if isinstance(input_array, torch.Tensor):
        array = input_array.detach().float().cpu().numpy()
    elif isinstance(input_array, np.ndarray) and np.issubdtype(input_array.dtype, np.number):
        array = input_array.astype(np.float64)
    else:
        raise bad_type("input_array", input_array, "a numeric numpy array or tensor")
    if array.size == 0 or not np.isfinite(array).all():
        raise bad_value(
            "input_array", f"an array of shape {array.shape}", "a non-empty array of finite values"
        )
    array = array - array.mean()
    array = array / (array.std() + 1e-7) * 0.1 + 0.5
    return (high - low) * np.clip(array, 0, 1) + low


def lookup_imagenet_labels(indices: int | Iterable[int]) -> str | list[str]:
    """ImageNet class names of class indices (keras-vis's ``lookup_imagenet_labels``): one name
    for an int, a list for a list.

    Examples:
        >>> lookup_imagenet_labels(130)
        'flamingo'
        >>> lookup_imagenet_labels([285, 130])
        ['Egyptian cat', 'flamingo']
    """
    from featvis.model.zoo import imagenet_class_names

    names = imagenet_class_names()
    single = isinstance(indices, numbers.Integral) and not isinstance(indices, bool)
    values = [indices] if single else indices
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise bad_type("indices", indices, "an int class index or a list of them")
    values = list(values)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise bad_type("indices", value, "int class indices in [0, 999]")
        if not 0 <= value < len(names):
            raise bad_value("indices", value, f"class indices in [0, {len(names) - 1}]")
    found = [names[int(v)] for v in values]
    return found[0] if single else found
