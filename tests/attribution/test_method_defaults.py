"""Method objects' defaults and how they show themselves (found untested by mutation testing)."""

import torch

import featvis
from featvis.attribution import IntegratedGradients, SmoothGrad


def test_smoothgrad_draws_its_noise_from_seed_0_by_default(tiny):
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)).numpy()

    def smoothed(method):
        return featvis.visualize_saliency(tiny, "fc", 3, image, method=method, input_range=(0.0, 1.0))

    default, zero, one = (
        smoothed(SmoothGrad(samples=4)),
        smoothed(SmoothGrad(samples=4, seed=0)),
        smoothed(SmoothGrad(samples=4, seed=1)),
    )
    assert abs(default - zero).max() == 0 and abs(default - one).max() > 1e-3


def test_a_method_object_shows_its_options():
    shown = repr(IntegratedGradients(steps=8))
    assert shown.startswith("IntegratedGradients(steps=8, quadrature=") and ", batch_size=None" in shown


def test_a_bad_occlusion_stride_is_named():
    import pytest

    from featvis.attribution import Occlusion

    with pytest.raises(featvis.FeatvisValueError, match=r"\bstride=0\b"):
        Occlusion(stride=0)


def test_a_loss_made_of_a_nameless_callable_is_called_function():
    import functools

    from featvis.optvis.losses import as_loss

    nameless = functools.partial(lambda ctx, scale: scale * ctx.images.mean((1, 2, 3)), scale=2.0)
    assert as_loss(nameless, "losses").name == "function"
