"""Beyond single units: the Direction objective, directions found in data (PCA, NMF), CAVs and TCAV,
on constructed models whose answers are known: planted directions, stripe-detecting channels and
class logits built to lean on them for or against."""

from __future__ import annotations

import numpy as np
from PIL import Image
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import featvis
from featvis.concepts import CAV, activation_directions, cav, tcav
from featvis.losses import Direction, channel, direction
from featvis.model.prepared import PreparedModel, preparing

from conftest import assert_untouched, loss_values, snapshot

UNIT = dict(input_range=(0, 1))


# -- the Direction objective -------------------------------------------------------------------------


def small_conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
    ).eval()


def test_direction_values_follow_lucid_cosine_weighting_at_a_position_and_per_image():
    model = small_conv_net()
    images = torch.rand(3, 3, 6, 6)
    v = torch.randn(8)
    with preparing(model, **UNIT) as prepared:
        act = prepared.layer_output("3", images)
    unit = v / v.norm()
    dot = (act * unit.view(1, -1, 1, 1)).sum(1)
    cos = dot / (act.norm(dim=1) + 1e-4)
    for power in (0, 1, 2.5):
        expected = -(dot * cos.clamp(min=0.1) ** power).flatten(1).mean(1)
        assert torch.allclose(
            loss_values(model, Direction("3", v, cossim_pow=power), images), expected, atol=1e-5
        )
    at = loss_values(model, Direction("3", 5 * v, cossim_pow=2, x=4, y=1), images)
    assert torch.allclose(at, -(dot * cos.clamp(min=0.1) ** 2)[:, 1, 4], atol=1e-5)
    only = loss_values(model, Direction("3", v, cossim_pow=0, batch=[1]), images)
    assert only[0] == 0 and only[2] == 0 and only[1] == pytest.approx(-dot[1].mean().item(), abs=1e-5)
    # the lowercase objective is the bare projection, as before; a CAV-like object gives its vector
    assert torch.allclose(loss_values(model, direction("3", v), images), -dot.flatten(1).mean(1), atol=1e-5)
    holder = CAV("3", unit, 1.0, None, 2, 2)
    assert torch.allclose(
        loss_values(model, Direction("3", holder), images), loss_values(model, Direction("3", v), images)
    )
    assert torch.allclose(
        loss_values(model, holder.objective(cossim_pow=0), images), -dot.flatten(1).mean(1), atol=1e-5
    )


def test_direction_objective_grows_the_direction_not_just_its_largest_unit():
    """Maximizing the direction raises the projection on it and ends with activations closer in angle to
    it than maximizing its most-weighted unit alone does."""
    model = small_conv_net()
    v = torch.zeros(8)
    v[[2, 5, 6]] = torch.tensor([0.7, 0.5, 0.5])
    v = v / v.norm()
    options = dict(
        size=16,
        seed=0,
        max_iter=40,
        lr=0.1,
        method="pixel",
        input_modifiers=[],
        backprop_modifier=None,
        image_ema=None,
        progress=False,
        return_result=True,
        **UNIT,
    )

    def projection_and_cosine(loss, steps=40):
        images = featvis.visualize_activation_with_losses(
            model, loss, **{**options, "max_iter": steps}
        ).images
        with preparing(model, **UNIT) as prepared:
            act = prepared.layer_output("3", images)[0].flatten(1)  # (channels, positions)
        projection = v @ act
        return projection.mean().item(), (projection / (act.norm(dim=0) + 1e-4)).mean().item()

    start = projection_and_cosine(Direction("3", v), steps=1)
    grown = projection_and_cosine(Direction("3", v))
    one_unit = projection_and_cosine(channel("3", 2))
    assert grown[0] > 1.1 * start[0]
    assert grown[1] > start[1] + 0.02  # (0.87 -> 0.90 at 40 steps)
    assert grown[1] > one_unit[1] + 0.04  # (the unit alone: 0.84, its projection higher: 0.21 vs 0.19)


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: Direction("3", torch.zeros(8)), "vector"),
        (lambda: Direction("3", torch.ones(3, 8)), "vector"),
        (lambda: Direction("3", "abc"), "vector"),
        (lambda: Direction("3", torch.ones(8), cossim_pow=-1), "cossim_pow"),
        (lambda: Direction("3", torch.ones(8), cossim_pow=True), "cossim_pow"),
        (lambda: Direction("3", torch.ones(8), x=-1), "x"),
        (lambda: Direction("3", torch.ones(8), x=1.5), "x"),
        (lambda: Direction("3", torch.ones(8), y=2), "x"),
        (lambda: Direction("3", torch.ones(8), batch=[-1]), "batch"),
    ],
)
def test_direction_bad_arguments_are_named(make, argument):
    with pytest.raises(featvis.FeatvisError, match=argument):
        make()


def test_direction_at_a_position_outside_the_map_or_of_the_wrong_length_is_named():
    model = small_conv_net()
    images = torch.rand(1, 3, 6, 6)
    with pytest.raises(featvis.FeatvisValueError, match=r"x, y.*inside"):
        loss_values(model, Direction("3", torch.ones(8), x=6, y=0), images)
    with pytest.raises(featvis.FeatvisValueError, match="x=.*2 coordinate"):
        loss_values(model, Direction("3", torch.ones(8), x=1), images)
    with pytest.raises(featvis.FeatvisValueError, match="vector.*length 8"):
        loss_values(model, Direction("3", torch.ones(5)), images)


# -- directions from data ----------------------------------------------------------------------------


def planted() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 1x1 conv whose 3 input channels write 3 orthogonal nonnegative directions of its 8 channels,
    images that are random nonnegative mixtures of them (of unequal strength) plus a little noise."""
    weight = torch.zeros(8, 3)
    weight[[0, 1, 2], 0] = torch.tensor([1.0, 0.8, 0.5])
    weight[[3, 4], 1] = torch.tensor([0.6, 1.0])
    weight[[5, 6, 7], 2] = torch.tensor([0.4, 0.9, 0.7])
    weight = weight / weight.norm(dim=0)
    conv = nn.Conv2d(3, 8, 1, bias=False)
    conv.weight.data = weight[:, :, None, None]
    generator = torch.Generator().manual_seed(0)
    mixtures = torch.rand(24, 3, 8, 8, generator=generator) ** 2 * torch.tensor([0.9, 0.55, 0.3]).view(
        1, 3, 1, 1
    )
    images = (mixtures + 0.01 * torch.rand(24, 3, 8, 8, generator=generator)).clamp(0, 1)
    return nn.Sequential(conv, nn.ReLU()).eval(), weight.T, images


@pytest.mark.parametrize("method", ["pca", "nmf"])
def test_pca_and_nmf_recover_planted_directions(method):
    model, directions, images = planted()
    before = snapshot(model)
    found = activation_directions(model, "1", images, k=3, method=method, **UNIT)
    assert_untouched(model, before)
    assert found.vectors.shape == (3, 8) and found.method == method and len(found) == 3
    assert torch.allclose(found.vectors.norm(dim=1), torch.ones(3), atol=1e-5)
    cosines = (directions @ found.vectors.T).abs()
    assert (cosines.max(1).values >= 0.95).all(), cosines
    assert found.samples == 24 * 8 * 8  # each position a sample
    if method == "pca":  # strongest first, in the order of the mixtures' strengths, signed to the mean
        assert torch.equal(cosines.argmax(1), torch.arange(3))
        ratio = found.explained_variance_ratio
        assert (ratio[:-1] >= ratio[1:]).all() and 0.9 < ratio.sum() <= 1
        assert (found.vectors @ found.mean > 0).all()
    else:
        assert found.explained_variance is None and (found.vectors >= 0).all()


def test_directions_read_any_data_featvis_takes_and_subsample(tmp_path):
    model, directions, images = planted()
    tensor = activation_directions(model, "1", images, k=3, **UNIT)
    array = activation_directions(model, "1", images.permute(0, 2, 3, 1).numpy(), k=3, **UNIT)
    assert torch.allclose(tensor.vectors, array.vectors, atol=1e-5)
    for i, image in enumerate(images[:12]):
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.warns(featvis.SkippedImagesWarning, match="notes.txt"):
        folder = activation_directions(model, "1", tmp_path, k=3, size=8, **UNIT)
    assert ((directions @ folder.vectors.T).abs().max(1).values >= 0.95).all()
    per_image = activation_directions(model, "1", images, k=2, reduce="mean", **UNIT)
    assert per_image.samples == 24
    capped = activation_directions(model, "1", images, k=3, max_samples=300, **UNIT)
    assert capped.samples == 300 and ((directions @ capped.vectors.T).abs().max(1).values >= 0.95).all()
    with PreparedModel(model, **UNIT) as prepared:  # a prepared model serves several calls
        shared = activation_directions(prepared, "1", images, k=3)
    assert torch.allclose(shared.vectors, tensor.vectors)
    objective = tensor.objective(0, cossim_pow=2)
    assert isinstance(objective, Direction) and objective.cossim_pow == 2
    assert torch.allclose(objective.vector, tensor.vectors[0])


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        (dict(k=0), "k"),
        (dict(k=9), "k"),
        (dict(method="ica"), "method"),
        (dict(reduce="sum"), "reduce"),
        (dict(max_samples=0), "max_samples"),
        (dict(data="no/such/folder"), "data"),
        (dict(data=[]), "data"),
        (dict(data=42), "data"),
        (dict(layer="nope"), "layer"),
    ],
)
def test_activation_directions_bad_inputs_are_named(options, argument):
    model, _, images = planted()
    before = snapshot(model)
    arguments = dict(layer="1", data=images, k=3) | options
    with pytest.raises(featvis.FeatvisError, match=argument) as info:
        activation_directions(model, arguments.pop("layer"), arguments.pop("data"), **arguments, **UNIT)
    assert (
        "is not allowed" in str(info.value)
        or "has type" in str(info.value)
        or "not a module" in str(info.value)
    )
    assert_untouched(model, before)


def test_nmf_of_negative_activations_says_to_use_pca():
    model, _, images = planted()
    with pytest.raises(featvis.FeatvisValueError, match=r"method='nmf'.*negative"):
        activation_directions(model, "0", images - 0.5, k=3, method="nmf", input_range=(-1, 1))


# -- concepts: CAV and TCAV ----------------------------------------------------------------------------


class StripeNet(nn.Module):
    """conv1 (fixed): channels 0 and 1 see horizontal stripes (vertical differences of either sign), 2 the
    brightness, 3 vertical differences; conv2 1x1: unit 0 = stripes, 1 = brightness over 0.5, 2 = vertical
    edges; class 0's logit rises with the stripe unit, class 1's falls with it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        kernel = torch.zeros(4, 3, 3, 3)
        kernel[0, :, 0, 1], kernel[0, :, 2, 1] = 1 / 3, -1 / 3
        kernel[1] = -kernel[0]
        kernel[2, :, 1, 1] = 1 / 3
        kernel[3, :, 1, 0], kernel[3, :, 1, 2] = 1 / 3, -1 / 3
        self.conv1.weight.data = kernel
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 3, 1)
        self.conv2.weight.data = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])[:, :, None, None]
        self.conv2.bias.data = torch.tensor([0.0, -0.5, 0.0])
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(3, 3)
        self.fc.weight.data = torch.tensor([[2.0, 1.0, 1.0], [-2.0, 1.0, 1.0], [0.0, 2.0, 0.0]])
        self.fc.bias.data.zero_()

    def forward(self, x):
        return self.fc(self.act2(self.conv2(self.act1(self.conv1(x)))).mean((2, 3)))


def smooth(n: int, seed: int) -> torch.Tensor:
    """Random smooth color fields (4x4 noise, upsampled)."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=generator)
    return F.interpolate(low, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)


def striped(n: int, seed: int) -> torch.Tensor:
    """Horizontal stripes of random period, phase and color over a smooth field, mean brightness 0.5."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(32).float()
    out = []
    for _ in range(n):
        period = float(torch.randint(3, 7, (1,), generator=generator))
        phase = float(torch.rand(1, generator=generator)) * 2 * np.pi
        wave = 0.5 * torch.sin(2 * np.pi * rows / period + phase)
        color = torch.rand(3, 1, 1, generator=generator)
        out.append((0.5 + 0.4 * color * wave.view(1, 32, 1)).expand(3, 32, 32))
    return (torch.stack(out) + 0.6 * (smooth(n, seed + 1000) - 0.5)).clamp(0, 1)


@pytest.fixture(scope="module")
def stripe_net():
    return StripeNet().eval()


def test_cav_separates_striped_from_smooth_and_points_to_the_stripe_channels(stripe_net):
    before = snapshot(stripe_net)
    found = cav(stripe_net, "act1", striped(30, 1), smooth(30, 2), **UNIT)
    assert_untouched(stripe_net, before)
    assert found.accuracy >= 0.9
    assert found.vector.shape == (4,) and float(found.vector.norm()) == pytest.approx(1.0, abs=1e-6)
    assert found.vector[0] > 0.2 and found.vector[1] > 0.2  # toward the stripe channels
    assert found.concept_count == 30 and found.random_count == 30
    with preparing(stripe_net, **UNIT) as prepared:  # the classifier takes the layer's activations
        fresh = prepared.layer_output("act1", torch.cat([striped(5, 7), smooth(5, 8)])).mean((2, 3))
    assert (found.classifier.predict(fresh.numpy()) == np.r_[np.ones(5), np.zeros(5)]).mean() >= 0.8
    again = cav(stripe_net, "act1", striped(30, 1), smooth(30, 2), **UNIT)
    assert torch.equal(found.vector, again.vector)  # seeded
    sgd = cav(stripe_net, "act1", striped(30, 1), smooth(30, 2), classifier="sgd", **UNIT)
    assert sgd.accuracy >= 0.8 and float(sgd.vector @ found.vector) > 0.5
    as_loss = Direction("act1", found)  # usable as it is
    assert torch.equal(as_loss.vector, found.vector)


def test_tcav_score_moves_with_how_the_class_depends_on_the_concept(stripe_net):
    before = snapshot(stripe_net)
    concept, images = striped(20, 1), smooth(12, 99)
    randoms = [smooth(16, 10 + i) for i in range(10)]
    with PreparedModel(stripe_net, **UNIT) as prepared:
        rises = tcav(prepared, "act1", concept, images, 0, random_sets=randoms)
        falls = tcav(prepared, "act1", concept, images, 1, random_sets=randoms)
    assert_untouched(stripe_net, before)
    assert rises.score >= 0.9 and rises.significant and rises.p_value < 0.05
    assert falls.score <= 0.1 and falls.significant
    assert len(rises.scores) == len(rises.random_scores) == 10 and len(rises.cavs) == 10
    assert 0.2 < rises.random_scores.mean() < 0.8  # random CAVs: no preference
    assert (rises.accuracies >= 0.8).all() and rises.derivatives.shape == (10, 12)
    assert "TCAV score" in str(rises)


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        (dict(concept_images=[]), "concept_images"),
        (dict(concept_images=torch.rand(1, 3, 32, 32)), "concept_images"),
        (dict(class_images="no/such/folder"), "class_images"),
        (dict(class_index=3), "class_index"),
        (dict(class_index=-1), "class_index"),
        (dict(random_sets=torch.rand(4, 3, 32, 32)), "random_sets"),
        (dict(random_sets=[torch.rand(4, 3, 32, 32)]), "random_sets"),
        (dict(runs=1), "runs"),
        (dict(alpha=1.5), "alpha"),
        (dict(classifier="svm"), "classifier"),
        (dict(hold_out=1.0), "hold_out"),
        (dict(reduce=None), "reduce"),
        (dict(layer="nope"), "layer"),
    ],
)
def test_tcav_bad_inputs_are_named(stripe_net, options, argument):
    before = snapshot(stripe_net)
    arguments = (
        dict(
            layer="act1",
            concept_images=torch.rand(4, 3, 32, 32),
            class_images=torch.rand(3, 3, 32, 32),
            class_index=0,
            random_sets=[torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)],
        )
        | options
    )
    with pytest.raises(featvis.FeatvisError, match=argument):
        tcav(
            stripe_net,
            arguments.pop("layer"),
            arguments.pop("concept_images"),
            arguments.pop("class_images"),
            arguments.pop("class_index"),
            **arguments,
            **UNIT,
        )
    assert_untouched(stripe_net, before)


def test_cav_bad_inputs_are_named_and_a_list_of_files_is_not_random_sets(stripe_net, tmp_path):
    with pytest.raises(featvis.FeatvisError, match="random_images"):
        cav(stripe_net, "act1", torch.rand(4, 3, 32, 32), "no/such/folder", **UNIT)
    with pytest.raises(featvis.FeatvisError, match="classifier"):
        cav(
            stripe_net,
            "act1",
            torch.rand(4, 3, 32, 32),
            torch.rand(4, 3, 32, 32),
            classifier=object(),
            **UNIT,
        )
    files = []
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    with pytest.raises(featvis.FeatvisValueError, match=r"random_sets=.*not one list of files"):
        tcav(
            stripe_net,
            "act1",
            torch.rand(4, 3, 32, 32),
            torch.rand(3, 3, 32, 32),
            0,
            random_sets=files,
            **UNIT,
        )


def test_a_training_model_stays_in_training_mode(stripe_net):
    model = StripeNet().train()
    before = snapshot(model)
    cav(model, "act1", striped(6, 1), smooth(6, 2), **UNIT)
    activation_directions(model, "act1", smooth(4, 3), k=2, **UNIT)
    assert_untouched(model, before)
    assert model.training
