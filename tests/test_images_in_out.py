"""Images in and out as users pass them: what featvis returns can be saved, grayscale and HWC seeds."""

import numpy as np
from PIL import Image
import pytest
import torch

import featvis
from featvis.image import to_unit_tensor

from conftest import make_tiny

FAST = dict(size=16, max_iter=2, views=1, seed=0, progress=False)


def test_save_image_takes_a_result_image_as_featvis_returns_it(tmp_path):
    result = featvis.visualize_activation(make_tiny(), "fc", 1, return_result=True, **FAST)
    path = featvis.save_image(result.images[0], tmp_path / "first.png")  # a (3, H, W) tensor in [0, 1]
    saved = np.asarray(Image.open(path))
    assert saved.shape == (16, 16, 3)
    expected = np.rint(result.images[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.abs(saved.astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    "image",
    [
        torch.rand(3, 20, 30),  # CHW tensor in [0, 1]
        torch.rand(20, 30, 3),  # HWC tensor
        torch.rand(1, 3, 20, 30),  # a batch of one
        torch.rand(3, 20, 30, dtype=torch.bfloat16),  # as autocast makes them
        np.random.default_rng(0).random((20, 30, 3)),  # HWC floats
        np.random.default_rng(0).random((3, 20, 30)).astype(np.float32),  # CHW floats
        np.zeros((20, 30, 3), np.uint8),
        np.full((20, 30), 200, np.int64),  # grayscale ints in [0, 255]
        np.random.default_rng(0).random((20, 30)),  # a saliency map
        np.zeros((20, 30, 1), np.uint8),
        np.zeros((20, 30, 4), np.uint8),  # RGBA
    ],
)
def test_save_image_takes_chw_and_hwc_tensors_and_arrays(tmp_path, image):
    path = featvis.save_image(image, tmp_path / "x.png")
    assert Image.open(path).size == (30, 20)


def test_save_image_keeps_values_of_unit_floats_and_bytes(tmp_path):
    gray = np.linspace(0, 1, 30 * 20).reshape(20, 30)
    saved = np.asarray(Image.open(featvis.save_image(gray, tmp_path / "g.png")))
    assert np.array_equal(saved, np.rint(gray * 255).astype(np.uint8))
    chw = torch.linspace(0, 1, 3 * 4 * 5).reshape(3, 4, 5)
    saved = np.asarray(Image.open(featvis.save_image(chw, tmp_path / "c.png")))
    assert np.array_equal(saved, np.rint(chw.permute(1, 2, 0).numpy() * 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (torch.rand(2, 3, 8, 8), "a batch of 2 images"),
        (np.zeros((8, 8, 5)), "shape"),
        (np.zeros((8,)), "shape"),
        (np.full((8, 8, 3), -0.5), r"values in \[-0.5"),
        (np.full((8, 8, 3), 300.0), r"values in \[300"),
        (np.full((8, 8, 3), 300, np.int64), "ints in"),
        (np.full((8, 8), np.nan), "NaN"),
        (np.zeros((8, 8), bool), "dtype bool"),
        (torch.zeros(8, 8, dtype=torch.complex64), "complex"),
        ("cat.jpg", "PIL image"),
        ([[0, 1], [1, 0]], "PIL image"),
    ],
)
def test_save_image_refuses_what_is_not_one_image_with_a_featvis_error(tmp_path, image, message):
    with pytest.raises(featvis.FeatvisError, match=message) as info:
        featvis.save_image(image, tmp_path / "x.png")
    assert str(info.value).startswith("image")
    assert not (tmp_path / "x.png").exists()


def test_save_image_refuses_a_path_that_is_not_one(tmp_path):
    with pytest.raises(featvis.FeatvisTypeError, match="path"):
        featvis.save_image(np.zeros((4, 4, 3), np.uint8), 42)


def test_save_image_creates_missing_folders_in_python(tmp_path):
    path = featvis.save_image(np.zeros((4, 4, 3), np.uint8), tmp_path / "new" / "dir" / "x.png")
    assert path.is_file()


def test_stitch_images_takes_chw_tensors_too():
    grid = featvis.stitch_images([torch.rand(3, 8, 8), torch.rand(3, 8, 8)], cols=2, margin=0)
    assert grid.shape == (8, 16, 3)


# Grayscale: one channel; repeated into R = G = B where 3 channels are asked, for arrays as for PIL.


def test_a_2d_grayscale_array_is_one_channel_for_a_one_channel_model():
    gray = np.linspace(0, 255, 16 * 16).reshape(16, 16)
    tensor = to_unit_tensor(gray, "seed_input", (0, 255), channels=1)
    assert tensor.shape == (1, 1, 16, 16)
    assert torch.allclose(tensor[0, 0], torch.tensor(gray / 255, dtype=torch.float32))


@pytest.mark.parametrize("make", [np.asarray, torch.tensor], ids=["array", "tensor"])
def test_a_2d_grayscale_image_is_repeated_into_rgb_like_a_grayscale_pil_image(make):
    gray = np.random.default_rng(0).integers(0, 256, (16, 20)).astype(np.uint8)
    from_array = to_unit_tensor(make(gray), "seed_input", (0, 255), channels=3)
    from_pil = to_unit_tensor(Image.fromarray(gray, mode="L"), "seed_input", (0, 255), channels=3)
    assert from_array.shape == from_pil.shape == (1, 3, 16, 20)
    assert torch.allclose(from_array, from_pil)


def test_a_grayscale_photo_goes_into_an_rgb_model_and_a_one_channel_model(tmp_path):
    gray = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    maps = featvis.visualize_saliency(make_tiny(), "fc", 1, gray)  # 3-channel model, 2-D array
    assert maps.shape == (1, 32, 32)
    one_channel = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    one_channel(torch.zeros(1, 1, 32, 32))
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    for image in (gray, torch.tensor(gray), path):
        assert featvis.visualize_saliency(one_channel, "2", 1, image, channels=1).shape == (1, 32, 32)


def test_grayscale_is_refused_where_neither_one_nor_three_channels_are_asked():
    with pytest.raises(featvis.FeatvisValueError, match=r"seed_input='an image with 1 channels'.*4 channels"):
        to_unit_tensor(np.zeros((8, 8)), "seed_input", (0, 255), channels=4)


# HWC tensors, as the README promises.


def test_an_hwc_tensor_seed_is_read_as_hwc_not_as_300_channels():
    hwc = torch.rand(300, 300, 3)
    tensor = to_unit_tensor(hwc, "seed_input", (0.0, 1.0), channels=3)
    assert tensor.shape == (1, 3, 300, 300)
    assert torch.equal(tensor[0], hwc.permute(2, 0, 1))
    chw = torch.rand(3, 300, 300)
    assert torch.equal(to_unit_tensor(chw, "seed_input", (0.0, 1.0), channels=3)[0], chw)


def test_an_hwc_tensor_seed_starts_the_visualization():
    seed = torch.full((32, 32, 3), 0.25)
    image = featvis.visualize_activation(
        make_tiny(),
        "fc",
        1,
        seed_input=seed,
        input_range=(0.0, 1.0),
        method="pixel",
        input_modifiers=[],
        lr=1e-6,
        **{**FAST, "size": 32, "max_iter": 1},
    )
    assert image.shape == (32, 32, 3) and np.allclose(image, 0.25, atol=0.01)


def test_an_hwc_tensor_with_the_wrong_channel_count_says_how_many_it_has():
    with pytest.raises(featvis.FeatvisValueError, match=r"seed_input='an image with 4 channels'.*1 channels"):
        to_unit_tensor(torch.rand(16, 16, 4), "seed_input", (0.0, 1.0), channels=1)


# RGBA: read as its RGB (alpha dropped, as PIL's convert("RGB") does for an RGBA PNG), whatever its type.


@pytest.mark.parametrize("kind", ["array", "tensor", "png", "pil"])
def test_an_rgba_image_into_an_rgb_model_is_read_as_its_rgb_whatever_its_type(kind, tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (16, 20, 4)).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    given = {
        "array": rgba,
        "tensor": torch.from_numpy(rgba),
        "png": tmp_path / "rgba.png",
        "pil": Image.fromarray(rgba, "RGBA"),
    }[kind]
    rgb = to_unit_tensor(rgba[..., :3], "seed_input", (0, 255), channels=3)
    assert torch.equal(to_unit_tensor(given, "seed_input", (0, 255), channels=3), rgb)
    model = make_tiny()
    maps = featvis.visualize_saliency(model, "fc", 1, given)
    np.testing.assert_allclose(maps, featvis.visualize_saliency(model, "fc", 1, rgba[..., :3]), atol=1e-6)


def test_a_batch_of_rgba_arrays_is_read_as_their_rgb():
    rgba = np.random.default_rng(0).integers(0, 256, (2, 16, 20, 4)).astype(np.uint8)
    assert torch.equal(
        to_unit_tensor(rgba, "seed_input", (0, 255), channels=3),
        to_unit_tensor(rgba[..., :3], "seed_input", (0, 255), channels=3),
    )
