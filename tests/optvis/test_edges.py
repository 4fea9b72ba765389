"""Activation maximization at exact zeros and boundaries (found by mutation testing)."""

import pytest
import torch
from torch import nn

import featvis
from featvis.optvis.backprop_modifiers import guided
from featvis.optvis.losses import UnitPerImage, neuron

from conftest import assert_untouched, snapshot


def test_guided_backprop_passes_nothing_where_the_input_is_exactly_zero():
    x = torch.tensor([-1.0, 0.0, 2.0])
    passed = guided(x, grad_output=torch.ones(3), local_grad=torch.ones(3))
    assert passed.tolist() == [0.0, 0.0, 1.0]


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
