"""Method objects and their options, at the edges the 2026-12-07 mutation sample found untested."""

import pytest
import torch
from torch import nn

import featvis
from featvis.attribution import IntegratedGradients, SmoothGrad
from featvis.attribution.cam_methods import AblationCam, ScoreCam
from featvis.optvis.losses import ActivationMaximization

from conftest import assert_untouched, snapshot


@pytest.mark.parametrize("kind", [ScoreCam, AblationCam])
def test_a_bad_batch_size_is_named(kind):
    with pytest.raises(featvis.FeatvisValueError, match=r"\bbatch_size=0\b"):
        kind(batch_size=0)


def test_an_unknown_penultimate_layer_of_ablation_cam_is_named(tiny):
    before = snapshot(tiny)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)).numpy()
    with pytest.raises(featvis.LayerNotFoundError, match=r"penultimate_layer="):
        featvis.visualize_cam(
            tiny, "fc", 3, image, method=AblationCam(), penultimate_layer="nowhere", input_range=(0.0, 1.0)
        )
    assert_untouched(tiny, before)


def test_smoothgrad_averages_the_method_it_is_given():
    """SmoothGrad(IntegratedGradients()) with no noise is Integrated Gradients itself, not vanilla."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 14 * 14, 2)).eval()
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)).numpy()
    options = dict(input_range=(0.0, 1.0), percentile=None)
    ig = IntegratedGradients(steps=8)
    smoothed = featvis.visualize_saliency(
        model, "3", 1, image, method=SmoothGrad(ig, samples=2, noise=0.0), **options
    )
    plain = featvis.visualize_saliency(model, "3", 1, image, method=ig, **options)
    vanilla = featvis.visualize_saliency(model, "3", 1, image, method="vanilla", **options)
    assert abs(smoothed - plain).max() < 1e-5 and abs(smoothed - vanilla).max() > 1e-3


def test_input_gradients_of_tensors_fed_as_given_are_per_unit_of_the_input():
    """input_range=None: the images are model input already, so the gradient is taken as it is."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    image = torch.randn(1, 3, 4, 4)
    grads = featvis.input_gradients(model, ActivationMaximization("1", 1), image, input_range=None)
    torch.testing.assert_close(grads.flatten(), model[1].weight[1].detach())
