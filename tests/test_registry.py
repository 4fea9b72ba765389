"""One registry type for every named choice, and attribution methods as objects behind it: a user's
own method, registered in a few lines of their module, runs from Python and from `featvis cam`."""

from __future__ import annotations

import sys
import textwrap

from click.testing import CliRunner
import numpy as np
from PIL import Image
import pytest
import torch
from torch import nn

import featvis
from featvis.attribution import (
    CAM_METHODS,
    SALIENCY_METHODS,
    CamMethod,
    Gradients,
    IntegratedGradients,
    Occlusion,
    SaliencyMethod,
    SmoothGrad,
)
from featvis.cli.main import cli, main
from featvis.optimizer import QUALITY, SCHEDULES, Settings
from featvis.optvis.backprop_modifiers import BACKPROP_MODIFIERS
from featvis.optvis.grad_modifiers import GRAD_MODIFIERS
from featvis.optvis.params import METHODS
from featvis.registry import Registry

from conftest import assert_untouched, hook_count, make_tiny, snapshot

UNIT = dict(input_range=(0.0, 1.0))


def _image(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (size, size, 3)).astype(np.float32)


# the registry itself


def test_a_registry_registers_by_call_or_decorator_and_reads_like_a_dict():
    colors = Registry("color", "color")
    assert colors.register("red", (1, 0, 0)) == (1, 0, 0)

    @colors.register("blue")
    def blue():
        return (0, 0, 1)

    assert colors["red"] == (1, 0, 0) and colors["blue"]() == (0, 0, 1)
    assert "red" in colors and "green" not in colors
    assert colors.names() == list(colors) == ["red", "blue"] and len(colors) == 2
    assert colors.unregister("red") == (1, 0, 0) and colors.names() == ["blue"]


def test_a_duplicate_name_is_refused_unless_replaced():
    colors = Registry("color", "color", {"red": 1})
    with pytest.raises(featvis.FeatvisValueError, match="name='red'.*replace=True"):
        colors.register("red", 2)
    assert colors["red"] == 1
    colors.register("red", 2, replace=True)
    assert colors["red"] == 2
    with pytest.raises(featvis.FeatvisTypeError, match="name has type int"):
        colors.register(3, 2)


def test_an_unknown_name_names_the_argument_the_names_and_the_close_ones():
    with pytest.raises(featvis.FeatvisValueError) as raised:
        CAM_METHODS["gradcamm"]
    message = str(raised.value)
    assert message.startswith("method='gradcamm' is not allowed: expected one of gradcam, gradcam++")
    assert "close matches: gradcam" in message
    assert isinstance(raised.value, KeyError)  # a Mapping's missing key, for .get and `in`
    assert CAM_METHODS.get("gradcamm") is None


@pytest.mark.parametrize(
    "registry",
    [
        CAM_METHODS,
        SALIENCY_METHODS,
        featvis.params.METHODS,
        BACKPROP_MODIFIERS,
        GRAD_MODIFIERS,
        SCHEDULES,
        QUALITY,
    ],
    ids=lambda r: r.kind,
)
def test_every_named_choice_is_one_registry_type(registry):
    assert isinstance(registry, Registry) and registry.names()
    with pytest.raises(featvis.FeatvisValueError, match=f"^{registry.argument}='no-such-name'"):
        registry["no-such-name"]
    with pytest.raises(featvis.FeatvisValueError, match="replace=True"):
        registry.register(registry.names()[0], registry[registry.names()[0]])


# each kind, registered, is taken by name where the built-ins are


@pytest.fixture
def registered():
    """Registrations to undo after the test: (registry, name)."""
    added: list[tuple[Registry, str]] = []
    yield added
    for registry, name in added:
        registry.unregister(name)


def test_a_registered_schedule_and_quality_preset_are_taken_by_name(registered):
    SCHEDULES.register("half-test", lambda step, steps: 0.5)
    QUALITY.register("tiny-test", {"max_iter": 3, "lr_schedule": "half-test"})
    registered += [(QUALITY, "tiny-test"), (SCHEDULES, "half-test")]
    settings = Settings.take({"quality": "tiny-test"})
    assert settings.max_iter == 3 and settings.lr_factor(0, 3) == 0.5
    with pytest.raises(featvis.FeatvisTypeError, match="'max_iters'.*close matches: max_iter"):
        QUALITY.register("typo-test", {"max_iters": 3})
    assert "typo-test" not in QUALITY


def test_a_registered_backprop_and_grad_modifier_act_by_name(registered):
    model, image = make_tiny(), _image()
    BACKPROP_MODIFIERS.register("pass-all-test", lambda x, grad_output, local_grad: grad_output)
    GRAD_MODIFIERS.register("square-test", torch.square)
    registered += [(BACKPROP_MODIFIERS, "pass-all-test"), (GRAD_MODIFIERS, "square-test")]
    loss = featvis.ActivationMaximization("fc", 3)
    through_all = featvis.input_gradients(model, loss, image, backprop_modifier="pass-all-test", **UNIT)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].requires_grad_(True)
    with featvis.backprop_modifiers.modify_backprop(lambda x, grad_output, local_grad: grad_output):
        model(x)[0, 3].backward()
    torch.testing.assert_close(through_all, x.grad)  # every ReLU passed the gradient through
    squared = featvis.visualize_saliency(
        model, "fc", 3, image, grad_modifier="square-test", percentile=None, **UNIT
    )
    plain = featvis.input_gradients(model, loss, image, **UNIT).square().amax(1)
    flat = plain.flatten(1)
    expected = (plain - flat.min()) / (flat.max() - flat.min())
    np.testing.assert_allclose(squared, expected.numpy(), atol=1e-5)


class GradientTimesInput(SaliencyMethod):
    """A user's saliency method: the gradient times the input, summed over channels."""

    sums_channels = True

    def attribute(self, prepared, loss, images, *, passes=1):
        return Gradients().attribute(prepared, loss, images, passes=passes) * prepared.model_input(images)


def test_a_registered_saliency_method_gives_its_own_map(registered):
    SALIENCY_METHODS.register("gradient_x_input", GradientTimesInput)
    registered.append((SALIENCY_METHODS, "gradient_x_input"))
    model, image = make_tiny(), _image(1)
    before = snapshot(model)
    got = featvis.visualize_saliency(
        model, "fc", 3, image, method="gradient_x_input", percentile=None, **UNIT
    )
    x = torch.from_numpy(image).permute(2, 0, 1)[None].requires_grad_(True)
    model(x)[0, 3].backward()
    share = (x.grad * x.detach()).sum(1).abs()[0]
    expected = (share - share.min()) / (share.max() - share.min())
    np.testing.assert_allclose(got[0], expected.numpy(), atol=1e-5)
    assert_untouched(model, before)


@pytest.mark.parametrize("builtin", [Gradients, SmoothGrad, IntegratedGradients, Occlusion])
def test_the_attribute_a_saliency_method_defines_is_called_as_the_built_in_methods_are(builtin):
    """What help(SaliencyMethod.attribute) shows a user writing a method: the built-ins' own call,
    `passes` keyword-only and 1 (one call) by default."""
    import inspect

    base = inspect.signature(SaliencyMethod.attribute)
    assert base == inspect.signature(builtin.attribute)
    assert base.parameters["passes"].kind is inspect.Parameter.KEYWORD_ONLY
    assert base.parameters["passes"].default == 1


class Unfinished(SaliencyMethod):
    """A user's method that forgot to define attribute()."""


def test_a_saliency_method_without_attribute_is_named_when_it_runs():
    with pytest.raises(NotImplementedError, match=r"^Unfinished does not define attribute\(\)"):
        featvis.visualize_saliency(make_tiny(), "fc", 3, _image(4), method=Unfinished(), **UNIT)


def test_a_method_object_carries_its_own_options():
    model, image = make_tiny(), _image(2)
    by_name = featvis.visualize_saliency(
        model, "fc", 3, image, method="integrated_gradients", steps=8, **UNIT
    )
    by_object = featvis.visualize_saliency(model, "fc", 3, image, method=IntegratedGradients(steps=8), **UNIT)
    np.testing.assert_array_equal(by_name, by_object)
    with pytest.raises(featvis.FeatvisValueError, match="^steps=0"):
        IntegratedGradients(steps=0)
    with pytest.raises(featvis.FeatvisValueError, match="backprop_modifier='guided'.*method object"):
        featvis.visualize_saliency(
            model, "fc", 3, image, method=IntegratedGradients(), backprop_modifier="guided"
        )


def test_smoothgrad_is_the_mean_of_the_gradients_of_noisy_copies():
    """SmoothGrad of a linear model is its (constant) gradient: every noisy copy has the same."""
    weight = torch.linspace(-1, 1, 3 * 8 * 8).view(1, 3, 8, 8)

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Identity()

        def forward(self, x):
            return self.fc((x * weight).sum(dim=(1, 2, 3))[:, None])

    got = featvis.visualize_saliency(
        Linear(), "fc", 0, _image(3, 8), method="smoothgrad", percentile=None, **UNIT
    )
    plain = weight.abs().amax(1)[0]
    np.testing.assert_allclose(
        got[0], ((plain - plain.min()) / (plain.max() - plain.min())).numpy(), atol=1e-5
    )


# CAM methods as objects


class ChannelOne(CamMethod):
    needs = frozenset()

    def map(self, ctx):
        return ctx.activations[:, 1]


def test_a_cam_method_object_and_a_plain_function_give_their_own_maps(registered):
    model, image = make_tiny(), _image(4)
    with torch.no_grad():
        acts = model.act2(
            model.conv2(model.act1(model.conv1(torch.from_numpy(image).permute(2, 0, 1)[None])))
        )
    channel = acts[0, 1]
    expected = ((channel - channel.min()) / (channel.max() - channel.min())).numpy()
    got = featvis.visualize_cam(model, "fc", 3, image, method=ChannelOne(), penultimate_layer="act2", **UNIT)
    np.testing.assert_allclose(got[0], expected, atol=1e-5)
    featvis.attention.register_cam("channel-one-test", lambda activations, gradients: activations[:, 1])
    registered.append((CAM_METHODS, "channel-one-test"))
    by_name = featvis.visualize_cam(
        model, "fc", 3, image, method="channel-one-test", penultimate_layer="act2", **UNIT
    )
    np.testing.assert_allclose(by_name[0], expected, atol=1e-5)


def test_register_cam_refuses_a_name_twice_and_a_method_that_cannot_be_called():
    with pytest.raises(featvis.FeatvisValueError, match="name='gradcam'.*replace=True"):
        featvis.attention.register_cam("gradcam", lambda a, g: a.sum(1))
    with pytest.raises(featvis.FeatvisTypeError, match="method has type int"):
        featvis.attention.register_cam("number-test", 3)
    assert "number-test" not in CAM_METHODS


class Brittle(nn.Module):
    """conv -> ReLU -> mean -> fc; the fc raises on more than 2 rows (an Ablation-CAM chunk)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        pooled = self.act(self.conv(x)).mean(dim=(2, 3))
        if len(pooled) > 2:
            raise RuntimeError("too many rows")
        return self.fc(pooled)


def test_a_failure_in_an_ablation_run_leaves_no_hook_on_the_model():
    model = Brittle().eval()
    before = snapshot(model)
    with pytest.raises(featvis.ModelError, match="too many rows"):
        featvis.visualize_cam(
            model, "fc", 1, _image(5), method="ablationcam", penultimate_layer="act", fuse=False, **UNIT
        )
    assert_untouched(model, before)


def test_hooks_through_the_prepared_model_go_when_it_closes_even_if_their_block_never_ends():
    model = make_tiny()
    before = snapshot(model)
    prepared = featvis.PreparedModel(model, **UNIT)
    block = prepared.hooks(forward=[(model.fc, lambda module, inputs, output: None)])
    block.__enter__()  # never exited: a generator dropped mid-way, an interrupt between two lines
    assert hook_count(model) == before["hooks"] + 1
    prepared.close()
    assert_untouched(model, before)


# the command line: a user's method, registered in their model's module


USER_MODULE = """
import torch
from featvis.attribution import CamMethod, register_cam


def make_model():
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    return torch.nn.Sequential(conv, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))


@register_cam("mine")
class Mine(CamMethod):  # channel 2 of the layer, squared: no gradient needed
    needs = frozenset()

    def map(self, ctx):
        return ctx.activations[:, 2].square()
"""


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A folder with the user's module (a model factory and a registered CAM method) and a photo."""
    (tmp_path / "usermod.py").write_text(textwrap.dedent(USER_MODULE))
    assert len(USER_MODULE.strip().splitlines()) < 20  # the method itself: 6 lines
    pixels = np.random.default_rng(7).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "usermod", raising=False)
    yield pixels
    sys.modules.pop("usermod", None)
    if "mine" in CAM_METHODS:
        CAM_METHODS.unregister("mine")


CAM_ARGS = ["cam", "--model", "usermod:make_model", "--preprocess", "none", "--layer", "3", "--filter", "1"]
PHOTO_ARGS = ["--image", "photo.png", "--size", "24", "--no-overlay"]


def test_a_users_cam_method_runs_from_the_command_line(user_folder):
    main([*CAM_ARGS, "--penultimate", "0.1", "--method", "mine", *PHOTO_ARGS, "--out", "mine.png"])
    written = np.asarray(Image.open("mine.png"), dtype=np.float64)
    model = sys.modules["usermod"].make_model().eval()
    with torch.no_grad():  # what Mine computes, at the photo's size, scaled to [0, 1] as every map
        acts = model[0](torch.from_numpy(user_folder).permute(2, 0, 1)[None].float())
    mine = acts[0, 2].square()
    expected = 255 * (mine - mine.min()) / (mine.max() - mine.min())
    assert written.shape == (24, 24)
    np.testing.assert_allclose(written, expected.numpy(), atol=1.0)
    # and it is not Grad-CAM's map of the same layer
    main([*CAM_ARGS, "--penultimate", "0.1", *PHOTO_ARGS, "--out", "gradcam.png"])
    assert np.abs(np.asarray(Image.open("gradcam.png"), dtype=np.float64) - written).max() > 20


def _error_line(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_an_unknown_method_is_named_after_the_models_module_registered_its_own(user_folder, capsys):
    err = _error_line([*CAM_ARGS, "--method", "mien", *PHOTO_ARGS, "--out", "x.png"], capsys)
    assert "--method='mien' is not allowed" in err and "gradcam" in err and "close matches: mine" in err


def test_a_methods_options_come_from_its_class_on_the_command_line(user_folder, capsys):
    args = [
        "saliency",
        "--model",
        "usermod:make_model",
        "--preprocess",
        "none",
        "--layer",
        "3",
        "--filter",
        "1",
    ]
    main([*args, "--method", "integrated_gradients", "--option", "steps=4", *PHOTO_ARGS, "--out", "ig.png"])
    model = sys.modules["usermod"].make_model()
    expected = featvis.visualize_saliency(
        model, "3", 1, user_folder, method=IntegratedGradients(steps=4), input_range=(0, 255)
    )[0]
    written = np.asarray(Image.open("ig.png"), dtype=np.float64)
    np.testing.assert_allclose(written, np.round(255 * expected), atol=1.0)
    err = _error_line(
        [*args, "--method", "occlusion", "--option", "steps=4", *PHOTO_ARGS, "--out", "x.png"], capsys
    )
    assert "steps=4 is not allowed: expected an option of --method='occlusion'" in err
    assert "window, stride, baseline, batch_size" in err


@pytest.mark.parametrize(("command", "registry"), [("cam", CAM_METHODS), ("saliency", SALIENCY_METHODS)])
def test_the_helps_list_the_registered_methods(command, registry):
    text = " ".join(CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output.split())
    assert f"One of {', '.join(registry)}, or a method the --model module registers" in text
    assert "--option NAME=VALUE" in text


ACTIVATION_MODULE = """
import torch
from featvis.optvis import grad_modifiers, optimizer, params


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())


@params.register("gray-test")
class Gray(params.PixelImage):  # one value per pixel, the same in every channel
    def __init__(self, batch, channels, size, *, init=None, streams=None, device=None):
        super().__init__(batch, 1, size, streams=streams, device=device)
        self.channels = channels

    def __call__(self):
        return self.pixels.expand(-1, self.channels, -1, -1)


grad_modifiers.GRAD_MODIFIERS.register("double-test", lambda grads: 2 * grads)
optimizer.QUALITY.register("two-steps-test", {"max_iter": 2, "method": "pixel", "views": 1})
"""


@pytest.fixture
def activation_module(tmp_path, monkeypatch):
    """A folder with the user's module: a model factory, a parameterization, a grad modifier, a preset."""
    (tmp_path / "usermod_act.py").write_text(textwrap.dedent(ACTIVATION_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "usermod_act", raising=False)
    yield
    sys.modules.pop("usermod_act", None)
    for registry, name in [
        (METHODS, "gray-test"),
        (GRAD_MODIFIERS, "double-test"),
        (QUALITY, "two-steps-test"),
    ]:
        if name in registry:
            registry.unregister(name)


ACTIVATION_ARGS = ["activation", "--model", "usermod_act:make_model", "--preprocess", "none", "--layer", "1"]


def test_a_users_parameterization_modifier_and_preset_run_from_the_command_line(activation_module, capsys):
    args = [*ACTIVATION_ARGS, "--filter", "2", "--size", "16", "--seed", "0", "--verbose"]
    main(
        [
            *args,
            "--quality",
            "two-steps-test",
            "--method",
            "gray-test",
            "--grad-modifier",
            "double-test",
            "--out",
            "x.png",
        ]
    )
    main([*args, "--quality", "two-steps-test", "--out", "color.png"])
    printed = capsys.readouterr().out
    assert printed.count("step 1/2") == 2 and "step 3" not in printed  # the preset's 2 steps, each time
    gray = np.asarray(Image.open("x.png"), dtype=np.int16)
    color = np.asarray(Image.open("color.png"), dtype=np.int16)
    assert np.abs(gray - gray[..., :1]).max() == 0 and gray.std() > 0  # every channel alike: the user's image
    assert np.abs(color - color[..., :1]).max() > 0  # the preset's own method, pixel, colors them


def test_an_unknown_parameterization_is_named_with_those_the_models_module_registered(
    activation_module, capsys
):
    err = _error_line([*ACTIVATION_ARGS, "--filter", "2", "--method", "gray-tset", "--out", "x.png"], capsys)
    assert "--method='gray-tset' is not allowed" in err and "coarse_to_fine" in err and "gray-test" in err
