"""The CAM family, Integrated Gradients, occlusion, smoothing and model-ready input on tiny models."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import featvis
from featvis.attention import CAM_METHODS
from featvis.cam_methods import gradcam_plus_plus, hirescam, layercam, xgradcam
from featvis.losses import ActivationMaximization
from featvis.zoo import Normalize

from conftest import assert_untouched, make_tiny, snapshot

NEW_CAMS = ["xgradcam", "layercam", "hirescam", "scorecam", "ablationcam", "eigencam"]


def _images(count=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("method", NEW_CAMS)
def test_each_cam_method_is_batched_like_single_calls(method):
    model = make_tiny()
    before = snapshot(model)
    images = _images()
    batch = featvis.visualize_cam(model, "fc", 3, images, method=method, penultimate_layer="act2")
    assert batch.shape == (4, 32, 32)
    assert np.allclose(batch.min(axis=(1, 2)), 0) and np.allclose(batch.max(axis=(1, 2)), 1)
    single = np.stack(
        [
            featvis.visualize_cam(model, "fc", 3, img, method=method, penultimate_layer="act2")[0]
            for img in images
        ]
    )
    np.testing.assert_allclose(batch, single, atol=1e-4)
    assert_untouched(model, before)


def test_gradient_cams_equal_their_formulas():
    g = torch.Generator().manual_seed(0)
    acts, grads = torch.rand(2, 5, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    weights = (grads * acts).sum((2, 3), keepdim=True) / acts.sum((2, 3), keepdim=True)
    torch.testing.assert_close(xgradcam(acts, grads), F.relu((weights * acts).sum(1)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layercam(acts, grads), F.relu((grads.clamp(min=0) * acts).sum(1)))
    torch.testing.assert_close(hirescam(acts, grads), F.relu((grads * acts).sum(1)))


def test_gradcam_plus_plus_is_the_papers_formula_where_its_denominator_is_positive():
    """On non-negative activations (the paper's setting) alpha = g^2 / (2 g^2 + sum(A) g^3), also for
    gradients so small that 2 g^2 is far below pytorch-grad-cam's 1e-6; on signed activations the
    positions where 2 + sum(A) g <= 0 (negative or unbounded alpha) get alpha 0."""
    g = torch.Generator().manual_seed(1)
    acts = torch.rand(2, 5, 4, 4, generator=g, dtype=torch.float64)
    grads = torch.randn(2, 5, 4, 4, generator=g, dtype=torch.float64) * 1e-5
    total = acts.sum((2, 3), keepdim=True)
    alphas = grads**2 / (2 * grads**2 + total * grads**3)
    weights = (alphas * grads.clamp(min=0)).sum((2, 3), keepdim=True)
    torch.testing.assert_close(gradcam_plus_plus(acts, grads), F.relu((weights * acts).sum(1)))
    signed = acts - 0.6  # channel sums about -1.6; with gradients near 1, 2 + sum(A) g changes sign
    grads = torch.rand(2, 5, 4, 4, generator=g, dtype=torch.float64) * 2
    denominator = 2 + signed.sum((2, 3), keepdim=True) * grads
    assert (denominator <= 0).any() and (denominator > 0).any()
    alphas = torch.where(denominator > 0, 1 / denominator, 0)
    weights = (alphas * grads).sum((2, 3), keepdim=True)
    torch.testing.assert_close(gradcam_plus_plus(signed, grads), F.relu((weights * signed).sum(1)))


def _act2_and_logit(model, x):
    act2 = model.act2(model.conv2(model.act1(model.conv1(x))))
    return act2, model.fc(model.bn(act2).mean(dim=(2, 3)))


def test_scorecam_and_ablationcam_equal_their_definitions_run_one_mask_at_a_time():
    model = make_tiny()
    image = _images(1)[0]
    x = torch.from_numpy(image).permute(2, 0, 1)[None] / 255
    with torch.no_grad():
        acts, _ = _act2_and_logit(model, x * 255)
        # Score-CAM: mask = channel upsampled, min-max scaled; weight = softmax of masked scores
        up = F.interpolate(acts, size=(32, 32), mode="bilinear", align_corners=True)[0]
        scores = []
        for channel in up:
            mask = (channel - channel.min()) / (channel.max() - channel.min() + 1e-8)
            scores.append(_act2_and_logit(model, x * mask * 255)[1][0, 3])
        weights = torch.softmax(torch.stack(scores), 0)
        expected_score = F.relu((weights[:, None, None] * acts[0]).sum(0))
        # Ablation-CAM: weight = (y - y_k) / y with channel k of act2 zeroed
        y = model.fc(model.bn(acts).mean(dim=(2, 3)))[0, 3]
        drops = []
        for k in range(acts.shape[1]):
            ablated = acts.clone()
            ablated[:, k] = 0
            drops.append((y - model.fc(model.bn(ablated).mean(dim=(2, 3)))[0, 3]) / y)
        expected_ablation = F.relu((torch.stack(drops)[:, None, None] * acts[0]).sum(0))
    for method, expected in (("scorecam", expected_score), ("ablationcam", expected_ablation)):
        up = F.interpolate(expected[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
        up = ((up - up.min()) / (up.max() - up.min())).numpy()
        got = featvis.visualize_cam(model, "fc", 3, image, method=method, penultimate_layer="act2")[0]
        np.testing.assert_allclose(got, up, atol=1e-4, err_msg=method)


def test_scorecam_runs_as_many_masked_images_per_forward_as_hold_16_of_112_px_on_the_cpu():
    model = make_tiny()
    rows: list[int] = []
    handle = model.conv1.register_forward_pre_hook(lambda module, inputs: rows.append(len(inputs[0])))
    images = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    options = dict(method="scorecam", penultimate_layer="act2")
    try:
        default = featvis.visualize_cam(model, "fc", 3, images, **options)
        masked = [n for n in rows if n > 2]  # not the probe, checks and layer reading (1-2 images)
        rows.clear()
        given = featvis.visualize_cam(model, "fc", 3, images, batch_size=32, **options)
    finally:
        handle.remove()
    assert masked == [12, 12, 8]  # 16 x 112 x 112 pixels hold 12 images of 128 px: 2 images x 16 masks
    assert [n for n in rows if n > 2] == [32]
    np.testing.assert_allclose(default, given, atol=1e-6)


@pytest.mark.parametrize(
    "method", [dict(method="occlusion", window=32, stride=32), dict(method="integrated_gradients", steps=16)]
)
def test_occlusion_and_ig_run_as_many_images_per_forward_as_hold_16_of_112_px_on_the_cpu(method):
    model = make_tiny()
    rows: list[int] = []
    handle = model.conv1.register_forward_pre_hook(lambda module, inputs: rows.append(len(inputs[0])))
    images = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    try:
        featvis.visualize_saliency(model, "fc", 3, images, **method)
    finally:
        handle.remove()
    assert [n for n in rows if n > 2] == [12, 12, 8]  # 16 windows or steps x 2 images, 12 of 128 px a time


def test_eigencam_is_class_agnostic():
    """The same map whatever the class (its sign and values: test_attention_edges.py and the SVD test
    below)."""
    model = make_tiny()
    image = _images(1)[0]
    cam = featvis.visualize_cam(model, "fc", 3, image, method="eigencam", penultimate_layer="act2")[0]
    other_class = featvis.visualize_cam(model, "fc", 7, image, method="eigencam", penultimate_layer="act2")[0]
    np.testing.assert_allclose(cam, other_class)
    assert cam.shape == (32, 32) and cam.max() == pytest.approx(1.0)


@pytest.mark.parametrize("size", [(32, 32), (2, 4)])  # 1024 positions for 16 channels, and 8 for 16
def test_eigencam_equals_the_svds_first_principal_component(size):
    """Eigen-CAM takes the first principal component from the smaller Gram matrix: the map must be
    the projection on the SVD's first right singular vector (positions as samples, channels
    centered), oriented with the activations' norm, ReLU, resized, scaled to [0, 1]."""
    model = make_tiny()
    images = np.random.default_rng(3).uniform(0, 255, (2, *size, 3)).astype(np.float32)
    got = featvis.visualize_cam(model, "fc", 3, images, method="eigencam", penultimate_layer="act2")
    with torch.no_grad():
        acts, _ = _act2_and_logit(model, torch.from_numpy(images).permute(0, 3, 1, 2))
    for image_acts, cam in zip(acts.numpy().astype(np.float64), got):
        flat = image_acts.reshape(len(image_acts), -1).T  # (positions, channels)
        centered = flat - flat.mean(0)
        projection = centered @ np.linalg.svd(centered, full_matrices=False)[2][0]
        energy = np.linalg.norm(flat, axis=1)
        projection *= np.sign(((projection - projection.mean()) * (energy - energy.mean())).sum())
        expected = torch.from_numpy(np.maximum(projection, 0).reshape(image_acts.shape[1:])).float()
        up = F.interpolate(expected[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        up = ((up - up.min()) / (up.max() - up.min())).numpy()
        np.testing.assert_allclose(cam, up, atol=1e-4)


class _ConvBatchNorm(torch.nn.Module):
    """Convolutions followed by batch norms with non-trivial statistics (what the fused copy folds)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv1, self.bn1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.conv2, self.bn2 = torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16)
        self.fc = torch.nn.Linear(16, 10)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_vanilla_saliency_is_the_input_gradient_through_the_fused_copy_or_the_model(monkeypatch):
    """A call too small to pay for the fused copy runs the model as it is; a larger one the fused
    copy (batch norms folded). Both give |d score / d input|, max over channels."""
    model = _ConvBatchNorm().eval()
    images = _images(3, seed=2)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).requires_grad_(True)
    model(x)[:, 4].sum().backward()
    expected = x.grad.abs().amax(1)
    flat = expected.flatten(1)
    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    expected = ((expected - low) / (high - low)).numpy()
    model.zero_grad(set_to_none=True)
    before = snapshot(model)
    for pixels in (10**9, 0):  # the model as it is, then the fused copy
        monkeypatch.setattr(featvis.attribution.saliency, "FUSED_VANILLA_PIXELS", pixels)
        got = featvis.visualize_saliency(model, "fc", 4, images, percentile=None)
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"threshold {pixels}")
        assert_untouched(model, before)


def test_integrated_gradients_is_complete_within_one_percent_at_64_steps():
    """Sundararajan et al.: the attributions sum to score(input) - score(baseline)."""
    model = make_tiny()
    before = snapshot(model)
    images = _images(3, seed=5)
    loss = ActivationMaximization("fc", 4)
    for conventions in ({"input_range": (0, 255), "preprocess": Normalize()}, {"input_range": (0, 255)}):
        attributions = featvis.integrated_gradients(model, loss, images, steps=64, **conventions)
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        pre = conventions.get("preprocess") or (lambda v: v)
        with torch.no_grad():
            difference = model(pre(x))[:, 4] - model(pre(torch.zeros_like(x)))[:, 4]
        sums = attributions.sum(dim=(1, 2, 3))
        assert torch.all((sums - difference).abs() <= 0.01 * difference.abs()), (sums, difference)
    # each image with its own unit, in chunks that mix the images' path points
    units = [4, 7, 4]
    attributions = featvis.integrated_gradients(
        model, featvis.UnitPerImage("fc", units), images, steps=64, batch_size=20, input_range=(0, 255)
    )
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        rows = torch.arange(3)
        difference = model(x)[rows, units] - model(torch.zeros_like(x))[rows, units]
    sums = attributions.sum(dim=(1, 2, 3))
    assert torch.all((sums - difference).abs() <= 0.01 * difference.abs()), (sums, difference)
    assert_untouched(model, before)


class _Cubes(torch.nn.Module):
    """score = sum(c * x**3), one output unit: IG is known exactly, c * (x**3 - baseline**3)."""

    def __init__(self, shape):
        super().__init__()
        self.c = torch.nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return (self.c * x**3).flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("quadrature", ["gausslegendre", "riemann_middle"])
def test_integrated_gradients_equals_the_exact_attributions_of_a_linear_model(quadrature):
    """The gradient of a linear score is the same along the path: IG is (x - baseline) * w for any rule."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)).eval()
    g = torch.Generator().manual_seed(3)
    x, base = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    attributions, delta = featvis.integrated_gradients(
        model,
        featvis.UnitPerImage("1", [2, 4]),
        x,
        steps=5,
        quadrature=quadrature,
        baseline=base,
        batch_size=3,
        input_range=None,
        return_delta=True,
    )
    weights = model[1].weight.detach().view(5, 3, 8, 8)
    torch.testing.assert_close(attributions, (x - base) * weights[[2, 4]], atol=1e-5, rtol=1e-4)
    assert delta.shape == (2,) and delta.abs().max() < 1e-4


def test_integrated_gradients_uses_gauss_legendre_exact_on_a_cubic_path():
    """For score = sum(c x^3) the integrand is quadratic in the path's position: 2 Gauss-Legendre points
    integrate it exactly, c * (x^3 - baseline^3); the midpoint rule is off by c (x - b)^3 / (4 steps^2)."""
    model = _Cubes((3, 4, 4)).eval()
    g = torch.Generator().manual_seed(4)
    x, base = torch.rand(2, 3, 4, 4, generator=g), torch.rand(1, 3, 4, 4, generator=g)
    loss = ActivationMaximization("", 0)
    exact = model.c.detach() * (x**3 - base**3)
    kwargs = dict(steps=2, baseline=base, input_range=None, return_delta=True)
    gauss, delta = featvis.integrated_gradients(model, loss, x, **kwargs)
    torch.testing.assert_close(gauss, exact, atol=1e-6, rtol=1e-5)
    assert delta.abs().max() < 1e-5
    middle, delta = featvis.integrated_gradients(model, loss, x, quadrature="riemann_middle", **kwargs)
    off = model.c.detach() * (x - base) ** 3 / (4 * 2**2)
    torch.testing.assert_close(exact - middle, off, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(delta, -off.flatten(1).sum(1), atol=1e-5, rtol=1e-4)


def test_integrated_gradients_delta_is_the_sum_minus_the_score_difference():
    """``return_delta=True``: attributions.sum() - (score(input) - score(baseline)) per image, the scores
    computed here from the model (each image with its own unit, a baseline image, preprocess)."""
    model = make_tiny()
    before = snapshot(model)
    images = _images(3, seed=6)
    gray = np.full_like(images[0], 100.0)
    units = [4, 7, 1]
    results = {}
    for quadrature in ("gausslegendre", "riemann_middle"):
        results[quadrature] = attributions, delta = featvis.integrated_gradients(
            model,
            featvis.UnitPerImage("fc", units),
            images,
            steps=3,  # few points: a delta far from 0
            quadrature=quadrature,
            baseline=gray,
            batch_size=4,
            input_range=(0, 255),
            preprocess=Normalize(),
            return_delta=True,
        )
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        b = torch.from_numpy(gray).permute(2, 0, 1)[None].expand_as(x)
        with torch.no_grad():
            rows = torch.arange(3)
            difference = model(Normalize()(x))[rows, units] - model(Normalize()(b))[rows, units]
        expected = attributions.sum(dim=(1, 2, 3)) - difference
        assert delta.shape == (3,) and delta.dtype == attributions.dtype
        torch.testing.assert_close(delta, expected, atol=1e-4, rtol=1e-4)
        assert expected.abs().max() > 1e-3, quadrature  # the check sees a real error, not noise
    plain = featvis.integrated_gradients(
        model, featvis.UnitPerImage("fc", units), images, steps=3, baseline=gray, preprocess=Normalize()
    )  # without return_delta: the attributions alone, Gauss-Legendre by default
    torch.testing.assert_close(plain, results["gausslegendre"][0])
    assert not torch.allclose(plain, results["riemann_middle"][0])
    assert_untouched(model, before)


def test_integrated_gradients_with_a_baseline_image_and_in_chunks():
    model = make_tiny()
    image = _images(1)[0]
    gray = np.full_like(image, 128.0)
    loss = ActivationMaximization("fc", 1)
    whole = featvis.integrated_gradients(model, loss, image, steps=8, baseline=gray, batch_size=64)
    chunked = featvis.integrated_gradients(model, loss, image, steps=8, baseline=128, batch_size=3)
    torch.testing.assert_close(whole, chunked, atol=1e-4, rtol=1e-4)


def test_occlusion_equals_the_score_drop_of_each_window():
    model = make_tiny()
    image = _images(1)[0]
    drops = featvis.occlusion(model, ActivationMaximization("fc", 2), image, window=16, stride=16)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        full = model(x)[0, 2]
        occluded = x.clone()
        occluded[..., 16:, :16] = 0
        expected = full - model(occluded)[0, 2]
    torch.testing.assert_close(drops[0, 20, 5], expected, atol=1e-4, rtol=1e-4)
    maps = featvis.visualize_saliency(model, "fc", 2, _images(2), method="occlusion", window=8, stride=4)
    assert maps.shape == (2, 32, 32)


def test_normalized_tensor_gives_the_same_map_as_uint8_plus_preprocess():
    model = make_tiny()
    before = snapshot(model)
    images = np.rint(_images(2, seed=7)).astype(np.uint8)
    normalized = Normalize()(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    cases = [
        (featvis.visualize_cam, {"penultimate_layer": "act2"}),
        (featvis.visualize_cam, {"penultimate_layer": "act2", "method": "scorecam"}),
        (featvis.visualize_cam, {"penultimate_layer": "act2", "method": "ablationcam"}),
        (featvis.visualize_saliency, {}),
        (featvis.visualize_saliency, {"method": "integrated_gradients", "steps": 16}),
        (featvis.visualize_saliency, {"method": "occlusion", "window": 8, "stride": 4}),
    ]
    black = Normalize()(torch.zeros(1, 3, 32, 32))  # the default baseline of the uint8 call
    for function, kwargs in cases:
        raw = function(model, "fc", 3, images, preprocess=Normalize(), **kwargs)
        baselined = kwargs.get("method") in ("integrated_gradients", "occlusion")
        extra = {"baseline": black} if baselined else {}  # input_range=None: zeros by default
        ready = function(model, "fc", 3, normalized, input_range=None, **kwargs, **extra)
        np.testing.assert_allclose(raw, ready, atol=2e-3, err_msg=f"{function.__name__} {kwargs}")
    assert_untouched(model, before)


def test_smoothing_of_any_map_over_noise_and_flips_is_seeded():
    model = make_tiny()
    images = _images(2)
    for function, kwargs in [
        (featvis.visualize_cam, {"penultimate_layer": "act2", "method": "layercam"}),
        (featvis.visualize_saliency, {"method": "integrated_gradients", "steps": 4}),
    ]:
        a = function(model, "fc", 3, images, smooth_samples=2, aug_smooth=True, seed=1, **kwargs)
        b = function(model, "fc", 3, images, smooth_samples=2, aug_smooth=True, seed=1, **kwargs)
        plain = function(model, "fc", 3, images, **kwargs)
        assert a.shape == (2, 32, 32) and np.isfinite(a).all()
        np.testing.assert_allclose(a, b)
        assert not np.allclose(a, plain)


def test_percentile_display_keeps_a_single_outlier_from_hiding_the_map():
    from featvis.attention import visualize_saliency_with_losses

    class Spike(torch.nn.Module):
        def forward(self, x):  # gradient from 1 (left) to 2 (right), 1000 at one pixel
            weights = torch.linspace(1, 2, x.shape[-1]).expand_as(x[:1]).clone()
            weights[..., 0, 0] = 1000
            return (x * weights).sum(dim=(1, 2, 3))[:, None]

    image = np.full((16, 16, 3), 0.5, np.float32)
    loss = ActivationMaximization("", 0)
    clipped = visualize_saliency_with_losses(Spike(), loss, image, input_range=(0.0, 1.0))[0]
    minmax = visualize_saliency_with_losses(Spike(), loss, image, input_range=(0.0, 1.0), percentile=None)[0]
    assert minmax[5, 15] < 0.01 and clipped[5, 15] == 1.0 and 0.4 < clipped[5, 8] < 0.6


BAD_CALLS = [
    (featvis.visualize_cam, {"method": "nocam"}, "method='nocam'"),
    (featvis.visualize_cam, {"method": "scorecam", "batch_size": 0}, "batch_size"),
    (featvis.visualize_cam, {"smooth_samples": -1}, "smooth_samples"),
    (featvis.visualize_cam, {"aug_smooth": "yes"}, "aug_smooth"),
    (
        featvis.visualize_saliency,
        {"method": "smoothgrads"},
        "method='smoothgrads'.*close matches: smoothgrad",
    ),
    (featvis.visualize_saliency, {"method": "integrated_gradients", "steps": 0}, "steps"),
    (
        featvis.visualize_saliency,
        {"method": "integrated_gradients", "quadrature": "gauss"},
        "quadrature='gauss'",
    ),
    (
        featvis.visualize_saliency,
        {"method": "integrated_gradients", "baseline": np.zeros((8, 8, 3))},
        "baseline",
    ),
    (featvis.visualize_saliency, {"method": "occlusion", "window": 64}, "window"),
    (featvis.visualize_saliency, {"method": "occlusion", "baseline": np.zeros((8, 8, 3))}, "baseline"),
    (featvis.visualize_saliency, {"method": "integrated_gradients", "baseline": "black"}, "baseline"),
    (featvis.visualize_saliency, {"method": "occlusion", "stride": 0}, "stride"),
    (featvis.visualize_saliency, {"method": "occlusion", "backprop_modifier": "guided"}, "backprop_modifier"),
    (featvis.visualize_saliency, {"percentile": 0}, "percentile"),
    (featvis.visualize_saliency, {"percentile": 101}, "percentile"),
    (featvis.visualize_saliency, {"input_range": None, "preprocess": Normalize()}, "preprocess"),
]


@pytest.mark.parametrize(("function", "kwargs", "named"), BAD_CALLS)
def test_bad_new_arguments_raise_named_errors_and_leave_the_model_untouched(function, kwargs, named):
    model = make_tiny()
    before = snapshot(model)
    with pytest.raises(featvis.FeatvisError, match=named.replace("(", r"\(")):
        function(model, "fc", 3, _images(1)[0], **kwargs)
    assert_untouched(model, before)


def test_integrated_gradients_refuses_zero_steps_and_a_wrong_baseline():
    model = make_tiny()
    loss = ActivationMaximization("fc", 1)
    with pytest.raises(featvis.FeatvisValueError, match="steps=0"):
        featvis.integrated_gradients(model, loss, _images(1)[0], steps=0)
    with pytest.raises(featvis.FeatvisValueError, match="baseline"):
        featvis.integrated_gradients(model, loss, _images(2), baseline=_images(3))
    with pytest.raises(
        featvis.FeatvisValueError, match="quadrature='trapezoid'.*gausslegendre, riemann_middle"
    ):
        featvis.integrated_gradients(model, loss, _images(1)[0], quadrature="trapezoid")
    with pytest.raises(featvis.FeatvisError, match="return_delta"):
        featvis.integrated_gradients(model, loss, _images(1)[0], return_delta=1)


def test_register_cam_accepts_a_context_method():
    from featvis.cam_methods import ContextMethod

    model = make_tiny()
    CAM_METHODS.register("test_mean", ContextMethod(lambda ctx: ctx.activations.mean(1)))
    try:
        cam = featvis.visualize_cam(
            copy.deepcopy(model), "fc", 3, _images(1)[0], method="test_mean", penultimate_layer="act2"
        )
        assert cam.shape == (1, 32, 32)
    finally:
        CAM_METHODS.unregister("test_mean")


def test_deletion_and_insertion_curves_follow_the_map_order():
    from featvis import metrics

    model = make_tiny()
    before = snapshot(model)
    images = _images(2)
    good = featvis.visualize_saliency(model, "fc", 3, images, method="occlusion", window=8, stride=4)
    bad = 1 - good
    kwargs = dict(steps=8, score="logit")
    d_good = metrics.deletion(model, "fc", 3, images, good, **kwargs)
    d_bad = metrics.deletion(model, "fc", 3, images, bad, **kwargs)
    i_good = metrics.insertion(model, "fc", 3, images, good, **kwargs)
    assert d_good.scores.shape == (2, 9) and d_good.fractions[0] == 0 and d_good.fractions[-1] == 1
    np.testing.assert_allclose(d_good.scores[:, -1], d_bad.scores[:, -1], rtol=1e-5)  # all removed
    np.testing.assert_allclose(d_good.scores[:, 0], i_good.scores[:, -1], rtol=1e-5)  # the image itself
    assert np.all(d_good.areas < d_bad.areas)
    chunked = metrics.deletion(model, "fc", 3, images, good, batch_size=5, **kwargs)
    np.testing.assert_allclose(chunked.scores, d_good.scores, rtol=1e-5, atol=1e-6)
    probability = metrics.deletion(model, "fc", 3, images, good, steps=4)
    assert np.all((probability.scores >= 0) & (probability.scores <= 1))
    assert_untouched(model, before)


def test_pointing_game_and_share_on():
    from featvis import metrics

    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = 1
    maps[1, 3, 3] = 1
    left = np.zeros((4, 4), bool)
    left[:, :2] = True
    assert metrics.pointing_game(maps, left).tolist() == [True, False]
    assert metrics.pointing_game(maps, left, tolerance=2).tolist() == [True, True]
    assert metrics.share_on(maps, left).tolist() == [1.0, 0.0]
    with pytest.raises(featvis.FeatvisValueError, match="masks"):
        metrics.pointing_game(maps, np.zeros((3, 3), bool))


def test_randomization_check_works_on_a_copy_and_decorrelates_the_maps():
    from featvis import metrics

    model = make_tiny()
    before = snapshot(model)
    images = _images(2)
    state = torch.get_rng_state()

    def explain(m):
        return featvis.visualize_cam(m, "fc", 3, images, penultimate_layer="act2")

    results = metrics.randomization_check(model, explain, layers=["fc", "conv2"])
    assert [label for label, _ in results] == ["fc", "conv2"]
    assert all(values.shape == (2,) for _, values in results)
    assert results[-1][1].max() < 0.9
    ((label, values),) = metrics.randomization_check(model, explain)
    assert label == "all" and values.shape == (2,)
    assert torch.equal(torch.get_rng_state(), state)
    assert_untouched(model, before)
    with pytest.raises(featvis.FeatvisValueError, match="layers"):
        metrics.randomization_check(model, explain, layers=["nope"])


class _Blocks(torch.nn.Module):
    """A stem, a block (a container with no parameters of its own), a pool and a head."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.block = torch.nn.Sequential(
            torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1)
        )
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.pool(self.block(self.stem(x))).flatten(1))


def test_randomization_check_randomizes_every_parameter_inside_a_block_and_says_which():
    from featvis import metrics

    torch.manual_seed(0)
    model = _Blocks().eval()
    before = snapshot(model)
    states = []

    def explain(m):
        states.append({k: v.detach().clone() for k, v in m.named_parameters()})
        return np.stack([m.block[0].weight.detach()[:, :, 0, 0].numpy()] * 2)

    results = metrics.randomization_check(model, explain, layers=["block", "fc"])
    trained, after_block, after_fc = states
    changed = [
        {k for k in trained if not torch.equal(trained[k], state[k])} for state in (after_block, after_fc)
    ]
    block = {"block.0.weight", "block.0.bias", "block.2.weight", "block.2.bias"}
    assert changed == [block, block | {"fc.weight", "fc.bias"}]
    assert [label for label, _ in results] == ["block", "fc"]
    assert results[0].parameters == {
        "block.0.weight": 576,
        "block.0.bias": 8,
        "block.2.weight": 64,
        "block.2.bias": 8,
    }
    assert results[1].parameters == {"fc.weight": 32, "fc.bias": 4}
    assert results[0].correlations.shape == (2,)
    ((label, _),) = metrics.randomization_check(model, explain)
    assert label == "all"
    assert_untouched(model, before)


def test_randomization_check_takes_every_layer_spec_and_refuses_a_layer_without_parameters():
    from featvis import metrics

    torch.manual_seed(0)
    model = _Blocks().eval()
    before = snapshot(model)

    def explain(m):
        return m.stem[0].weight.detach()[:, :, 0, 0].numpy()[None]

    by_module, by_index = metrics.randomization_check(
        model, explain, layers=[model.block, -1], input_range=(0.0, 1.0)
    )
    assert set(by_module.parameters) == {"block.0.weight", "block.0.bias", "block.2.weight", "block.2.bias"}
    assert by_module.label == "block" and by_index.label == "fc"
    assert by_index.parameters == {"fc.weight": 32, "fc.bias": 4}
    with pytest.raises(featvis.FeatvisValueError, match="layers") as err:
        metrics.randomization_check(model, explain, layers=["fc", "pool"], input_range=(0.0, 1.0))
    assert "'pool'" in str(err.value) and "no parameters" in str(err.value)
    with pytest.raises(featvis.LayerNotFoundError, match="layers"):
        metrics.randomization_check(model, explain, layers=["blok"], input_range=(0.0, 1.0))
    assert_untouched(model, before)


def test_metrics_refuse_bad_arguments_with_named_errors():
    from featvis import metrics

    model = make_tiny()
    before = snapshot(model)
    images = _images(1)
    maps = np.ones((1, 32, 32))
    for kwargs, named in [
        ({"steps": 0}, "steps"),
        ({"score": "prob"}, "score"),
        ({"baseline": "gray"}, "baseline"),
    ]:
        with pytest.raises(featvis.FeatvisError, match=named):
            metrics.deletion(model, "fc", 3, images, maps, **kwargs)
    with pytest.raises(featvis.FeatvisError, match="maps"):
        metrics.insertion(model, "fc", 3, images, np.ones((1, 16, 16)))
    assert_untouched(model, before)


def test_cam_command_prints_the_metrics(tmp_path, capsys):
    from PIL import Image

    from featvis.cli import main

    image = tmp_path / "in.png"
    Image.fromarray(np.rint(_images(1)[0]).astype(np.uint8)).save(image)
    out = tmp_path / "map.png"
    args = ["cam", "--model", "conftest:make_tiny", "--preprocess", "none", "--layer", "fc"]
    args += ["--image", str(image), "--filter", "2", "--size", "32", "--out", str(out)]
    main([*args, "--penultimate", "act2", "--method", "scorecam", "--aug-smooth", "--metrics"])
    printed = capsys.readouterr().out
    assert "deletion area:" in printed and "insertion area:" in printed
    assert Image.open(out).size == (32, 32)


class _RedAndBlue(torch.nn.Module):
    """Unit 0 counts red pixels, unit 1 blue ones: conv (a red and a blue detector) - ReLU - mean - fc."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0], self.conv.weight[0, 1:] = 1 / 9, -1 / 9  # red, not white
            self.conv.weight[1, 2], self.conv.weight[1, :2] = 1 / 9, -1 / 9  # blue
            self.conv.bias.fill_(-0.1)
            self.fc.weight.copy_(50 * torch.eye(2))  # logits far apart: Score-CAM's softmax picks one channel
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def _red_left_blue_right():
    image = np.zeros((32, 32, 3), np.float32)
    image[8:24, 3:13, 0] = 1.0  # a red object on the left half
    image[10:22, 19:29, 2] = 1.0  # a blue one on the right half
    left = np.zeros((32, 32), bool)
    left[:, :16] = True
    return image, left


CLASS_CAMS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam"]
PER_UNIT_CALLS = [
    *[(featvis.visualize_cam_with_losses, {"method": m, "penultimate_layer": "act"}) for m in CLASS_CAMS],
    (featvis.visualize_saliency_with_losses, {"method": "vanilla"}),
    (featvis.visualize_saliency_with_losses, {"method": "integrated_gradients", "steps": 16}),
    (featvis.visualize_saliency_with_losses, {"method": "occlusion", "window": 8, "stride": 4}),
]


@pytest.mark.parametrize(("function", "kwargs"), PER_UNIT_CALLS, ids=[k["method"] for _, k in PER_UNIT_CALLS])
def test_maps_per_image_and_unit_point_at_each_units_own_object(function, kwargs):
    """UnitPerImage gives row i unit units[i]: the red unit's map lies on the red object, the blue
    unit's on the blue one, in one batched call, as the calls for one unit at a time give them."""
    from featvis import UnitPerImage, metrics

    model = _RedAndBlue().eval()
    before = snapshot(model)
    image, left = _red_left_blue_right()
    images = np.stack([image, image, image])
    units = [0, 1, 0]
    maps = function(model, UnitPerImage("fc", units), images, input_range=(0.0, 1.0), **kwargs)
    objects = np.stack([left, ~left, left])
    assert metrics.pointing_game(maps, objects).all(), metrics.share_on(maps, objects)
    assert (metrics.share_on(maps, objects) > 0.8).all(), metrics.share_on(maps, objects)
    for unit in (0, 1):
        alone = function(model, ActivationMaximization("fc", unit), image, input_range=(0.0, 1.0), **kwargs)
        np.testing.assert_allclose(maps[unit], alone[0], atol=1e-4)
    assert_untouched(model, before)


@pytest.mark.parametrize("method", ["vanilla", "integrated_gradients", "occlusion"])
def test_saliency_methods_work_on_a_model_of_one_input_size(method):
    """A model that takes 16 x 16 images only (a flatten into a linear layer) is probed at its
    input's size, not at featvis's 224 px default."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4)).eval()
    before = snapshot(model)
    image = np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    kwargs = {"steps": 4} if method == "integrated_gradients" else {"window": 4, "stride": 4}
    maps = featvis.visualize_saliency(model, "1", 2, image, method=method, input_range=(0.0, 1.0), **kwargs)
    assert maps.shape == (1, 16, 16) and np.isfinite(maps).all() and maps.max() == 1
    assert_untouched(model, before)
