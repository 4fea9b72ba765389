"""Every loss term's value, as the optimization records it, equals its formula on the model's activations.

The check goes through the public entry point: the history of step 1 holds each term's
batch mean on the images a callback receives at step 1, and the test recomputes the
activations from those images with the model itself.
"""

import pytest
import torch
import torch.nn.functional as F

import featvis
from featvis.losses import (
    ActivationMaximization,
    UnitPerImage,
    channel,
    class_logit,
    direction,
    diversity,
    neuron,
)
from featvis.regularizers import TotalVariation

from conftest import make_tiny

SIZE = 12  # not 16, act2's channel count, so that a mix-up of axes shows


def _first_step(model, loss, batch_size=1, views=1, input_modifiers=()):
    seen = []
    start = torch.rand(batch_size, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch_size))
    result = featvis.visualize_activation_with_losses(
        model,
        loss,
        seed_input=start,  # a random start: activations that vary over space and between images
        batch_size=batch_size,
        size=SIZE,
        max_iter=2,
        views=views,
        input_modifiers=list(input_modifiers),
        input_range=(0.0, 1.0),
        seed=0,
        progress=False,
        image_ema=None,
        callbacks=[lambda step, terms, images: seen.append(images.clone())],
        return_result=True,
    )
    return {name: values[0] for name, values in result.history.items()}, seen[0]


def _acts(model, x):
    """act2 and fc outputs of TinyNet, computed by hand."""
    with torch.no_grad():
        act2 = F.relu(_conv2(model, x))
        fc = model.fc(model.bn(act2).mean(dim=(2, 3)))
    return act2, fc


def _conv2(model, x):
    """conv2's output (before its ReLU: no dead zeros that would hide a wrong position)."""
    with torch.no_grad():
        return model.conv2(F.relu(model.conv1(x)))


def test_unit_losses_equal_their_formulas():
    model = make_tiny()
    v = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 0.0, 0.0, 1.0] + [0.0] * 8)
    loss = (
        channel("act2", 3)
        + 2 * neuron("conv2", 5)
        + 0.5 * neuron("conv2", 6, x=2, y=9)
        + direction("conv2", v)
        + class_logit("fc", 7)
        + 0.1 * TotalVariation()
    )
    history, images = _first_step(model, loss)
    act2, fc = _acts(model, images)
    conv2 = _conv2(model, images)
    expected = {
        "channel": -act2[:, 3].mean(),
        "neuron": -conv2[:, 5, SIZE // 2, SIZE // 2].mean(),  # the center by default
        "neuron[1]": -conv2[:, 6, 9, 2].mean(),  # y is the row, x the column
        "direction": -(conv2 * (v / v.norm()).view(1, -1, 1, 1)).sum(1).mean(),
        "class_logit": -fc[:, 7].mean(),
    }
    # the positions and axes matter: other positions of the same channels give other values
    assert (
        abs(conv2[0, 5, 6, 6] - conv2[0, 5, 4, 6]) > 1e-3
        and abs(conv2[0, 6, 9, 2] - conv2[0, 6, 2, 9]) > 1e-3
    )
    for name, value in expected.items():
        assert history[name] == pytest.approx(value.item(), rel=1e-4, abs=1e-6), name
    weights = {
        "channel": 1,
        "neuron": 2,
        "neuron[1]": 0.5,
        "direction": 1,
        "class_logit": 1,
        "TotalVariation": 0.1,
    }
    total = sum(w * history[name] for name, w in weights.items())
    assert history["total"] == pytest.approx(total, rel=1e-4, abs=1e-6)


def test_batch_losses_give_each_image_its_own_value():
    model = make_tiny()
    loss = (
        UnitPerImage("act2", [1, 4, 9])
        + ActivationMaximization("fc", [2, 3], batch=[1, 2])
        + class_logit("fc", 5, batch=2)
        + channel("act2", 3, batch=0)
    )
    history, images = _first_step(model, loss, batch_size=3)
    act2, fc = _acts(model, images)
    per_unit = -torch.stack([act2[0, 1].mean(), act2[1, 4].mean(), act2[2, 9].mean()])
    assert history["UnitPerImage"] == pytest.approx(per_unit.mean().item(), rel=1e-4)
    restricted = -fc[:, [2, 3]].mean(1) * torch.tensor([0.0, 1.0, 1.0])  # image 0 is left out: 0
    assert history["ActivationMaximization"] == pytest.approx(restricted.mean().item(), rel=1e-4)
    assert history["class_logit"] == pytest.approx(-fc[2, 5].item() / 3, rel=1e-4)  # image 2 only
    assert history["channel"] == pytest.approx(-act2[0, 3].mean().item() / 3, rel=1e-4)  # image 0 only


def test_diversity_is_the_mean_gram_cosine_similarity_to_the_other_images():
    model = make_tiny()
    history, images = _first_step(model, channel("act2", 0) + diversity("act2"), batch_size=3)
    act2, _ = _acts(model, images)
    flat = act2.flatten(2)
    grams = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
    similarity = grams @ grams.T
    others = [(similarity[i].sum() - similarity[i, i]) / 2 for i in range(3)]
    assert history["diversity"] == pytest.approx(torch.stack(others).mean().item(), rel=1e-4)
    assert 0 < history["diversity"] <= 1
    alone, _ = _first_step(model, channel("act2", 0) + diversity("act2"), batch_size=1)
    assert alone["diversity"] == 0  # one image has no other to differ from
    pair, images = _first_step(model, channel("act2", 0) + diversity("act2"), batch_size=2)
    act2, _ = _acts(model, images)
    flat = act2.flatten(2)
    grams = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
    assert pair["diversity"] == pytest.approx((grams[0] @ grams[1]).item(), rel=1e-4)  # each to the other


def test_a_neuron_must_lie_inside_the_map():
    model = make_tiny()
    for x, y in [(SIZE, 0), (0, SIZE), (-1, 0)]:
        with pytest.raises(featvis.FeatvisValueError, match="x, y"):
            _first_step(model, neuron("act2", 0, x=x, y=y))
    with pytest.raises(
        featvis.FeatvisValueError, match=r"^index=-1 is not allowed: expected unit indices >= 0"
    ):
        neuron("act2", -1)
    corner, images = _first_step(model, neuron("conv2", 4, x=SIZE - 1, y=SIZE - 1))
    assert corner["neuron"] == pytest.approx(-_conv2(model, images)[0, 4, -1, -1].item(), rel=1e-4, abs=1e-6)


def test_units_of_a_dense_layer_one_per_image():
    model = make_tiny()
    history, images = _first_step(model, UnitPerImage("fc", [3, 8]), batch_size=2)
    _, fc = _acts(model, images)
    assert history["UnitPerImage"] == pytest.approx(-(fc[0, 3] + fc[1, 8]).item() / 2, rel=1e-4)


def test_views_of_one_image_are_averaged_into_its_value():
    model = make_tiny()

    def scale_views(x):  # rows are image 0's views, then image 1's: view k of each is scaled by 1 + k
        views = torch.tensor([1.0, 2.0, 3.0]).repeat(x.shape[0] // 3)
        return x * views.view(-1, 1, 1, 1) / 3

    history, images = _first_step(
        model, UnitPerImage("act2", [2, 5]), batch_size=2, views=3, input_modifiers=[scale_views]
    )
    values = []
    for i, unit in enumerate([2, 5]):
        rows = torch.stack([images[i] * s / 3 for s in (1.0, 2.0, 3.0)])
        act2, _ = _acts(model, rows)
        values.append(-act2[:, unit].mean())  # mean over space, then over the image's 3 views
    assert history["UnitPerImage"] == pytest.approx(torch.stack(values).mean().item(), rel=1e-4)


def test_direction_is_scale_invariant_and_per_image():
    model = make_tiny()
    v = torch.zeros(16)
    v[[2, 7]] = torch.tensor([0.6, -0.8])  # a unit vector
    unit, images = _first_step(model, direction("conv2", v) + diversity("act2"), batch_size=2)
    conv2 = _conv2(model, images)
    per_image = -(conv2 * v.view(1, -1, 1, 1)).sum(1).flatten(1).mean(1)
    assert abs(per_image[0] - per_image[1]) > 1e-4  # two images, two values: not one shared mean
    assert unit["direction"] == pytest.approx(per_image.mean().item(), rel=1e-4)
    scaled, _ = _first_step(
        model, direction("conv2", (10 * v).double().numpy()) + diversity("act2"), batch_size=2
    )
    assert scaled["direction"] == pytest.approx(unit["direction"], rel=1e-5)
    ints = [0] * 16
    ints[2], ints[7] = 3, -4  # an int vector works too: the same direction
    as_ints, _ = _first_step(model, direction("conv2", ints) + diversity("act2"), batch_size=2)
    assert as_ints["direction"] == pytest.approx(unit["direction"], rel=1e-5)
    for bad in (torch.zeros(16), torch.full((16,), float("nan")), [1.0, float("inf")]):
        with pytest.raises(featvis.FeatvisValueError, match="vector"):
            direction("act2", bad)


def test_loss_arithmetic_builds_the_weights_it_says():
    a, b = channel("act2", 1), neuron("act2", 2)
    assert [w for _, w in (a / 4 - 3 * b).terms] == [0.25, -3.0]
    assert [w for _, w in (0 + a).terms] == [1.0] and (a + 0) is a
    assert [w for _, w in (-(a - b)).terms] == [-1.0, 1.0]
    with pytest.raises(TypeError):
        a / 0  # noqa: B018
    with pytest.raises(featvis.FeatvisTypeError, match="^other has type str"):
        a + "loss"  # noqa: B018
    with pytest.raises(featvis.FeatvisTypeError, match="^other has type int"):
        a + 1  # noqa: B018  only 0 (what sum() starts from) adds as nothing
    with pytest.raises(featvis.FeatvisTypeError, match="^other has type str"):
        a - "loss"  # noqa: B018

    def bright(ctx):
        return -ctx.images.mean(dim=(1, 2, 3))

    with pytest.raises(featvis.FeatvisTypeError, match="^other has type int"):
        1 - a  # noqa: B018  a number on the left (Loss.__rsub__) is refused the same way
    mixed = bright - 2 * a  # a plain function on the left: Loss.__rsub__
    assert [(t.name, w) for t, w in mixed.terms] == [("bright", 1.0), ("channel", -2.0)]
    assert (a + neuron("fc", 0) - channel("conv1", 2)).layers() == ("act2", "fc", "conv1")
    assert repr(0.5 * a - b) == "0.5 * channel + -1 * neuron"


def test_a_bad_loss_in_a_list_of_pairs_is_named_as_losses():
    with pytest.raises(featvis.FeatvisTypeError, match="^losses has type str"):
        featvis.visualize_activation_with_losses(make_tiny(), [(channel("act2", 1), 1.0), ("act2", 1.0)])


class Tokens(torch.nn.Module):
    """A patch embedding that hands on (N, tokens, channels), as a vision transformer's blocks do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.embed = torch.nn.Conv2d(3, 6, 4, stride=4)
        self.tokens = torch.nn.Identity()
        self.fc = torch.nn.Linear(6, 2)

    def forward(self, x):
        tokens = self.tokens(self.embed(x).flatten(2).transpose(1, 2))
        return self.fc(tokens.mean(1))


def test_units_of_token_outputs_are_averaged_over_the_tokens():
    """UnitPerImage on (N, tokens, channels) with channel_axis=-1: each image's unit, mean over tokens."""
    model = Tokens().eval()
    history, images = _first_step(model, UnitPerImage("tokens", [1, 4], channel_axis=-1), batch_size=2)
    with torch.no_grad():
        tokens = model.embed(images).flatten(2).transpose(1, 2)  # (2, 9, 6)
    per_image = -torch.stack([tokens[0, :, 1].mean(), tokens[1, :, 4].mean()])
    assert history["UnitPerImage"] == pytest.approx(per_image.mean().item(), rel=1e-4)
    # one value per image, not one per token: the total is the term's, not 9 times it
    assert history["total"] == pytest.approx(per_image.mean().item(), rel=1e-4)


@pytest.mark.parametrize("make", [ActivationMaximization, UnitPerImage])
def test_a_unit_axis_and_a_different_channel_axis_are_refused_and_channel_axis_reads_back(make):
    with pytest.raises(featvis.FeatvisValueError, match="^channel_axis=2"):
        make("fc", [0], unit_axis=1, channel_axis=2)
    assert make("fc", [0], channel_axis=-1).channel_axis == make("fc", [0], unit_axis=-1).unit_axis == -1
