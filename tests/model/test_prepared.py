"""One prepared model behind every entry point: probed and folded once, randomness private and per unit."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import featvis
from featvis.input_modifiers import InputModifier

from conftest import assert_untouched, make_tiny, snapshot


class WideNet(nn.Module):
    """A conv layer of 112 channels with a batch norm to fold, then a classifier."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 112, 3, padding=1)
        self.bn = nn.BatchNorm2d(112)
        self.act = nn.ReLU()
        self.fc = nn.Linear(112, 5)

    def forward(self, x):
        x = self.act(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture
def counted(monkeypatch):
    """Count the probes (one forward of every module) and fused copies featvis makes."""
    counts = {"probe": 0, "fold": 0}
    probe, fused_copies = featvis.targets.probe, featvis.fusion.fused_copies

    def counting_probe(*args, **kwargs):
        counts["probe"] += 1
        return probe(*args, **kwargs)

    def counting_fold(*args, **kwargs):
        counts["fold"] += 1
        return fused_copies(*args, **kwargs)

    monkeypatch.setattr(featvis.targets, "probe", counting_probe)
    monkeypatch.setattr(featvis.fusion, "fused_copies", counting_fold)
    return counts


def test_a_whole_layer_in_several_batches_probes_and_folds_once(counted):
    torch.manual_seed(0)
    model = WideNet().eval()
    before = snapshot(model)
    images = featvis.visualize_layer(
        model, "conv", batch_size=40, size=12, max_iter=2, views=1, seed=0, input_range=(0.0, 1.0)
    )
    assert images.shape == (112, 12, 12, 3)
    assert counted == {"probe": 1, "fold": 1}  # 3 batches (38 + 37 + 37), one set-up
    assert_untouched(model, before)


def test_one_grad_cam_and_one_smoothgrad_of_16_samples_probe_once(counted):
    model = make_tiny()
    image = np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    featvis.visualize_cam(model, "fc", 3, image, input_range=(0.0, 1.0))
    assert counted["probe"] == 1
    featvis.visualize_saliency(model, "fc", 3, image, smooth_samples=16, input_range=(0.0, 1.0))
    assert counted["probe"] == 2
    featvis.visualize_guided_cam(model, "fc", 3, image, input_range=(0.0, 1.0))
    assert counted["probe"] == 3


def test_a_prepared_model_serves_many_calls_and_restores_the_model_on_close(counted):
    model = make_tiny()
    model.train()
    before = snapshot(model)
    image = np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    with featvis.PreparedModel(model, input_range=(0.0, 1.0)) as prepared:
        assert not model.training  # featvis runs the model in eval mode, weights frozen
        assert (
            repr(prepared) == "PreparedModel(TinyNet, input_range=(0.0, 1.0), channels=3, device=cpu, open)"
        )
        featvis.visualize_activation(prepared, "conv2", 1, size=32, max_iter=2, views=1, seed=0)
        featvis.visualize_layer(prepared, "conv2", [0, 1], size=32, max_iter=2, views=1, seed=0)
        featvis.visualize_cam(prepared, "fc", 3, image)
        featvis.visualize_saliency(prepared, "fc", 3, image)
    assert counted["probe"] == 1
    assert_untouched(model, before)
    assert model.training
    assert repr(prepared).endswith("device=cpu, closed)")


@pytest.fixture
def built(monkeypatch):
    """Count the `PreparedModel` objects made (by featvis or by the test itself)."""
    count = {"prepared": 0}
    init = featvis.PreparedModel.__init__

    def counting_init(self, *args, **kwargs):
        count["prepared"] += 1
        init(self, *args, **kwargs)

    monkeypatch.setattr(featvis.PreparedModel, "__init__", counting_init)
    return count


PHOTOS = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
QUICK = dict(max_iter=2, views=1, seed=0, progress=False)


def _explain(net: nn.Module) -> np.ndarray:
    """A map of a model without featvis: conv2's first channel on a fixed input."""
    with torch.no_grad():
        x = torch.linspace(0, 1, 3 * 8 * 8).view(1, 3, 8, 8)
        return net.conv2(net.act1(net.conv1(x)))[:, 0].numpy()


WHOLE_CALLS = {
    "dataset_examples": lambda m, out: featvis.dataset_examples(m, ["conv1", "conv2"], PHOTOS, k=2),
    "write_examples": lambda m, out: featvis.gallery.write_examples(m, ["conv2"], PHOTOS, out, k=2),
    "write_gallery": lambda m, out: featvis.gallery.write_gallery(
        m, ["conv1", "conv2"], out, units=[0, 1], size=16, data=PHOTOS, k=2, **QUICK
    ),
    "atlas": lambda m, out: featvis.site.atlas.atlas(
        m, out, ["conv2", "fc"], size=16, batch_size=8, data=PHOTOS, examples=2, **QUICK
    ),
    "deletion": lambda m, out: featvis.metrics.deletion(
        m, "fc", 3, PHOTOS[:2], np.ones((2, 16, 16)), steps=4
    ),
    "insertion": lambda m, out: featvis.metrics.insertion(
        m, "fc", 3, PHOTOS[:2], np.ones((2, 16, 16)), steps=4
    ),
    "randomization_check": lambda m, out: featvis.metrics.randomization_check(
        m, _explain, layers=["conv2", 0], size=16
    ),
    "get_num_filters": lambda m, out: featvis.get_num_filters(m, "conv2", input_shape=(3, 16, 16)),
    "layer_names": lambda m, out: featvis.layer_names(m, input_shape=(3, 16, 16)),
    "activation_atlas": lambda m, out: featvis.activation_atlas(
        m, "conv2", PHOTOS, out=out, grid=2, min_count=1, layout="pca", max_iter=2, batch_size=8
    ),
    "building_blocks": lambda m, out: featvis.building_blocks(m, "act2", PHOTOS[0], k=2, max_iter=2),
    "invert": lambda m, out: featvis.invert(m, "conv1", PHOTOS[0], max_iter=2),
    "circuits": lambda m, out: featvis.circuits(m, "conv2", 0, "conv1", k=2),
    "activation_directions": lambda m, out: featvis.concepts.activation_directions(m, "conv2", PHOTOS, k=2),
    "cav": lambda m, out: featvis.concepts.cav(m, "conv2", PHOTOS[:3], PHOTOS[3:]),
    "tcav": lambda m, out: featvis.concepts.tcav(
        m, "conv2", PHOTOS[:3] // 8, PHOTOS[2:4], 1, random_sets=[PHOTOS[:3], PHOTOS[3:]]
    ),
}


@pytest.mark.parametrize("call", list(WHOLE_CALLS))
def test_a_whole_call_builds_one_prepared_model_and_none_when_given_one(call, built, tmp_path):
    model = make_tiny()
    before = snapshot(model)
    WHOLE_CALLS[call](model, tmp_path / "module")
    assert built["prepared"] == 1  # the atlas, the gallery, the metrics: one for all their parts
    assert_untouched(model, before)
    with featvis.PreparedModel(model) as prepared:
        WHOLE_CALLS[call](prepared, tmp_path / "prepared")
    assert built["prepared"] == 2  # the test's own: the call made none
    assert_untouched(model, before)


def _halve(x: torch.Tensor) -> torch.Tensor:
    return x / 2


IMAGE = np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype(np.float32)
CONFLICTS = {
    "visualize_cam": (
        lambda p: featvis.visualize_cam(p, "fc", 1, IMAGE, input_range=(-1.0, 1.0)),
        r"input_range=\(-1\.0, 1\.0\) differs from the prepared model's input_range=\(0\.0, 1\.0\)",
    ),
    "integrated_gradients": (
        lambda p: featvis.integrated_gradients(
            p, featvis.losses.ActivationMaximization("fc", 1), IMAGE, fuse=False
        ),
        "fuse=False differs from the prepared model's fuse=True",
    ),
    "activation_directions": (
        lambda p: featvis.concepts.activation_directions(p, "conv2", [IMAGE] * 2, channels=1),
        "channels=1 differs from the prepared model's channels=3",
    ),
    "invert": (
        lambda p: featvis.invert(p, "conv2", IMAGE, preprocess=_halve, max_iter=1),
        "preprocess=<function _halve",
    ),
    "prepare: the first of two": (
        lambda p: featvis.prepared.prepare(p, channels=1, preprocess=_halve),
        "^preprocess=<function _halve.* differs from the prepared model's preprocess=None",
    ),
}


@pytest.mark.parametrize("case", CONFLICTS)
def test_a_convention_that_differs_from_the_prepared_models_is_refused_naming_it(case):
    call, message = CONFLICTS[case]
    model = make_tiny()
    before = snapshot(model)
    with featvis.PreparedModel(model, input_range=(0.0, 1.0)) as prepared:
        with pytest.raises(featvis.FeatvisValueError, match=message) as caught:
            call(prepared)
    name = str(caught.value).partition("=")[0]
    assert f"pass {name}= to PreparedModel(...) instead" in str(caught.value)
    assert_untouched(model, before)


def test_conventions_left_at_their_defaults_or_equal_to_the_prepared_models_pass():
    model = make_tiny()
    with featvis.PreparedModel(model, input_range=(0.0, 1.0), preprocess=_halve) as prepared:
        same = dict(input_range=(0, 1), preprocess=_halve, channels=3, device="cpu", fuse=True)
        assert featvis.prepared.prepare(prepared, **same) == (prepared, False)
        assert prepared.conventions["input_range"] == (0.0, 1.0) and prepared.conventions["channels"] == 3
        defaults = featvis.visualize_saliency(prepared, "fc", 1, IMAGE)  # input_range=(0, 255): the default
        given = featvis.visualize_saliency(prepared, "fc", 1, IMAGE, input_range=(0.0, 1.0), device="cpu")
    np.testing.assert_array_equal(defaults, given)


class SharedConv(nn.Module):
    """One conv applied twice (``conv#0``, ``conv#1``), inside a block, then a classifier."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.conv(self.conv(self.block(x))).mean(dim=(2, 3)))


def test_randomization_check_takes_calls_and_ints_on_a_model_or_a_prepared_model():
    torch.manual_seed(0)
    model = SharedConv().eval()
    before = snapshot(model)

    def explain(net):
        return net.block[0].weight.detach()[:, :, 0, 0].numpy()[None]

    def check(given):
        call, block = featvis.metrics.randomization_check(given, explain, layers=["conv#1", "block"], size=16)
        assert call.label == "conv#1" and set(call.parameters) == {"conv.weight", "conv.bias"}
        assert set(block.parameters) == {"block.0.weight", "block.0.bias"}  # nested in the block
        assert block.correlations[0] < 0.9 <= call.correlations[0]  # explain reads block.0 only
        (last,) = featvis.metrics.randomization_check(given, explain, layers=[-1], size=16)
        assert last.label == "fc" and last.randomized == 8

    check(model)
    with featvis.PreparedModel(model, input_range=(0.0, 1.0)) as prepared:
        check(prepared)
    assert_untouched(model, before)


def test_the_cam_command_with_metrics_builds_one_prepared_model(built, tmp_path, capsys):
    from PIL import Image

    from featvis.cli import main

    image = tmp_path / "in.png"
    Image.fromarray(PHOTOS[0]).save(image)
    args = ["cam", "--model", "conftest:make_tiny", "--preprocess", "none", "--layer", "fc", "--filter", "2"]
    main([*args, "--image", str(image), "--size", "16", "--metrics", "--out", str(tmp_path / "map.png")])
    assert "deletion area:" in capsys.readouterr().out
    assert built["prepared"] == 1  # the map, its deletion and its insertion


ENTRY_POINTS = {
    "visualize_activation": lambda m, img: featvis.visualize_activation(m, "conv2", 1, **FAST),
    "visualize_activation_with_losses": lambda m, img: featvis.visualize_activation_with_losses(
        m, featvis.ActivationMaximization("fc", 2), **FAST
    ),
    "visualize_layer": lambda m, img: featvis.visualize_layer(m, "conv2", [0, 1], **FAST),
    "visualize_saliency": lambda m, img: featvis.visualize_saliency(
        m, "fc", 3, img, smooth_samples=3, seed=None, input_range=(0.0, 1.0)
    ),
    "visualize_cam": lambda m, img: featvis.visualize_cam(m, "fc", 3, img, input_range=(0.0, 1.0)),
    "visualize_guided_cam": lambda m, img: featvis.visualize_guided_cam(
        m, "fc", 3, img, input_range=(0.0, 1.0)
    ),
    "input_gradients": lambda m, img: featvis.input_gradients(
        m, featvis.ActivationMaximization("fc", 3), img, input_range=(0.0, 1.0)
    ),
    "activations_reached": lambda m, img: featvis.activations_reached(
        m, "conv2", [1], img[None], input_range=(0.0, 1.0)
    ),
    "layer_names": lambda m, img: featvis.layer_names(m, input_shape=(3, 32, 32)),
    "find_layer_idx": lambda m, img: featvis.find_layer_idx(m, "fc", input_shape=(3, 32, 32)),
}
FAST = dict(size=16, max_iter=3, views=2, seed=None, input_range=(0.0, 1.0))


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_featvis_never_touches_the_global_random_generators(entry):
    model = make_tiny()
    image = np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    ENTRY_POINTS[entry](model, image)
    assert torch.equal(torch.rand(3), expected)


def test_an_image_made_without_a_seed_can_be_made_again_from_the_seed_it_reports():
    model = make_tiny()
    first = featvis.visualize_activation(model, "conv2", 1, return_result=True, **FAST)
    second = featvis.visualize_activation(model, "conv2", 1, return_result=True, **FAST)
    assert first.seed != second.seed  # a fresh seed each time ...
    again = featvis.visualize_activation(
        model, "conv2", 1, return_result=True, **{**FAST, "seed": first.seed}
    )
    assert torch.equal(again.images, first.images)  # ... and the reported one makes the image again


class RecordDraws(InputModifier):
    """A transform that changes nothing and records three random numbers per image."""

    def __init__(self):
        self.draws = []

    def __call__(self, images, streams):
        self.draws.append(streams.uniform(3))
        return images


def test_a_units_random_draws_and_image_depend_only_on_seed_layer_and_unit():
    runs = {}
    for batch_size in (8, 3, 1):
        recorder = RecordDraws()
        result = featvis.visualize_layer(
            make_tiny(),
            "conv2",
            range(8),
            batch_size=batch_size,
            size=24,
            max_iter=6,
            views=2,
            seed=11,
            input_range=(0.0, 1.0),
            input_modifiers=[recorder, *featvis.input_modifiers.standard_transforms()],
            return_result=True,
        )
        steps = 6
        batches = [recorder.draws[i * steps : (i + 1) * steps] for i in range(len(recorder.draws) // steps)]
        # each step's draws (rows: units x 2 views) of every batch, put together per unit
        per_unit = torch.cat([torch.stack(batch, 1) for batch in batches])  # (units*views, steps, 3)
        runs[batch_size] = (result.images, per_unit)
    for batch_size in (3, 1):
        assert torch.equal(runs[batch_size][1], runs[8][1])  # the very same draws
        difference = (runs[batch_size][0] - runs[8][0]).abs().mean().item()
        assert difference < 0.01  # images agree up to the batch's float rounding
    by_layer_index = featvis.visualize_layer(
        make_tiny(),
        featvis.find_layer_idx(make_tiny(), "conv2", input_shape=(3, 24, 24)),
        range(8),
        batch_size=8,
        size=24,
        max_iter=6,
        views=2,
        seed=11,
        input_range=(0.0, 1.0),
        return_result=True,
    )
    again = featvis.visualize_layer(
        make_tiny(),
        "conv2",
        range(8),
        batch_size=8,
        size=24,
        max_iter=6,
        views=2,
        seed=11,
        input_range=(0.0, 1.0),
        return_result=True,
    )
    assert torch.equal(by_layer_index.images, again.images)  # the same batches: bitwise


def test_registries_are_the_one_place_to_add_a_method():
    from featvis.params import PixelImage

    class Gray(PixelImage):
        default_lr = 0.03

    featvis.params.register("gray-test", Gray)
    try:
        assert featvis.Settings(method="gray-test").learning_rate == 0.03
        image = featvis.visualize_activation(make_tiny(), "conv2", 1, method="gray-test", **FAST)
        assert image.shape == (16, 16, 3)
    finally:
        featvis.params.METHODS.unregister("gray-test")
    featvis.attention.register_cam("gradxact-test", lambda a, g: torch.relu((a * g).sum(1)))
    try:
        image = np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32)
        cam = featvis.visualize_cam(
            make_tiny(), "fc", 3, image, method="gradxact-test", input_range=(0.0, 1.0)
        )
        assert cam.shape == (1, 32, 32) and cam.max() == pytest.approx(1.0)
    finally:
        featvis.attention.CAM_METHODS.unregister("gradxact-test")


def test_an_unknown_option_is_named_with_its_close_matches():
    with pytest.raises(featvis.FeatvisTypeError, match="max_iters.*max_iter"):
        featvis.visualize_activation(make_tiny(), "conv2", 1, max_iters=3)


def test_a_model_that_takes_one_input_size_only_is_probed_at_that_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    images = featvis.visualize_layer(model, "0", size=8, max_iter=2, seed=0, input_range=(0.0, 1.0))
    assert images.shape == (4, 8, 8, 1)
    image = featvis.visualize_activation(model, "2", 1, size=8, max_iter=2, seed=0, input_range=(0.0, 1.0))
    assert image.shape == (8, 8, 1)


def _splitmix64(state: int) -> int:
    """The reference SplitMix64 output function (Steele, Lea and Flood 2014), in plain Python."""
    mask = (1 << 64) - 1
    z = state & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_small_draws_are_splitmix64_of_key_and_counter():
    golden = 0x9E3779B97F4A7C15
    streams = featvis.rng.Streams([0, 2**62 + 12345])
    bits = streams.bits(3).tolist()
    assert [b & ((1 << 64) - 1) for b in bits[0]] == [
        0xE220A8397B1DCDAF,
        0x6E789E6AA1B965F4,
        0x06C45D188009454F,
    ]
    assert [b & ((1 << 64) - 1) for b in bits[1]] == [
        _splitmix64(2**62 + 12345 + i * golden) for i in (1, 2, 3)
    ]
    uniform = streams.uniform(4)[1].tolist()  # the top 24 bits of the next four patterns
    assert uniform == [(_splitmix64(2**62 + 12345 + i * golden) >> 40) / 2**24 for i in (4, 5, 6, 7)]


def test_normal_draws_are_box_muller_of_the_patterns_and_standard_normal():
    golden, key = 0x9E3779B97F4A7C15, 777
    expected = []
    for i in (1, 2, 3, 4):
        pattern = _splitmix64(key + i * golden)
        radius = ((pattern >> 40) + 1) / 2**24  # the top 24 bits, in (0, 1]
        angle = (pattern & 0xFFFFFF) / 2**24  # the low 24 bits, in [0, 1)
        expected.append(math.sqrt(-2 * math.log(radius)) * math.cos(2 * math.pi * angle))
    got = featvis.rng.Streams([key]).normal(4)[0].tolist()
    assert got == pytest.approx(expected, abs=1e-5)
    draws = featvis.rng.Streams(range(8)).normal(500).flatten()  # Box-Muller on the hashed patterns
    assert abs(float(draws.mean())) < 0.05 and abs(float(draws.std()) - 1) < 0.05
    assert abs(float((draws < 0).float().mean()) - 0.5) < 0.03
    assert abs(float((draws.abs() < 1).float().mean()) - 0.6827) < 0.03


def test_a_pattern_whose_radius_bits_are_zero_draws_the_largest_finite_normal():
    """Key 5618432's first pattern is 0x6B9D6AD025: its top 24 bits (Box-Muller's radius part) are all
    0. That part is (bits + 1) / 2**24, never 0, so the draw is finite: -2 log(2**-24) under the root."""
    draw = featvis.rng.Streams([5618432]).normal(1)[0, 0].item()
    assert draw == pytest.approx(
        math.sqrt(-2 * math.log(2**-24)) * math.cos(2 * math.pi * 0x6AD025 / 2**24), rel=1e-5
    )
