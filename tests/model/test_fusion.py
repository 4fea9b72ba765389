"""The fused copy featvis runs: same function as the model, model untouched, used only when exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import featvis
from featvis import fusion
from featvis.errors import ModelError
from featvis.targets import ModelGuard, probe, resolve_layer

from conftest import assert_untouched, hook_count, snapshot


class SamePadConv(nn.Conv2d):
    """A convolution that pads with a child module first, like EfficientNet-Lite's."""

    def __init__(self, *args, pad: tuple[int, int, int, int], **kwargs):
        super().__init__(*args, **kwargs)
        self.static_padding = nn.ZeroPad2d(pad)

    def forward(self, x):
        return super().forward(self.static_padding(x))


class ConvBnNet(nn.Module):
    """conv-BN-ReLU6 stages with every padding style featvis folds (and one it must not)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.pad2 = nn.ZeroPad2d(1)
        self.conv2 = nn.Conv2d(8, 8, 3, groups=8, bias=True)
        self.bn2 = nn.BatchNorm2d(8, affine=False)
        self.conv3 = SamePadConv(8, 16, 3, pad=(1, 1, 1, 1), bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.conv4 = SamePadConv(16, 16, 3, stride=2, pad=(0, 1, 0, 1), bias=False)  # asymmetric: kept
        self.bn4 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(self.pad2(x))))
        x = self.act(self.bn3(self.conv3(x)))
        x = self.bn4(self.conv4(x))
        return self.fc(x.mean(dim=(2, 3)))


def make_conv_bn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = ConvBnNet()
    for module in model.modules():  # weights and statistics that keep the signal alive, as trained ones do
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight)
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.05, 0.2)
            if module.affine:
                module.weight.data.uniform_(0.5, 1.5)
                module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def fused(model, keep=()):
    x = torch.rand(1, 3, 16, 16)
    with ModelGuard(model):
        return fusion.fused_copy(model, x, probe(model, x).calls, keep=set(keep))


def test_fused_copy_is_the_same_function_with_fewer_layers_and_leaves_the_model_alone():
    model = make_conv_bn()
    before = snapshot(model)
    fast = fused(model)
    assert_untouched(model, before)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == 0
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4
    assert fast.conv2.padding == (1, 1) and isinstance(fast.pad2, nn.Identity)
    assert fast.conv3.padding == (1, 1) and isinstance(fast.conv3.static_padding, nn.Identity)
    assert isinstance(fast.conv4.static_padding, nn.ZeroPad2d)  # (0, 1, 0, 1) is not a conv padding
    assert fast.fc.weight is model.fc.weight  # unfolded weights are shared, not copied
    assert fast.fc is model.fc  # so are the modules the fold leaves alone
    assert fast.conv1 is not model.conv1 and fast is not model
    # the activation the convolutions apply themselves (without gradients) is the copy's own
    assert fast.act is not model.act and "forward" not in vars(model.act)

    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    expected = model(x)
    (grad_expected,) = torch.autograd.grad(expected.sum(), x)
    got = fast(x)
    (grad_got,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-5)


def test_layers_the_objective_reads_are_not_folded():
    model = make_conv_bn()
    fast = fused(model, keep={"conv1", "bn3"})
    assert isinstance(fast.bn1, nn.BatchNorm2d) and fast.conv1.bias is None  # conv1's output is read
    assert isinstance(fast.bn3, nn.BatchNorm2d)
    assert isinstance(fast.bn2, nn.Identity)


def test_target_modules_are_the_copys_own_so_hooks_on_them_stay_off_the_model():
    model = make_conv_bn()
    fast = fused(model, keep={"fc"})
    assert fast.fc is not model.fc and fast.fc.weight is model.fc.weight
    handle = fast.fc.register_forward_hook(lambda m, i, o: None)
    assert hook_count(model) == 0
    handle.remove()


def test_the_agreement_check_measures_relative_differences():
    reference = {"a": torch.tensor([1.0, -4.0])}
    assert fusion.relative_difference(reference, {"a": torch.tensor([1.0, -4.0])}) == 0
    assert fusion.relative_difference(reference, {"a": torch.tensor([1.2, -4.0])}) == pytest.approx(0.05)
    assert fusion.relative_difference(reference, {"a": torch.zeros(3)}) == float("inf")
    assert fusion.relative_difference(reference, {}) == float("inf")
    assert fusion.tolerance(torch.device("cpu")) < fusion.tolerance(torch.device("cuda")) < 0.05


def test_the_pass_that_finds_the_pairs_stops_at_the_targets():
    fast = fused(make_conv_bn(), keep={"conv3"})
    assert isinstance(fast.bn1, nn.Identity) and isinstance(fast.bn2, nn.Identity)
    assert isinstance(fast.bn4, nn.BatchNorm2d)  # after the target: never run, left alone


def test_a_model_with_hooks_is_not_copied():
    model = make_conv_bn()
    calls = []
    handle = model.conv1.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        assert fused(model) is None
        featvis.visualize_activation(model, "fc", 0, size=16, max_iter=2, views=1, seed=0, progress=False)
        assert calls  # the user's hook ran: featvis ran the model itself
    finally:
        handle.remove()


def test_featvis_own_capture_hooks_do_not_keep_later_runners_from_the_fused_copy():
    """A prepared model collects outputs with hooks; a runner asked for later is still fused, and
    the hooks of the user's stay a reason not to copy."""
    model = make_conv_bn()
    with featvis.PreparedModel(model, input_range=(0.0, 1.0)) as prepared:
        images = prepared.random_images((16, 16))
        prepared.layer_output("conv2", images)  # a capture: featvis's hooks on the model
        assert hook_count(model) > 0
        runner, _, _ = prepared.runner([prepared.resolve("fc")], images.shape[1:])
        assert runner is not model and isinstance(runner.bn1, nn.Identity)
        calls = []
        handle = model.conv1.register_forward_hook(lambda m, i, o: calls.append(1))
        try:
            runner, _, _ = prepared.runner([prepared.resolve("conv3")], images.shape[1:])
            assert runner is model
        finally:
            handle.remove()
    assert hook_count(model) == 0


class PreNormResidual(nn.Module):
    """Reads a convolution's output twice (before and after its batch norm): folding would be wrong."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        features = self.conv(x)
        return self.fc((self.bn(features) + features).mean(dim=(2, 3)))


def runner_for(model, layer, **options):
    x = torch.rand(1, 3, 16, 16)
    with ModelGuard(model) as guard:
        seen = probe(model, x)
        target = resolve_layer(model, layer, seen)
        runner, _, channels_last = fusion.choose_runner(model, x, seen, [target], guard, set(), **options)
    return runner, channels_last


def test_a_copy_that_is_not_the_same_function_is_not_used():
    torch.manual_seed(0)
    model = PreNormResidual().eval()
    model.bn.running_mean.fill_(0.3)
    model.bn.running_var.fill_(2.0)
    assert fused(model) is not None  # the pattern matches...
    runner, _ = runner_for(model, "fc", fuse=True, channels_last=False)
    assert runner is model  # ...but its outputs differ, so featvis runs the model itself
    runner, _ = runner_for(make_conv_bn(), "fc", fuse=True, channels_last=False)
    assert isinstance(runner, ConvBnNet) and isinstance(runner.bn1, nn.Identity)


class FlattensByView(nn.Module):
    """`.view` on conv features: works only on contiguous (channels-first) tensors."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        features = self.conv(x)
        return self.fc(features.view(features.shape[0], -1))


def test_channels_last_is_automatic_on_the_cpu_and_explicit_requests_are_obeyed():
    assert runner_for(make_conv_bn(), "fc", fuse=True, channels_last=None)[1] is True
    assert runner_for(make_conv_bn(), "fc", fuse=True, channels_last=False)[1] is False
    torch.manual_seed(0)
    model = FlattensByView().eval()
    x = torch.rand(1, 3, 8, 8)
    with ModelGuard(model) as guard:
        seen = probe(model, x)
        target = resolve_layer(model, "fc", seen)
        runner, _, channels_last = fusion.choose_runner(
            model, x, seen, [target], guard, set(), fuse=True, channels_last=None
        )
        assert runner is model and channels_last is False  # the model cannot take it: off
    image = featvis.visualize_activation(model, "fc", 1, size=8, max_iter=4, views=1, seed=0, progress=False)
    assert image.shape == (8, 8, 3)
    with pytest.raises(ModelError, match="view"):  # asked for: obeyed, and the model's error shown
        featvis.visualize_activation(
            model, "fc", 1, size=8, max_iter=4, views=1, progress=False, channels_last=True
        )
    assert hook_count(model) == 0


def test_fused_and_plain_runs_reach_the_same_activation():
    model = make_conv_bn()
    before = snapshot(model)
    units = [0, 1, 2, 3]
    # plain gradients: on this untrained net the default's leak raises units 1 and 2 more slowly
    # (1.42 and +0.31 over gray at 128 steps, against 2.39 and +0.67 plain; units 0 and 3 faster)
    options = dict(size=16, max_iter=64, views=1, seed=0, progress=False, input_range=(0.0, 1.0))
    options["backprop_modifier"] = None
    gray = featvis.activations_reached(
        model, "conv4", units, np.full((4, 16, 16, 3), 0.5), input_range=(0.0, 1.0)
    )
    reached = {}
    for fuse in (True, False):
        images = featvis.visualize_layer(model, "conv4", units, fuse=fuse, **options)
        reached[fuse] = featvis.activations_reached(model, "conv4", units, images, input_range=(0.0, 1.0))
    assert_untouched(model, before)
    assert (reached[True] > gray + 0.3).all()  # every unit rose
    np.testing.assert_allclose(reached[True], reached[False], rtol=0.02)


class ActivationPatterns(nn.Module):
    """conv-ReLU, conv-BN-ReLU6, a residual added in place before a SiLU, and the shared ReLU6
    once more on pooled features."""

    def __init__(self):
        super().__init__()
        self.conv1, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.bn2, self.act = (
            nn.Conv2d(8, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
        )
        self.conv3, self.silu = nn.Conv2d(8, 8, 3, padding=1), nn.SiLU()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.relu(self.conv1(x))
        y = self.act(self.bn2(self.conv2(x)))
        z = self.conv3(y)
        z += y  # in place: the SiLU's input is no longer the convolution's output
        return self.fc(self.act(self.silu(z).mean(dim=(2, 3)) - 0.1))


def counting_pointwise(monkeypatch) -> list[str]:
    """Record each oneDNN convolution-with-activation call (its activation's name)."""
    calls: list[str] = []
    real = torch.ops.mkldnn._convolution_pointwise
    monkeypatch.setattr(
        torch.ops.mkldnn, "_convolution_pointwise", lambda *args: calls.append(args[7]) or real(*args)
    )
    return calls


def test_convolutions_apply_the_activation_they_feed_only_without_gradients(monkeypatch):
    torch.manual_seed(0)
    model = ActivationPatterns().eval()
    model.bn2.running_mean.uniform_(-0.2, 0.2)
    before = snapshot(model)
    x = torch.rand(1, 3, 16, 16)
    with ModelGuard(model):
        _, _, activated = fusion._find_pairs(model, x, probe(model, x).calls, keep=set())
        assert activated == [("conv1", "relu"), ("conv2", "act")]  # not conv3: z changed in place
        fast = fused(model)
    calls = counting_pointwise(monkeypatch)
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), expected)
    assert calls == ["relu", "hardtanh"] * 2  # the shared ReLU6 still applies itself to the pooled features
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(fast(x).sum(), x)
    (grad_expected,) = torch.autograd.grad(model(x).sum(), x)
    torch.testing.assert_close(grad, grad_expected, rtol=1e-4, atol=1e-6)
    assert len(calls) == 4  # with gradients: the convolution and the activation, as in the model
    assert_untouched(model, before)


class ReusesConvOutput(nn.Module):
    """A normalized convolution output read twice, through a ReLU and as it is."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.fc((self.relu(y) + y).mean(dim=(2, 3)))


def test_when_the_activation_cannot_move_into_the_convolution_the_copy_that_only_folds_runs():
    torch.manual_seed(0)
    model = ReusesConvOutput().eval()
    runner, _ = runner_for(model, "fc", fuse=True, channels_last=False)
    assert runner is not model and isinstance(runner.bn, nn.Identity)  # the batch norm still folded
    assert "forward" not in vars(runner.conv)  # the convolution applies no activation
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), rtol=1e-4, atol=1e-5)


class BareConv(nn.Conv2d):
    """A convolution that calls conv2d with its weight and bias alone (stride, padding and the rest
    at conv2d's defaults)."""

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias)


class OtherActivations(nn.Module):
    """conv-SiLU (stride 2), conv-GELU (tanh; dilation 2), a conv with padding="same" (oneDNN is not
    given it) into a ReLU, conv-Hardtanh(-0.5, 0.5), and a conv on one unbatched image (nor that)
    into the same ReLU; `shift` adds 1 in place between a conv and its GELU (a branch the pass that
    paired them did not take)."""

    def __init__(self):
        super().__init__()
        self.shift = False
        self.conv1, self.silu = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.SiLU()
        self.conv2, self.gelu = nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.GELU(approximate="tanh")
        self.conv3, self.relu = nn.Conv2d(8, 8, 3, padding="same"), nn.ReLU()
        self.conv4, self.clip = nn.Conv2d(8, 8, 3, padding=1), nn.Hardtanh(-0.5, 0.5)
        self.conv5 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv6, self.relu6 = BareConv(8, 8, 3), nn.ReLU()
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.conv2(self.silu(self.conv1(x)))
        if self.shift:
            y += 1
        x = self.relu6(self.conv6(self.clip(self.conv4(self.relu(self.conv3(self.gelu(y)))))))
        single = self.relu(self.conv5(x[0]))  # (C, H, W): oneDNN's kernel takes batches only
        return self.fc(x.mean(dim=(2, 3)) + single.mean(dim=(1, 2)))


def test_silu_and_gelu_move_into_the_convolution_and_a_string_padding_keeps_its_activation(monkeypatch):
    torch.manual_seed(0)
    model = OtherActivations().eval()
    fast = fused(model)
    calls = counting_pointwise(monkeypatch)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)
        assert calls == ["swish", "gelu", "hardtanh", "relu"]  # conv3, conv5 plain: the ReLU applied itself
        h = 3 * torch.randn(2, 8, 8, 8)  # where the tanh approximation and the exact GELU differ
        torch.testing.assert_close(fast.gelu(fast.conv2(h)), model.gelu(model.conv2(h)))
        model.shift = fast.shift = True  # the GELU's input changed in place since the conv
        with pytest.raises(ModelError, match="in place before its GELU.*fuse=False"):
            fast(x)
