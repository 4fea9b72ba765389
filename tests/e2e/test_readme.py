"""Every ```python block of README.md and of the documentation pages runs as written.

(The two migration guides, whose blocks build on each other, run in order in tests/e2e/test_guides.py.)

Each block runs in a fresh namespace in a fresh folder holding what a reader has
at that point: `featvis` imported and, for the blocks that use it, `lite0` (the
first block makes both), the `cat.jpg` photo and the `net.keras` model the text
speaks of, and the regression block's `counter` and `img`. Blocks that use the
embedded EfficientNet are slow. Only the number of optimization steps is cut
(to STEPS, and a gallery to 4 units per layer) so the blocks take seconds: this
checks that the code runs; what the images look like is tested elsewhere.
"""

import functools
from pathlib import Path
import re
import textwrap

import numpy as np
import pytest

import featvis
import featvis.gallery

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
GUIDES = {"from-keras-vis.md", "from-lucent.md"}
PAGES = [README] + [page for page in sorted((ROOT / "docs").glob("*.md")) if page.name not in GUIDES]
STEPS = 2


def python_blocks(page: Path = README) -> list[tuple[int, str, str]]:
    """(first line of code, the section heading, code) of each ```python block of `page`."""
    blocks, heading, code, start = [], "", None, 0
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if code is None and line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif code is None and line.strip() == "```python":
            code, start = [], number + 1
        elif code is not None and line.strip() == "```":
            blocks.append((start, heading, textwrap.dedent("\n".join(code)) + "\n"))  # a list's block too
            code = None
        elif code is not None:
            code.append(line)
    return blocks


BLOCKS = [(page.relative_to(ROOT).as_posix(), *block) for page in PAGES for block in python_blocks(page)]


def _uses_lite0(code: str) -> bool:
    return re.search(r"\blite0\b", code) is not None


def _capped(function, units=None):
    @functools.wraps(function)
    def run(*args, **kwargs):
        kwargs["max_iter"] = min(kwargs.get("max_iter", STEPS), STEPS)
        if units is not None and kwargs.get("units") is None:
            kwargs["units"] = range(units)
        return function(*args, **kwargs)

    return run


@pytest.fixture(scope="module")
def lite0():
    return featvis.zoo.efficientnet_lite0()


@pytest.fixture(scope="module")
def counter():
    from toy_models import disk_images, train_disk_counter

    return train_disk_counter(seed=0, steps=30), disk_images(1, seed=5)[0][0]


def _write_keras_model(path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64, 64, 3)),
            keras.layers.Conv2D(8, 3, name="conv2d"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2),
        ]
    )
    model.save(path)


def test_every_python_fence_of_the_pages_is_run():
    """The block parser misses none: a ```python fence anywhere (indented in a list too) is a block."""
    for page in PAGES:
        fences = sum(line.strip() == "```python" for line in page.read_text(encoding="utf-8").splitlines())
        assert len(python_blocks(page)) == fences, page.name


@pytest.mark.parametrize(
    ("page", "line", "heading", "code"),
    [
        pytest.param(
            *block, marks=[pytest.mark.slow] if _uses_lite0(block[3]) else [], id=f"{block[0]}:{block[1]}"
        )
        for block in BLOCKS
    ],
)
def test_block_runs(page, line, heading, code, tmp_path, monkeypatch, request):
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    for name in ["visualize_activation", "visualize_activation_with_losses", "visualize_layer"]:
        monkeypatch.setattr(featvis, name, _capped(getattr(featvis, name)))
    monkeypatch.setattr(featvis.gallery, "write_gallery", _capped(featvis.gallery.write_gallery, units=4))
    namespace = {"__name__": "__readme__", "featvis": featvis}
    if _uses_lite0(code):
        namespace["lite0"] = request.getfixturevalue("lite0")
    if "cat.jpg" in code:
        from PIL import Image
        from skimage import data

        Image.fromarray(data.chelsea()).reduce(2).save("cat.jpg")  # 226 x 150, a non-square photo
    if "photos/" in code:  # the reader's own folder of photos
        from PIL import Image
        from skimage import data

        (tmp_path / "photos").mkdir()
        for name in ("chelsea", "coffee", "astronaut", "rocket"):
            Image.fromarray(getattr(data, name)()).reduce(2).save(tmp_path / "photos" / f"{name}.jpg")
    if "net.keras" in code:
        monkeypatch.setenv("KERAS_BACKEND", "torch")
        _write_keras_model(tmp_path / "net.keras")
    if re.search(r"\bcounter\b", code):
        namespace["counter"], namespace["img"] = request.getfixturevalue("counter")
    try:
        exec(compile(code, f"{page}:{line} ({heading})", "exec"), namespace)
    finally:
        plt.close("all")
    from PIL import Image  # also where no photo was written above (a block of its own pictures)

    for written in _written_pictures(code):  # what the block says it makes is there, and is a picture
        with Image.open(tmp_path / written) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        assert pixels.std() > 0, f"{written} is one flat color"
    if re.search(r"featvis\.(atlas|gallery\.write_gallery)\(", code):  # a page to open
        pages = list(tmp_path.rglob("index.html"))
        assert pages and all(page.stat().st_size > 0 for page in pages)


def _written_pictures(code: str) -> list[str]:
    """The image files a block writes with `save_image`, `overlay`'s save or `savefig`."""
    return re.findall(
        r"(?:save_image|savefig|\.save)\([^()]*(?:\([^()]*\)[^()]*)*[\"']([^\"']+\.(?:png|jpg|gif))[\"']",
        code,
    )
