"""What a new user trips over (dtypes, compiled models, layer names, seed ranges, channels), from the user's side."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import featvis

from conftest import SharedActivationNet, assert_untouched, make_tiny, snapshot

RANDOM_IMAGE = np.random.default_rng(0).uniform(0, 255, (32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_models_in_any_float_dtype_work(dtype):
    model = make_tiny().to(dtype)
    before = snapshot(model)
    result = featvis.visualize_activation(model, "conv2", 3, size=32, max_iter=8, seed=0, return_result=True)
    assert result.images.dtype == torch.float32  # the optimization itself stays in float32
    rising = result.history["ActivationMaximization"]
    assert rising[-1] < rising[0]  # minus the activation: the unit rose
    cam = featvis.visualize_cam(model, "fc", 3, RANDOM_IMAGE)
    assert cam.dtype == np.float32 and cam.max() == pytest.approx(1.0)
    saliency = featvis.visualize_saliency(model, "fc", 3, RANDOM_IMAGE)
    assert np.isfinite(saliency).all() and saliency.max() == pytest.approx(1.0)
    assert_untouched(model, before)


def test_a_compiled_model_is_visualized_through_its_original_module():
    model = make_tiny()
    compiled = torch.compile(model)
    before = snapshot(model)
    with pytest.warns(featvis.FeatvisWarning, match="torch.compile"):
        names = featvis.layer_names(compiled, input_shape=(3, 32, 32))
    assert names == featvis.layer_names(model, input_shape=(3, 32, 32))
    with pytest.warns(featvis.FeatvisWarning, match="_orig_mod"):
        result = featvis.visualize_activation(
            compiled, "conv2", 3, size=32, max_iter=6, seed=0, return_result=True
        )
    plain = featvis.visualize_activation(model, "conv2", 3, size=32, max_iter=6, seed=0, return_result=True)
    assert torch.equal(result.images, plain.images)
    assert_untouched(model, before)


def test_every_name_and_index_layer_names_lists_is_accepted():
    torch.manual_seed(2)
    model = SharedActivationNet().eval()
    names = featvis.layer_names(model, input_shape=(3, 16, 16))
    assert names == ["conv1", "act#0", "conv2", "act#1", "fc"]  # a module run twice: one name per call
    options = dict(size=16, max_iter=2, views=1, seed=0, input_range=(0.0, 1.0), return_result=True)
    for index, name in enumerate(names):
        unit = 0
        by_name = featvis.visualize_activation(model, name, unit, **options)
        by_index = featvis.visualize_activation(model, index, unit, **options)
        assert torch.equal(by_name.images, by_index.images), name
        assert featvis.find_layer_idx(model, name, input_shape=(3, 16, 16)) == index
    # the two calls are different layers: their images differ
    first = featvis.visualize_activation(model, "act#0", 0, **options).images
    second = featvis.visualize_activation(model, "act#1", 0, **options).images
    assert not torch.equal(first, second)
    with pytest.raises(featvis.LayerNotFoundError, match="act#0, act#1"):
        featvis.find_layer_idx(model, "act", input_shape=(3, 16, 16))
    with pytest.raises(featvis.LayerNotFoundError, match=r"act#2.*runs only 2"):
        featvis.visualize_activation(model, "act#2", 0, **options)


def test_a_float_seed_in_0_1_with_the_default_0_255_range_is_refused_with_the_fix():
    model = make_tiny()
    photo = np.random.default_rng(1).uniform(0, 1, (32, 32, 3))
    with pytest.raises(featvis.FeatvisValueError, match=r"input_range=\(0.0, 1.0\).*image \* 255"):
        featvis.visualize_activation(model, "conv2", 3, seed_input=photo, max_iter=2)
    # the same image in the right range is taken, either way
    featvis.visualize_activation(model, "conv2", 3, seed_input=photo, input_range=(0.0, 1.0), max_iter=2)
    featvis.visualize_activation(model, "conv2", 3, seed_input=photo * 255, max_iter=2)


ATTRIBUTIONS = {
    "saliency": lambda model, image, **kw: featvis.visualize_saliency(model, "fc", 3, image, **kw),
    "cam": lambda model, image, **kw: featvis.visualize_cam(model, "fc", 3, image, **kw),
    "guided_cam": lambda model, image, **kw: featvis.visualize_guided_cam(model, "fc", 3, image, **kw),
    "integrated_gradients": lambda model, image, **kw: featvis.attention.integrated_gradients(
        model, featvis.ActivationMaximization("fc", 3), image, steps=2, **kw
    ),
    "occlusion": lambda model, image, **kw: featvis.attention.occlusion(
        model, featvis.ActivationMaximization("fc", 3), image, **kw
    ),
    "input_gradients": lambda model, image, **kw: featvis.attention.input_gradients(
        model, featvis.ActivationMaximization("fc", 3), image, **kw
    ),
    "deletion": lambda model, image, **kw: featvis.metrics.deletion(
        model, "fc", 3, image, np.ones((1, 32, 32)), steps=2, **kw
    ),
}


@pytest.mark.parametrize("name", sorted(ATTRIBUTIONS))
def test_attribution_refuses_a_float_image_in_0_1_under_the_default_0_255_range(name):
    explain = ATTRIBUTIONS[name]
    model = make_tiny()
    before = snapshot(model)
    photo = np.random.default_rng(1).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    for given in (photo, torch.from_numpy(photo).permute(2, 0, 1), [photo]):
        with pytest.raises(featvis.FeatvisValueError, match=r"seed_input.*input_range") as err:
            explain(model, given)
        assert "(0, 255)" in str(err.value) and "input_range=(0.0, 1.0)" in str(err.value)
    explain(model, photo, input_range=(0.0, 1.0))  # the same image in the right range is taken
    explain(model, photo * 255)
    assert_untouched(model, before)


@pytest.mark.parametrize("method", ["fourier", "pixel", "maco"])
def test_an_all_black_seed_still_optimizes(method):
    model = make_tiny()
    black = np.zeros((32, 32, 3), np.uint8)
    start = featvis.activations_reached(model, "conv2", [3], black[None])[0]
    image = featvis.visualize_activation(
        model, "conv2", 3, seed_input=black, method=method, max_iter=32, seed=0, input_modifiers=[], views=1
    )
    assert featvis.activations_reached(model, "conv2", [3], image[None])[0] > start + 0.5
    assert image.mean() > 8  # no longer black


class GrayNet(nn.Module):
    """A model of 1-channel images."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_the_channel_count_is_read_from_the_model():
    torch.manual_seed(0)
    model = GrayNet().eval()
    image = featvis.visualize_activation(model, "conv", 1, size=16, max_iter=4, seed=0)
    assert image.shape == (16, 16, 1)
    gray = np.random.default_rng(0).uniform(0, 255, (16, 16, 1))
    cam = featvis.visualize_cam(model, "fc", 1, gray)
    assert cam.shape == (1, 16, 16)
    images = featvis.visualize_layer(model, "conv", size=16, max_iter=2, seed=0)
    assert images.shape == (4, 16, 16, 1)


def test_a_channel_mismatch_names_channels():
    torch.manual_seed(0)
    model = GrayNet().eval()
    with pytest.raises(featvis.ModelError, match="channels"):
        featvis.visualize_activation(model, "conv", 1, channels=3, size=16, max_iter=2)
    with pytest.raises(featvis.FeatvisValueError, match="1 channels"):
        featvis.visualize_cam(model, "fc", 1, RANDOM_IMAGE)  # an RGB image for a gray model


def test_raw_0_255_input_without_preprocess_is_warned_about_once():
    class FreshNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x)

    model = FreshNet().eval()
    with pytest.warns(featvis.FeatvisWarning, match="preprocess") as caught:
        featvis.visualize_activation(model, "conv", 0, size=8, max_iter=1)
        featvis.visualize_activation(model, "conv", 0, size=8, max_iter=1)
    assert sum("preprocess" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning with a preprocess or a [0, 1] range
        featvis.visualize_activation(model, "conv", 0, size=8, max_iter=1, input_range=(0.0, 1.0))
        featvis.visualize_activation(model, "conv", 0, size=8, max_iter=1, preprocess=lambda x: x / 255)


def test_layer_names_and_find_layer_idx_use_the_models_dtype_and_the_given_shape():
    model = make_tiny().double()  # a float64 input of zeros must be float64
    assert featvis.layer_names(model, input_shape=(3, 32, 32))[-1] == "fc"
    torch.manual_seed(0)
    fixed = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 2)).eval()  # 8x8 only
    assert featvis.find_layer_idx(fixed, "2", input_shape=(3, 8, 8)) == 2


def _fixed_size_net() -> nn.Module:
    """A model that takes 16 x 16 images only (a flattening head, like a ViT built for one size)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 16 * 16, 4)).eval()


def _resolve_in(prepared, layer):
    with prepared:
        return prepared.resolve(layer)


def test_a_fixed_size_model_is_told_the_argument_that_sets_the_probe_size():
    model = _fixed_size_net()
    before = snapshot(model)
    for call in (
        lambda: featvis.layer_names(model),
        lambda: featvis.find_layer_idx(model, "2"),
        lambda: featvis.get_num_filters(model, "2"),
    ):
        with pytest.raises(featvis.ModelError, match=r"input_shape=") as err:
            call()
        assert "224" in str(err.value)
    for call in (
        lambda: featvis.visualize_activation(model, "2", 1, max_iter=1, input_range=(0.0, 1.0)),
        lambda: _resolve_in(featvis.PreparedModel(model, input_range=(0.0, 1.0)), "2"),
        lambda: featvis.metrics.randomization_check(model, lambda m: np.zeros((1, 4, 4)), layers=["2"]),
    ):
        with pytest.raises(featvis.ModelError, match=r"size=") as err:
            call()
        assert "224" in str(err.value)
    with pytest.raises(featvis.ModelError, match=r"input_shape=") as err:
        featvis.layer_names(model, input_shape=(3, 20, 20))
    assert "20" in str(err.value)
    # with the argument the hint names, each works
    assert featvis.layer_names(model, input_shape=(3, 16, 16)) == ["0", "1", "2"]
    assert featvis.find_layer_idx(model, "2", input_shape=(3, 16, 16)) == 2
    assert featvis.get_num_filters(model, "2", input_shape=(3, 16, 16)) == 4
    featvis.visualize_activation(model, "2", 1, max_iter=1, input_range=(0.0, 1.0), size=16)
    featvis.metrics.randomization_check(model, lambda m: np.zeros((1, 4, 4)), layers=["2"], size=16)
    assert_untouched(model, before)


def test_layer_names_takes_a_prepared_model_so_a_model_of_several_inputs_can_be_probed():
    class ImageAndMeta(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.meta = nn.Linear(2, 4)
            self.fc = nn.Linear(4, 3)

        def forward(self, image, meta):
            return self.fc(self.conv(image).mean(dim=(2, 3)) + self.meta(meta))

    model = ImageAndMeta().eval()
    before = snapshot(model)
    with featvis.PreparedModel(model, inputs={"meta": torch.zeros(1, 2)}, input_range=(0.0, 1.0)) as prepared:
        assert featvis.layer_names(prepared, input_shape=(3, 16, 16)) == ["conv", "meta", "fc"]
        assert featvis.find_layer_idx(prepared, "fc") == 2
    assert_untouched(model, before)
