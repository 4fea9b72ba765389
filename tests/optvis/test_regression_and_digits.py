"""The seed's regression and digits scenarios on models trained in seconds."""

import pytest
import torch

import featvis

from conftest import assert_untouched, snapshot
from toy_models import counting_settings, digit_settings, disk_images, train_digits_cnn, train_disk_counter


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
    kwargs = counting_settings(seed[0])
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
            image = featvis.visualize_activation(model, "softmax", digit, **digit_settings(digit))
        with torch.no_grad():
            predicted = model(torch.tensor(image).permute(2, 0, 1)[None]).argmax().item()
        hits += predicted == digit
    assert hits >= 9
