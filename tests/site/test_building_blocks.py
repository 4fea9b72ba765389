"""Building blocks on a model whose answer is known: two regions of the image, each made of its
own channel pattern, one pushing the class up and the other down."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import featvis

from conftest import assert_untouched, snapshot

PATTERNS = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.0, 0.5]])  # left region's, right region's


def two_region_model() -> nn.Module:
    """A 1x1 conv turns red into pattern 0 and blue into pattern 1; class 0's logit is
    channel 0 minus channel 1 (averaged over space), class 1's the opposite."""
    conv = nn.Conv2d(3, 4, 1, bias=False)
    head = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.stack([PATTERNS[0], torch.zeros(4), PATTERNS[1]], 1)[..., None, None])
        head.weight.copy_(torch.tensor([[1.0, -1.0, 0.0, 0.0], [-1.0, 1.0, 0.0, 0.0]]))
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def two_region_image() -> np.ndarray:
    image = np.zeros((16, 16, 3), np.float32)
    image[:, :8, 0] = 0.9  # red on the left
    image[:, 8:, 2] = 0.6  # blue on the right
    return image


def test_the_groups_are_the_two_regions_with_their_patterns_and_signs():
    model = two_region_model()
    before = snapshot(model)
    blocks = featvis.building_blocks(
        model, "1", two_region_image(), k=2, class_index=0, input_range=(0.0, 1.0), max_iter=4
    )
    left, right = blocks.maps  # sorted by attribution: the left region pushes class 0 up
    assert left[:, :8].mean() > 5 * left[:, 8:].mean() and right[:, 8:].mean() > 5 * right[:, :8].mean()
    cosine = F.normalize(blocks.directions, dim=1) @ F.normalize(PATTERNS, dim=1).T
    assert cosine[0, 0] > 0.99 and cosine[1, 1] > 0.99
    assert blocks.attribution[0] > 0 > blocks.attribution[1]
    # first order is exact for this linear head: the groups' attributions add up to the logit
    with torch.no_grad():
        logit = model(torch.from_numpy(two_region_image()).permute(2, 0, 1)[None])[0, 0]
    assert blocks.attribution.sum() == pytest.approx(float(logit), rel=1e-3)
    assert blocks.icons.shape == (2, 16, 16, 3) and blocks.figure.ndim == 3
    assert_untouched(model, before)


def test_the_other_class_reverses_the_signs_and_bad_input_is_named():
    model = two_region_model()
    before = snapshot(model)
    blocks = featvis.building_blocks(
        model, "1", two_region_image(), k=2, class_index=1, input_range=(0.0, 1.0), max_iter=2
    )
    assert blocks.maps[0][:, 8:].mean() > blocks.maps[0][:, :8].mean()  # now the right region leads
    for options, argument in [(dict(k=0), "k"), (dict(k=500), "k"), (dict(class_index=7), "class_index")]:
        with pytest.raises(featvis.FeatvisError, match=argument):
            featvis.building_blocks(
                model, "1", two_region_image(), input_range=(0.0, 1.0), max_iter=1, **options
            )
    with pytest.raises(featvis.FeatvisError, match="layer"):
        featvis.building_blocks(model, "4", two_region_image(), input_range=(0.0, 1.0), max_iter=1)
    assert_untouched(model, before)
