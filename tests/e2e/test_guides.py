"""The migration guides run as written, and every keras-vis public name they promise exists and is documented."""

import inspect
from pathlib import Path
import re

import numpy as np
import pytest
import torch

import featvis

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "from-keras-vis.md"
LUCENT_GUIDE = ROOT / "docs" / "from-lucent.md"


def python_blocks(path: Path) -> list[str]:
    """The code of each ```python block of a Markdown page, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def run_guide(path: Path) -> dict:
    """Run every ```python block of `path` in order in one namespace; the namespace."""
    namespace: dict = {}
    for number, code in enumerate(python_blocks(path), 1):
        try:
            exec(compile(code, f"{path.name} block {number}", "exec"), namespace)
        except Exception as err:  # name the block that failed
            raise AssertionError(f"block {number} of {path.name} failed: {err!r}\n{code}") from err
    return namespace


def test_every_block_of_the_keras_vis_guide_runs_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert len(python_blocks(GUIDE)) >= 10
    run_guide(GUIDE)
    out = capsys.readouterr().out
    assert "units [0] on axis 1 (10 units)" in out  # verbose=True says where the units lie
    assert re.search(r"step 1: ActivationMaximization=\S+, TotalVariation=\S+, total=", out)  # Print
    assert (tmp_path / "opt_progress.gif").exists() and (tmp_path / "conv2_filters.png").exists()


def test_every_block_of_the_lucent_guide_runs_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert len(python_blocks(LUCENT_GUIDE)) >= 10
    namespace = run_guide(LUCENT_GUIDE)
    out = capsys.readouterr().out
    assert "units [3] on axis 1 (16 units)" in out and "step 8/8" in out  # verbose=True
    assert (tmp_path / "conv2_3.png").exists() and (tmp_path / "conv2_3_diverse.png").exists()
    # the transforms and the diversity term change the images (the same seed otherwise)
    assert not np.array_equal(namespace["lucent_like"], namespace["no_transforms"])
    plain = featvis.visualize_activation_with_losses(
        namespace["model"], namespace["channel"]("conv2", 3), batch_size=4, **namespace["SMALL"]
    )
    assert not np.allclose(namespace["batch"], plain, atol=1e-3)


KERAS_VIS_NAMES = [
    "visualize_activation",
    "visualize_activation_with_losses",
    "visualize_saliency",
    "visualize_saliency_with_losses",
    "visualize_cam",
    "visualize_cam_with_losses",
    "overlay",
    "ActivationMaximization",
    "TotalVariation",
    "LpNorm",
    "Jitter",
    "find_layer_idx",
    "stitch_images",
    "get_num_filters",
    "load_img",
    "deprocess_input",
    "lookup_imagenet_labels",
    "Print",
    "GifGenerator",
]


@pytest.mark.parametrize("name", KERAS_VIS_NAMES)
def test_each_keras_vis_name_exists_has_an_example_and_is_in_the_docs_and_guide(name):
    thing = getattr(featvis, name)
    assert name in featvis.__all__
    doc = inspect.getdoc(thing) or ""
    assert "Examples:" in doc, f"{name} has no example in its docstring"
    pages = " ".join(
        p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    )
    assert re.search(rf"\b{name}\b", pages), f"{name} is not in the README or the docs"
    assert re.search(rf"\b{name}\b", GUIDE.read_text(encoding="utf-8")), f"{name} is not in the guide"


def test_deconv_is_a_backprop_modifier_name():
    assert featvis.backprop_modifiers.get("deconv") is featvis.backprop_modifiers.get("relu")


def test_deprocess_input_matches_keras_vis_formula():
    array = np.random.default_rng(0).normal(3.0, 2.0, (8, 8, 3))
    expected = np.clip((array - array.mean()) / (array.std() + 1e-7) * 0.1 + 0.5, 0, 1) * 255
    np.testing.assert_allclose(featvis.deprocess_input(array), expected)
    np.testing.assert_allclose(
        featvis.deprocess_input(torch.tensor(array), (0.0, 1.0)), expected / 255, rtol=1e-5
    )


def test_load_img_reads_color_gray_and_resizes(tmp_path):
    from PIL import Image

    picture = np.zeros((20, 30, 3), np.uint8)
    picture[:, 15:] = (200, 100, 50)
    Image.fromarray(picture).save(tmp_path / "p.png")
    np.testing.assert_array_equal(featvis.load_img(tmp_path / "p.png"), picture)
    gray = featvis.load_img(tmp_path / "p.png", grayscale=True, target_size=10)
    assert (
        gray.shape == (10, 10)
        and gray.dtype == np.uint8
        and gray[:, 0].max() == 0
        and gray[:, -1].min() > 100
    )


def test_lookup_imagenet_labels_of_one_and_of_many():
    assert featvis.lookup_imagenet_labels(130) == "flamingo"
    assert featvis.lookup_imagenet_labels([285, 130]) == ["Egyptian cat", "flamingo"]


def test_print_callback_prints_every_k_steps_and_gif_generator_adds_the_suffix(tiny, tmp_path, capsys):
    gif = featvis.GifGenerator(tmp_path / "run", every=2)
    assert gif.path.name == "run.gif"
    featvis.visualize_activation(
        tiny,
        "fc",
        0,
        size=8,
        max_iter=4,
        seed=0,
        input_range=(0.0, 1.0),
        callbacks=[featvis.Print(every=2), gif],
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 1", "step 3"]
    from PIL import Image

    with Image.open(gif.path) as frames:
        assert frames.n_frames == 2
