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


class ImageSkip(nn.Module):
    """stem -> act -> fc over [act's channel means, the image's own channel means]: the layers after
    `act` also read the image itself (a second branch to the head), so only the image at its full
    size gives the model's scores."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.stem = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(7, 3)

    def forward(self, x):
        return self.score(self.act(self.stem(x)), x)

    def score(self, acts, x):
        return self.fc(torch.cat([acts.mean(dim=(2, 3)), 10 * x.mean(dim=(2, 3))], 1))


def test_ablation_cam_is_its_definition_above_128_px_when_the_head_also_reads_the_image():
    """Above 128 px the cheap pre-passes (the image shrunk) end at a quarter of its size; none
    reproduces this model's scores, so each is tried and passed over for the full image."""
    model = ImageSkip().eval()
    image = np.random.default_rng(2).uniform(0, 1, (160, 160, 3)).astype(np.float32)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        acts = model.act(model.stem(x))
        y = model.score(acts, x)[0, 1]
        drops = []
        for k in range(acts.shape[1]):  # channel k of `act` zeroed, the image as it is
            ablated = acts.clone()
            ablated[:, k] = 0
            drops.append((y - model.score(ablated, x)[0, 1]) / y)
        cam = F.relu((torch.stack(drops)[:, None, None] * acts[0]).sum(0))
        expected = F.interpolate(cam[None, None], size=(160, 160), mode="bilinear", align_corners=False)[0, 0]
    assert expected.max() > expected.min()
    got = featvis.visualize_cam(model, "fc", 1, image, method="ablationcam", penultimate_layer="act", **UNIT)
    np.testing.assert_allclose(got[0], _normalized(expected), atol=1e-4)


class SignedLayer(nn.Module):
    """stem -> norm (a batch norm: signed values, 0 is a channel's average, not its absence) ->
    head -> ReLU -> fc; a channel of `norm` whose minimum is above 0 too (the +3 shift)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 6, 1)
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-0.5, 0.5)
            self.norm.bias.copy_(torch.tensor([0.0, 0.5, -0.5, 3.0]))

    def forward(self, x):
        return self.after(self.norm(self.stem(x)))

    def after(self, acts):
        return self.fc(F.relu(self.head(acts)).mean(dim=(2, 3)))


def test_ablation_cam_switches_a_signed_channel_off_at_its_minimum_and_a_positive_one_at_zero():
    """Channel k ablated = set to min(0, its minimum over the image) everywhere: 0 for a channel that
    never goes below 0 (a ReLU output: the paper's zeroing), its lowest value for a signed one."""
    model = SignedLayer().eval()
    image = np.random.default_rng(3).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        acts = model.norm(model.stem(torch.from_numpy(image).permute(2, 0, 1)[None]))
        lows = acts[0].amin(dim=(1, 2))
        assert (lows < 0).any() and (lows > 0).any()  # both kinds of channel
        y = model.after(acts)[0, 2]
        drops = []
        for k in range(acts.shape[1]):
            ablated = acts.clone()
            ablated[:, k] = min(0.0, float(lows[k]))
            drops.append((y - model.after(ablated)[0, 2]) / y)
        expected = F.relu((torch.stack(drops)[:, None, None] * acts[0]).sum(0))
    assert expected.max() > expected.min()
    got = featvis.visualize_cam(
        model, "fc", 2, image, method="ablationcam", penultimate_layer="norm", **UNIT
    )[0]
    np.testing.assert_allclose(got, _normalized(expected), atol=1e-4)


def test_grad_cam_and_ablation_cam_at_each_call_of_a_module_called_twice(shared_net):
    """`act#0` is the first call of the shared ReLU: its own output, the score's gradient there, and
    the score with one of its channels zeroed while the second call runs as it is."""
    image = np.random.default_rng(2).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]

    def score(first=None, second=None):
        first = F.relu(shared_net.conv1(x)) if first is None else first
        second = F.relu(shared_net.conv2(first)) if second is None else second
        return shared_net.fc(second.mean(dim=(2, 3)))[0, 2]

    first = F.relu(shared_net.conv1(x)).detach().requires_grad_(True)
    second = F.relu(shared_net.conv2(first))
    grads = torch.autograd.grad(score(first, second), [first, second])
    for index, (acts, grad) in enumerate([(first, grads[0]), (second, grads[1])]):
        acts = acts.detach()
        layer = f"act#{index}"
        expected = F.relu((grad.mean(dim=(2, 3), keepdim=True) * acts).sum(1))[0]
        got = featvis.visualize_cam(shared_net, "fc", 2, image, penultimate_layer=layer, **UNIT)[0]
        np.testing.assert_allclose(got, _normalized(expected), atol=1e-4, err_msg=layer)
        with torch.no_grad():
            y, drops = score(), []
            for k in range(acts.shape[1]):
                ablated = acts.clone()
                ablated[:, k] = 0
                drops.append((y - score(**{("first", "second")[index]: ablated})) / y)
            expected = F.relu((torch.stack(drops)[:, None, None] * acts[0]).sum(0))
        got = featvis.visualize_cam(
            shared_net, "fc", 2, image, method="ablationcam", penultimate_layer=layer, **UNIT
        )[0]
        np.testing.assert_allclose(got, _normalized(expected), atol=1e-4, err_msg=f"ablationcam {layer}")


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
    # a number as the baseline: a flat image of that value, so each drop is a quarter as large
    quarter = featvis.occlusion(
        Brightness(),
        ActivationMaximization("fc", 0),
        image,
        window=window,
        stride=stride,
        baseline=0.75,
        **UNIT,
    )
    torch.testing.assert_close(quarter, drops / 4)


def test_occlusion_defaults_to_16_pixel_windows_every_8_pixels():
    model = ConcatSkip().eval()
    image = np.random.default_rng(5).uniform(0, 1, (40, 40, 3)).astype(np.float32)
    loss = ActivationMaximization("fc", 0)
    plain = featvis.occlusion(model, loss, image, **UNIT)
    torch.testing.assert_close(plain, featvis.occlusion(model, loss, image, window=16, stride=8, **UNIT))
    assert not torch.allclose(plain, featvis.occlusion(model, loss, image, window=16, stride=9, **UNIT))
    with pytest.raises(featvis.FeatvisValueError, match="^batch_size=0"):
        featvis.occlusion(model, loss, image, batch_size=0, **UNIT)


@pytest.mark.parametrize("method", [featvis.integrated_gradients, featvis.occlusion])
def test_a_baseline_that_cannot_be_read_is_named(method):
    image = np.ones((8, 8, 3), np.float32)
    loss = ActivationMaximization("fc", 0)
    with pytest.raises(featvis.FeatvisValueError, match="^baseline='no-such-file.png': no such file"):
        method(Brightness(), loss, image, baseline="no-such-file.png", **UNIT)
    with pytest.raises(featvis.FeatvisTypeError, match="^baseline has type dict"):
        method(Brightness(), loss, image, baseline={"low": 0}, **UNIT)


class Features(nn.Module):
    """features = ReLU(input channels 0 and 1) (a 1x1 conv), global average pool, linear head."""

    def __init__(self):
        super().__init__()
        self.pick = nn.Conv2d(3, 2, 1, bias=False)
        self.features = nn.ReLU()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.pick.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])[:, :, None, None])
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, -1.0]]))

    def forward(self, x):
        return self.fc(self.features(self.pick(x)).mean(dim=(2, 3)))


def test_eigen_cam_is_the_first_principal_component_signed_by_the_activations():
    """Both feature channels equal a pattern P, so every position's activation is P * (1, 1): the first
    principal component is (1, 1), the projection on it is P minus its mean, with the sign that makes
    it grow with the activations. P = 1 on the top left, 0.5 on the top right, 0 below (mean 0.375):
    ReLU(P - 0.375) is 0.625, 0.125 and 0, normalized 1, 0.2 and 0. The second image is the first's
    negative, 1 - P (mean 0.625): 0, 0 and 0.375, normalized 0, 0 and 1."""
    pattern = np.zeros((16, 16), np.float32)
    pattern[:8, :8], pattern[:8, 8:] = 1.0, 0.5
    images = np.zeros((2, 16, 16, 3), np.float32)
    images[0, ..., :2] = pattern[..., None]
    images[1, ..., :2] = 1 - pattern[..., None]
    expected = np.zeros((2, 16, 16), np.float32)
    expected[0, :8, :8], expected[0, :8, 8:] = 1.0, 0.2
    expected[1, 8:] = 1.0
    for unit in (0, 1):  # class-agnostic
        cams = featvis.visualize_cam(
            Features(), "fc", unit, images, method="eigencam", penultimate_layer="features", **UNIT
        )
        np.testing.assert_allclose(cams, expected, atol=1e-5)


class Linear(nn.Module):
    """score = sum of weight * pixel: the input gradient is the weight, whatever the image."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(weight.numel(), 1, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(weight.flatten()[None])

    def forward(self, x):
        return self.fc(self.flat(x))


def test_aug_smooth_takes_each_views_map_back_to_the_image():
    """The views are the image, its mirror, and both zoomed in 10% (a centered crop of round(32 / 1.1)
    = 29 pixels from pixel 1, resized to 32). A linear model's saliency is its weight W in the view's
    coordinates, so in the image's: W, W mirrored, and W shrunk into the crop, mirrored or not; each
    pixel averages the views that see it."""
    weight = torch.zeros(32, 32)
    weight[:8, :4] = 1.0  # a block at the top left: mirrored, it is at the top right
    weight[20:, 24:] = 0.5
    model = Linear(weight.expand(3, 32, 32))
    image = np.random.default_rng(6).uniform(0, 1, (32, 32, 3)).astype(np.float32)
    got = featvis.visualize_saliency(model, "fc", 0, image, aug_smooth=True, **UNIT)[0]
    shrunk = torch.full((32, 32), float("nan"))
    shrunk[1:30, 1:30] = F.interpolate(weight[None, None], size=(29, 29), mode="bilinear")[0, 0]
    views = torch.stack([weight, weight.flip(-1), shrunk, shrunk.flip(-1)])
    expected = views.nansum(0) / views.isfinite().sum(0)
    np.testing.assert_allclose(got, _normalized(expected), atol=1e-5)


def test_saliency_options_that_are_not_allowed_are_named():
    image = np.ones((8, 8, 3), np.float32)
    for kwargs, message in [
        ({"method": "occlusion", "window": 0}, "^window=0 is not allowed: expected an int >= 1"),
        ({"method": "occlusion", "batch_size": 0}, "^batch_size=0 is not allowed: expected an int >= 1"),
        ({"batch_size": 0}, "^batch_size=0 is not allowed"),
    ]:
        with pytest.raises(featvis.FeatvisValueError, match=message):
            featvis.visualize_saliency(Brightness(), "fc", 0, image, **kwargs, **UNIT)


class Ramp(nn.Module):
    """score = sum over pixels and channels of (row * width + column + 1) * pixel, at any size."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)

    def forward(self, x):
        h, w = x.shape[-2:]
        ramp = torch.arange(h * w, dtype=x.dtype).view(h, w) + 1
        return self.fc((x * ramp).sum(dim=(2, 3)))


def test_occlusion_saliency_of_single_pixels_is_the_weight_of_each_pixel():
    """window=1 (the smallest window is allowed): each pixel's drop on a white image, over a black
    baseline, is 3 times its weight in the score; the defaults are occlusion's (16, every 8)."""
    image = np.ones((12, 16, 3), np.float32)
    single = featvis.visualize_saliency(
        Ramp(), "fc", 0, image, method="occlusion", window=1, stride=1, percentile=None, **UNIT
    )[0]
    np.testing.assert_allclose(single, np.arange(12 * 16).reshape(12, 16) / (12 * 16 - 1), atol=1e-5)
    image = np.random.default_rng(8).uniform(0, 1, (40, 40, 3)).astype(np.float32)
    model = ConcatSkip().eval()
    drops = featvis.occlusion(model, ActivationMaximization("fc", 0), image, **UNIT)[0]
    maps = featvis.visualize_saliency(model, "fc", 0, image, method="occlusion", percentile=None, **UNIT)[0]
    np.testing.assert_allclose(maps, _normalized(drops.abs()), atol=1e-5)


def test_smoothgrad_noise_is_seeded_with_0_by_default():
    model = ConcatSkip().eval()
    image = np.random.default_rng(9).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    plain = featvis.visualize_saliency(model, "fc", 0, image, smooth_samples=2, **UNIT)
    np.testing.assert_array_equal(
        plain, featvis.visualize_saliency(model, "fc", 0, image, smooth_samples=2, seed=0, **UNIT)
    )
    assert not np.allclose(
        plain, featvis.visualize_saliency(model, "fc", 0, image, smooth_samples=2, seed=1, **UNIT)
    )


@pytest.mark.parametrize("method", [featvis.integrated_gradients, featvis.occlusion])
def test_baselines_as_a_number_a_gray_image_and_model_ready_values(method):
    """A number is a flat image of that value in input_range; a 2-D array a gray image (R = G = B);
    with input_range=None both are model input as given."""
    model = Brightness()
    loss = ActivationMaximization("fc", 0)
    image = np.random.default_rng(10).uniform(0, 255, (8, 8, 3)).astype(np.float32)
    extra = {"window": 4, "stride": 2} if method is featvis.occlusion else {}
    bytes_ = dict(input_range=(0, 255), preprocess=lambda x: x / 255, **extra)
    flat = method(model, loss, image, baseline=64, **bytes_)
    as_gray = method(model, loss, image, baseline=np.full((8, 8), 64, np.float32), **bytes_)
    torch.testing.assert_close(as_gray, flat)
    ready = torch.from_numpy(image / 255).permute(2, 0, 1)[None]
    as_ready = method(model, loss, ready, baseline=64 / 255, input_range=None, **extra)
    torch.testing.assert_close(as_ready, flat, atol=1e-5, rtol=1e-4)


def test_guided_grad_cam_of_bytes_and_a_preprocess_equals_that_of_the_model_ready_tensor():
    """Guided gradients are taken w.r.t. the model input: the same map for the same model input,
    however it was given (a per-channel normalization scales the channels differently)."""
    from featvis.zoo import Normalize

    model = ConcatSkip().eval()
    images = np.rint(np.random.default_rng(11).uniform(0, 255, (2, 16, 16, 3))).astype(np.uint8)
    normalized = Normalize()(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    for keepdims in (False, True):
        raw = featvis.visualize_guided_cam(model, "fc", 1, images, keepdims=keepdims, preprocess=Normalize())
        ready = featvis.visualize_guided_cam(model, "fc", 1, normalized, keepdims=keepdims, input_range=None)
        np.testing.assert_allclose(raw, ready, atol=1e-4)


class TwoCells(nn.Module):
    """A 16x32 image seen as two 16x16 cells: the last map before the head is 1x2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(12)
        self.cells = nn.Conv2d(3, 4, 16, stride=16)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.act(self.cells(x)))))


def test_cam_finds_a_map_of_two_cells_by_itself():
    image = np.random.default_rng(13).uniform(0, 1, (16, 32, 3)).astype(np.float32)
    found = featvis.visualize_cam(TwoCells().eval(), "fc", 0, image, **UNIT)
    named = featvis.visualize_cam(TwoCells().eval(), "fc", 0, image, penultimate_layer="act", **UNIT)
    np.testing.assert_array_equal(found, named)


def test_overlay_resizes_the_heat_map_with_pixel_centres_aligned():
    """A 2x2 map over a 4x4 image: bilinear with half-pixel centres (as image resizers do) gives the
    rows and columns 0, 1/4, 3/4, 1 of the way from one cell to the next."""
    heat = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    blended = featvis.overlay(np.zeros((4, 4, 3), np.float32), heat, colormap="gray", alpha=1.0)
    np.testing.assert_allclose(blended[..., 0] / 255, np.tile([0, 0.25, 0.75, 1], (4, 1)), atol=1 / 255)


class Centred(ConcatSkip):
    """ConcatSkip on the image minus its mean: adding a constant to every pixel changes nothing."""

    def forward(self, x):
        return super().forward(x - x.mean())


def test_smoothgrad_noise_scales_with_the_images_range_not_its_level():
    model = Centred().eval()
    image = np.random.default_rng(14).uniform(0.1, 0.5, (16, 16, 3)).astype(np.float32)
    smooth = featvis.visualize_saliency(model, "fc", 0, image, smooth_samples=2, **UNIT)
    brighter = featvis.visualize_saliency(model, "fc", 0, image + 0.4, smooth_samples=2, **UNIT)
    np.testing.assert_allclose(brighter, smooth, atol=1e-5)
    assert not np.allclose(smooth, featvis.visualize_saliency(model, "fc", 0, image, **UNIT), atol=1e-3)


def test_cam_smoothing_without_a_seed_draws_fresh_noise():
    model = ConcatSkip().eval()
    image = np.random.default_rng(15).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    first, second = (
        featvis.visualize_cam(
            model, "fc", 0, image, smooth_samples=2, seed=None, penultimate_layer="act", **UNIT
        )
        for _ in range(2)
    )
    assert first.shape == (1, 16, 16) and not np.allclose(first, second)


def test_occlusion_works_on_a_model_that_takes_one_input_size():
    """A flatten and a linear layer take 16x16 images only: occlusion probes the model at the
    images' size. Each pixel's drop on a white image over a black baseline is its weight."""
    weight = torch.rand(16, 16, generator=torch.Generator().manual_seed(16))
    model = Linear(weight.expand(3, 16, 16))
    image = np.ones((16, 16, 3), np.float32)
    drops = featvis.occlusion(model, ActivationMaximization("fc", 0), image, window=1, stride=1, **UNIT)
    torch.testing.assert_close(drops[0], 3 * weight, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n", [1, 2, 7, 100, 12544])
def test_the_display_percentile_is_torch_quantile_from_the_top_values(n):
    from featvis.attribution.scoring import quantile

    x = torch.randn(3, n, generator=torch.Generator().manual_seed(n))
    for q in (0.0, 0.5, 0.9, 0.99, 0.995, 1.0):
        torch.testing.assert_close(
            quantile(x, q), torch.quantile(x, q, dim=1, keepdim=True), rtol=1e-5, atol=1e-6
        )
