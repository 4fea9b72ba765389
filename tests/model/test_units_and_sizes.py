"""Unit axes, token layers and default input sizes at their edges (found by mutation testing)."""

import pytest
import torch
from torch import nn

import featvis

from conftest import assert_untouched, snapshot


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


class Transposed(nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


def test_a_feature_index_equal_to_the_feature_count_of_a_token_layer_is_refused_by_name():
    model = nn.Sequential(nn.Conv1d(1, 4, 1), Transposed(), nn.Linear(4, 6))  # (N, L, 6)
    before = snapshot(model)
    with pytest.raises(featvis.FeatvisValueError, match=r"filter_indices.*\[0, 5\]"):
        featvis.visualize_activation(model, "2", 6, size=8, channels=1, input_range=(0.0, 1.0), max_iter=1)
    assert_untouched(model, before)


def test_a_model_of_one_input_size_is_told_which_size_it_ran_at_and_why():
    """A model that takes 32 px only: the error says whether featvis chose the size or the caller did."""
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 32 * 32, 4))
    with pytest.raises(
        featvis.ModelError, match=r"random 224 x 224 input \(the default, as none was given\)"
    ):
        featvis.visualize_activation(model, "2", 1, input_range=(0.0, 1.0), max_iter=1)
    with pytest.raises(featvis.ModelError, match=r"random 48 x 48 input \(as size= gave\).*needs size="):
        featvis.visualize_activation(model, "2", 1, size=48, input_range=(0.0, 1.0), max_iter=1)
    image = featvis.visualize_activation(model, "2", 1, size=32, input_range=(0.0, 1.0), max_iter=1)
    assert image.shape == (32, 32, 3)
