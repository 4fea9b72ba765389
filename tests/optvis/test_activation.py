"""visualize_activation and its research form on tiny models."""

import numpy as np
import pytest
import torch

import featvis
from featvis.losses import ActivationMaximization, FunctionLoss
from featvis.regularizers import LpNorm, TotalVariation

from conftest import assert_untouched, snapshot

FAST = dict(size=32, max_iter=40, seed=0, progress=False)


def _mean_activation(model, layer, units, image):
    out = featvis.activations_reached(model, layer, units, image[None], input_range=(0, 255))
    return float(out[0])


def test_target_channel_activation_rises_several_fold(tiny):
    start = torch.full((32, 32, 3), 127.0).numpy() + np.random.default_rng(0).normal(0, 10, (32, 32, 3))
    start = start.clip(0, 255)
    before = _mean_activation(tiny, "act2", [5], start)
    # 160 passes, as 40 steps of the 0.1 default's four views had; the default now has one
    image = featvis.visualize_activation(tiny, "act2", 5, tv_weight=0, **dict(FAST, max_iter=160))
    after = _mean_activation(tiny, "act2", [5], image)
    assert after > 3 * max(before, 1e-3)


@pytest.mark.parametrize("method", ["pixel", "fourier", "maco"])
def test_every_method_raises_a_class_logit(tiny, method):
    x = torch.rand(1, 3, 32, 32) * 255
    with torch.no_grad():
        start = tiny(x)[0, 3].item()
    image = featvis.visualize_activation(tiny, "fc", 3, method=method, **FAST)
    with torch.no_grad():
        end = tiny(torch.tensor(image).permute(2, 0, 1)[None].float())[0, 3].item()
    assert end > start + 1.0


def test_returns_uint8_hwc_for_int_range_and_float_otherwise(tiny):
    image = featvis.visualize_activation(tiny, "fc", 1, **FAST)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    floats = featvis.visualize_activation(tiny, "fc", 1, input_range=(0.0, 1.0), **FAST)
    assert floats.dtype == np.float32 and 0 <= floats.min() and floats.max() <= 1


def test_same_seed_same_image_and_other_seed_differs(tiny):
    a = featvis.visualize_activation(tiny, "fc", 2, **FAST)
    b = featvis.visualize_activation(tiny, "fc", 2, **FAST)
    c = featvis.visualize_activation(tiny, "fc", 2, **{**FAST, "seed": 1})
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_several_filter_indices_raise_all_of_them_together(tiny):
    def pair_score(image):
        with torch.no_grad():
            return tiny(torch.as_tensor(image).permute(2, 0, 1)[None].float())[0, [1, 7]].sum().item()

    start = np.random.default_rng(0).uniform(0, 255, (32, 32, 3))
    together = featvis.visualize_activation(tiny, "fc", [1, 7], **FAST)
    only_one = featvis.visualize_activation(tiny, "fc", 1, **FAST)
    assert pair_score(together) > pair_score(start) + 1.0
    assert pair_score(together) > pair_score(only_one)


def test_filter_indices_none_means_all_units(tiny):
    image = featvis.visualize_activation(tiny, "act1", None, **FAST)
    assert image.shape == (32, 32, 3)
    gray = np.full((32, 32, 3), 127.0)
    units = list(range(8))  # act1 has 8 channels: their mean is what None maximizes
    reached = featvis.activations_reached(tiny, "act1", units, np.repeat(image[None], 8, 0))
    start = featvis.activations_reached(tiny, "act1", units, np.repeat(gray[None], 8, 0))
    assert reached.mean() > 2 * start.mean() + 1.0


def test_raising_tv_weight_lowers_total_variation(tiny):
    def tv_of(weight):
        result = featvis.visualize_activation(
            tiny, "fc", 4, tv_weight=weight, method="pixel", return_result=True, **FAST
        )
        return result.history["TotalVariation"][-1]

    assert tv_of(50.0) < 0.5 * tv_of(0.01)


def test_raising_lp_weight_lowers_lp_norm(tiny):
    def lp_of(weight):
        result = featvis.visualize_activation(
            tiny, "fc", 4, lp_norm_weight=weight, return_result=True, **FAST
        )
        return result.history["LpNorm"][-1]

    assert lp_of(20.0) < lp_of(0.01)


def test_zero_weight_switches_a_term_off_without_evaluating_it(tiny):
    def explode(ctx):
        raise AssertionError("a zero-weight term was evaluated")

    losses = [(ActivationMaximization("fc", 0), 1.0), (FunctionLoss(explode, layers=["conv1"]), 0.0)]
    result = featvis.visualize_activation_with_losses(tiny, losses, return_result=True, **FAST)
    assert "function" not in result.history


def test_with_losses_accepts_pairs_objects_and_plain_functions(tiny):
    def brightness(ctx):
        return -ctx.images.mean(dim=(1, 2, 3))

    image = featvis.visualize_activation_with_losses(
        tiny, [(brightness, 1.0), (TotalVariation(), 0.1)], **FAST
    )
    assert image.mean() > 170  # starts near 127
    loss = ActivationMaximization("fc", 0) + 0.1 * TotalVariation() + 0.0 * LpNorm()
    raised = featvis.visualize_activation_with_losses(tiny, loss, **FAST)
    assert raised.shape == (32, 32, 3)

    def logit0(image):
        with torch.no_grad():
            return tiny(torch.as_tensor(image).permute(2, 0, 1)[None].float())[0, 0].item()

    assert logit0(raised) > logit0(np.full((32, 32, 3), 127.0)) + 1.0  # the object form raised unit 0


def test_verbose_prints_every_term_and_total(tiny, capsys):
    featvis.visualize_activation(tiny, "fc", 0, verbose=True, lp_norm_weight=0.1, **{**FAST, "max_iter": 3})
    lines = capsys.readouterr().out.strip().splitlines()
    assert "units [0] on axis 1 (10 units) of (N, 10)" in lines[0]  # where the units lie, once
    assert len([line for line in lines if line.startswith("step ")]) == 3
    for name in ("ActivationMaximization", "TotalVariation", "LpNorm", "total"):
        assert name in lines[-1]


def test_callbacks_receive_step_terms_and_image(tiny):
    seen = []
    featvis.visualize_activation(
        tiny, "fc", 0, callbacks=[lambda s, t, img: seen.append((s, t, img.shape))], **FAST
    )
    assert [s for s, _, _ in seen] == list(range(FAST["max_iter"]))
    assert {"ActivationMaximization", "TotalVariation", "total"} <= set(seen[0][1])
    assert seen[0][2] == (1, 3, 32, 32)


@pytest.mark.parametrize("method", ["pixel", "fourier"])
def test_callbacks_see_the_images_each_step_scored_before_its_update(tiny, method):
    start = np.full((32, 32, 3), 0.25, np.float32)
    seen = []
    featvis.visualize_activation(
        tiny,
        "fc",
        0,
        seed_input=start,
        method=method,
        input_range=(0.0, 1.0),
        callbacks=[lambda s, t, images: seen.append(images.clone())],
        **{**FAST, "max_iter": 3},
    )
    assert torch.allclose(seen[0], torch.full((1, 3, 32, 32), 0.25), atol=1e-5)  # the start, not moved
    assert not torch.equal(seen[0], seen[1])


def test_seed_input_is_the_starting_point(tiny):
    seed = np.full((32, 32, 3), 200, np.uint8)
    image = featvis.visualize_activation(
        tiny, "fc", 0, seed_input=seed, method="pixel", input_modifiers=[], **{**FAST, "max_iter": 1}, lr=1e-6
    )
    assert np.abs(image.astype(int) - 200).max() <= 1


def test_softmax_output_is_visualized_before_the_softmax(functional_net):
    before = snapshot(functional_net)
    with pytest.warns(featvis.FeatvisWarning, match="softmax"):
        result = featvis.visualize_activation(functional_net, "", 6, return_result=True, **FAST)
    history = result.history["ActivationMaximization"]
    logits = featvis.visualize_activation(functional_net, "fc", 6, return_result=True, **FAST)
    assert history == logits.history["ActivationMaximization"]  # the logit, not the probability
    assert -history[-1] > -history[0] + 3
    assert_untouched(functional_net, before)


def test_module_called_twice_needs_a_call_index(shared_net):
    with pytest.raises(featvis.LayerNotFoundError, match=r"runs 2 times.*'act#0', 'act#1'"):
        featvis.visualize_activation(shared_net, "act", 0, **FAST)
    first = featvis.visualize_activation(shared_net, "act#0", 0, **FAST)
    second = featvis.visualize_activation(shared_net, "act#1", 0, **FAST)
    assert not np.array_equal(first, second)


def test_layer_by_name_index_and_module_agree(tiny):
    names = featvis.layer_names(tiny, input_shape=(3, 32, 32))
    assert names == ["conv1", "act1", "conv2", "act2", "bn", "fc"]
    assert featvis.find_layer_idx(tiny, "fc", input_shape=(3, 32, 32)) == 5
    by_name = featvis.visualize_activation(tiny, "fc", 1, **FAST)
    assert np.array_equal(by_name, featvis.visualize_activation(tiny, -1, 1, **FAST))
    assert np.array_equal(by_name, featvis.visualize_activation(tiny, tiny.fc, 1, **FAST))


def test_unknown_layer_lists_close_matches(tiny):
    with pytest.raises(featvis.LayerNotFoundError, match="close matches: conv2, conv1"):
        featvis.visualize_activation(tiny, "conv", 0, **FAST)


def test_an_unknown_layer_with_no_close_match_lists_the_layers_there_are(tiny):
    with pytest.raises(featvis.LayerNotFoundError, match="layer='zzz'") as err:
        featvis.visualize_activation(tiny, "zzz", 0, **FAST)
    assert all(name in str(err.value) for name in ("conv1", "act2", "bn", "fc"))
    with pytest.raises(featvis.LayerNotFoundError, match="layer='zzz'") as err:
        featvis.find_layer_idx(tiny, "zzz", input_shape=(3, 32, 32))
    assert all(name in str(err.value) for name in ("conv1", "act2", "bn", "fc"))
    deep = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(30)]).eval()
    for call in (
        lambda: featvis.visualize_activation(deep, "zzz", 0, input_range=(0.0, 1.0), size=(4,), max_iter=1),
        lambda: featvis.find_layer_idx(deep, "zzz", input_shape=(4,)),
    ):
        with pytest.raises(featvis.LayerNotFoundError) as err:
            call()
        message = str(err.value)
        assert "0, 1, 2, 3" in message and "29" not in message and "featvis.layer_names(" in message


def test_dense_and_other_rank_outputs(tiny):
    class Seq1d(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(3, 4, 3)

        def forward(self, x):
            return self.conv(x.flatten(2))

    torch.manual_seed(0)
    model = Seq1d()
    # its first convolution is a Conv1d, so an int size would mean a signal: two axes say "images"
    image = featvis.visualize_activation(model, "conv", 2, **{**FAST, "size": (32, 32)})
    assert image.shape == (32, 32, 3)

    def channel_means(image):  # (N, C, L) output: channel 2, averaged over the sequence
        with torch.no_grad():
            return model(torch.as_tensor(image).permute(2, 0, 1)[None].float())[0].mean(1)

    gain = channel_means(image) - channel_means(np.full((32, 32, 3), 127.0))
    assert gain[2] > 1.0 and gain.argmax() == 2


def test_batched_layer_visualization_gives_one_image_per_unit(tiny):
    images = featvis.visualize_layer(
        tiny, "conv2", units=[0, 3, 5], size=32, max_iter=80, seed=0, progress=False
    )
    assert images.shape == (3, 32, 32, 3)
    for i, unit in enumerate([0, 3, 5]):
        on_each_image = featvis.activations_reached(tiny, "conv2", [unit] * 3, images)
        assert on_each_image.argmax() == i  # each unit responds most to its own image


def test_jitter_rolls_each_image_by_its_own_offset():
    from featvis.input_modifiers import Jitter

    images = torch.rand(6, 3, 10, 12)
    out = Jitter(3)(images, featvis.rng.Streams(range(6)))
    shifts = []
    for image, rolled in zip(images, out):
        match = [
            (y, x)
            for y in range(-3, 4)
            for x in range(-3, 4)
            if torch.equal(torch.roll(image, (y, x), (-2, -1)), rolled)
        ]
        assert len(match) == 1
        shifts.append(match[0])
    assert len(set(shifts)) > 1  # not one shift shared by the batch


class Total(torch.nn.Module):
    """One value per image: the sum of its channels' means."""

    def forward(self, x):
        return x.mean(dim=(2, 3)).sum(1)


def test_every_unit_of_a_layer_with_one_value_per_image_is_one_image():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), Total()).eval()
    images = featvis.visualize_layer(model, "1", size=8, max_iter=2, views=1, seed=0, input_range=(0.0, 1.0))
    assert images.shape == (1, 8, 8, 3)


def test_a_pixel_image_starts_gray_with_a_little_noise():
    from featvis.params import PixelImage

    start = PixelImage(2, 3, (32, 32), streams=featvis.rng.Streams([0, 1]))().detach()
    assert abs(float(start.mean()) - 0.5) < 0.01
    assert 0.09 < float(start.std()) < 0.11


def test_progress_shows_the_steps_out_of_all(tiny, capsys):
    featvis.visualize_activation(
        tiny, "conv2", 1, size=16, max_iter=3, views=1, seed=0, progress=True, input_range=(0.0, 1.0)
    )
    assert "0/3" in capsys.readouterr().err  # the bar counts the steps out of all 3 from its first draw
    featvis.visualize_activation(
        tiny, "conv2", 1, size=16, max_iter=3, views=1, seed=0, progress=False, input_range=(0.0, 1.0)
    )
    assert capsys.readouterr().err == ""
