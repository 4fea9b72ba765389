"""Edges that the 5% mutation sample of 2026-11-27 found untested: exact zeros and boundaries."""

import pytest
import torch
from torch import nn

import featvis
from featvis.backprop_modifiers import guided
from featvis.cam_methods import gradcam_plus_plus
from featvis.losses import UnitPerImage, neuron

from conftest import assert_untouched, snapshot


def test_guided_backprop_passes_nothing_where_the_input_is_exactly_zero():
    x = torch.tensor([-1.0, 0.0, 2.0])
    passed = guided(x, grad_output=torch.ones(3), local_grad=torch.ones(3))
    assert passed.tolist() == [0.0, 0.0, 1.0]


def test_gradcam_plus_plus_weighs_nothing_where_its_denominator_is_exactly_zero():
    # one channel summing to -2 with gradient 1 everywhere: 2 + sum(A) g = 0, so alpha is 0, not 1/0
    activations = torch.full((1, 1, 2, 2), -0.5)
    cam = gradcam_plus_plus(activations, torch.ones_like(activations))
    assert torch.isfinite(cam).all() and (cam == 0).all()
    # and a second, positive channel alone decides the map
    two = torch.cat([activations, torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])], 1)
    cam = gradcam_plus_plus(two, torch.ones_like(two))
    assert cam[0, 0, 0] > 0 and (cam[0].flatten()[1:] == 0).all()


def test_a_unit_index_equal_to_the_unit_count_is_refused_by_name(tiny):
    before = snapshot(tiny)
    with pytest.raises(featvis.FeatvisValueError, match=r"units.*\[0, 9\]"):
        featvis.visualize_activation_with_losses(
            tiny, UnitPerImage("fc", [10]), size=16, input_range=(0, 1), max_iter=1
        )
    assert_untouched(tiny, before)


def test_a_neuron_at_row_and_column_zero_is_allowed_and_rises():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Identity()).eval()
    before = snapshot(model)
    image = featvis.visualize_activation_with_losses(
        model, neuron("1", 2, x=0, y=0), size=16, input_range=(0, 1), max_iter=16, seed=0, input_modifiers=[]
    )
    with torch.no_grad():
        drawn, gray = (
            model(picture.permute(2, 0, 1)[None].float() / 255)[0, 2]
            for picture in (torch.from_numpy(image), torch.full((16, 16, 3), 128))
        )
    assert drawn[0, 0] > gray[0, 0] + 0.2  # the corner neuron rose
    assert drawn[0, 0] > drawn[8, 8]  # more than one far from it: the position was read
    assert_untouched(model, before)


def test_the_default_sizes_of_images_signals_and_volumes():
    image = featvis.PreparedModel(nn.Sequential(nn.Conv2d(3, 2, 3)))
    signal = featvis.PreparedModel(nn.Sequential(nn.Conv1d(3, 2, 3)))
    volume = featvis.PreparedModel(nn.Sequential(nn.Conv3d(3, 2, 3)))
    assert (image.default_size(), signal.default_size(), volume.default_size()) == (
        (224, 224),
        (128,),
        (32, 32, 32),
    )


class Tokens(nn.Module):
    """A 1-D signal read as token ids: Embedding(10, 16) gives (N, L, 16), units on the last axis."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 1, 1)
        self.emb = nn.Embedding(10, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        ids = (self.conv(x)[:, 0].detach().clamp(0, 1) * 9).long()
        return self.head(self.emb(ids).mean(1))


def test_an_embedding_has_its_units_on_the_last_axis():
    model = Tokens()
    assert featvis.get_num_filters(model, "emb", input_shape=(1, 8)) == 16


def test_an_embedding_of_as_many_tokens_as_features_reads_units_on_the_feature_axis():
    """Sixteen token ids embedded in 16 features: both axes have 16 entries, so the Embedding's own
    convention decides (features, the last axis), not the sizes."""
    model = Tokens()
    signal = torch.linspace(0, 1, 16).view(1, 1, 16)
    reached = featvis.activations_reached(
        model, "emb", [3], signal.numpy(), input_range=(0.0, 1.0), channels=1
    )
    with torch.no_grad():
        ids = (model.conv(signal)[:, 0].clamp(0, 1) * 9).long()
        features = model.emb(ids)  # (1, 16 tokens, 16 features)
    assert reached[0] == pytest.approx(features[0, :, 3].mean().item(), abs=1e-6)
    assert reached[0] != pytest.approx(features[0, 3, :].mean().item(), abs=1e-6)


def test_a_feature_index_equal_to_the_feature_count_of_a_token_layer_is_refused_by_name():
    model = nn.Sequential(nn.Conv1d(1, 4, 1), Transposed(), nn.Linear(4, 6))  # (N, L, 6)
    before = snapshot(model)
    with pytest.raises(featvis.FeatvisValueError, match=r"filter_indices.*\[0, 5\]"):
        featvis.visualize_activation(model, "2", 6, size=8, channels=1, input_range=(0.0, 1.0), max_iter=1)
    assert_untouched(model, before)


class Transposed(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


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
