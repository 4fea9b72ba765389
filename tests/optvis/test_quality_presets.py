"""Quality presets (``quality="preview" | "fast" | "best"``), Adam's betas and learning-rate schedules."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

import featvis
from featvis.cli import main
from featvis.errors import FeatvisTypeError, FeatvisValueError
from featvis.optimizer import FROM_QUALITY, QUALITY, Settings, warmup_cosine_lr
from featvis.params import CoarseToFineImage, FourierImage
from featvis.prepared import CONVENTIONS

from conftest import assert_untouched, snapshot


@pytest.mark.parametrize("quality", list(QUALITY))
def test_each_preset_runs_the_passes_it_announces(tiny, quality):
    preset = {**dict(max_iter=Settings.max_iter, views=Settings.views), **QUALITY[quality]}
    batches: list[int] = []  # what the model is shown at each step, seen by a plain input modifier

    def record(images):
        batches.append(images.shape[0])
        return images

    featvis.visualize_activation(
        tiny, "fc", 1, quality=quality, input_modifiers=[record], size=32, input_range=(0, 1), seed=0
    )
    assert batches == [preset["views"]] * preset["max_iter"]


def test_fast_is_the_default_and_options_beside_a_preset_win(tiny):
    assert Settings.take({"quality": "fast"}) == Settings() == Settings.take({})
    fast, best = Settings(), Settings.take({"quality": "best"})
    assert (fast.max_iter, fast.views, fast.method, fast.betas) == (128, 1, "coarse_to_fine", (0.3, 0.999))
    assert (best.max_iter, best.views, best.method, best.betas) == (128, 4, "fourier", (0.9, 0.999))
    preview = Settings.take({"quality": "preview"})
    assert (preview.backprop_modifier, fast.backprop_modifier, best.backprop_modifier) == (
        None,
        "leaky",
        "leaky",
    )
    settings = Settings.take({"quality": "preview", "max_iter": 5, "views": 3})
    assert (settings.max_iter, settings.views) == (5, 3)


def test_the_class_score_rises_at_every_preset(tiny):
    with torch.no_grad():
        start = tiny(torch.rand(1, 3, 32, 32) * 255)[0, 3].item()
    for quality in QUALITY:
        image = featvis.visualize_activation(tiny, "fc", 3, quality=quality, size=32, seed=0, progress=False)
        with torch.no_grad():
            end = tiny(torch.tensor(image).permute(2, 0, 1)[None].float())[0, 3].item()
        assert end > start + 1.0, quality


@pytest.mark.parametrize("quality", ["quick", None, 3])
def test_an_unknown_preset_is_refused_naming_the_presets_and_the_model_is_untouched(tiny, quality):
    before = snapshot(tiny)
    with pytest.raises(FeatvisValueError, match="quality.*'preview', 'fast', 'best'"):
        featvis.visualize_activation(tiny, "fc", 1, quality=quality, size=32, input_range=(0, 1))
    assert_untouched(tiny, before)


def test_settings_take_refuses_an_unknown_option_and_leaves_the_allowed_ones():
    """`Settings.take` (public: a caller's own entry point builds its settings with it)."""
    with pytest.raises(FeatvisTypeError, match="'max_iters'.*close matches: max_iter"):
        Settings.take({"max_iters": 3})
    options = {"size": 32, "max_iter": 5}
    assert Settings.take(options, allowed=["size"]).max_iter == 5 and options == {"size": 32}


@pytest.mark.parametrize(
    "function",
    [featvis.visualize_activation, featvis.visualize_activation_with_losses, featvis.visualize_layer],
)
def test_help_shows_every_option_and_a_preset_fills_only_the_options_not_given(function):
    parameters = inspect.signature(function).parameters
    assert not [p for p in parameters.values() if p.kind is p.VAR_KEYWORD]
    assert {*Settings.names(), *CONVENTIONS, "quality"} <= set(parameters)
    preset = {name for options in QUALITY.values() for name in options}
    for field in dataclasses.fields(Settings):
        expected = FROM_QUALITY if field.name in preset else field.default
        assert parameters[field.name].default == expected, field.name
    assert "max_iter: 'int | FromQuality' = <the quality's>" in str(inspect.signature(function))


def test_a_misspelled_quality_keyword_suggests_it(tiny):
    with pytest.raises(FeatvisTypeError, match="close matches: quality"):
        featvis.visualize_activation(tiny, "fc", 1, qualty="fast", size=32, input_range=(0, 1))


def test_the_cli_takes_a_preset_and_steps_beside_it(tmp_path, monkeypatch):
    from featvis import visualization

    calls: list[dict] = []
    real = visualization.visualize_activation
    monkeypatch.setattr(
        visualization, "visualize_activation", lambda *a, **k: calls.append(k) or real(*a, **k)
    )
    out = tmp_path / "unit.png"
    args = ["activation", "--model", "conftest:make_tiny", "--preprocess", "none", "--layer", "fc"]
    args += ["--filter", "2", "--size", "32", "--quality", "preview", "--steps", "6", "--out", str(out)]
    main(args)
    assert calls[0]["quality"] == "preview" and calls[0]["max_iter"] == 6 and "views" not in calls[0]
    assert "method" not in calls[0] and "backprop_modifier" not in calls[0]  # the preset's
    assert out.stat().st_size > 0
    main([*args, "--method", "pixel", "--backprop-modifier", "none"])
    assert calls[1]["method"] == "pixel" and calls[1]["backprop_modifier"] is None


def test_a_schedule_that_stops_the_steps_freezes_the_image(tiny):
    options = dict(size=32, input_range=(0, 1), seed=0, progress=False, image_ema=None)
    one = featvis.visualize_activation(tiny, "fc", 1, max_iter=1, **options)
    frozen = featvis.visualize_activation(
        tiny, "fc", 1, max_iter=6, lr_schedule=lambda step, steps: 1.0 if step == 0 else 0.0, **options
    )
    moving = featvis.visualize_activation(tiny, "fc", 1, max_iter=6, **options)
    assert np.array_equal(one, frozen)
    assert not np.array_equal(one, moving)


def test_the_cosine_schedule_warms_up_then_decays_to_its_floor():
    factors = [warmup_cosine_lr(step, 100) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert factors[-1] == pytest.approx(0.05, abs=0.01)
    # a short run warms up over one step: the full rate from the first step on, then the decay
    assert [warmup_cosine_lr(step, 10) for step in (0, 1)] == [1.0, 1.0]


@pytest.mark.parametrize("schedule", ["linear", 3])
def test_an_unknown_schedule_is_refused_naming_the_choices(tiny, schedule):
    before = snapshot(tiny)
    with pytest.raises((FeatvisValueError, FeatvisTypeError), match="lr_schedule"):
        featvis.visualize_activation(tiny, "fc", 1, lr_schedule=schedule, size=32, input_range=(0, 1))
    assert_untouched(tiny, before)


def test_coarse_to_fine_moves_only_low_frequencies_first_then_all_of_them():
    torch.manual_seed(0)
    param = CoarseToFineImage(1, 3, (32, 32), opening=0.5, start=0.1)
    # a random weighting: a plain sum's gradient at the Nyquist row can cancel to exactly 0
    weights = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    moved = []
    for step in (0, 8, 16):  # of 32 steps: closed, half open, open
        param.at_step(step, 32)
        param.spectrum.grad = None
        (param() * weights).sum().backward()
        moved.append(param.spectrum.grad.abs().sum((1, -1))[0] > 0)  # per frequency, any channel
    low, high = moved[0][0, 1], moved[0][16, 16]  # the lowest frequencies, the highest
    assert low and not high
    assert moved[0].float().mean() < moved[1].float().mean() < moved[2].float().mean() == 1.0


def test_coarse_to_fine_keeps_a_given_start_image_whole_and_draws_as_fourier():
    seed_image = torch.rand(1, 3, 32, 32) * 0.8 + 0.1
    ctf, plain = (
        CoarseToFineImage(1, 3, (32, 32), init=seed_image),
        FourierImage(1, 3, (32, 32), init=seed_image),
    )
    ctf.at_step(0, 128)  # only the lowest frequencies move, but every one is in the image
    torch.testing.assert_close(ctf(), plain(), atol=1e-5, rtol=0)
    torch.testing.assert_close(ctf(), seed_image, atol=1e-4, rtol=0)


def test_every_step_tells_the_parameterization_where_it_is(tiny):
    seen: list[tuple[int, int]] = []

    class Told(FourierImage):
        def at_step(self, step, steps):
            seen.append((step, steps))

    featvis.visualize_activation(tiny, "fc", 1, method=Told, max_iter=5, size=32, input_range=(0, 1), seed=0)
    assert seen == [(step, 5) for step in range(5)]


def test_betas_reach_adam_and_best_is_the_old_default(tiny, monkeypatch):
    made: list[tuple] = []
    real = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *a, **k: made.append(k["betas"]) or real(*a, **k))
    options = dict(size=32, input_range=(0, 1), seed=0, max_iter=3, progress=False)
    featvis.visualize_activation(tiny, "fc", 1, **options)
    featvis.visualize_activation(tiny, "fc", 1, quality="best", **options)
    featvis.visualize_activation(tiny, "fc", 1, betas=(0.5, 0.9), **options)
    assert made == [(0.3, 0.999), (0.9, 0.999), (0.5, 0.9)]


@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.3,), "fast", (0.3, -0.1), (0.3, float("nan"))])
def test_bad_betas_are_refused_by_name_and_the_model_is_untouched(tiny, betas):
    before = snapshot(tiny)
    with pytest.raises((FeatvisValueError, FeatvisTypeError), match=r"\bbetas\b"):
        featvis.visualize_activation(tiny, "fc", 1, betas=betas, size=32, input_range=(0, 1))
    assert_untouched(tiny, before)


def test_betas_may_be_zero_no_momentum():
    assert Settings(betas=(0.0, 0.0)).betas == (0.0, 0.0)


@pytest.mark.parametrize(
    "option", [dict(opening=-0.5), dict(start="low"), dict(opening=float("inf")), dict(start=-0.5)]
)
def test_bad_coarse_to_fine_options_are_refused_by_name(option):
    with pytest.raises((FeatvisValueError, FeatvisTypeError), match=rf"\b{next(iter(option))}\b"):
        CoarseToFineImage(1, 3, (32, 32), **option)


def test_coarse_to_fine_takes_fourier_arguments_by_name_and_names_a_misspelled_one():
    assert "decay" in inspect.signature(CoarseToFineImage).parameters
    assert CoarseToFineImage(1, 3, (8, 8), decorrelate=False).color.equal(torch.eye(3))
    with pytest.raises(FeatvisTypeError, match="'openning'; close matches: opening"):
        CoarseToFineImage(1, 3, (8, 8), openning=0.3)


def _moving(param: CoarseToFineImage, step: int, steps: int) -> torch.Tensor:
    """Which frequencies (rows x columns of the rfft grid) get a gradient at this step."""
    param.at_step(step, steps)
    param.spectrum.grad = None
    (
        param()
        * torch.randn(param.batch, param.channels, *param.size, generator=torch.Generator().manual_seed(0))
    ).sum().backward()
    return param.spectrum.grad.abs().sum(-1)[0, 0] > 0


def _radius(size: int) -> torch.Tensor:
    """Radial frequency on the 2-D rfft grid as a share of the highest (the corner, 0.5 x 0.5)."""
    fy, fx = torch.fft.fftfreq(size)[:, None], torch.fft.rfftfreq(size)[None, :]
    return torch.sqrt(fy**2 + fx**2) / (0.5 * 2**0.5)


def test_coarse_to_fine_opens_linearly_from_its_start_radius():
    param = CoarseToFineImage(1, 3, (32, 32), opening=0.5, start=0.1)
    # step 8 of 32, opening over the first 16: halfway, cutoff 0.1 + 0.9 * 0.5
    assert torch.equal(_moving(param, 8, 32), _radius(32) <= 0.55)


def test_coarse_to_fine_by_default_opens_over_the_first_half_of_the_steps():
    param = CoarseToFineImage(1, 3, (32, 32))
    assert torch.equal(_moving(param, 0, 128), _radius(32) <= 0.1)
    assert not _moving(param, 63, 128).all() and _moving(param, 64, 128).all()


def test_coarse_to_fine_edge_settings():
    only_mean = _moving(CoarseToFineImage(1, 3, (32, 32), start=0.0), 0, 10)
    assert only_mean[0, 0] and only_mean.sum() == 1  # start 0: the mean alone moves first
    assert _moving(CoarseToFineImage(1, 3, (32, 32), opening=0), 0, 10).all()  # opening 0: a Fourier image
