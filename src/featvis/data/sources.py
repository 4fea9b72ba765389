"""The user's images as batches: folders, path lists, datasets, loaders and arrays, bad files skipped.

Every source becomes a torch ``Dataset`` of ``(position, image, note)`` items
decoded in DataLoader workers: ``image`` is a float (C, H, W) tensor in [0, 1]
(``None`` when the item could not be used; ``note`` then says why), and
``note`` also names a conversion that was made (grayscale, RGBA, CMYK, 16-bit).
Files are read with PIL and converted to RGB (or gray for ``channels=1``):
transparency is composited over white, 16-bit images are scaled to 8 bits,
CMYK is converted to RGB. Images whose size differs from ``size`` have their
shorter side resized to ``size`` (bilinear, antialiased) and are then cropped
to ``size x size`` around their center, as ImageNet evaluation does.

Examples:
    >>> source = image_source("photos/", size=224)          # recursive, ImageFolder layouts too
    >>> len(source), source.describe(3)
    (120, 'photos/cat/1.jpg')
    >>> photos, names = sample_photos()                        # scikit-image's photographs
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
import os
from pathlib import Path

import numpy as np
from PIL import Image
import torch
from torch.utils.data import DataLoader, Dataset

from featvis.errors import FeatvisValueError, bad_type, bad_value, first_line
from featvis.image import resize, to_unit_tensor

# scikit-image photographs shipped inside its wheel (no download): name -> loader name
PHOTOS = (
    "chelsea",
    "coffee",
    "astronaut",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "camera",
    "coins",
    "moon",
    "brick",
)


def sample_photos() -> tuple[list[np.ndarray], list[str]]:
    """scikit-image's bundled photographs (chelsea is a cat, coffee a cup): (arrays, names).

    Needs the ``photos`` extra: ``pip install "featvis[photos]"``.

    Examples:
        >>> photos, names = sample_photos()
        >>> names[0], photos[0].shape
        ('chelsea', (300, 451, 3))
    """
    try:
        from skimage import data as skdata
    except ImportError as err:
        raise FeatvisValueError(
            "data=None uses scikit-image's sample photographs, and scikit-image is not installed; "
            'install it with: pip install "featvis[photos]" (or pass data=a folder of images)'
        ) from err
    return [np.asarray(getattr(skdata, name)()) for name in PHOTOS], list(PHOTOS)


def _shorter_side_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) in [0, 1] -> (C, size, size): shorter side to `size`, then the central square."""
    h, w = image.shape[-2:]
    if (h, w) == (size, size):
        return image
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    resized = resize(image[None], (nh, nw))[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[:, top : top + size, left : left + size]


def _pil_to_tensor(pil: Image.Image, channels: int) -> tuple[torch.Tensor, str]:
    """A PIL image of any mode -> (C, H, W) float in [0, 1], and the conversion made ('' if none)."""
    mode, note = pil.mode, ""
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # scaled from 16 bits, not through 8-bit PIL
        array = np.asarray(pil, dtype=np.float32)
        peak = 65535.0 if mode != "I" or array.max() > 255 else 255.0
        array, note = np.clip(array / peak, 0, 1), "16-bit"
        if channels == 3:
            array = np.repeat(array[..., None], 3, axis=2)
    else:
        if mode == "F":
            array = np.clip(np.asarray(pil, dtype=np.float32), 0, 1)
            pil, note = Image.fromarray((array * 255).round().astype(np.uint8)), "floating-point"
        elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in pil.info):
            rgba = pil.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            pil, note = Image.alpha_composite(white, rgba), "transparency over white"
        elif mode == "CMYK":
            note = "CMYK"
        elif mode in ("L", "1") and channels == 3:
            note = "grayscale"
        elif mode not in ("RGB", "L", "P", "YCbCr"):
            note = f"mode {mode}"
        array = np.asarray(pil.convert("RGB" if channels == 3 else "L"), dtype=np.float32) / 255
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return (tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)), note


def read_image(path: str | os.PathLike, channels: int = 3) -> tuple[torch.Tensor, str]:
    """Decode one file fully (truncated files raise, unless PIL's ``LOAD_TRUNCATED_IMAGES`` is set).

    Returns ((C, H, W) in [0, 1], the conversion made or '').
    """
    with Image.open(path) as pil:
        pil.load()
        return _pil_to_tensor(pil, channels)


@dataclass
class DataSummary:
    """How many items a pass used, which it skipped (and why) and which it converted.

    Examples:
        >>> print(result.summary)
        used 12 of 15 images; skipped 3: bad.jpg (truncated), ...; converted 2: 1 grayscale, 1 CMYK
    """

    used: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    converted: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.used + len(self.skipped)

    @classmethod
    def combined(cls, parts: Iterable[DataSummary]) -> DataSummary:
        """One summary of the shares of a pass (each item read by one share): the counts added.

        Examples:
            >>> print(DataSummary.combined([DataSummary(used=10), DataSummary(used=9, skipped=[("b.png", "?")])]))
            used 19 of 20 images; skipped 1: b.png (?)
        """
        parts = list(parts)
        converted: dict[str, int] = {}
        for part in parts:
            for note, count in part.converted.items():
                converted[note] = converted.get(note, 0) + count
        return cls(
            used=sum(p.used for p in parts),
            skipped=[item for p in parts for item in p.skipped],
            converted=converted,
        )

    def add(self, position: int, note: str, ok: bool, describe) -> None:
        if not ok:
            self.skipped.append((describe(position), note))
            return
        self.used += 1
        if note:
            self.converted[note] = self.converted.get(note, 0) + 1

    def __str__(self) -> str:
        text = f"used {self.used} of {self.total} images"
        if self.skipped:
            shown = ", ".join(f"{name} ({why})" for name, why in self.skipped[:10])
            more = f", and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
            text += f"; skipped {len(self.skipped)}: {shown}{more}"
        if self.converted:
            text += "; converted " + ", ".join(f"{n} {what}" for what, n in sorted(self.converted.items()))
        return text


class ImageSource(Dataset):
    """Items of any accepted kind, decoded one at a time: ``(position, (C, S, S) tensor or None, note)``."""

    def __init__(
        self,
        items: Sequence,
        names: Sequence[str] | None,
        channels: int,
        size: int | None,
        input_range: tuple[float, float],
    ):
        self.items, self.names = items, names
        self.channels, self.size, self.input_range = channels, size, input_range
        self.start = 0  # positions before this are not served (a resumed pass)

    def __len__(self) -> int:
        return max(0, len(self.items) - self.start)

    def describe(self, position: int) -> str:
        """A readable name for the item at `position` (its path for files)."""
        return self.names[position] if self.names is not None else f"item {position}"

    def load(self, position: int) -> tuple[torch.Tensor, str]:
        """The image at `position` as (C, S, S) in [0, 1], and its conversion note; raises if unusable."""
        item = self.items[position]
        if isinstance(item, tuple | list) and item and not isinstance(item[0], int | float):
            item = item[0]  # (image, label) pairs of a torch Dataset
        note = ""
        if isinstance(item, str | os.PathLike):
            image, note = read_image(item, self.channels)
        elif isinstance(item, Image.Image):
            image, note = _pil_to_tensor(item, self.channels)
        else:
            image = array_item(item, self.channels, self.input_range)
        if image.shape[0] != self.channels:
            raise FeatvisValueError(f"{image.shape[0]} channels, expected {self.channels}")
        if self.size is not None:
            image = _shorter_side_center_crop(image, self.size)
        return image.contiguous(), note

    def __getitem__(self, index: int):
        position = index + self.start
        try:
            image, note = self.load(position)
        except Exception as err:  # a bad item is skipped and reported, never fatal
            return position, None, _reason(err)
        return position, image, note

    def __getitems__(self, indices: list[int]):
        """A batch at once; an array or tensor is sliced and converted in one go (DataLoader calls this)."""
        if isinstance(self.items, np.ndarray | torch.Tensor) and indices == list(
            range(indices[0], indices[0] + len(indices))
        ):
            first = indices[0] + self.start
            try:
                batch = to_unit_tensor(
                    self.items[first : first + len(indices)], "data", self.input_range, self.channels
                )
                if self.size is not None:
                    batch = torch.stack([_shorter_side_center_crop(image, self.size) for image in batch])
                return [(first + i, image, "") for i, image in enumerate(batch)]
            except Exception:  # noqa: S110 - find the bad items one by one below
                pass
        return [self[index] for index in indices]


def array_item(item, channels: int, input_range) -> torch.Tensor:
    """One array or tensor item as (C, H, W) in [0, 1] (to_unit_tensor repeats a grayscale one for RGB)."""
    if isinstance(item, np.ndarray) and item.dtype == np.bool_:
        item = item.astype(np.uint8) * 255
    if isinstance(item, np.ndarray) and item.ndim == 3 and item.shape[-1] == 4 and channels == 3:
        item = item[..., :3]
    image = to_unit_tensor(item, "data", input_range, channels)
    if image.shape[0] != 1:
        raise bad_value("data", f"an item with a batch of {image.shape[0]}", "one image per item")
    return image[0]


def _reason(err: Exception) -> str:
    text = first_line(err)
    return f"truncated: {text}" if "truncated" in text.lower() else text[:200]


def collate(items):
    """Stack the usable images; keep (position, used, note) of every item for the summary.

    Without a `size` to resize to, an image whose size differs from the batch's
    first image is skipped (and reported) rather than failing the batch.
    """
    first = next((tuple(image.shape) for _, image, _ in items if image is not None), None)
    good, notes = [], []
    for position, image, note in items:
        if image is None:
            notes.append((position, False, note))
        elif tuple(image.shape) != first:
            notes.append((position, False, f"size {tuple(image.shape)} differs from {first}; pass size="))
        else:
            notes.append((position, True, note))
            good.append((position, image))
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), notes
    positions = torch.tensor([p for p, _ in good], dtype=torch.long)
    return torch.stack([image for _, image in good]), positions, notes


def _folder_files(folder: Path) -> list[Path]:
    """Every non-hidden file under `folder`, sorted (ImageFolder's class folders included)."""
    files = [
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    return sorted(files)


def image_source(
    data: object,
    *,
    channels: int = 3,
    size: int | None = None,
    input_range: tuple[float, float] = (0, 255),
) -> ImageSource | DataLoader:
    """Wrap `data` as an `ImageSource` (a user's DataLoader is returned as it is).

    `data`: a folder (every file under it, recursively; files that are not
    readable images are skipped and reported), a list of paths, PIL images or
    arrays, a torch ``Dataset`` (items an image or an ``(image, label)`` pair), an
    array or tensor of images (N, H, W, C) or (N, C, H, W) in `input_range`, or
    ``None`` for scikit-image's sample photographs. Files are decoded as 8-bit
    pictures (`input_range` applies to arrays and tensors). Files and
    photographs are resized to `size` (224 when None); arrays, tensors and
    datasets keep their size unless `size` is given.

    Examples:
        >>> len(image_source("photos/"))
        120
    """
    if isinstance(data, DataLoader):
        return data
    if data is None:
        data, names = sample_photos()
        return ImageSource(data, names, channels, size or 224, input_range)
    if isinstance(data, str | os.PathLike):
        folder = Path(data)
        if folder.is_file():
            data = [folder]
        elif not folder.is_dir():
            raise bad_value("data", str(data), "an existing folder of images, a list of paths, or arrays")
        elif not (data := _folder_files(folder)):
            raise bad_value("data", str(folder), "a folder that contains image files")
    elif isinstance(data, np.ndarray | torch.Tensor):
        if data.ndim not in (3, 4) or len(data) == 0:
            raise bad_value("data", f"an array of shape {tuple(data.shape)}", "(N, H, W, C) or (N, C, H, W)")
    elif isinstance(data, Dataset) and not isinstance(data, Sequence):
        try:
            len(data)
        except TypeError as err:
            raise bad_type("data", data, "a Dataset with a length (or a DataLoader)") from err
    elif isinstance(data, Sequence) and not isinstance(data, str):
        if not data:
            raise bad_value("data", data, "at least one image")
    else:
        raise bad_type(
            "data", data, "a folder, a list of paths, a torch Dataset or DataLoader, or an array of images"
        )
    listed = isinstance(data, Sequence)  # files and PIL images are resized, 224 px unless `size` says
    files = listed and all(isinstance(item, str | os.PathLike) for item in data)
    pictures = files or (listed and all(isinstance(item, Image.Image) for item in data))
    names = [str(p) for p in data] if files else None
    return ImageSource(data, names, channels, (size or 224) if pictures else size, input_range)
