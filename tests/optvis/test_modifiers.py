"""Grad modifiers and backprop modifiers do what their names say."""

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import featvis
from featvis import grad_modifiers
from featvis.backprop_modifiers import leaky, modify_backprop

from conftest import assert_untouched, snapshot

G = torch.tensor([[-2.0, -0.5, 0.0, 0.25, 3.0]])


def test_grad_modifiers_by_definition():
    eps = grad_modifiers.EPSILON
    assert torch.equal(grad_modifiers.get("negate")(G), -G)
    assert torch.equal(grad_modifiers.get("absolute")(G), G.abs())
    assert torch.allclose(grad_modifiers.get("invert")(G), 1 / (G + eps))
    assert torch.equal(grad_modifiers.get("relu")(G), torch.tensor([[0.0, 0.0, 0.0, 0.25, 3.0]]))
    assert torch.allclose(grad_modifiers.get("small_values")(G), (1 / (G + eps)).abs())
    assert grad_modifiers.get(None) is None


def test_unknown_grad_modifier_names_the_choices(tiny):
    with pytest.raises(featvis.FeatvisValueError, match=r"grad_modifier='negat'.*close matches: negate"):
        featvis.visualize_activation(tiny, "fc", 0, grad_modifier="negat", size=32, max_iter=2)


def test_callable_grad_modifier_sees_the_image_gradient(tiny):
    shapes = []

    def record(grads):
        shapes.append(tuple(grads.shape))
        return grads

    featvis.visualize_activation(tiny, "fc", 0, grad_modifier=record, size=32, max_iter=3, seed=0)
    assert shapes == [(1, 3, 32, 32)] * 3


X = torch.tensor([[1.0, -1.0, 2.0, -2.0, 7.0]])
V = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0])
# d out / d relu_output = V; relu is active where X > 0
PLAIN = torch.tensor([[1.0, 0.0, -1.0, 0.0, 1.0]])
GUIDED = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0]])
RECTIFIED = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0]])
LEAKY = torch.tensor([[1.0, -0.05, -1.0, 0.05, 1.0]])  # 5% of the gradient where the ReLU is off


class ModuleReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x * 1.0) @ V


RELU_FORMS = {
    "module": ModuleReLU(),
    "F.relu": lambda x: F.relu(x * 1.0) @ V,
    "torch.relu": lambda x: torch.relu(x * 1.0) @ V,
    "Tensor.relu": lambda x: (x * 1.0).relu() @ V,
    "in-place relu_": lambda x: torch.relu_(x * 1.0) @ V,
    "F.relu inplace": lambda x: F.relu(x * 1.0, inplace=True) @ V,
    "nn.ReLU(inplace)": lambda x: nn.ReLU(inplace=True)(x * 1.0) @ V,
}


@pytest.mark.parametrize("form", RELU_FORMS)
@pytest.mark.parametrize(
    ("modifier", "expected"),
    [
        (None, PLAIN),
        ("guided", GUIDED),
        ("relu", RECTIFIED),
        ("rectified", RECTIFIED),
        ("deconv", RECTIFIED),
        ("leaky", LEAKY),
    ],
)
def test_backprop_modifiers_on_module_and_functional_relus(form, modifier, expected):
    x = X.clone().requires_grad_(True)
    with modify_backprop(modifier):
        out = RELU_FORMS[form](x)
    out.sum().backward()
    assert torch.allclose(x.grad, expected, rtol=0, atol=1e-6)  # exact but for the leaky rule's rounding
    assert torch.equal(out.detach(), (X.clamp(min=0) @ V).detach())  # the forward is unchanged


@pytest.mark.parametrize("relu6", [nn.ReLU6(), lambda x: F.relu6(x), lambda x: F.hardtanh(x, 0.0, 6.0)])
def test_guided_through_relu6_masks_saturated_units_and_negative_gradients(relu6):
    x = torch.tensor([[1.0, -1.0, 7.0, 2.0]], requires_grad=True)
    with modify_backprop("guided"):
        out = relu6(x * 1.0) @ torch.tensor([1.0, 1.0, 1.0, -1.0])
    out.backward()
    assert torch.equal(x.grad, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("relu6", [nn.ReLU6(), lambda x: F.relu6(x), lambda x: F.hardtanh(x, 0.0, 6.0)])
def test_a_leaky_rule_passes_its_share_of_the_gradient_below_zero_and_above_six(relu6):
    x = torch.tensor([[1.0, -1.0, 7.0, 2.0]], requires_grad=True)
    with modify_backprop(leaky(0.25)):
        out = relu6(x * 1.0) @ torch.tensor([1.0, 1.0, 1.0, -1.0])
    out.backward()
    assert torch.allclose(x.grad, torch.tensor([[1.0, 0.25, 0.25, -1.0]]), rtol=0, atol=1e-6)
    assert leaky(0.0)(x, torch.ones(1, 4), torch.tensor([[1.0, 0.0, 0.0, 1.0]])).tolist() == [[1, 0, 0, 1]]
    assert leaky(1.0)(x, torch.full((1, 4), 3.0), torch.tensor([[1.0, 0.0, 0.0, 1.0]])).tolist() == [[3] * 4]


def test_the_leaky_rule_scales_a_smooth_activations_own_derivative():
    x = torch.tensor([-3.0, -0.5, 0.0, 2.0], requires_grad=True)
    with modify_backprop("leaky"):
        F.gelu(x * 1.0).sum().backward()
    plain = torch.tensor([-3.0, -0.5, 0.0, 2.0], requires_grad=True)
    F.gelu(plain).sum().backward()
    assert torch.allclose(x.grad, plain.grad + 0.05 * (1 - plain.grad))


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan"), "half", True])
def test_a_bad_leaky_share_is_refused_by_name(share):
    with pytest.raises((featvis.FeatvisValueError, featvis.FeatvisTypeError), match=r"^share"):
        leaky(share)


@pytest.mark.parametrize("budget", [0, -1.0, float("inf"), "all"])
def test_a_bad_leaky_budget_is_refused_by_name(budget):
    with pytest.raises((featvis.FeatvisValueError, featvis.FeatvisTypeError), match=r"^budget"):
        leaky(0.05, budget=budget)


@pytest.mark.parametrize(("budget", "each"), [(None, 0.25), (2.0, 0.25), (0.5, 0.1)])
def test_a_leaky_budget_is_spread_over_the_activations_of_the_forward_pass(budget, each):
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    with modify_backprop(leaky(0.25, budget=budget)):  # four ReLUs and a GELU: five activations
        out = sum(F.relu(x * 1.0) for _ in range(4)) + F.gelu(x * 1.0)
    out.sum().backward()
    plain = torch.tensor([-1.0, 2.0], requires_grad=True)
    F.gelu(plain).sum().backward()
    gelu = plain.grad + each * (1 - plain.grad)
    assert torch.allclose(x.grad, torch.tensor([4 * each, 4.0]) + gelu)
    assert leaky(0.25, budget=budget).share_for(5) == pytest.approx(each)


def test_the_leaky_rule_is_a_twentieth_at_each_of_up_to_33_activations_less_at_more():
    rule = featvis.backprop_modifiers.get("leaky")
    assert (rule.share_for(1), rule.share_for(33), rule.share_for(66)) == (0.05, 0.05, 0.025)


def test_activation_maximization_leaks_by_default_and_none_gives_plain_gradients(tiny):
    options = dict(size=32, max_iter=10, seed=0, progress=False)
    default = featvis.visualize_activation(tiny, "fc", 0, **options)
    explicit = featvis.visualize_activation(tiny, "fc", 0, backprop_modifier=leaky(0.05), **options)
    plain = featvis.visualize_activation(tiny, "fc", 0, backprop_modifier=None, **options)
    assert np.array_equal(default, explicit)
    assert not np.array_equal(default, plain)


def test_callable_backprop_rule_is_used():
    x = X.clone().requires_grad_(True)
    with modify_backprop(lambda inp, grad, local: grad * 10):
        out = F.relu(x * 1.0) @ V
    out.sum().backward()
    assert torch.equal(x.grad, V[None] * 10)


def test_backprop_modifier_in_visualization_leaves_model_clean(tiny):
    before = snapshot(tiny)
    plain = featvis.visualize_activation(tiny, "fc", 0, size=32, max_iter=10, seed=0)
    guided = featvis.visualize_activation(
        tiny, "fc", 0, size=32, max_iter=10, seed=0, backprop_modifier="guided"
    )
    assert (plain != guided).any()
    assert_untouched(tiny, before)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    tiny(x)[0, 0].backward()  # gradients flow normally afterwards
    assert x.grad.abs().sum() > 0


INPLACE_FORMS = {
    "torch.relu_": lambda y: torch.relu_(y),
    "Tensor.relu_": lambda y: y.relu_(),
    "F.relu inplace": lambda y: F.relu(y, inplace=True),
    "F.relu_": lambda y: F.relu_(y),
    "nn.ReLU(inplace)": lambda y: nn.ReLU(inplace=True)(y),
    "nn.ReLU6(inplace)": lambda y: nn.ReLU6(inplace=True)(y),
    "F.hardtanh(0, 6, inplace)": lambda y: F.hardtanh(y, 0.0, 6.0, inplace=True),
}


@pytest.mark.parametrize("form", INPLACE_FORMS)
@pytest.mark.parametrize("modifier", [None, "guided", "leaky"])
def test_in_place_relus_stay_in_place_under_a_modifier(form, modifier):
    x = X.clone().requires_grad_(True)
    y = x * 1.0
    with modify_backprop(modifier):
        out = INPLACE_FORMS[form](y)
    upper = 6.0 if "6" in form else None
    assert torch.equal(y.detach(), X.clamp(0, upper))  # the input itself was clamped, as without featvis
    (out @ V).backward()
    expected = torch.tensor([[1.0, 0.0, -1.0, 0.0, 0.0]])  # V where 0 < x < 6 (7 saturates a ReLU6)
    if upper is None:
        expected[0, 4] = 1.0  # a plain ReLU does not saturate at 7
    if modifier == "guided":
        expected = expected.clamp(min=0)
    if modifier == "leaky":  # and 5% of V where the ReLU is off
        expected = torch.where(expected != 0, expected, 0.05 * V)
    assert torch.allclose(x.grad, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("modifier", ["guided", "leaky"])
def test_a_positional_inplace_flag_is_honoured_under_a_modifier(modifier):
    for inplace in (True, False):
        y = X.clone().requires_grad_(True) * 1.0
        with modify_backprop(modifier):
            out = F.relu(y, inplace)
        assert torch.equal(out, X.clamp(min=0))
        assert torch.equal(y.detach(), X.clamp(min=0) if inplace else X)  # as without featvis


@pytest.mark.parametrize("modifier", ["leaky", "guided"])
def test_relu6_under_a_modifier_still_clamps_at_six(modifier):
    for relu6 in (nn.ReLU6(), lambda x: F.relu6(x), lambda x: F.hardtanh(x, 0.0, 6.0)):
        x = X.clone().requires_grad_(True)
        with modify_backprop(modifier):
            out = relu6(x * 1.0)
        assert torch.equal(out.detach(), X.clamp(0, 6))


@pytest.mark.parametrize("modifier", ["leaky", "guided"])
def test_gelus_tanh_approximation_is_kept_under_a_modifier(modifier):
    x = torch.tensor([-1.5, -0.3, 0.4, 2.0], requires_grad=True)
    with modify_backprop(modifier):
        out = F.gelu(x * 1.0, approximate="tanh")
    assert torch.equal(out.detach(), F.gelu(x.detach(), approximate="tanh"))
    out.sum().backward()
    plain = x.detach().clone().requires_grad_(True)
    F.gelu(plain, approximate="tanh").sum().backward()
    rule = featvis.backprop_modifiers.get(modifier)
    expected = rule(plain.detach(), torch.ones(4), plain.grad)
    assert torch.allclose(x.grad, expected, atol=1e-6)
    exact = x.detach().clone().requires_grad_(True)
    F.gelu(exact).sum().backward()
    assert not torch.allclose(plain.grad, exact.grad, atol=1e-4)  # the two derivatives differ here


@pytest.mark.parametrize("relu", [nn.ReLU(), nn.ReLU6()])
def test_a_relu_at_exactly_its_bounds_is_off_under_a_rule_as_without_one(relu):
    x = torch.tensor([0.0, 3.0, 6.0], requires_grad=True)
    with modify_backprop(lambda inp, grad, local: grad * local):
        relu(x * 1.0).sum().backward()
    plain = torch.tensor([0.0, 3.0, 6.0], requires_grad=True)
    relu(plain * 1.0).sum().backward()
    assert torch.equal(x.grad, plain.grad)  # torch's derivative: 0 at 0, and at 6 for ReLU6
    assert x.grad[0] == 0 and x.grad[1] == 1


def test_a_rule_sees_the_relus_input_not_its_output():
    seen = []
    with modify_backprop(lambda inp, grad, local: seen.append(inp.detach().clone()) or grad * local):
        F.relu6(X.clone().requires_grad_(True) * 1.0).sum().backward()
    assert torch.equal(seen[0], X)  # -1, -2 and 7, not their clamped 0, 0 and 6


def test_torch_calls_with_keywords_only_pass_through_a_modifier():
    with modify_backprop("guided"):
        zeros = torch.zeros(size=(2, 3))
    assert torch.equal(zeros, torch.zeros(2, 3))


def test_only_hardtanh_with_a_lower_bound_of_zero_is_a_relu():
    x = torch.tensor([[-2.0, -0.5, 0.5, 2.0]], requires_grad=True)
    w = torch.tensor([1.0, -1.0, -1.0, 1.0])
    with modify_backprop("guided"):
        (F.hardtanh(x * 1.0) @ w).backward()  # (-1, 1): not a ReLU, plain gradient
    assert torch.equal(x.grad, torch.tensor([[0.0, -1.0, -1.0, 0.0]]))
    x.grad = None
    with modify_backprop("guided"):
        (F.hardtanh(x * 1.0, 0.0, 1.0) @ w).backward()  # (0, 1): a ReLU capped at 1
    assert torch.equal(x.grad, torch.tensor([[0.0, 0.0, 0.0, 0.0]]))  # 0.5 is active but its gradient < 0
    x.grad = None
    with modify_backprop("guided"):
        (F.hardtanh(x * 1.0, min_val=0.0, max_val=3.0) @ -w).backward()
    assert torch.equal(x.grad, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))


def test_the_modifier_ends_with_its_block_and_leaves_untracked_tensors_alone():
    x = X.clone().requires_grad_(True)
    with modify_backprop("guided"):
        pass
    (F.relu(x * 1.0) @ V).backward()
    assert torch.equal(x.grad, PLAIN)  # after the block: plain gradients again
    with modify_backprop("guided"), torch.no_grad():
        assert torch.equal(F.relu(X), X.clamp(min=0))  # no graph: the plain function runs
    with modify_backprop("guided"):
        assert torch.equal(torch.relu(X), X.clamp(min=0))  # no gradient wanted: plain as well
