"""Attention maps where the common case hides a mistake: a skip connection after the CAM layer, a
module called twice, a stride that does not divide the image, a baseline that cannot be read."""

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import featvis
from featvis.losses import ActivationMaximization

UNIT = dict(input_range=(0.0, 1.0))  # images in [0, 1], given to the model as they are


class ConcatSkip(nn.Module):
    """stem -> act -> head over cat([stem output, act output]): the layers after `act` also read
    what ran before it, as in a U-Net or a DenseNet block."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        stem = self.stem(x)
        return self.fc(F.relu(self.head(torch.cat([stem, self.act(stem)], 1))).mean(dim=(2, 3)))

    def score(self, stem, acts, unit):
        return self.fc(F.relu(self.head(torch.cat([stem, acts], 1))).mean(dim=(2, 3)))[0, unit]


def _normalized(cam: torch.Tensor) -> np.ndarray:
    return ((cam - cam.min()) / (cam.max() - cam.min())).numpy()


def test_ablation_cam_is_its_definition_when_the_layers_after_also_read_the_layers_before():
    model = ConcatSkip().eval()
    image = np.random.default_rng(1).uniform(0, 1, (64, 64, 3)).astype(np.float32)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        stem = model.stem(x)
        acts = F.relu(stem)
        y = model.score(stem, acts, 1)
        drops = []
        for k in range(acts.shape[1]):  # channel k of `act` zeroed, the skip left as it is
            ablated = acts.clone()
            ablated[:, k] = 0
            drops.append((y - model.score(stem, ablated, 1)) / y)
        expected = F.relu((torch.stack(drops)[:, None, None] * acts[0]).sum(0))
    assert expected.max() > expected.min()
    for batch_size in (64, 3):  # all ablations in one forward, and in chunks of 3
        got = featvis.visualize_cam(
            model,
            "fc",
            1,
            image,
            method="ablationcam",
            penultimate_layer="act",
            batch_size=batch_size,
            **UNIT,
        )[0]
        np.testing.assert_allclose(got, _normalized(expected), atol=1e-4)


def test_grad_cam_at_each_call_of_a_module_called_twice(shared_net):
    """`act#0` is the first call of the shared ReLU: its own output and the score's gradient there."""
    image = np.random.default_rng(2).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    first = F.relu(shared_net.conv1(x)).detach().requires_grad_(True)
    second = F.relu(shared_net.conv2(first))
    score = shared_net.fc(second.mean(dim=(2, 3)))[0, 2]
    grads = torch.autograd.grad(score, [first, second])
    for layer, acts, grad in (("act#0", first, grads[0]), ("act#1", second, grads[1])):
        expected = F.relu((grad.mean(dim=(2, 3), keepdim=True) * acts).sum(1))[0].detach()
        got = featvis.visualize_cam(shared_net, "fc", 2, image, penultimate_layer=layer, **UNIT)[0]
        np.testing.assert_allclose(got, _normalized(expected), atol=1e-4, err_msg=layer)


class Brightness(nn.Module):
    """The score is the sum over channels of each channel's mean: every pixel counts the same."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)

    def forward(self, x):
        return self.fc(self.flat(self.pool(x)))


@pytest.mark.parametrize(("size", "window", "stride"), [(8, 4, 3), (9, 4, 3), (8, 4, 2)])
def test_occlusion_reaches_every_pixel_when_the_stride_does_not_divide_the_image(size, window, stride):
    """Each window of a white image occludes window^2 of size^2 pixels in 3 channels, so its drop is
    3 window^2 / size^2, and every pixel, the last row and column too, averages windows of that drop."""
    image = np.ones((size, size, 3), np.float32)
    drops = featvis.occlusion(
        Brightness(), ActivationMaximization("fc", 0), image, window=window, stride=stride, **UNIT
    )
    assert drops.shape == (1, size, size)
    torch.testing.assert_close(drops[0], torch.full((size, size), 3 * window**2 / size**2))


@pytest.mark.parametrize("method", [featvis.integrated_gradients, featvis.occlusion])
def test_a_baseline_that_cannot_be_read_is_named(method):
    image = np.ones((8, 8, 3), np.float32)
    loss = ActivationMaximization("fc", 0)
    with pytest.raises(featvis.FeatvisValueError, match="^baseline='no-such-file.png': no such file"):
        method(Brightness(), loss, image, baseline="no-such-file.png", **UNIT)
    with pytest.raises(featvis.FeatvisTypeError, match="^baseline has type dict"):
        method(Brightness(), loss, image, baseline={"low": 0}, **UNIT)
