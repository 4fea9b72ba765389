"""Parameterizations, transforms, diversity and objective arithmetic (the image-quality pieces)."""

import numpy as np
import pytest
import torch

import featvis
from featvis.input_modifiers import (
    Jitter,
    Noise,
    RandomAffine,
    RandomCrop,
    RandomFlip,
    RandomZoom,
    apply_modifiers,
    standard_transforms,
)
from featvis.losses import ActivationMaximization, LossContext, channel, diversity, neuron
from featvis.params import FourierImage, MacoImage, PixelImage, natural_magnitude
from featvis.regularizers import LpNorm, TotalVariation
from featvis.visualization import layer_batches

from conftest import make_tiny

GEN = dict(streams=featvis.rng.Streams([0, 1]))


@pytest.mark.parametrize("param_class", [PixelImage, FourierImage, MacoImage])
def test_parameterizations_make_images_in_range(param_class):
    param = param_class(2, 3, (24, 20), **GEN)
    with torch.no_grad():
        for p in param.parameters():
            p.add_(torch.randn(p.shape) * 5)  # even wild parameters
        param.project()
    images = param()
    assert images.shape == (2, 3, 24, 20)
    assert images.min() >= 0 and images.max() <= 1


def _high_frequency_share(images: torch.Tensor) -> float:
    spectrum = torch.fft.rfft2(images - images.mean(dim=(2, 3), keepdim=True)).abs() ** 2
    h, w = images.shape[-2:]
    fy = torch.fft.fftfreq(h)[:, None].abs()
    fx = torch.fft.rfftfreq(w)[None, :]
    high = (torch.maximum(fy, fx) > 0.25).float()
    return float((spectrum * high).sum() / spectrum.sum())


def test_fourier_and_maco_images_have_less_high_frequency_than_pixels():
    model = make_tiny()
    shares = {}
    for method in ("pixel", "fourier", "maco"):
        result = featvis.visualize_activation(
            model, "conv2", 3, method=method, size=32, max_iter=30, seed=0, return_result=True
        )
        shares[method] = _high_frequency_share(result.images)
    assert shares["fourier"] < shares["pixel"]
    assert shares["maco"] < shares["pixel"]


def test_fourier_image_starts_from_a_seed_image_exactly():
    for size in [(16, 18), (15, 17)]:  # an odd width too: the spectrum alone does not tell it
        seed = torch.rand(1, 3, *size) * 0.9 + 0.05
        assert torch.allclose(FourierImage(1, 3, size, init=seed)(), seed, atol=1e-4)


def test_natural_magnitude_falls_with_frequency():
    magnitude = natural_magnitude(3, (64, 64))
    assert magnitude.shape == (3, 64, 33)
    assert magnitude[:, 1, 1].mean() > 5 * magnitude[:, 32, 32].mean()
    # at the size it was estimated at, the stored photograph spectrum, each colour its own
    stored = torch.tensor(featvis.params.natural_statistics()["magnitude"])
    torch.testing.assert_close(natural_magnitude(3, (224, 224)), stored)
    # one channel (or four): the mean of the colours' magnitudes, for every channel
    gray = natural_magnitude(1, (64, 64))
    assert gray.shape == (1, 64, 33)
    torch.testing.assert_close(gray[0], magnitude.mean(0))
    torch.testing.assert_close(natural_magnitude(4, (64, 64)), gray.expand(4, -1, -1))


def test_a_maco_image_is_its_spectrum_standardized_through_a_sigmoid():
    """Random phases in [-pi, pi); the image's logit is 1.5 times the inverse FFT, centred per channel
    and divided by its standard deviation, plus logit(0.45): each channel's mean logit is logit(0.45)."""
    param = MacoImage(2, 3, (32, 30), **GEN)
    phase = param.phase.detach()
    assert phase.min() >= -np.pi and phase.max() < np.pi
    assert phase.min() < -3 and phase.max() > 3 and abs(phase.mean()) < 0.1
    with torch.no_grad():
        logits = torch.logit(param().double())
    torch.testing.assert_close(
        logits.mean(dim=(2, 3)),
        torch.full((2, 3), np.log(0.45 / 0.55), dtype=torch.double),
        atol=1e-4,
        rtol=0,
    )


@pytest.mark.parametrize(
    "modifier",
    [
        Jitter(4),
        RandomAffine((0.8, 1.2), 15, 0.1),
        RandomCrop((0.2, 1.0)),
        RandomZoom((0.3, 1.3)),
        RandomZoom((1.1, 1.5)),
        Noise(0.1),
    ],
)
def test_each_image_draws_its_own_transform_and_gradients_flow(modifier):
    images = torch.rand(1, 3, 32, 32).expand(4, -1, -1, -1).clone().requires_grad_(True)
    out = modifier(images, featvis.rng.Streams(range(len(images))))
    assert out.shape == images.shape
    assert not torch.allclose(out[0], out[1])  # the same image, transformed differently
    out.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_random_flip_mirrors_some_images_of_a_batch_and_not_others():
    images = torch.rand(1, 3, 8, 8).expand(16, -1, -1, -1)
    out = RandomFlip(0.5)(images, featvis.rng.Streams(range(len(images))))
    flipped = [torch.equal(o, images[0].flip(-1)) for o in out]
    kept = [torch.equal(o, images[0]) for o in out]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < 16
    assert torch.equal(RandomFlip(0.0)(images, featvis.rng.Streams(range(len(images)))), images)


def test_random_zoom_of_side_one_is_the_identity_and_zooming_out_shrinks_the_content():
    images = torch.rand(2, 3, 16, 16)
    same = RandomZoom((1.0, 1.0))(images, featvis.rng.Streams(range(len(images))))
    assert torch.allclose(same, images, atol=1e-5)
    square = torch.zeros(1, 1, 32, 32)
    square[..., 8:24, 8:24] = 1.0  # a centered 16 px square
    out = RandomZoom((2.0, 2.0))(square, featvis.rng.Streams(range(len(square))))
    center = out[0, 0, 12:20, 12:20]
    assert center.mean() > 0.9  # still in the middle...
    assert out[0, 0, 4:28, 4:28].mean() < 0.5  # ...at half the size (about 8 px of the 24 shown)


def test_standard_transforms_and_plain_functions_compose():
    images = torch.rand(2, 3, 32, 32)
    out = apply_modifiers(
        [*standard_transforms(), lambda x: x.flip(-1)], images, featvis.rng.Streams(range(len(images)))
    )
    assert out.shape == images.shape


def test_diversity_makes_the_images_of_a_batch_more_different():
    model = make_tiny()

    def spread(weight):
        loss = channel("conv2", 4) + weight * diversity("conv2")
        result = featvis.visualize_activation_with_losses(
            model, loss, batch_size=4, size=32, max_iter=40, seed=0, return_result=True
        )
        flat = result.images.flatten(1)
        return torch.cdist(flat, flat).sum().item() / 12

    assert spread(20.0) > 1.2 * spread(0.0)


def test_objective_arithmetic_equals_the_arithmetic_of_the_terms():
    model = make_tiny()
    x = torch.rand(2, 3, 32, 32)
    acts = {}
    handles = [
        m.register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o))
        for n, m in [("conv2", model.conv2), ("fc", model.fc)]
    ]
    model(x)
    for h in handles:
        h.remove()
    from featvis.targets import Target

    targets = {"conv2": Target("conv2", model.conv2), "fc": Target("fc", model.fc)}
    ctx = LossContext(
        images=x, views=1, activations={"conv2#0": acts["conv2"], "fc#0": acts["fc"]}, targets=targets
    )
    a, b, c = channel("conv2", 1), ActivationMaximization("fc", 2), TotalVariation()
    combined = a - 100 * b + 0.5 * c - neuron("conv2", 3) / 2
    expected = a(ctx) - 100 * b(ctx) + 0.5 * c(ctx) - neuron("conv2", 3)(ctx) / 2
    assert torch.allclose(combined(ctx), expected)
    assert [w for _, w in combined.terms] == [1.0, -100.0, 0.5, -0.5]
    many = sum(LpNorm() * (1 / 500) for _ in range(500))  # hundreds of terms, no recursion
    assert len(many.terms) == 500 and torch.allclose(many(ctx), LpNorm()(ctx), atol=1e-5)


def test_maco_transparency_map_is_returned():
    model = make_tiny()
    result = featvis.visualize_activation(
        model, "conv2", 1, method="maco", size=32, max_iter=10, seed=0, return_result=True
    )
    assert result.transparency.shape == (1, 32, 32) and (result.transparency >= 0).all()
    assert np.isfinite(result.transparency.numpy()).all()


def test_image_ema_returns_the_moving_average_of_the_second_half_of_the_steps():
    model = make_tiny()
    seen = []
    options = dict(size=16, max_iter=10, views=1, seed=0, return_result=True, progress=False)
    plain = featvis.visualize_activation(
        model,
        "conv2",
        3,
        image_ema=None,
        callbacks=[lambda s, t, images: seen.append(images.clone())],
        **options,
    )
    averaged = featvis.visualize_activation(model, "conv2", 3, image_ema=0.5, **options)
    expected = seen[5]
    for images in seen[6:]:
        expected = 0.5 * expected + 0.5 * images
    assert torch.allclose(averaged.images, expected, atol=1e-6)
    assert not torch.allclose(plain.images, expected, atol=1e-3)  # the last step's image differs
    assert averaged.history == plain.history  # the same run; only what is returned differs


@pytest.mark.parametrize("argument", [("p", lambda v: RandomFlip(v)), ("side", lambda v: RandomZoom(v))])
def test_transform_arguments_are_checked(argument):
    name, make = argument
    bad = [1.5, -0.1, True] if name == "p" else [(0, 1), (1.2, 1.0), (0.5, 5.0)]
    for value in bad:
        with pytest.raises(featvis.FeatvisValueError, match=name):
            make(value)


@pytest.mark.parametrize("beta", [2.0, 1.0, 3.0])
def test_total_variation_value_and_gradient_are_those_of_its_formula(beta):
    images = torch.rand(3, 2, 9, 7, dtype=torch.float64, requires_grad=True)
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    squared = dx.square() + dy.square()
    expected = (squared if beta == 2 else (squared + 1e-8) ** (beta / 2)).flatten(1).mean(1)
    ctx = LossContext(images=images, views=1)
    got = TotalVariation(beta)(ctx)
    torch.testing.assert_close(got, expected)
    weights = torch.rand(3, dtype=torch.float64)
    (grad_expected,) = torch.autograd.grad((expected * weights).sum(), images)
    (grad_got,) = torch.autograd.grad((TotalVariation(beta)(ctx) * weights).sum(), images)
    torch.testing.assert_close(grad_got, grad_expected)
    assert torch.autograd.gradcheck(lambda x: TotalVariation(beta)(LossContext(images=x, views=1)), (images,))


@pytest.mark.parametrize(("count", "most", "sizes"), [(112, 64, [56, 56]), (10, 4, [4, 3, 3]), (3, 8, [3])])
def test_a_layer_is_split_into_the_fewest_batches_of_near_equal_size(count, most, sizes):
    batches = layer_batches(range(count), most)
    assert [len(batch) for batch in batches] == sizes
    assert [unit for batch in batches for unit in batch] == list(range(count))


def test_an_images_random_draws_do_not_depend_on_its_batch():
    keys = [featvis.rng.derive_key(0, "layer#0", unit) for unit in range(5)]
    together, alone = featvis.rng.Streams(keys), featvis.rng.Streams(keys[3:4])
    for draw in ("uniform", "normal"):
        for shape in [(3,), (3, 40, 40)]:  # small draws hash, large ones use a generator per image
            assert torch.equal(getattr(together, draw)(*shape)[3], getattr(alone, draw)(*shape)[0])
    assert torch.equal(together.integers(-3, 4, 2)[3], alone.integers(-3, 4, 2)[0])
    views = together.per_view(4).uniform(2)
    assert views.shape == (20, 2) and len({tuple(v.tolist()) for v in views}) == 20  # every view its own


def test_random_draws_have_the_distribution_they_claim():
    streams = featvis.rng.Streams([1, 2])
    uniform, normal = streams.uniform(20000), streams.normal(20000)
    assert 0 <= uniform.min() and uniform.max() < 1 and abs(uniform.mean() - 0.5) < 0.01
    assert abs(normal.mean()) < 0.03 and abs(normal.std() - 1) < 0.03
    integers = streams.integers(-2, 3, 5000)
    assert set(integers.unique().tolist()) == {-2, -1, 0, 1, 2}
    assert not torch.equal(uniform[0], uniform[1])  # two images, two streams
