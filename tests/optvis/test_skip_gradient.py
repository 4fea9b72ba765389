"""The skip gradient (`Settings.skip_gradient`, `backprop_modifiers.skip_gradient`): the gradient
into residual branches scaled, the skip connections' and everything else's unchanged."""

import weakref

import pytest
import torch
from torch import nn

import featvis
from featvis.backprop_modifiers import _SkipGradientMode, skip_gradient
from featvis.errors import FeatvisValueError

from conftest import assert_untouched, snapshot


class Residual(nn.Module):
    """`x + branch(x)`, written as `+` (skip first, or `branch + x`), as ResNet's `out += identity` or
    as `out.add_(identity)`."""

    def __init__(self, addition: str = "+"):
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
        self.addition = addition

    def forward(self, x):
        out = self.branch(x)
        if self.addition == "+=":  # Python falls back to `out = out + x` if this raises a TypeError
            out += x
            return out
        if self.addition == "add_":
            out.add_(x)
            return out
        if self.addition == "branch + skip":
            return out + x
        return x + out


class Gated(nn.Module):
    """`x * gate(x)`: a product with the module's input is not a residual addition."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(4, 4)

    def forward(self, x):
        return x * self.gate(x)


class TwoBranches(nn.Module):
    """`f(x) + g(x)`: neither side is a module's input, so nothing is a skip."""

    def __init__(self):
        super().__init__()
        self.f, self.g = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.f(x) + self.g(x)


def input_gradient(model, x, weight, factor=None):
    x = x.clone().requires_grad_(True)
    with skip_gradient(factor):
        out = model(x)
        (out * weight).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("addition", ["+", "branch + skip", "+=", "add_"])
def test_the_branch_gradient_is_scaled_and_the_skip_passes_unchanged(addition):
    model, x, weight = Residual(addition), torch.randn(3, 4), torch.randn(3, 4)
    out, plain = input_gradient(model, x, weight)
    scaled_out, scaled = input_gradient(model, x, weight, 0.25)
    torch.testing.assert_close(scaled_out, out)  # the forward is the model's own
    torch.testing.assert_close(scaled - weight, 0.25 * (plain - weight))  # skip: d(x)/dx = 1
    assert not torch.nn.modules.module._global_forward_pre_hooks


def test_a_sum_of_two_branches_is_not_a_skip_and_none_changes_nothing():
    model, x, weight = TwoBranches(), torch.randn(3, 4), torch.randn(3, 4)
    _, plain = input_gradient(model, x, weight)
    torch.testing.assert_close(input_gradient(model, x, weight, 0.5)[1], plain)
    residual = Residual()
    torch.testing.assert_close(
        input_gradient(residual, x, weight, None)[1], input_gradient(residual, x, weight)[1]
    )


def test_only_additions_are_skips():
    model, x, weight = Gated(), torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(input_gradient(model, x, weight, 0.5)[1], input_gradient(model, x, weight)[1])


def test_a_factor_of_one_is_allowed_and_changes_nothing():
    model, x, weight = Residual(), torch.randn(3, 4), torch.randn(3, 4)
    assert featvis.Settings(skip_gradient=1).skip_gradient == 1
    torch.testing.assert_close(input_gradient(model, x, weight, 1.0)[1], input_gradient(model, x, weight)[1])


def test_its_hook_is_gone_after_an_error_inside():
    with pytest.raises(RuntimeError), skip_gradient(0.5):
        raise RuntimeError("inside")
    assert not torch.nn.modules.module._global_forward_pre_hooks


@pytest.mark.slow
def test_on_lite0_it_equals_scaling_each_skip_blocks_last_batch_norm_by_hand():
    """Lite0's MBConv blocks with a skip (stride 1, as many channels out as in: 9 of 16) add their
    input to `_bn2`'s output; scaling that output's gradient by hand gives the same input
    gradient."""
    model = featvis.zoo.efficientnet_lite0().model
    x = torch.rand(1, 3, 64, 64, requires_grad=True)

    def gradient(factor=None, by_hand=None):
        x.grad = None
        handles = []

        def scale_branch(module, inputs, output):
            output.register_hook(lambda grad: grad * by_hand)

        for block in model._blocks if by_hand else ():
            args = block._block_args
            if block.id_skip and args.stride in (1, [1]) and args.input_filters == args.output_filters:
                handles.append(block._bn2.register_forward_hook(scale_branch))
        with skip_gradient(factor):
            model(x)[0, 3].backward()
        for handle in handles:
            handle.remove()
        return x.grad.clone(), len(handles)

    library, _ = gradient(0.5)
    hand, blocks = gradient(by_hand=0.5)
    plain, _ = gradient()
    assert blocks == 9
    torch.testing.assert_close(library, hand, rtol=1e-4, atol=1e-7)
    assert (library - plain).abs().max() > 1e-3 * plain.abs().max()


def test_the_class_score_rises_with_it_about_as_without_and_the_model_is_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), Residual2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
    )
    before = snapshot(model)
    gray = torch.full((1, 3, 32, 32), 0.5)

    def rise(**options):
        image = featvis.visualize_activation(
            model, "4", 2, size=32, input_range=(0, 1), max_iter=32, seed=0, progress=False, **options
        )
        with torch.no_grad():
            x = torch.tensor(image).permute(2, 0, 1)[None].float() / 255
            return (model(x) - model(gray))[0, 2].item()

    plain, skipped = rise(), rise(skip_gradient=0.5)
    assert plain > 0 and skipped > 0.5 * plain, (plain, skipped)
    assert_untouched(model, before)


class Residual2d(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + torch.relu(self.conv(x))


@pytest.mark.parametrize("factor", [0, -0.5, 1.5, "half", float("nan")])
def test_a_bad_factor_is_refused_by_name(factor):
    with pytest.raises((FeatvisValueError, featvis.FeatvisTypeError), match=r"^skip_gradient[= ]"):
        featvis.Settings(skip_gradient=factor)


class AddsAGivenBias(nn.Module):
    """`f(x) + bias` with a bias given to forward: a module's input, but broadcast, so not a skip."""

    def __init__(self):
        super().__init__()
        self.f = nn.Linear(4, 4)

    def forward(self, x, bias):
        return self.f(x) + bias


def test_an_input_added_with_broadcasting_is_not_a_skip():
    model, x, bias = AddsAGivenBias(), torch.randn(3, 4, requires_grad=True), torch.randn(4)
    model(x, bias).sum().backward()
    plain, x.grad = x.grad.clone(), None
    with skip_gradient(0.5):
        model(x, bias).sum().backward()
    torch.testing.assert_close(x.grad, plain)


def test_a_recycled_id_is_not_taken_for_a_module_input():
    """Module inputs are remembered by id and a weak reference: a new tensor that got a freed
    input's id is not that input."""
    mode, freed, new = _SkipGradientMode(0.5), torch.zeros(1), torch.zeros(1)
    mode.record(None, (freed,))
    assert mode.is_module_input(freed) and not mode.is_module_input(new)
    mode.module_inputs[id(new)] = weakref.ref(freed)  # as if `new` had been made at freed's address
    assert not mode.is_module_input(new)
