"""Attention maps at exact zeros and boundaries (found by mutation testing)."""

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import featvis
from featvis.attribution.cam_methods import gradcam_plus_plus

from conftest import assert_untouched, snapshot


def test_gradcam_plus_plus_weighs_nothing_where_its_denominator_is_exactly_zero():
    # one channel summing to -2 with gradient 1 everywhere: 2 + sum(A) g = 0, so alpha is 0, not 1/0
    activations = torch.full((1, 1, 2, 2), -0.5)
    cam = gradcam_plus_plus(activations, torch.ones_like(activations))
    assert torch.isfinite(cam).all() and (cam == 0).all()
    # and a second, positive channel alone decides the map
    two = torch.cat([activations, torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])], 1)
    cam = gradcam_plus_plus(two, torch.ones_like(two))
    assert cam[0, 0, 0] > 0 and (cam[0].flatten()[1:] == 0).all()


@pytest.mark.parametrize("call", [featvis.visualize_saliency, featvis.visualize_cam])
def test_augmented_smoothing_reaches_the_map_from_the_with_losses_form(tiny, call):
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)).numpy()
    plain = call(tiny, "fc", 3, image, input_range=(0.0, 1.0))
    smoothed = call(tiny, "fc", 3, image, input_range=(0.0, 1.0), aug_smooth=True)
    assert abs(plain - smoothed).max() > 1e-3  # the flips and zooms changed the map


def test_the_100th_percentile_is_allowed_and_scales_by_the_maximum(tiny):
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4)).numpy()
    options = dict(input_range=(0.0, 1.0))
    top = featvis.visualize_saliency(tiny, "fc", 3, image, percentile=100, **options)
    plain = featvis.visualize_saliency(tiny, "fc", 3, image, percentile=None, **options)
    assert abs(top - plain).max() < 1e-6


def test_a_loss_that_is_not_one_is_refused_naming_losses(tiny):
    before = snapshot(tiny)
    with pytest.raises(featvis.FeatvisError, match=r"\blosses\b"):
        featvis.visualize_saliency_with_losses(
            tiny, 42, torch.zeros(1, 3, 16, 16).numpy(), input_range=(0, 1)
        )
    assert_untouched(tiny, before)


def test_augmented_smoothing_averages_the_image_its_mirror_and_their_centered_zoom():
    """aug_smooth's views: the image, its mirror and both zoomed in 10% on the center (48 x 64 px:
    the middle 44 x 58, 2 rows and 3 columns dropped on each side), each view's map taken back to
    the image. A linear model's gradient is its weights in the view's own pixels, so the average
    can be written down: four maps inside the zoomed part, two at its edges."""
    weight = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(6))

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Identity()

        def forward(self, x):
            return self.fc((x * weight).sum(dim=(1, 2, 3))[:, None])

    image = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(7)).numpy()
    got = featvis.visualize_saliency(
        Linear(), "fc", 0, image, aug_smooth=True, percentile=None, input_range=(0.0, 1.0)
    )
    zoomed = torch.full_like(weight, float("nan"))
    zoomed[..., 2:46, 3:61] = F.interpolate(weight, size=(44, 58), mode="bilinear", align_corners=False)
    views = torch.stack([weight, weight.flip(-1), zoomed, zoomed.flip(-1)])
    expected = views.nanmean(0).amax(1)[0]  # the views' mean, then the max over channels
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(got[0], expected.numpy(), atol=1e-5)
