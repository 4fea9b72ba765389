"""The seed's regression and digits scenarios on models trained in seconds."""

import pytest
import torch

import featvis

from conftest import assert_untouched, snapshot
from toy_models import disk_images, train_digits_cnn, train_disk_counter


@pytest.fixture(scope="module")
def counter():
    return train_disk_counter(seed=0)


def test_counter_learned_to_count(counter):
    images, counts = disk_images(256, seed=99)
    with torch.no_grad():
        error = (counter(images)[:, 0] - counts).abs().mean().item()
    assert error < 0.6


def _count(model, image):
    with torch.no_grad():
        return model(torch.tensor(image).permute(2, 0, 1)[None].float())[0, 0].item()


def test_regression_output_rises_by_default_and_falls_with_negate(counter):
    before = snapshot(counter)
    seed, _ = disk_images(1, seed=5)
    kwargs = dict(
        channels=1,
        input_range=(0.0, 1.0),
        seed_input=seed[0],
        max_iter=60,
        seed=0,
        method="pixel",
        tv_weight=0.1,
    )
    start = _count(counter, seed[0].permute(1, 2, 0).numpy())
    up = featvis.visualize_activation(counter, "head", 0, **kwargs)
    down = featvis.visualize_activation(counter, "head", 0, grad_modifier="negate", **kwargs)
    assert _count(counter, up) > start + 1.0
    assert _count(counter, down) < start - 1.0
    assert_untouched(counter, before)


def test_digit_visualization_is_classified_as_that_digit():
    model = train_digits_cnn(seed=0)
    hits = 0
    for digit in range(10):
        with pytest.warns(featvis.FeatvisWarning, match="softmax"):
            image = featvis.visualize_activation(
                model,
                "softmax",
                digit,
                channels=1,
                size=8,
                input_range=(0.0, 1.0),
                max_iter=64,
                seed=digit,
                method="pixel",
                input_modifiers=[],
                tv_weight=0.05,
            )
        with torch.no_grad():
            predicted = model(torch.tensor(image).permute(2, 0, 1)[None]).argmax().item()
        hits += predicted == digit
    assert hits >= 9
