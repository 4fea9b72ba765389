"""Keras 3 models on the torch backend work like any module (layers by Keras name or model.layers index)."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import featvis  # noqa: E402
from featvis.cli import main  # noqa: E402

from conftest import hook_count  # noqa: E402

FAST = dict(size=16, max_iter=30, seed=0, input_range=(0.0, 1.0), progress=False)


@pytest.fixture(scope="module")
def keras_model():
    assert keras.backend.backend() == "torch"
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(8, 3, name="conv"),
            keras.layers.ReLU(name="relu"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(4, activation="softmax", name="dense"),
        ]
    )


def _logits(model, image):
    x = torch.tensor(image)[None]
    features = model.get_layer("pool")(model.get_layer("relu")(model.get_layer("conv")(x)))
    dense = model.get_layer("dense")
    return (features @ dense.kernel + dense.bias)[0].detach()


def test_dense_unit_with_softmax_inside_is_visualized_before_it(keras_model):
    weights = [w.copy() for w in keras_model.get_weights()]
    start = np.full((16, 16, 3), 0.5, np.float32)
    with pytest.warns(featvis.FeatvisWarning, match="softmax"):
        image = featvis.visualize_activation(keras_model, "dense", 2, **FAST)
    assert image.shape == (16, 16, 3)
    gain = _logits(keras_model, image) - _logits(keras_model, start)
    assert gain[2] > 0.1 and gain.argmax() == 2
    assert all(np.array_equal(a, b) for a, b in zip(weights, keras_model.get_weights()))
    assert hook_count(keras_model) == 0


def test_conv2d_filter_by_name_and_by_layers_index(keras_model):
    by_name = featvis.visualize_activation(keras_model, "conv", 3, **FAST)
    by_index = featvis.visualize_activation(keras_model, 0, 3, **FAST)
    assert np.array_equal(by_name, by_index)
    channel = keras_model.get_layer("conv")(torch.tensor(by_name)[None])[0, :, :, 3].mean().item()
    gray = keras_model.get_layer("conv")(torch.full((1, 16, 16, 3), 0.5))[0, :, :, 3].mean().item()
    assert channel > gray + 0.1  # channels-last output handled: channel 3 really rose


def test_unknown_keras_layer_lists_close_matches(keras_model):
    with pytest.raises(featvis.LayerNotFoundError, match="close matches: conv"):
        featvis.visualize_activation(keras_model, "con", 0, **FAST)


def test_saved_keras_file_works_from_the_cli(keras_model, tmp_path):
    path = tmp_path / "model.keras"
    keras_model.save(path)
    out = tmp_path / "filter.png"
    main(
        [
            "activation",
            "--model",
            str(path),
            "--preprocess",
            "none",
            "--input-range",
            "0,1",
            "--layer",
            "conv",
            "--filter",
            "1",
            "--size",
            "16",
            "--steps",
            "5",
            "--out",
            str(out),
        ]
    )
    assert Image.open(out).size == (16, 16)


def test_grad_cam_on_a_keras_conv_layer(keras_model):
    image = np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    cam = featvis.visualize_cam(keras_model, "dense", 1, image, input_range=(0.0, 1.0))
    named = featvis.visualize_cam(
        keras_model, "dense", 1, image, penultimate_layer="relu", input_range=(0.0, 1.0)
    )
    assert cam.shape == (1, 16, 16) and np.isfinite(cam).all()
    np.testing.assert_allclose(cam, named)  # found automatically: the last spatial layer, 'relu'


def test_a_gray_keras_model_gets_one_channel_images():
    keras.utils.set_random_seed(1)
    for size in [(16, 16), (None, None)]:  # a fixed input size, and any size
        gray = keras.Sequential(
            [keras.Input((*size, 1)), keras.layers.Conv2D(4, 3, name="conv"), keras.layers.ReLU(name="relu")]
        )
        image = featvis.visualize_activation(gray, "conv", 2, **{**FAST, "max_iter": 2})
        assert image.shape == (16, 16, 1)  # the channel count read from the model's input shape


def test_grad_cam_skips_a_keras_layer_with_a_one_by_one_map():
    """A 1x1 map (N, 1, 1, C) channels-last is not spatial: the CAM layer found is the last one
    with more than one position, 'relu', not the 1x1 'squeeze' after it."""
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(8, 3, name="conv"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Conv2D(4, 14, name="squeeze"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(3, name="dense"),
        ]
    )
    image = np.random.default_rng(3).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    found = featvis.visualize_cam(model, "dense", 0, image, input_range=(0.0, 1.0))
    named = featvis.visualize_cam(model, "dense", 0, image, penultimate_layer="relu", input_range=(0.0, 1.0))
    np.testing.assert_allclose(found, named)


def test_a_keras_conv1d_output_is_read_channels_first():
    """(N, L, C) out of a Keras Conv1D is featvis's (N, C, L): filter 2 of 5, not position 2 of 6."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 1)), keras.layers.Conv1D(5, 3, name="conv")])
    signal = np.linspace(0, 1, 8, dtype=np.float32)[None, None]  # (N, C, L) as featvis takes signals
    reached = featvis.activations_reached(model, "conv", [2], signal, input_range=(0.0, 1.0), channels=1)
    out = np.asarray(model(torch.from_numpy(signal).permute(0, 2, 1)).detach())  # (1, 6, 5)
    np.testing.assert_allclose(reached[0], out[0, :, 2].mean(), rtol=1e-5)
    assert abs(reached[0] - out[0, 2, :].mean()) > 1e-4


def test_an_atlas_of_a_keras_model_of_four_spatial_axes_is_refused_naming_them(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2, 2, 2, 2, 1)), keras.layers.Dense(3, name="dense")])
    with pytest.raises(featvis.FeatvisValueError, match=r"takes 4-D input \(inputs of 4 spatial axes\)"):
        featvis.atlas(model, tmp_path / "atlas", ["dense"], input_range=(0.0, 1.0), max_iter=1)
    assert not (tmp_path / "atlas").exists()
