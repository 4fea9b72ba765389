"""Feature inversion and caricatures (`featvis.invert`, `ActivationMatch`, `Caricature`) on a small
fixed net whose first layer is an invertible 1x1 convolution and whose later layers pool."""

from __future__ import annotations

import numpy as np
from PIL import Image
import pytest
import torch
from torch import nn

import featvis
from featvis.optvis.inversion import ActivationMatch, Caricature

from conftest import assert_untouched, snapshot

SIZE = 32
STEPS = 150


class PoolingNet(nn.Module):
    """`mix`: 1x1 conv 3 -> 8 (rank 3: invertible); then ReLU, 3x3 conv, ReLU, 4x max pool, conv, head."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(3, 8, 1)
        self.act = nn.ReLU()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(4)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.pool(self.act2(self.conv(self.act(self.mix(x)))))
        return self.head(self.conv3(x).mean((2, 3)))


def small(name: str) -> np.ndarray:
    """A scikit-image photo at SIZE x SIZE, float in [0, 1]."""
    from skimage import data

    photo = Image.fromarray(getattr(data, name)()).resize((SIZE, SIZE), Image.LANCZOS)
    return (np.asarray(photo) / 255.0).astype(np.float32)


@pytest.fixture
def net() -> nn.Module:
    torch.manual_seed(0)
    return PoolingNet().eval()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return small("astronaut")


def invert(model, layer, image, **kwargs):
    kwargs = {"input_range": (0.0, 1.0), "seed": 0, "max_iter": STEPS, "progress": False, **kwargs}
    return featvis.invert(model, layer, image, **kwargs)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


def test_an_invertible_early_layer_gives_back_the_photo_and_a_pooled_layer_less(net, photo):
    """At `mix`, a 1x1 conv of rank 3, the photo is the only image with its activations, so
    inversion must find it: the mean absolute pixel error is below 0.05 (measured 0.016-0.024 with
    the pixel, Fourier and coarse-to-fine parameterizations at 200 steps) and the pixels correlate
    above 0.98, where an unrelated photo (coffee) is 0.28 away. After a 3x3 conv, ReLUs and a 4x max
    pool (`pool`, 8x8 from 32x32) most of the photo's detail is gone from the activations: the
    error grows past twice the early layer's (measured 0.16-0.18) and stays below the unrelated
    photo's (the coarse picture is kept)."""
    before = snapshot(net)
    baseline = mae(small("coffee"), photo)
    early = invert(net, "mix", photo)
    late = invert(net, "pool", photo)
    assert early.shape == photo.shape and early.dtype == np.float32
    early_error, late_error = mae(early, photo), mae(late, photo)
    assert baseline > 0.25
    assert early_error < 0.05, early_error
    assert np.corrcoef(early.ravel(), photo.ravel())[0, 1] > 0.98
    assert late_error > 2 * early_error, (early_error, late_error)
    assert late_error < baseline, (late_error, baseline)
    assert_untouched(net, before)


def _dot(net, layer, image, photo) -> float:
    """The dot product of `image`'s activations at `layer` with the photo's, over the photo's own."""
    with featvis.PreparedModel(net, input_range=(0.0, 1.0)) as prepared:
        a, b = (prepared.layer_output(layer, prepared.load_images(x)) for x in (image, photo))
    return float((a * b).sum() / (b * b).sum())


def test_a_caricature_raises_the_dot_product_with_the_photo_more_than_inversion(net, photo):
    """Inversion aims at the photo's activations (a dot product near 1 of the photo's own: measured
    1.00); the caricature maximizes the dot product and must go past it by a tenth (measured 1.22:
    pixels stay in [0, 1] and the total variation holds it back)."""
    plain = invert(net, "act2", photo)
    caricature = invert(net, "act2", photo, caricature=True)
    plain_dot, caricature_dot = _dot(net, "act2", plain, photo), _dot(net, "act2", caricature, photo)
    assert 0.7 < plain_dot < 1.3, plain_dot
    assert caricature_dot > 1.1 * plain_dot, (plain_dot, caricature_dot)
    weighted = invert(net, "act2", photo, caricature=True, cossim_pow=2.0)
    assert _dot(net, "act2", weighted, photo) > plain_dot


def test_the_losses_compose_and_score_the_photo_as_documented(net, photo):
    with featvis.PreparedModel(net, input_range=(0.0, 1.0)) as prepared:
        images = prepared.load_images(photo)
        target = prepared.layer_output("conv", images)
        loss = (
            ActivationMatch("conv", target)
            + 0.05 * featvis.TotalVariation()
            - 0.5 * Caricature("conv", target)
        )
        assert [(t.name, w) for t, w in loss.terms] == [
            ("ActivationMatch", 1.0),
            ("TotalVariation", 0.05),
            ("Caricature", -0.5),
        ]
        target_of = prepared.resolve("conv")
        from featvis.optvis.losses import LossContext, layer_key

        ctx = LossContext(images, 1, {target_of.key: target}, {layer_key("conv"): target_of})
        assert ActivationMatch("conv", target)(ctx).item() == pytest.approx(0.0)
        assert Caricature("conv", target)(ctx).item() == pytest.approx(-1.0)
        assert Caricature("conv", target, cossim_pow=3)(ctx).item() == pytest.approx(-1.0, abs=1e-3)
        ctx.activations[target_of.key] = torch.zeros_like(target)
        assert ActivationMatch("conv", target)(ctx).item() == pytest.approx(1.0)
        result = featvis.visualize_activation_with_losses(
            prepared, loss, size=SIZE, max_iter=3, seed=0, input_modifiers=[], return_result=True
        )
    assert list(result.history) == ["ActivationMatch", "TotalVariation", "Caricature", "total"]


def test_several_layers_several_photos_a_prepared_model_and_the_result(net, photo):
    other = small("coffee")
    before = snapshot(net)
    with featvis.PreparedModel(net, input_range=(0.0, 1.0)) as prepared:
        result = featvis.invert(
            prepared,
            ["mix", "conv"],
            [photo, other],
            seed=0,
            max_iter=STEPS,
            return_result=True,
            progress=False,
        )
    assert isinstance(result, featvis.Result) and result.seed == 0
    assert result.images.shape == (2, 3, SIZE, SIZE)
    images = result.images.permute(0, 2, 3, 1).numpy()
    assert mae(images[0], photo) < 0.08 and mae(images[1], other) < 0.08  # each its own photo
    again = invert(net, ["mix", "conv"], [photo, other], max_iter=3)  # the same seed, the same images
    assert np.array_equal(again, invert(net, ["mix", "conv"], [photo, other], max_iter=3))
    half = invert(net, "mix", photo, size=16, max_iter=2)
    assert half.shape == (16, 16, 3)
    assert_untouched(net, before)


@pytest.mark.filterwarnings("ignore:PoolingNet is fed raw values")
def test_a_uint8_photo_under_the_default_input_range(net):
    from skimage import data

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((SIZE, SIZE)))
    image = featvis.invert(net, "mix", photo, seed=0, max_iter=STEPS, progress=False)
    assert image.dtype == np.uint8 and image.shape == photo.shape
    assert np.abs(image.astype(float) - photo).mean() < 0.05 * 255


@pytest.mark.parametrize(
    ("layer", "image", "options", "error", "named"),
    [
        ("nope", "photo", {}, featvis.LayerNotFoundError, "layer='nope'"),
        (["mix", "nope"], "photo", {}, featvis.LayerNotFoundError, "layer='nope'"),
        ([], "photo", {}, featvis.FeatvisValueError, "layer="),
        ("mix", "missing.png", {}, featvis.FeatvisError, r"\bimage\b"),
        ("mix", None, {}, featvis.FeatvisTypeError, r"\bimage\b"),
        ("mix", 3.0, {}, featvis.FeatvisTypeError, r"\bimage\b"),
        ("mix", "gray", {}, featvis.FeatvisError, r"\bimage\b"),
        ("mix", "photo", {"caricature": "yes"}, featvis.FeatvisTypeError, r"\bcaricature\b"),
        ("mix", "photo", {"tv_weight": -1}, featvis.FeatvisValueError, "tv_weight="),
        ("mix", "photo", {"cossim_pow": float("nan")}, featvis.FeatvisValueError, "cossim_pow="),
        ("mix", "photo", {"input_range": None}, featvis.FeatvisValueError, "input_range="),
        ("mix", "photo", {"max_iter": 0}, featvis.FeatvisValueError, "max_iter="),
        ("mix", "photo", {"colour": 1}, featvis.FeatvisTypeError, "colour"),
    ],
)
def test_bad_input_is_named_and_the_model_is_untouched(net, photo, layer, image, options, error, named):
    images = {"photo": photo, "gray": np.zeros((SIZE, SIZE, 5), np.float32)}
    before = snapshot(net)
    with pytest.raises(error, match=named):
        invert(net, layer, images.get(image, image) if isinstance(image, str) else image, **options)
    assert_untouched(net, before)


def test_a_target_of_another_shape_is_named(net, photo):
    with featvis.PreparedModel(net, input_range=(0.0, 1.0)) as prepared:
        target = prepared.layer_output("conv", prepared.load_images(photo))
        with pytest.raises(featvis.FeatvisValueError, match="target_activation"):
            featvis.visualize_activation_with_losses(
                prepared, ActivationMatch("conv", target), size=16, max_iter=1
            )
    with pytest.raises(featvis.FeatvisTypeError, match="target_activation"):
        ActivationMatch("conv", [1.0, 2.0])
    with pytest.raises(featvis.FeatvisValueError, match="target_activation"):
        Caricature("conv", torch.full((1, 4), float("nan")))


@pytest.mark.slow
def test_on_lite0_deeper_layers_keep_less_of_the_astronaut():
    """EfficientNet-Lite0 at 96 px: the inversion at `_blocks.1` is closer to the photo than at `_blocks.10`."""
    from skimage import data

    lite0 = featvis.zoo.efficientnet_lite0()
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((96, 96), Image.LANCZOS))
    errors = []
    for layer in ("_blocks.1", "_blocks.10"):
        image = featvis.invert(
            lite0.model,
            layer,
            photo,
            preprocess=lite0.preprocess,
            size=96,
            seed=0,
            max_iter=64,
            progress=False,
        )
        errors.append(np.abs(image.astype(float) - photo).mean())
    assert errors[0] < errors[1], errors
