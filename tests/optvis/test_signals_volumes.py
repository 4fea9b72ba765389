"""1-D signals and 3-D volumes through the same API: a wave classifier trained here, and a 3-D conv net."""

import numpy as np
import pytest
import torch
from torch import nn

import featvis

from conftest import assert_untouched, snapshot
from toy_models import WaveNet, train_wave_net, waves

SIGNAL = dict(input_range=(-1.0, 1.0))
QUIET = dict(SIGNAL, progress=False)


@pytest.fixture(scope="module")
def wave_net():
    return train_wave_net(seed=0)


def harmonic_fraction(signal: np.ndarray) -> float:
    """The share of a signal's (non-DC) spectral energy outside its fundamental (+-1 bin): 0 for a sine,
    0.19 for a square wave (its odd harmonics)."""
    power = np.abs(np.fft.rfft(signal - signal.mean()))[1:] ** 2
    fundamental = int(np.argmax(power))
    return float(1 - power[max(0, fundamental - 1) : fundamental + 2].sum() / power.sum())


def test_the_wave_net_tells_sine_from_square(wave_net):
    signals, labels = waves(256, seed=9)
    with torch.no_grad():
        assert (wave_net(signals).argmax(1) == labels).float().mean() > 0.95


def test_class_signal_of_square_looks_like_a_square_wave(wave_net, tmp_path):
    before = snapshot(wave_net)
    square = featvis.visualize_activation(wave_net, "head", 1, size=128, max_iter=64, seed=0, **QUIET)
    assert square.shape == (128, 1) and square.dtype == np.float32
    t = np.arange(128) / 128
    assert harmonic_fraction(np.sin(2 * np.pi * 5 * t)) < 0.01  # the measure: a sine has no harmonics
    assert harmonic_fraction(square[:, 0]) > 0.15  # ... a square wave has its odd ones: 0.19
    levels = np.abs(square[:, 0]) > 0.7 * np.abs(square).max()
    assert levels.mean() > 0.8  # it sits at two levels, as a square wave does
    assert featvis.save_signal(square, tmp_path / "square.png").stat().st_size > 1000
    assert_untouched(wave_net, before)


def test_saliency_of_a_localized_square_segment_peaks_on_it(wave_net):
    t = np.arange(128) / 128
    signal = 0.8 * np.sin(2 * np.pi * 5 * t + 0.3)
    signal[64:96] = 0.8 * np.sign(signal[64:96])  # a square-wave segment in a sine
    signal = signal[None].astype(np.float32)  # (C, L)
    saliency = featvis.visualize_saliency(wave_net, "head", 1, signal, **SIGNAL)[0]
    assert saliency.shape == (128,)
    assert 64 <= int(np.argmax(saliency)) < 96
    assert saliency[64:96].sum() / saliency.sum() > 0.5  # a quarter of the signal holds most of the map
    cam = featvis.visualize_cam(wave_net, "head", 1, signal, **SIGNAL)[0]
    assert cam.shape == (128,) and 64 <= int(np.argmax(cam)) < 96


def test_size_may_be_an_int_or_a_one_tuple_and_the_result_seeds_another_run(wave_net):
    a = featvis.visualize_activation(wave_net, "features.2", 3, size=(64,), max_iter=3, seed=1, **QUIET)
    b = featvis.visualize_activation(wave_net, "features.2", 3, size=64, max_iter=3, seed=1, **QUIET)
    np.testing.assert_array_equal(a, b)
    assert featvis.get_num_filters(wave_net, "features.2", input_shape=(1, 64)) == 16
    again = featvis.visualize_activation(wave_net, "head", 1, seed_input=a, max_iter=2, seed=0, **QUIET)
    assert again.shape == (64, 1)
    layer = featvis.visualize_layer(
        wave_net, "features.0", units=[0, 1, 2], size=32, max_iter=2, seed=0, **SIGNAL
    )
    assert layer.shape == (3, 32, 1)


class Volume(nn.Module):
    """A 3-D conv net on (N, 2, D, H, W) volumes."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(2, 4, 3, padding=1), nn.GELU(), nn.Conv3d(4, 6, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3, 4)))


def test_a_3d_conv_net_runs_every_call_and_is_left_as_it_was(tmp_path):
    torch.manual_seed(0)
    net = Volume().train()
    before = snapshot(net)
    kw = dict(input_range=(0.0, 1.0), progress=False, seed=0, max_iter=3)
    image = featvis.visualize_activation(net, "fc", 1, size=(6, 10, 12), **kw)
    assert image.shape == (6, 10, 12, 2)
    assert featvis.visualize_activation(net, "fc", 1, size=8, method="pixel", **kw).shape == (8, 8, 8, 2)
    layer = featvis.visualize_layer(net, "features.2", units=[0, 5], size=6, **kw)
    assert layer.shape == (2, 6, 6, 6, 2)
    reached = featvis.activations_reached(net, "features.2", [0, 5], layer, input_range=(0.0, 1.0))
    assert reached.shape == (2,)
    volume = np.random.default_rng(0).random((2, 6, 10, 12)).astype(np.float32)
    for maps in (
        featvis.visualize_saliency(net, "fc", 1, volume, input_range=(0.0, 1.0)),
        featvis.visualize_saliency(net, "fc", 1, volume, input_range=(0.0, 1.0), backprop_modifier="guided"),
        featvis.visualize_saliency(net, "fc", 1, volume, input_range=(0.0, 1.0), smooth_samples=2),
        featvis.visualize_cam(net, "fc", 1, volume, input_range=(0.0, 1.0)),
        featvis.visualize_cam(net, "fc", 1, volume, input_range=(0.0, 1.0), method="scorecam"),
        featvis.visualize_guided_cam(net, "fc", 1, volume, input_range=(0.0, 1.0)),
    ):
        assert maps.shape == (1, 6, 10, 12) and np.isfinite(maps).all() and maps.max() == pytest.approx(1)
    path = featvis.save_volume(image[..., :1], tmp_path / "slices.png")
    assert path.stat().st_size > 100
    assert_untouched(net, before)


@pytest.mark.parametrize(
    ("modifier", "shape"),
    [
        (featvis.Jitter(3), (2, 1, 32)),
        (featvis.Jitter(2), (2, 1, 6, 8, 8)),
        (featvis.input_modifiers.RandomZoom((0.5, 0.9)), (2, 1, 32)),
        (featvis.input_modifiers.RandomZoom((0.5, 0.9)), (2, 1, 6, 8, 8)),
        (featvis.input_modifiers.RandomFlip(1.0), (2, 1, 32)),
        (featvis.input_modifiers.Pad(2), (2, 1, 6, 8, 8)),
    ],
)
def test_transforms_and_regularizers_work_on_signals_and_volumes(modifier, shape):
    images = torch.rand(shape)
    streams = featvis.rng.Streams([1, 2])
    out = modifier(images, streams)
    grown = 4 if isinstance(modifier, featvis.input_modifiers.Pad) else 0
    assert out.shape == (*shape[:2], *[s + grown for s in shape[2:]])
    if isinstance(modifier, featvis.Jitter):  # a roll: the same values, moved
        torch.testing.assert_close(out.sort(-1).values.sum(), images.sort(-1).values.sum())
    if isinstance(modifier, featvis.input_modifiers.RandomFlip):
        torch.testing.assert_close(out, images.flip(-1))
    ctx = featvis.losses.LossContext(images=images, views=1)
    tv = featvis.TotalVariation()(ctx)
    assert tv.shape == (2,) and (tv > 0).all()
    flat = featvis.losses.LossContext(images=torch.full(shape, 0.3), views=1)
    assert featvis.TotalVariation()(flat).abs().max() == 0


def test_fourier_parameterization_of_signals_and_volumes_inverts_a_seed():
    for size in [(64,), (4, 6, 8)]:
        seed = 0.2 + 0.6 * torch.rand(1, 2, *size)
        param = featvis.params.FourierImage(1, 2, size, init=seed)
        torch.testing.assert_close(param(), seed, atol=1e-4, rtol=1e-4)


def test_layer_names_of_a_signal_net_and_a_volume_net_every_one_a_layer():
    signal_net = WaveNet().eval()  # untrained: only its layers count here
    volume_net = Volume().eval()
    before = snapshot(signal_net), snapshot(volume_net)
    names = ["features.0", "features.1", "features.2", "features.3"]
    assert featvis.layer_names(signal_net) == [*names, "head"]  # probed on 128-sample signals
    assert featvis.layer_names(signal_net, input_shape=(1, 40)) == [*names, "head"]
    assert featvis.layer_names(volume_net) == [*names, "fc"]  # on 32^3 volumes
    assert featvis.layer_names(volume_net, (2, 4, 6, 8)) == [*names, "fc"]
    assert featvis.find_layer_idx(volume_net, "fc", (2, 4, 6, 8)) == 4
    assert featvis.get_num_filters(signal_net, -2, input_shape=(1, 40)) == 16  # an int from the listing
    with pytest.raises(featvis.ModelError, match=r"input_shape=") as err:
        featvis.layer_names(signal_net, input_shape=(1, 8, 8))  # an image's shape for a signal net
    assert "8 x 8" in str(err.value)
    with pytest.raises(featvis.FeatvisValueError, match=r"input_shape=\(2, 0, 4\).*positive ints"):
        featvis.layer_names(volume_net, (2, 0, 4))
    assert_untouched(signal_net, before[0])
    assert_untouched(volume_net, before[1])
