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
