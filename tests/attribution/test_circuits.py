"""Circuits (`featvis.circuits`, `featvis.contributions`): a unit built by hand from two earlier units,
+2 x unit 3 and -1.5 x unit 5, is found through the weights and through gradient x activation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import featvis

from conftest import assert_untouched, snapshot


class Wired(nn.Module):
    """conv1 (3 -> 8, 3x3) -> bn1 -> act1 (ReLU) -> `between` -> conv2 (8 -> 4, 1x1) -> head.

    conv2's unit 0 is set by hand to 2 x unit 3 - 1.5 x unit 5 of its input and nothing else;
    conv1's weights are small and its biases 1, so its units are about 1 everywhere (and the
    ReLU passes them). `between` is an identity (a direct path: the weights apply) or a 2x2
    max pool (not elementwise: gradient x activation must be used)."""

    def __init__(self, pool: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU()
        self.between = nn.MaxPool2d(2) if pool else nn.Identity()
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv1.weight.mul_(0.05)
            self.conv1.bias.fill_(1.0)
            self.conv2.weight.zero_()
            self.conv2.weight[0, 3] = 2.0
            self.conv2.weight[0, 5] = -1.5

    def forward(self, x):
        x = self.conv2(self.between(self.act1(self.bn1(self.conv1(x)))))
        return self.head(x.mean((2, 3)))


def wired(pool: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return Wired(pool).eval()


def images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).random((n, 16, 16, 3)).astype(np.float32)


COMMON = {"input_range": (0.0, 1.0), "size": 16}


def names_and_signs(found) -> list[tuple[int, int]]:
    return [(c.unit, c.sign) for c in found]


def test_the_weights_name_the_two_units_with_their_signs_and_sizes_in_order():
    """Through act1 and the identity, conv2 reads act1 directly: its weights are the answer, +2 then -1.5."""
    model = wired()
    before = snapshot(model)
    found = featvis.circuits(model, "conv2", 0, "act1", k=2, **COMMON)
    assert names_and_signs(found) == [(3, 1), (5, -1)]
    assert [c.contribution for c in found] == [2.0, -1.5]
    assert all(c.method.startswith("weights") for c in found)
    full = featvis.contributions(model, "conv2", 0, "act1", **COMMON)
    assert np.array_equal(np.nonzero(full.values)[0], [3, 5]) and full.values.shape == (8,)
    assert_untouched(model, before)


def test_a_batch_norm_between_is_folded_in_and_an_activation_stated():
    """From conv1, the path runs through bn1 (a scale per channel: folded in) and act1 (stated)."""
    model = wired()
    with torch.no_grad():
        model.bn1.weight.fill_(1.0)
        model.bn1.running_var.fill_(4.0 - model.bn1.eps)  # scale 1 / 2
    found = featvis.circuits(model, "conv2", 0, "conv1", k=2, **COMMON)
    assert names_and_signs(found) == [(3, 1), (5, -1)]
    assert [c.contribution for c in found] == pytest.approx([1.0, -0.75])
    assert "bn1 scale folded in" in found[0].method and "act1" in found[0].method


def test_data_do_not_change_a_weight_path():
    assert featvis.circuits(wired(), "conv2", 0, "act1", k=2, data=images(), input_range=(0.0, 1.0)) == (
        featvis.circuits(wired(), "conv2", 0, "act1", k=2, **COMMON)
    )


@pytest.mark.parametrize("data", [None, "images"])
def test_gradient_times_activation_finds_them_past_a_pooling(data):
    """With a max pool between, conv2's unit 0 is 2 x pool(a3) - 1.5 x pool(a5): gradient x activation
    summed over positions is 2 x mean(pool(a3)) and -1.5 x mean(pool(a5)), with every act1 unit
    about 1 (conv1's small weights, biases 1, bn1 nearly the identity): about +2 and -1.5, and 0
    for the others, over the given images or over the unit's own optimized image."""
    model = wired(pool=True)
    before = snapshot(model)
    given = images() if data else None
    found = featvis.circuits(model, "conv2", 0, "act1", k=3, data=given, max_iter=16, **COMMON)
    assert names_and_signs(found[:2]) == [(3, 1), (5, -1)]
    assert found[0].contribution == pytest.approx(2.0, rel=0.1)
    assert found[1].contribution == pytest.approx(-1.5, rel=0.1)
    assert found[2].contribution == 0 and found[2].sign == 0
    assert all(c.method.startswith("gradient x activation") for c in found)
    assert ("3 image(s)" if data else "optimized image") in found[0].method
    with pytest.raises(featvis.FeatvisValueError, match="method"):
        featvis.circuits(model, "conv2", 0, "act1", method="weights", **COMMON)
    assert_untouched(model, before)


def test_the_gradient_can_be_asked_for_on_a_direct_path_and_agrees():
    found = featvis.circuits(wired(), "conv2", 0, "act1", k=2, data=images(), method="gradient", **COMMON)
    assert names_and_signs(found) == [(3, 1), (5, -1)]
    assert found[0].contribution == pytest.approx(2.0, rel=0.1)
    assert found[0].method == "gradient x activation over 3 image(s)"


def test_a_linear_unit_and_a_prepared_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        model[3].weight.zero_()
        model[3].weight[2, 1] = -3.0
        model[3].weight[2, 4] = 0.5
    with featvis.PreparedModel(model, input_range=(0.0, 1.0)) as prepared:
        found = featvis.circuits(prepared, "3", 2, "1", k=2, size=4)
    assert names_and_signs(found) == [(1, -1), (4, 1)]
    assert [c.contribution for c in found] == [-3.0, 0.5]


@pytest.mark.parametrize(
    ("args", "options", "error", "named"),
    [
        (("nope", 0, "act1"), {}, featvis.LayerNotFoundError, "layer='nope'"),
        (("conv2", 0, "nope"), {}, featvis.LayerNotFoundError, "earlier_layer='nope'"),
        (("conv1", 0, "conv2"), {}, featvis.FeatvisValueError, "earlier_layer="),
        (("conv2", 0, "conv2"), {}, featvis.FeatvisValueError, "earlier_layer="),
        (("conv2", 4, "act1"), {}, featvis.FeatvisValueError, "unit="),
        (("conv2", -1, "act1"), {}, featvis.FeatvisValueError, "unit="),
        (("conv2", "0", "act1"), {}, featvis.FeatvisValueError, "unit="),
        (("conv2", 0, "act1"), {"k": 0}, featvis.FeatvisValueError, "k="),
        (("conv2", 0, "act1"), {"method": "magic"}, featvis.FeatvisValueError, "method="),
        (("conv2", 0, "act1"), {"data": "missing.png"}, featvis.FeatvisError, r"\bdata\b"),
        (("conv2", 0, "act1"), {"colour": 1}, featvis.FeatvisTypeError, "colour"),
    ],
)
def test_bad_input_is_named_and_the_model_is_untouched(args, options, error, named):
    model = wired()
    before = snapshot(model)
    with pytest.raises(error, match=named):
        featvis.circuits(model, *args, **{**COMMON, **options})
    assert_untouched(model, before)


class PaddedConv(nn.Conv2d):
    """A conv with its padding as a child module, as EfficientNet-Lite's Conv2dStaticSamePadding."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.static_padding = nn.ZeroPad2d(1)

    def forward(self, x):
        return super().forward(self.static_padding(x))


def test_a_conv_with_its_own_padding_module_and_a_kernel_summed_over_space():
    """conv2 is 3x3 with its padding as a child; its weights on units 3 and 5 sum to +2 and -1.5."""
    model = wired()
    model.conv2 = PaddedConv(8, 4, 3)
    with torch.no_grad():
        model.conv2.weight.zero_()
        model.conv2.weight[0, 3] = 2.0 / 9
        model.conv2.weight[0, 5] = torch.tensor([[-1.5, 0, 0], [0, 0, 0], [0, 0, 0]])
    found = featvis.circuits(model.eval(), "conv2", 0, "act1", k=2, **COMMON)
    assert names_and_signs(found) == [(3, 1), (5, -1)]
    assert [c.contribution for c in found] == pytest.approx([2.0, -1.5])
    assert found[0].method == "weights (between taken as the identity)"  # the padding is the conv's own
