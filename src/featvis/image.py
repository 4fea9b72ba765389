"""Images in and out: tensors, numpy arrays, PIL images, grids, overlays, safe saving.

Examples:
    >>> array = to_array(images, input_range=(0, 255))     # (B, H, W, C) uint8
    >>> save_image(stitch_images(list(array), cols=4), "grid.png")
"""

from __future__ import annotations

from collections.abc import Sequence
import numbers
import os
from pathlib import Path
import tempfile

import numpy as np
from PIL import Image, ImageDraw
import torch
import torch.nn.functional as F

from featvis.errors import FeatvisValueError, bad_type, bad_value


def is_integer_range(input_range: tuple[float, float]) -> bool:
    return all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in input_range)


def check_range(input_range: object) -> tuple[float, float]:
    """Validate `input_range` = (low, high) with low < high, both finite."""
    if not isinstance(input_range, Sequence) or len(input_range) != 2:
        raise bad_value("input_range", input_range, "a pair (low, high)")
    low, high = input_range
    for value in (low, high):
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise bad_type("input_range", value, "numbers")
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise bad_value("input_range", input_range, "finite (low, high) with low < high")
    return tuple(input_range)


def to_array(images: torch.Tensor, input_range: tuple[float, float] | None = (0, 255)) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, C) numpy in `input_range` (uint8 for (0, 255); None: [0, 1]);
    signals (B, C, L) -> (B, L, C), volumes (B, C, D, H, W) -> (B, D, H, W, C)."""
    input_range = (0.0, 1.0) if input_range is None else input_range
    low, high = input_range
    array = (low + (high - low) * images.detach().float().clamp(0, 1)).movedim(1, -1).cpu().numpy()
    if is_integer_range(input_range):
        array = np.rint(array)
        dtype = np.uint8 if low >= 0 and high <= 255 else np.int64
        return array.astype(dtype)
    return array.astype(np.float32)


def to_unit_tensor(
    image: object, argument: str, input_range: tuple[float, float] | None, channels: int | None = None
) -> torch.Tensor:
    """Load an image (path, PIL, numpy HWC/CHW, tensor CHW/HWC/NCHW) as (N, C, H, W) in [0, 1].

    Numpy arrays and tensors are read as values in `input_range`; files and PIL
    images as 8-bit pictures. A 3-D tensor whose last axis is 1, 3 or 4 and whose
    first axis is not is read as (H, W, C); other tensors are channels-first.
    RGBA (4 channels where 3 are asked, an array, tensor, PIL image or file alike) is read as
    its RGB: the alpha channel is dropped, as PIL's ``convert("RGB")`` does.

    Grayscale: a grayscale PIL image or file, or a 2-D (H, W) array or tensor, is one
    channel; where 3 channels are asked (``channels=3``) it is repeated into R = G = B.
    With ``channels=None`` files and PIL images are decoded as RGB and a 2-D array
    stays one channel.
    ``input_range=None``: arrays and tensors are model input as given (any finite values,
    not rescaled), files and PIL images in [0, 1].
    """
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if not path.is_file():
            raise FeatvisValueError(f"{argument}={str(path)!r}: no such file")
        try:
            with Image.open(path) as pil:
                image = pil.convert("RGB" if channels in (None, 3) else "L")  # a loaded copy: the file closes
        except OSError as err:
            raise FeatvisValueError(f"{argument}={str(path)!r} is not a readable image: {err}") from err
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB" if channels in (None, 3) else "L"), dtype=np.float32) / 255
        tensor = torch.from_numpy(array)
        tensor = tensor[None, None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)[None]
        return tensor.contiguous()
    tensor = _real_tensor(image, argument, "a path, PIL image, numpy array or tensor")
    rgba = channels == 3 and tensor.ndim >= 3 and tensor.shape[-1] == 4
    if isinstance(image, np.ndarray):
        if (
            tensor.ndim in (3, 4)
            and (channels is None or tensor.shape[-1] == channels or rgba)
            and tensor.shape[-3] != channels
        ):
            tensor = tensor.movedim(-1, -3)
    elif tensor.ndim == 3 and _is_hwc_tensor(tuple(tensor.shape), channels):
        tensor = tensor.movedim(-1, -3)
    grayscale = tensor.ndim == 2
    if tensor.ndim == 2:
        tensor = tensor[None]
    if tensor.ndim == 3:
        tensor = tensor[None]
    if grayscale and channels == 3:  # as PIL's convert("RGB") does for a grayscale image
        tensor = tensor.expand(-1, 3, -1, -1)
    if channels == 3 and tensor.ndim == 4 and tensor.shape[1] == 4:  # RGBA: alpha dropped, as convert("RGB")
        tensor = tensor[:, :3]
    if tensor.ndim != 4 or tensor.shape[0] == 0 or min(tensor.shape[-2:]) < 1:
        raise bad_value(
            argument,
            f"an array of shape {tuple(image.shape)}",
            "an image (H, W, C), (C, H, W) or (N, C, H, W)",
        )
    if channels is not None and tensor.shape[1] != channels:
        raise bad_value(argument, f"an image with {tensor.shape[1]} channels", f"{channels} channels")
    return _scale_to_unit(tensor, input_range, argument, "an image")


def _real_tensor(data: object, argument: str, allowed: str) -> torch.Tensor:
    """A numpy array or tensor of real numbers as a float32 CPU tensor (anything else: `allowed`)."""
    if isinstance(data, np.ndarray):
        if data.dtype == object or not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise bad_type(argument, data, f"a real numeric array (got dtype {data.dtype})")
        return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    if not isinstance(data, torch.Tensor):
        raise bad_type(argument, data, allowed)
    if data.is_complex() or not (
        data.is_floating_point() or data.dtype in (torch.uint8, torch.int32, torch.int64)
    ):
        raise bad_type(argument, data, f"a real tensor (got {data.dtype})")
    return data.detach().float().cpu()


def _scale_to_unit(tensor: torch.Tensor, input_range, argument: str, what: str) -> torch.Tensor:
    """`tensor` (finite, `what` says what it is) in `input_range` mapped to [0, 1] (values outside the
    range are refused); as given for None."""
    if not torch.isfinite(tensor).all():
        raise bad_value(argument, f"{what} containing NaN or infinite values", "finite values")
    if input_range is None:
        return tensor
    low, high = input_range
    span = high - low
    if tensor.min() < low - 1e-3 * span or tensor.max() > high + 1e-3 * span:
        raise bad_value(
            argument,
            f"values in [{tensor.min().item():.4g}, {tensor.max().item():.4g}]",
            f"values within input_range {tuple(input_range)}",
        )
    return ((tensor - low) / span).clamp(0, 1)


def _is_hwc_tensor(shape: tuple[int, ...], channels: int | None) -> bool:
    """A 3-D tensor is (H, W, C) when its last axis looks like channels and its first does not."""
    looks_like_channels = {1, 3, 4} if channels is None else {1, 3, 4, channels}
    return shape[-1] in looks_like_channels and shape[0] not in looks_like_channels


def resize(images: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) images (antialiased when shrinking); linear for (N, C, L)
    signals, trilinear for (N, C, D, H, W) volumes."""
    if tuple(images.shape[2:]) == tuple(size):
        return images
    if images.ndim != 4:
        mode = {3: "linear", 5: "trilinear"}[images.ndim]
        return F.interpolate(images, size=tuple(size), mode=mode, align_corners=False)
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


SIGNAL = {1: "(L,), (C, L) or (N, C, L)", 3: "(D, H, W), (C, D, H, W) or (N, C, D, H, W)"}


def to_unit_signal(
    data: object, argument: str, input_range: tuple[float, float] | None, channels: int, spatial_dims: int
) -> torch.Tensor:
    """A 1-D signal or 3-D volume (numpy array or tensor, channels first, or channels last as featvis
    returns results when axis 1 cannot be the channels; a list of them is a batch) as (N, C, *size)
    in [0, 1], values read in `input_range` (None: as given, model input).

    Examples:
        >>> to_unit_signal(np.sin(np.linspace(0, 6.28, 128)), "seed_input", (-1.0, 1.0), 1, 1).shape
        torch.Size([1, 1, 128])
    """
    if isinstance(data, list | tuple) and data and not isinstance(data[0], numbers.Number):
        return torch.cat([to_unit_signal(d, argument, input_range, channels, spatial_dims) for d in data])
    shape_text = SIGNAL.get(spatial_dims, f"(N, C, {spatial_dims} axes)")
    tensor = _real_tensor(data, argument, f"a numpy array or tensor {shape_text}")
    if tensor.ndim == spatial_dims:
        tensor = tensor[None]
    if tensor.ndim == spatial_dims + 1:
        tensor = tensor[None]
    if tensor.ndim == spatial_dims + 2 and tensor.shape[1] != channels and tensor.shape[-1] == channels:
        tensor = tensor.movedim(-1, 1)  # channels-last, as featvis returns results
    if tensor.ndim != spatial_dims + 2 or tensor.shape[0] == 0 or min(tensor.shape[2:]) < 1:
        raise bad_value(argument, f"an array of shape {tuple(data.shape)}", shape_text)
    if tensor.shape[1] != channels:
        raise bad_value(
            argument, f"an input with {tensor.shape[1]} channels", f"{channels} channels (axis 1)"
        )
    return _scale_to_unit(tensor, input_range, argument, "an input")


def save_signal(
    signal: object, path: str | os.PathLike, *, heatmap: object = None, title: str | None = None
) -> Path:
    """Plot a 1-D result, (L,) or (L, C) as featvis returns it (one line per channel), as a PNG
    (matplotlib), optionally with a [0, 1] `heatmap` (L,) (a saliency or CAM) shaded beneath.

    Examples:
        >>> square = featvis.visualize_activation(waves, "head", 1, size=128, input_range=(-1.0, 1.0))
        >>> save_signal(square, "square.png")
    """
    from matplotlib.figure import Figure

    if not isinstance(path, str | os.PathLike):
        raise bad_type("path", path, "a file path (str or os.PathLike)")
    array = np.asarray(
        signal.detach().cpu() if isinstance(signal, torch.Tensor) else signal, dtype=np.float64
    )
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] < 2 or not np.isfinite(array).all():
        raise bad_value("signal", f"an array of shape {array.shape}", "a finite (L,) or (L, C) signal")
    figure = Figure(figsize=(7, 2.5), dpi=100)
    axes = figure.subplots()
    if heatmap is not None:
        heat = np.asarray(heatmap, dtype=np.float64).reshape(-1)
        if heat.shape[0] != array.shape[0]:
            raise bad_value("heatmap", f"a map of length {heat.shape[0]}", f"length {array.shape[0]}")
        low, high = float(array.min()), float(array.max())
        axes.imshow(heat[None], aspect="auto", cmap="Reds", alpha=0.5, extent=(0, len(heat), low, high))
    for channel in range(array.shape[1]):
        axes.plot(np.arange(array.shape[0]), array[:, channel], linewidth=1)
    axes.set_xlabel("sample")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return atomic_write(Path(path), lambda tmp: figure.savefig(tmp, format="png"))


def volume_slices(volume: object, cols: int | None = None) -> np.ndarray:
    """A 3-D result (D, H, W) or (D, H, W, C) as one picture: its D slices tiled in a grid (labeled
    z=0, 1, ...; values other than uint8 scaled by the volume's min and max).

    Examples:
        >>> volume_slices(featvis.visualize_activation(net3d, "fc", 0, size=(8, 16, 16))).shape
    """
    array = np.asarray(volume.detach().cpu() if isinstance(volume, torch.Tensor) else volume)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4) or not np.isfinite(array).all():
        raise bad_value(
            "volume", f"an array of shape {array.shape}", "a finite (D, H, W) or (D, H, W, C) volume"
        )
    if array.dtype != np.uint8:  # values in any range (e.g. input_range=(-1.0, 1.0)): the volume's own span
        low, high = float(array.min()), float(array.max())
        array = (array - low) / max(high - low, 1e-12)
    frames = [frame[..., 0] if frame.shape[-1] == 1 else frame for frame in array]
    return stitch_images(frames, cols=cols, labels=[f"z={z}" for z in range(len(frames))])


def save_volume(volume: object, path: str | os.PathLike, cols: int | None = None) -> Path:
    """Save a 3-D result as its slices tiled in one image (see `volume_slices`).

    Examples:
        >>> save_volume(featvis.visualize_activation(net3d, "fc", 0, size=(8, 16, 16)), "slices.png")
    """
    return save_image(volume_slices(volume, cols), path)


def atomic_write(path: Path, write) -> Path:
    """Call ``write(temporary_path)`` and move the file into place: never a half-written `path`.

    Examples:
        >>> atomic_write(Path("notes.txt"), lambda tmp: Path(tmp).write_text("done"))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


PICTURE = "one image: (H, W, C), (C, H, W) or (H, W), C = 1, 3 or 4; a numpy array or tensor"


def _picture_array(image: object, argument: str = "image") -> np.ndarray:
    """`image` as an (H, W) or (H, W, C) uint8 array; see `save_image` for what is accepted."""
    tensor_input = isinstance(image, torch.Tensor)
    if tensor_input:
        if image.is_complex():
            raise bad_type(argument, image, f"a real tensor (got {image.dtype})")
        tensor = image.detach().cpu()
        array = (tensor.float() if tensor.is_floating_point() else tensor).numpy()  # bfloat16 too
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise bad_type(argument, image, f"a PIL image, or {PICTURE}")
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise bad_type(argument, image, f"a real numeric array (got dtype {array.dtype})")
    if array.ndim == 4 and array.shape[0] == 1:  # a batch of one, as featvis returns batches
        array = array[0]
    if array.ndim == 4:
        raise bad_value(
            argument,
            f"a batch of {array.shape[0]} images",
            f"{PICTURE}; save each image, or tile them with stitch_images",
        )
    if array.ndim == 3:
        first, last = array.shape[0] in (1, 3, 4), array.shape[-1] in (1, 3, 4)
        channels_first = first and (tensor_input or not last)  # tensors are CHW, arrays HWC
        if not (first or last):
            raise bad_value(argument, f"an array of shape {array.shape}", PICTURE)
        if channels_first:
            array = np.moveaxis(array, 0, -1)
        if array.shape[-1] == 1:
            array = array[..., 0]
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        raise bad_value(argument, f"an array of shape {array.shape}", PICTURE)
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if not np.isfinite(array).all():
        raise bad_value(argument, "an image containing NaN or infinite values", "finite values")
    low, high = float(array.min()), float(array.max())
    integers = np.issubdtype(array.dtype, np.integer)
    unit = not integers and low >= -1e-3 and high <= 1 + 1e-3  # rounding errors of [0, 1] values
    if not unit and (low < 0 or high > 255):
        allowed = "ints in [0, 255]" if integers else "floats in [0, 1] (or in [0, 255])"
        raise bad_value(argument, f"values in [{low:.4g}, {high:.4g}]", allowed)
    scale = 255.0 if unit else 1.0
    return np.rint(array.astype(np.float64) * scale).clip(0, 255).astype(np.uint8)


def to_pil(image: object) -> Image.Image:
    """An image as a PIL image (it takes what `save_image` takes)."""
    if isinstance(image, Image.Image):
        return image
    return Image.fromarray(_picture_array(image))


def save_image(image: object, path: str | os.PathLike, format: str | None = None) -> Path:
    """Write an image atomically: a failed write never leaves a half-written or broken file.

    `image`: a PIL image, or a numpy array or tensor of one image, (H, W, C),
    (C, H, W) or (H, W) with C = 1, 3 or 4 (a batch of one is fine), as featvis
    returns them: uint8 or ints in [0, 255], or floats in [0, 1] (floats above 1 are
    read as [0, 255] values). Tensors are read channels-first when the first axis
    can be channels, arrays channels-last. Anything else is a `FeatvisError`.
    Missing folders of `path` are created (the command line refuses them instead).

    Examples:
        >>> save_image(featvis.visualize_activation(model, "_fc", 130), "flamingo.png")
        >>> save_image(result.images[0], "first.png")  # (C, H, W) tensor in [0, 1]
    """
    if not isinstance(path, str | os.PathLike):
        raise bad_type("path", path, "a file path (str or os.PathLike)")
    pil = to_pil(image)
    fmt = format or Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    return atomic_write(Path(path), lambda tmp: pil.save(tmp, format=fmt))


def stitch_images(
    images: Sequence[np.ndarray],
    cols: int | None = None,
    margin: int = 4,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """Tile (H, W, C) images into one grid image (keras-vis's ``stitch_images``), optionally labeled.

    Examples:
        >>> grid = stitch_images(list(images), cols=4, labels=[str(u) for u in range(16)])
    """
    images = [np.asarray(to_pil(img).convert("RGB")) for img in images]
    if not images:
        raise bad_value("images", images, "at least one image")
    cols = cols or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / cols))
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    label_h = 14 if labels else 0
    grid = np.full((rows * (h + margin + label_h) + margin, cols * (w + margin) + margin, 3), 255, np.uint8)
    cells = [divmod(index, cols) for index in range(len(images))]
    corners = [(margin + r * (h + margin + label_h), margin + c * (w + margin)) for r, c in cells]
    for (y, x), img in zip(corners, images):
        grid[y + label_h : y + label_h + img.shape[0], x : x + img.shape[1]] = img
    if labels:
        pil = Image.fromarray(grid)
        draw = ImageDraw.Draw(pil)
        for (y, x), label in zip(corners, labels):
            draw.text((x, y), str(label), fill=(0, 0, 0))
        grid = np.asarray(pil)
    return grid


def check_seed_range(
    given: object, unit: torch.Tensor, input_range: tuple[float, float] | None, argument: str = "seed_input"
) -> None:
    """Refuse a float image in [0, 1] (or a list of them) given with a wide `input_range` such as
    (0, 255): read that way it is black, and an optimization would start from (and often stay) a
    black image, an attribution would explain a black image."""
    if input_range is None:
        return
    low, high = input_range
    parts = given if isinstance(given, list | tuple) and given else [given]
    is_float = all(
        (isinstance(part, np.ndarray) and np.issubdtype(part.dtype, np.floating))
        or (isinstance(part, torch.Tensor) and part.is_floating_point())
        for part in parts
    )
    if not is_float or high - low <= 2:
        return
    values = low + (high - low) * unit
    if float(values.max()) <= 1.0 and float(values.max()) > float(values.min()):
        raise FeatvisValueError(
            f"{argument} holds floats in [0, 1] but input_range is {tuple(input_range)}, so it would be "
            "read as an almost black image; pass input_range=(0.0, 1.0) (with a preprocess that "
            "expects it), or scale the image to the range (e.g. image * 255)"
        )
