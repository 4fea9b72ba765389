"""What the README promises, checked from the user's side through the public API only.

Every model here is tiny and built so that the right answer is known by construction:
which modules may run, which mode each module is in, which quadrant a map must light
up, which sign a backprop rule must see. No test reaches into featvis's internals, so
these survive a rewrite of how featvis prepares and runs the model.
"""

import numpy as np
import pytest
import torch
from torch import nn

import featvis
from featvis.losses import FunctionLoss

from conftest import assert_untouched, snapshot

# ---------------------------------------------------------------------------------------------
# The forward pass stops at the target layer: modules after it never run during optimization.


class Counted(nn.Module):
    """Runs `inner` and records every call: (name, gradients enabled?, training flag of inner).

    The record goes through ``log.append`` (a built-in bound method), which any copy of
    the module, shallow or deep, shares with the original.
    """

    def __init__(self, inner: nn.Module, name: str, log: list):
        super().__init__()
        self.inner = inner
        self.label = name
        self.record = log.append

    def forward(self, x):
        self.record((self.label, torch.is_grad_enabled(), self.inner.training))
        return self.inner(x)


class Chain(nn.Module):
    """conv-BN-ReLU-conv (the target, ``"target"``) then three modules that must not run, then a head.

    The conv-BN pair lets featvis use its fused copy of the model; a forward hook of the
    user's (see `hooks`) makes it run the model itself: both paths are checked.
    """

    def __init__(self, log: list):
        super().__init__()
        self.conv1 = Counted(nn.Conv2d(3, 8, 3, padding=1), "conv1", log)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU()
        self.target = Counted(nn.Conv2d(8, 8, 3, padding=1), "target", log)
        self.after = nn.Sequential(
            Counted(nn.Conv2d(8, 8, 3, padding=1), "after.conv", log),
            Counted(nn.BatchNorm2d(8), "after.bn", log),
            Counted(nn.Dropout(0.5), "after.drop", log),
        )
        self.head = Counted(nn.Linear(8, 4), "head", log)

    def forward(self, x):
        x = self.target(self.act1(self.bn1(self.conv1(x))))
        x = self.after(x)
        return self.head(x.mean(dim=(2, 3)))


AFTER = {"after.conv", "after.bn", "after.drop", "head"}


def make_chain(log: list) -> nn.Module:
    torch.manual_seed(0)
    model = Chain(log).eval()
    with torch.no_grad():  # batch-norm statistics that are not the identity, so folding them matters
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model


def _calls(log: list, names: set, grad: bool | None = None) -> int:
    return sum(1 for name, enabled, _ in log if name in names and (grad is None or enabled == grad))


SMALL = dict(size=16, views=1, seed=0, progress=False)


@pytest.mark.parametrize("hooked", [False, True], ids=["fused-copy", "model-itself"])
@pytest.mark.parametrize("steps", [1, 13])
def test_modules_after_the_target_never_run_during_optimization(hooked, steps):
    log: list = []
    model = make_chain(log)
    handle = model.conv1.register_forward_hook(lambda *args: None) if hooked else None
    featvis.visualize_activation(model, "target", 0, max_iter=steps, **SMALL)
    # One forward per step reaches the target with gradients on; nothing after it runs then.
    assert _calls(log, {"target"}, grad=True) == steps
    assert _calls(log, AFTER, grad=True) == 0
    # Listing the layers may run the whole model once, without gradients; never once per step.
    assert all(_calls(log, {name}) <= 1 for name in AFTER)
    if handle is not None:
        handle.remove()


def test_a_whole_layer_and_several_views_still_stop_at_the_target():
    log: list = []
    model = make_chain(log)
    featvis.visualize_layer(model, "target", [0, 1, 2], batch_size=3, max_iter=4, **{**SMALL, "views": 2})
    assert _calls(log, {"target"}, grad=True) == 4  # one batched forward per step for the 3 units
    assert _calls(log, AFTER, grad=True) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda m, img: featvis.visualize_saliency(m, "target", 0, img),
        lambda m, img: featvis.visualize_saliency(m, "target", 0, img, smooth_samples=3),
        lambda m, img: featvis.visualize_cam(m, "target", 0, img, penultimate_layer="act1"),
        lambda m, img: featvis.visualize_guided_cam(m, "target", 0, img, penultimate_layer="act1"),
        lambda m, img: featvis.activations_reached(m, "target", [0], img[None]),
    ],
    ids=["saliency", "smoothgrad", "gradcam", "guided-gradcam", "activations_reached"],
)
def test_attention_and_reading_a_layer_stop_at_the_target(call):
    log: list = []
    model = make_chain(log)
    image = np.random.default_rng(0).uniform(0, 255, (16, 16, 3))
    call(model, image)
    assert _calls(log, {"target"}) >= 1
    assert _calls(log, AFTER, grad=True) == 0


def test_reading_a_layer_runs_what_comes_after_it_at_most_once():
    log: list = []
    model = make_chain(log)
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3))
    featvis.activations_reached(model, "target", [0, 1], images)
    assert all(_calls(log, {name}) <= 1 for name in AFTER)  # at most the pass that lists the layers


# ---------------------------------------------------------------------------------------------
# Every module's own train/eval flag and requires_grad flag come back as they were.

PUBLIC_CALLS = {
    "activation": lambda m, img: featvis.visualize_activation(m, "target", 1, max_iter=3, **SMALL),
    "layer": lambda m, img: featvis.visualize_layer(m, "target", [0, 1], max_iter=2, **SMALL),
    "saliency": lambda m, img: featvis.visualize_saliency(m, "head", 1, img),
    "cam": lambda m, img: featvis.visualize_cam(m, "head", 1, img),
    "cam++": lambda m, img: featvis.visualize_cam(m, "head", 1, img, method="gradcam++"),
    "guided cam": lambda m, img: featvis.visualize_guided_cam(m, "head", 1, img),
    "activations_reached": lambda m, img: featvis.activations_reached(m, "target", [0], img[None]),
    "layer_names": lambda m, img: featvis.layer_names(m, input_shape=(3, 16, 16)),
    "bad unit": lambda m, img: featvis.visualize_activation(m, "target", 99, max_iter=3, **SMALL),
    "bad layer": lambda m, img: featvis.visualize_cam(m, "nope", 1, img),
}


def _mixed_modes(model: nn.Module) -> nn.Module:
    """A training model with a frozen batch norm and an eval-mode dropout inside, and a frozen conv."""
    model.train()
    model.bn1.eval()
    model.after[2].eval()
    model.after[1].inner.eval()
    model.conv1.inner.weight.requires_grad_(False)
    return model


@pytest.mark.parametrize("name", PUBLIC_CALLS)
def test_each_modules_own_mode_and_flags_are_restored(name):
    log: list = []
    model = _mixed_modes(make_chain(log))
    image = np.random.default_rng(1).uniform(0, 255, (16, 16, 3))
    modes = {n: m.training for n, m in model.named_modules()}
    before = snapshot(model)
    try:
        PUBLIC_CALLS[name](model, image)
    except featvis.FeatvisError:
        assert name.startswith("bad")
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert model.bn1.training is False and model.after[1].inner.training is False
    assert model.training is True and model.target.inner.training is True
    assert_untouched(model, before)  # weights, BN statistics, requires_grad flags, hooks
    assert all(p.grad is None for p in model.parameters())
    # while featvis ran the model, every module was in eval mode (dropout off, BN statistics frozen)
    assert log and not any(training for _, _, training in log)


# ---------------------------------------------------------------------------------------------
# NaN or infinity in a gradient stops the optimization and says where.


def sqrt_at_zero(ctx):
    """Finite value (0), infinite gradient: d sqrt(u) / du at u = 0."""
    return (ctx.images - ctx.images.detach()).clamp(min=0).sqrt().mean(dim=(1, 2, 3))


def abs_sqrt_at_zero(ctx):
    """Finite value (0), NaN gradient (infinity times the zero derivative of |u| at 0)."""
    return (ctx.images - ctx.images.detach()).abs().sqrt().mean(dim=(1, 2, 3))


class NaNBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


class BadGradient(nn.Module):
    """A model whose forward is finite and whose backward is NaN (through the model path)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(NaNBackward.apply(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("loss", [sqrt_at_zero, abs_sqrt_at_zero])
def test_a_finite_loss_with_a_non_finite_gradient_stops_at_step_1(tiny, loss):
    before = snapshot(tiny)
    terms = [(featvis.ActivationMaximization("fc", 0), 1.0), (FunctionLoss(loss), 1.0)]
    with pytest.raises(featvis.NonFiniteError, match=r"step 1\b.*(gradient|NaN|infinite)"):
        featvis.visualize_activation_with_losses(tiny, terms, max_iter=5, **SMALL)
    assert_untouched(tiny, before)


def test_a_gradient_that_turns_non_finite_later_names_that_step(tiny):
    calls = []

    def late(ctx):
        calls.append(1)
        if len(calls) == 3:
            return sqrt_at_zero(ctx)
        return -ctx.images.mean(dim=(1, 2, 3))

    with pytest.raises(featvis.NonFiniteError, match=r"step 3\b"):
        featvis.visualize_activation_with_losses(tiny, [(FunctionLoss(late), 1.0)], max_iter=20, **SMALL)


def test_a_model_with_a_non_finite_backward_stops_at_step_1():
    model = BadGradient()
    before = snapshot(model)
    through = r"^step 1: the gradient that comes back through the model \(before the grad modifier\)"
    with pytest.raises(featvis.NonFiniteError, match=through):
        featvis.visualize_activation(model, "fc", 0, max_iter=4, **SMALL)
    assert_untouched(model, before)


class InfiniteOutput(nn.Module):
    """A model whose output is infinite on any input (a broken head: an infinite bias)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.bias.fill_(float("inf"))

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_a_model_that_outputs_inf_on_the_input_is_told_so_not_to_lower_lr():
    model = InfiniteOutput().eval()
    before = snapshot(model)
    with pytest.raises(featvis.NonFiniteError, match=r"^step 1: ") as err:
        featvis.visualize_activation(model, "fc", 0, max_iter=4, **SMALL)
    message = str(err.value)
    assert "'fc'" in message and "input_range" in message and "preprocess" in message
    assert "on the starting image" in message  # not an image the optimization made
    assert "lr" not in message and "autocast" not in message
    assert_untouched(model, before)
    with pytest.raises(featvis.NonFiniteError, match=r"on the starting image.*\(and autocast=\)"):
        featvis.visualize_activation(model, "fc", 0, max_iter=4, autocast=torch.bfloat16, **SMALL)


class InfiniteLater(InfiniteOutput):
    """Finite at first; from its 6th forward on, an infinite output (as on an image gone too far)."""

    def __init__(self):
        super().__init__()
        with torch.no_grad():
            self.fc.bias.zero_()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        features = self.conv(x).mean(dim=(2, 3))
        return self.fc(features + (float("inf") if self.calls >= 6 else 0.0))


def test_a_model_that_outputs_inf_on_a_later_image_names_that_steps_image():
    model = InfiniteLater().eval()
    with pytest.raises(featvis.NonFiniteError, match=r"^step \d+: ") as err:
        featvis.visualize_activation(model, "fc", 0, max_iter=20, input_range=(0.0, 1.0), **SMALL)
    step = int(str(err.value).split(":")[0].removeprefix("step "))
    assert step > 1 and f"on the image of step {step}, in input_range" in str(err.value)


def test_a_grad_modifier_that_makes_the_gradient_non_finite_is_told_apart_from_the_model(tiny):
    # the model's gradient is finite; what the modifier makes of it reaches the image parameters
    with pytest.raises(featvis.NonFiniteError, match="^step 1: the gradient of the image parameters became"):
        featvis.visualize_activation(
            tiny, "fc", 0, max_iter=4, grad_modifier=lambda g: g * float("nan"), **SMALL
        )


def test_an_infinite_loss_value_names_the_term_and_the_total(tiny):
    def huge(ctx):
        return ctx.images.mean(dim=(1, 2, 3)) * float("inf")

    terms = [(featvis.ActivationMaximization("fc", 0), 1.0), (FunctionLoss(huge), 1.0)]
    with pytest.raises(
        featvis.NonFiniteError, match=r"^step 1: term\(s\) huge, total became NaN or infinite"
    ):
        featvis.visualize_activation_with_losses(tiny, terms, max_iter=5, **SMALL)


# The README promises that a non-finite gradient is named with its step and its term.
@pytest.mark.parametrize(
    ("make", "term"),
    [
        (lambda: [(FunctionLoss(sqrt_at_zero), 1.0)], "sqrt_at_zero"),
        (lambda: [(FunctionLoss(abs_sqrt_at_zero, name="bumpy"), 1.0)], "bumpy"),
    ],
    ids=["inf", "nan"],
)
def test_a_non_finite_gradient_is_named_with_its_step_and_term(tiny, make, term):
    with pytest.raises(featvis.NonFiniteError, match=rf"step 1\b.*{term}|{term}.*step 1\b"):
        featvis.visualize_activation_with_losses(tiny, make(), max_iter=5, **SMALL)


# ---------------------------------------------------------------------------------------------
# Attention maps: right by construction, and never NaN.


class TwoChannels(nn.Module):
    """features = ReLU(input channels 0 and 1) (a 1x1 conv), global average pool, linear head.

    Class scores are fixed combinations of the two feature channels' means:
    class 0 = A0, class 1 = A1, class 2 = A0 - 2 A1, class 3 = A0 + A1, class 4 = A0 - A1.
    The gradient of a class at the features is uniform over space (w_c / HW), so Grad-CAM
    and Grad-CAM++ have closed forms.
    """

    HEAD = [[1.0, 0.0], [0.0, 1.0], [1.0, -2.0], [1.0, 1.0], [1.0, -1.0]]

    def __init__(self):
        super().__init__()
        self.pick = nn.Conv2d(3, 2, 1, bias=False)
        self.features = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(2, 5, bias=False)
        with torch.no_grad():
            self.pick.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])[:, :, None, None])
            self.fc.weight.copy_(torch.tensor(self.HEAD))

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.features(self.pick(x)))))


N = 16
H = N // 2
TOP, BOTTOM, LEFT, RIGHT = np.s_[:H, :], np.s_[H:, :], np.s_[:, :H], np.s_[:, H:]


def _image(channel0, channel1) -> np.ndarray:
    """An (N, N, 3) float image in [0, 1]: channel 0 and 1 are 1 where the masks say, channel 2 is 0."""
    image = np.zeros((N, N, 3), np.float32)
    image[(*channel0, 0)] = 1.0
    image[(*channel1, 1)] = 1.0
    return image


def _mask(*regions) -> np.ndarray:
    mask = np.zeros((N, N), np.float32)
    for region in regions:
        mask[region] = 1.0
    return mask


TOP_LEFT, TOP_RIGHT = np.s_[:H, :H], np.s_[:H, H:]
BOTTOM_LEFT, BOTTOM_RIGHT = np.s_[H:, :H], np.s_[H:, H:]
UNIT = dict(input_range=(0.0, 1.0))


@pytest.fixture
def two():
    return TwoChannels().eval()


def test_grad_cam_lights_up_exactly_where_the_class_evidence_is(two):
    image = _image(TOP, LEFT)  # A0: the top half, A1: the left half
    # penultimate layer found by itself: the last spatial layer before fc is `features`
    cam = featvis.visualize_cam(two, "fc", [0, 1, 2], image, **UNIT)
    assert cam.shape == (1, N, N)
    np.testing.assert_allclose(featvis.visualize_cam(two, "fc", 0, image, **UNIT)[0], _mask(TOP), atol=1e-6)
    np.testing.assert_allclose(featvis.visualize_cam(two, "fc", 1, image, **UNIT)[0], _mask(LEFT), atol=1e-6)
    # class 2 = A0 - 2 A1: weights (1, -2) / HW; ReLU(A0 - 2 A1) is positive only in the top right
    np.testing.assert_allclose(
        featvis.visualize_cam(two, "fc", 2, image, **UNIT)[0], _mask(TOP_RIGHT), atol=1e-6
    )


def test_grad_cam_plus_plus_drops_channels_with_negative_gradients(two):
    image = _image(TOP, LEFT)
    # class 2 = A0 - 2 A1: Grad-CAM++ weights use ReLU(gradient), so A1 gets weight 0: the map is A0
    campp = featvis.visualize_cam(two, "fc", 2, image, method="gradcam++", **UNIT)[0]
    np.testing.assert_allclose(campp, _mask(TOP), atol=1e-6)
    gradcam = featvis.visualize_cam(two, "fc", 2, image, **UNIT)[0]
    assert not np.allclose(campp, gradcam)  # Grad-CAM subtracts A1 where Grad-CAM++ ignores it
    # class 0 = A0: A1's gradient is 0 everywhere, a zero weight (not 0 / 0) for a channel it ignores
    only_a0 = featvis.visualize_cam(two, "fc", 0, image, method="gradcam++", **UNIT)[0]
    np.testing.assert_allclose(only_a0, _mask(TOP), atol=1e-6)


def test_grad_cam_plus_plus_weights_follow_the_closed_form(two):
    # A0 = 1 on the top-left quadrant (sum 64), A1 = 1 on the bottom half (sum 128); class 3 = A0 + A1.
    # Gradient g = 1/HW for both; alpha_c = g^2 / (2 g^2 + sum(A_c) g^3) = 1 / (2 + sum(A_c) / HW);
    # weight_c = sum over space of alpha_c * ReLU(g) = alpha_c.
    image = _image(TOP_LEFT, BOTTOM)
    alpha0, alpha1 = 1 / (2 + 64 / N**2), 1 / (2 + 128 / N**2)
    expected = alpha0 * _mask(TOP_LEFT) + alpha1 * _mask(BOTTOM)
    expected /= expected.max()  # top left 1, bottom half 0.9, top right 0
    campp = featvis.visualize_cam(two, "fc", 3, image, method="gradcam++", **UNIT)[0]
    np.testing.assert_allclose(campp, expected, atol=1e-6)
    assert np.isclose(campp[BOTTOM].mean(), 0.9, atol=1e-6)
    # Grad-CAM weighs both channels by the mean gradient, equal here: both regions reach 1
    gradcam = featvis.visualize_cam(two, "fc", 3, image, **UNIT)[0]
    np.testing.assert_allclose(gradcam, _mask(TOP_LEFT, BOTTOM), atol=1e-6)


def test_grad_cam_of_a_lowered_output_shows_where_it_is_lowered(two):
    image = _image(TOP, LEFT)
    # class 4 = A0 - A1; 'negate' asks what lowers it: A1, the left half, not where A0 is
    down = featvis.visualize_cam(two, "fc", 4, image, grad_modifier="negate", **UNIT)[0]
    np.testing.assert_allclose(down, _mask(BOTTOM_LEFT), atol=1e-6)
    up = featvis.visualize_cam(two, "fc", 4, image, **UNIT)[0]
    np.testing.assert_allclose(up, _mask(TOP_RIGHT), atol=1e-6)


def test_saliency_maps_by_construction(two):
    image = _image(TOP, LEFT)
    # class 0: d score / d input = 1/HW on channel 0 where it is active (the top half), else 0
    np.testing.assert_allclose(featvis.visualize_saliency(two, "fc", 0, image, **UNIT)[0], _mask(TOP))
    # class 2 = A0 - 2 A1: |gradient| is 1/HW on the top half (channel 0), 2/HW on the left half
    # (channel 1); the max over channels, normalized: left half 1, top right 0.5, bottom right 0
    plain = featvis.visualize_saliency(two, "fc", 2, image, **UNIT)[0]
    np.testing.assert_allclose(plain, _mask(LEFT) + 0.5 * _mask(TOP_RIGHT), atol=1e-6)
    # guided backprop passes only what raises the class: channel 0's gradient, not channel 1's
    guided = featvis.visualize_saliency(two, "fc", 2, image, backprop_modifier="guided", **UNIT)[0]
    np.testing.assert_allclose(guided, _mask(TOP), atol=1e-6)
    # keepdims: one map per input channel, each normalized with the others (channel 2 gets nothing)
    per_channel = featvis.visualize_saliency(two, "fc", 2, image, keepdims=True, **UNIT)[0]
    np.testing.assert_allclose(per_channel[..., 0], 0.5 * _mask(TOP), atol=1e-6)
    np.testing.assert_allclose(per_channel[..., 1], _mask(LEFT), atol=1e-6)
    np.testing.assert_allclose(per_channel[..., 2], 0, atol=1e-6)
    # the percentile scales all channels together: of the 768 values 512 are 0, 128 are 1/HW
    # (channel 0), 128 are 2/HW (channel 1); the 80th percentile is 1/HW, above it clipped to 1
    at_80 = featvis.visualize_saliency(two, "fc", 2, image, keepdims=True, percentile=80, **UNIT)[0]
    np.testing.assert_allclose(at_80[..., 0], _mask(TOP), atol=1e-6)
    np.testing.assert_allclose(at_80[..., 1], _mask(LEFT), atol=1e-6)


def test_guided_grad_cam_is_the_guided_gradient_where_the_cam_is(two):
    image = _image(TOP, LEFT)
    # class 2: CAM = top right; guided gradient = channel 0 on the top half: product = top right
    maps = featvis.visualize_guided_cam(two, "fc", 2, image, **UNIT)[0]
    np.testing.assert_allclose(maps, _mask(TOP_RIGHT), atol=1e-6)


def test_guided_grad_cam_drops_the_gradient_that_lowers_the_class_where_the_cam_is(two):
    image = np.zeros((N, N, 3), np.float32)
    image[..., 0] = 1.0  # A0 = 1 everywhere
    image[(*TOP_LEFT, 1)] = 0.25  # A1 = 0.25 on the top left, 1 on the bottom right, 0 elsewhere
    image[(*BOTTOM_RIGHT, 1)] = 1.0
    # class 2 = A0 - 2 A1: CAM = ReLU(A0 - 2 A1), normalized: 0.5 on the top left, 0 on the bottom
    # right, 1 elsewhere. The input gradient is 1/HW on channel 0 everywhere and -2/HW on channel 1
    # where A1 is active; guided backprop drops the negative one, so channel 1 gets nothing, even
    # on the top left where the CAM is positive (the plain gradient would make it the maximum there)
    expected = 0.5 * _mask(TOP_LEFT) + _mask(TOP_RIGHT, BOTTOM_LEFT)
    per_channel = featvis.visualize_guided_cam(two, "fc", 2, image, keepdims=True, **UNIT)[0]
    np.testing.assert_allclose(per_channel[..., 0], expected, atol=1e-6)
    np.testing.assert_allclose(per_channel[..., 1:], 0, atol=1e-6)
    maps = featvis.visualize_guided_cam(two, "fc", 2, image, **UNIT)[0]  # the max over channels
    np.testing.assert_allclose(maps, expected, atol=1e-6)


def test_smoothgrad_averages_noisy_copies_and_stays_on_the_evidence(two):
    image = _image(TOP, LEFT)
    smooth = featvis.visualize_saliency(two, "fc", 0, image, smooth_samples=8, smooth_noise=0.05, **UNIT)[0]
    # channel 0 is 1 +- noise on the top half: active in every sample, gradient 1/HW each time
    np.testing.assert_allclose(smooth[TOP], 1, atol=1e-6)
    # and 0 +- noise on the bottom half: active in the k samples whose noise is positive, so the
    # mean gradient there is (k / 8) / HW; normalized from the least active pixel's k0 (the map's
    # minimum) to the top's 8, a pixel reads (k - k0) / (8 - k0): a grid of steps 1 / (8 - k0)
    bottom = smooth[BOTTOM]
    assert bottom.min() == 0
    assert any(np.allclose((8 - k0) * bottom, np.round((8 - k0) * bottom), atol=1e-5) for k0 in range(8))
    assert 0.2 < bottom.mean() < 0.7
    again = featvis.visualize_saliency(two, "fc", 0, image, smooth_samples=8, smooth_noise=0.05, **UNIT)[0]
    np.testing.assert_array_equal(smooth, again)  # seeded: the same noise each call


def test_smoothgrad_of_one_sample_is_the_map_of_one_noisy_copy(two):
    image = _image(TOP, LEFT)
    one = featvis.visualize_saliency(two, "fc", 0, image, smooth_samples=1, smooth_noise=0.05, **UNIT)[0]
    # one noisy copy: each pixel of the bottom half (0 +- noise) is active or not, nothing between
    assert set(np.unique(one)) == {0.0, 1.0}
    np.testing.assert_array_equal(one[TOP], 1)
    assert 0.2 < one[BOTTOM].mean() < 0.8


class InfiniteFeatures(nn.Module):
    """Finite gradients, but a feature map (and so the score) that is infinite where the input is bright."""

    def __init__(self):
        super().__init__()
        self.pick = nn.Conv2d(3, 2, 1, bias=False)
        self.features = nn.ReLU()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.pick.weight.fill_(0.5)
            self.fc.weight.copy_(torch.eye(2))

    def forward(self, x):
        a = self.pick(x)
        a = torch.where(x[:, :1] > 0.9, torch.full_like(a, float("inf")), a)
        return self.fc(self.features(a).mean(dim=(2, 3)))


ATTENTION_CALLS = {
    "saliency": lambda m, img: featvis.visualize_saliency(m, "fc", 0, img, **UNIT),
    "smoothgrad": lambda m, img: featvis.visualize_saliency(m, "fc", 0, img, smooth_samples=2, **UNIT),
    "gradcam": lambda m, img: featvis.visualize_cam(m, "fc", 0, img, **UNIT),
    "gradcam++": lambda m, img: featvis.visualize_cam(m, "fc", 0, img, method="gradcam++", **UNIT),
    "guided-gradcam": lambda m, img: featvis.visualize_guided_cam(m, "fc", 0, img, **UNIT),
}

# With infinite feature maps and finite gradients a CAM would be NaN everywhere: featvis refuses it.


@pytest.mark.parametrize(
    ("model", "name"),
    [("nan-backward", name) for name in ATTENTION_CALLS]
    + [pytest.param("infinite-features", name) for name in ATTENTION_CALLS],
)
def test_attention_maps_never_come_back_with_nan(model, name):
    net = BadGradient() if model == "nan-backward" else InfiniteFeatures()
    image = np.random.default_rng(0).uniform(0, 1, (N, N, 3)).astype(np.float32)
    try:
        maps = ATTENTION_CALLS[name](net, image)
    except featvis.FeatvisError as err:
        assert "NaN" in str(err) or "infinite" in str(err)
    else:
        assert np.isfinite(maps).all(), "a map with NaN was returned without an error"


# ---------------------------------------------------------------------------------------------
# The sign a backprop rule sees during optimization: the gradient of what is maximized.


def _optimize_class_4(model, **kwargs):
    """Maximize class 4 = mean(ReLU(x0)) - mean(ReLU(x1)) from a gray image, plain pixels, no transforms."""
    gray = np.full((N, N, 3), 0.5, np.float32)
    return featvis.visualize_activation(
        model,
        "fc",
        4,
        seed_input=gray,
        method="pixel",
        input_modifiers=[],
        tv_weight=0,
        max_iter=5,
        lr=0.02,
        image_ema=None,
        views=1,
        seed=0,
        progress=False,
        **UNIT,
        **kwargs,
    )


def test_a_backprop_rule_sees_the_gradient_of_the_score_being_raised(two):
    seen = []

    def spy(x, grad_output, local_grad):
        seen.append(grad_output.detach().clone())
        return grad_output * local_grad

    spied = _optimize_class_4(two, backprop_modifier=spy)
    assert len(seen) == 5  # one ReLU call per step
    for grad in seen:  # raising A0 raises the class, raising A1 lowers it
        assert (grad[:, 0] > 0).all() and (grad[:, 1] < 0).all()
    np.testing.assert_array_equal(spied, _optimize_class_4(two))  # the plain rule changes nothing


@pytest.mark.parametrize("rule", ["guided", "relu"])
def test_guided_and_rectified_keep_only_what_raises_the_unit(two, rule):
    plain = _optimize_class_4(two)
    assert plain[..., 0].min() > 0.55 and plain[..., 1].max() < 0.45  # A0 raised, A1 lowered
    kept = _optimize_class_4(two, backprop_modifier=rule)
    assert kept[..., 0].min() > 0.55  # what raises the class passes
    np.testing.assert_array_equal(kept[..., 1], 0.5)  # what lowers it is blocked: channel 1 untouched
    np.testing.assert_array_equal(kept[..., 2], 0.5)


def test_negate_lowers_the_output_and_leaves_regularizers_alone(two):
    lowered = _optimize_class_4(two, grad_modifier="negate")
    assert lowered[..., 0].max() < 0.45 and lowered[..., 1].min() > 0.55
    # the regularizers keep their own gradient: total variation still falls under 'negate'
    noisy = np.random.default_rng(0).uniform(0.3, 0.7, (N, N, 3)).astype(np.float32)
    result = featvis.visualize_activation(
        two,
        "fc",
        4,
        act_max_weight=0.0,
        seed_input=noisy,
        method="pixel",
        input_modifiers=[],
        max_iter=10,
        image_ema=None,
        grad_modifier="negate",
        seed=0,
        progress=False,
        return_result=True,
        **UNIT,
    )
    tv = result.history["TotalVariation"]
    assert tv[-1] < 0.8 * tv[0]


class Biased(TwoChannels):
    """TwoChannels with features = ReLU(x - 0.25): the map depends on the input's scale, not only its shape."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.pick = nn.Conv2d(channels, 2, 1)
        self.side = nn.Conv2d(channels, 1, 1)  # runs, but nothing depends on it
        with torch.no_grad():
            self.pick.weight.zero_()
            self.pick.weight[0, 0] = 1.0
            self.pick.weight[1, min(1, channels - 1)] = 1.0
            self.pick.bias.fill_(-0.25)

    def forward(self, x):
        self.side(x)
        return super().forward(x)


def _two_levels(channels: int = 3) -> np.ndarray:
    """Channel 0: 0.2 on the top-left quadrant, 0.8 on the top-right, 0 below (ReLU(x - 0.25): only the 0.8)."""
    image = np.zeros((N, N, channels), np.float32)
    image[(*TOP_LEFT, 0)] = 0.2
    image[(*TOP_RIGHT, 0)] = 0.8
    return image


def test_guided_grad_cam_per_channel_in_gray_and_with_the_layer_it_is_given():
    model = Biased().eval()
    image = _two_levels()
    # only the top right is active (0.8 - 0.25 > 0; 0.2 - 0.25 < 0): CAM and guided gradient agree there
    maps = featvis.visualize_guided_cam(model, "fc", 0, image, **UNIT)[0]
    np.testing.assert_allclose(maps, _mask(TOP_RIGHT), atol=1e-6)
    per_channel = featvis.visualize_guided_cam(model, "fc", 0, image, keepdims=True, **UNIT)
    assert per_channel.shape == (1, N, N, 3)
    np.testing.assert_allclose(per_channel[0, ..., 0], _mask(TOP_RIGHT), atol=1e-6)
    np.testing.assert_allclose(per_channel[0, ..., 1:], 0, atol=1e-6)
    gray = featvis.visualize_guided_cam(
        Biased(channels=1).eval(), "fc", 0, image[..., :1], channels=1, **UNIT
    )
    np.testing.assert_allclose(gray[0], _mask(TOP_RIGHT), atol=1e-6)
    # an RGB picture of a gray image (51 and 204 of 255), read as one channel: both levels are active now
    from PIL import Image

    picture = Image.fromarray(np.repeat(np.rint(255 * image[..., :1]), 3, axis=2).astype(np.uint8))
    gray = featvis.visualize_guided_cam(Biased(channels=1).eval(), "fc", 0, picture, channels=1)
    expected = (51 - 0.25) / (204 - 0.25) * _mask(TOP_LEFT) + _mask(TOP_RIGHT)
    np.testing.assert_allclose(gray[0], expected, atol=1e-5)
    with pytest.raises(featvis.FeatvisValueError, match="penultimate_layer"):
        featvis.visualize_guided_cam(model, "fc", 0, image, penultimate_layer="fc", **UNIT)


def test_cam_needs_a_penultimate_layer_that_the_loss_depends_on():
    model = Biased().eval()
    with pytest.raises(featvis.FeatvisValueError, match="penultimate_layer.*depends on"):
        featvis.visualize_cam(model, "fc", 0, _two_levels(), penultimate_layer="side", **UNIT)


def test_cam_and_saliency_with_a_preprocess_and_a_list_of_images():
    model = Biased().eval()
    image = _two_levels()
    as_bytes = (255 * image).round()

    def to_unit(x):
        return x / 255

    cam = featvis.visualize_cam(model, "fc", 0, as_bytes, preprocess=to_unit)  # penultimate found itself
    np.testing.assert_allclose(cam[0], _mask(TOP_RIGHT), atol=1e-6)
    pair = featvis.visualize_saliency(model, "fc", 0, [image, image[:, ::-1].copy()], **UNIT)
    np.testing.assert_allclose(pair[0], _mask(TOP_RIGHT), atol=1e-6)
    np.testing.assert_allclose(pair[1], _mask(TOP_LEFT), atol=1e-6)  # the mirrored image, its own map


def test_saliency_of_a_softmax_output_warns_that_it_reads_the_logits(functional_net):
    image = np.random.default_rng(0).uniform(0, 255, (32, 32, 3))
    with pytest.warns(featvis.FeatvisWarning, match="softmax"):
        maps = featvis.visualize_saliency(functional_net, "", 3, image)
    np.testing.assert_allclose(maps, featvis.visualize_saliency(functional_net, "fc", 3, image), atol=1e-6)


def test_default_smoothgrad_noise_keeps_a_fully_active_region_fully_active(two):
    image = _image(TOP, LEFT)
    # the default noise is 0.15 of the input range: channel 0 (1 on the top half) never drops below 0
    smooth = featvis.visualize_saliency(two, "fc", 0, image, smooth_samples=6, **UNIT)[0]
    np.testing.assert_allclose(smooth[TOP], 1, atol=1e-6)


def test_overlay_reads_float_images_in_zero_one_like_bytes():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    heat = rng.uniform(0, 1, (8, 8)).astype(np.float32)
    from_bytes = featvis.overlay(image, heat, alpha=0.3)
    from_floats = featvis.overlay(image.astype(np.float32) / 255, heat, alpha=0.3)
    np.testing.assert_allclose(from_bytes.astype(int), from_floats.astype(int), atol=1)


# The README: grad_modifier "works as in activation maximization (for a regression output,
# 'negate' shows what lowers it)", in saliency as in Grad-CAM.
def test_saliency_with_negate_shows_what_lowers_the_output(two):
    image = _image(TOP, LEFT)
    # class 4 = A0 - A1: raising channel 1 (the left half) lowers it; channel 0 (the top half) raises it
    down = featvis.visualize_saliency(two, "fc", 4, image, grad_modifier="negate", **UNIT)[0]
    np.testing.assert_allclose(down, _mask(LEFT), atol=1e-6)
    up = featvis.visualize_saliency(two, "fc", 4, image, grad_modifier="relu", **UNIT)[0]
    np.testing.assert_allclose(up, _mask(TOP), atol=1e-6)


@pytest.mark.parametrize(
    "register", ["register_full_backward_pre_hook", "register_full_backward_hook", "register_forward_hook"]
)
def test_the_users_hooks_run_during_a_visualization(register):
    """featvis runs the model itself, not its faster copy, when the user's hooks are on it."""
    model = make_chain([])
    calls = []
    handle = getattr(model.bn1, register)(lambda *args: calls.append(1))
    featvis.visualize_activation(model, "target", 0, max_iter=3, **SMALL)
    handle.remove()
    assert len(calls) >= 3  # once per step at least


def test_a_bad_batch_restriction_is_named():
    with pytest.raises(featvis.FeatvisValueError, match="^batch="):
        featvis.ActivationMaximization("fc", 0, batch=-1)
    with pytest.raises(featvis.FeatvisTypeError, match="^batch has type"):
        featvis.ActivationMaximization("fc", 0, batch="first")


def test_the_preprocess_is_applied_at_every_step(two):
    """With a preprocess that inverts the image, raising class 0 (channel 0's mean) means darkening channel 0."""
    as_given = _optimize_class_4(two)  # class 4 = A0 - A1: channel 0 up, channel 1 down
    inverted = _optimize_class_4(two, preprocess=lambda x: 1.0 - x)
    assert as_given[..., 0].min() > 0.55 and as_given[..., 1].max() < 0.45
    assert inverted[..., 0].max() < 0.45 and inverted[..., 1].min() > 0.55


def test_a_bad_number_of_views_is_named(tiny):
    with pytest.raises(featvis.FeatvisValueError, match="^views="):
        featvis.visualize_activation(tiny, "fc", 0, views=0, size=16, max_iter=2)


def test_the_most_negative_layer_index_is_the_first_leaf(tiny):
    first = featvis.visualize_activation(tiny, -6, 0, max_iter=2, **{**SMALL, "size": 32})  # 6 leaves
    np.testing.assert_array_equal(
        first, featvis.visualize_activation(tiny, "conv1", 0, max_iter=2, **{**SMALL, "size": 32})
    )
    with pytest.raises(featvis.LayerNotFoundError, match="out of range"):
        featvis.visualize_activation(tiny, -7, 0, max_iter=2, **{**SMALL, "size": 32})


def test_a_model_without_parameters_runs_on_the_cpu():
    net = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    image = _image(TOP, LEFT)
    maps = featvis.visualize_saliency(net, "2", 0, image, **UNIT)  # channel 0's mean: the top half
    np.testing.assert_allclose(maps[0], _mask(TOP), atol=1e-6)


def test_a_device_that_is_not_there_is_refused_up_front(tiny):
    image = np.zeros((32, 32, 3))
    if torch.cuda.is_available():  # then it is there: the map is made on it
        maps = featvis.visualize_saliency(tiny.cuda(), "fc", 0, image, device="cuda")
        np.testing.assert_allclose(maps, featvis.visualize_saliency(tiny.cpu(), "fc", 0, image), atol=1e-4)
    else:
        with pytest.raises(featvis.FeatvisValueError, match="^device='cuda'"):
            featvis.visualize_saliency(tiny, "fc", 0, image, device="cuda")
