"""Hundreds of bad inputs: each raises featvis's error naming the argument, and the model stays as it was."""

import re

import numpy as np
import pytest
import torch
from torch import nn

import featvis
from featvis.cli import main
from featvis.losses import FunctionLoss

from conftest import TinyNet, assert_untouched, snapshot

OK = dict(size=16, max_iter=2, seed=0, progress=False)


class Unreached(TinyNet):
    """TinyNet with a module its forward pass never uses."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Linear(3, 3)


def _cases():
    cases = []

    def add(argument, call, **kwargs):
        cases.append(pytest.param(argument, call, kwargs, id=f"{call}-{argument}-{len(cases)}"))

    for layer in [
        "nope",
        "conv",
        "fc2",
        " ",
        "conv1.weight",
        "act#3",
        "conv1#1",
        "conv1#x",
        6,
        99,
        -7,
        True,
        1.5,
        None,
        object(),
        nn.ReLU(),
        ["fc"],
        "unused",
    ]:
        add("layer", "activation", layer=layer)
    for filters in [
        -1,
        10,
        [0, 10],
        [-2],
        [],
        [1.5],
        "3",
        3.0,
        True,
        [True],
        {1: 2},
        [0, None],
        np.array([20]),
    ]:
        add("filter_indices", "activation", filter_indices=filters)
    for steps in [0, -1, 1.5, "10", True, None, float("nan")]:
        add("max_iter", "activation", max_iter=steps)
    for size in [0, -5, (16,), (16, 0), "16", 1.5, (16, 16, 16), True, (16, "a")]:
        add("size", "activation", size=size)
    for input_range in [
        (255, 0),
        (0, 0),
        (0,),
        (0, 1, 2),
        "0,255",
        (0, float("nan")),
        (0, float("inf")),
        ("a", 1),
        None,
        (True, 2),
    ]:
        add("input_range", "activation", input_range=input_range)
    for seed_input in [
        np.full((16, 16, 3), np.nan),
        np.full((16, 16, 3), np.inf),
        np.zeros((16, 16, 5)),
        np.zeros((4,)),
        np.zeros((0, 16, 3)),
        np.zeros((16, 16, 3), dtype=object),
        np.zeros((16, 16, 3), dtype=complex),
        np.full((16, 16, 3), 300.0),
        np.full((16, 16, 3), -1.0),
        "missing.png",
        42,
        torch.zeros(2, 3, 4, 4, 4),
        torch.zeros(16, 16, 3, dtype=torch.complex64),
        torch.full((3, 16, 16), float("nan")),
        [1, 2, 3],
    ]:
        add("seed_input", "activation", seed_input=seed_input)
    for name in ["negat", "NEGATE", "abs", "", "inverse", 3, "guided"]:
        add("grad_modifier", "activation", grad_modifier=name)
    for name in ["guide", "Guided", "relu6", "", 3, "negate"]:
        add("backprop_modifier", "activation", backprop_modifier=name)
    for method in ["magic", "Fourier", "", 3, None]:
        add("method", "activation", method=method)
    for lr in [0, -1, float("nan"), "0.1", float("inf")]:
        add("lr", "activation", lr=lr)
    for decay in [1.0, 1.5, -0.1, float("nan"), "0.9", True]:
        add("image_ema", "activation", image_ema=decay)
    for views in [0, -2, 1.5, "2", True]:
        add("views", "activation", views=views)
    for batch in [0, -1, 2.5, "4", True]:
        add("batch_size", "activation", batch_size=batch)
    for channels in [0, -3, 2.5, "3", True]:
        add("channels", "activation", channels=channels)
    for name in ["tv_weight", "lp_norm_weight", "act_max_weight"]:
        for weight in [-1, float("nan"), float("inf"), "1", None, True]:
            add(name, "activation", **{name: weight})
    for modifiers in [[3], ["jitter"], 5, [None]]:
        add("input_modifiers", "activation", input_modifiers=modifiers)
    for callbacks in [[3], 5, ["x"]]:
        add("callbacks", "activation", callbacks=callbacks)
    for losses in [
        [],
        [3],
        [(3, 1.0)],
        [("x", 1.0)],
        [(featvis.TotalVariation(), "w")],
        [(featvis.TotalVariation(),)],
        "loss",
        5,
        [(featvis.TotalVariation(), float("nan"))],
    ]:
        add("losses", "with_losses", losses=losses)
    add(
        "losses", "with_losses", losses=[(FunctionLoss(lambda ctx: torch.ones(ctx.batch_size)), 1.0)]
    )  # no input dependence
    add("preprocess", "activation", preprocess=5)
    add("preprocess", "activation", preprocess=lambda x: x[:, :1])  # the model then raises
    add("device", "activation", device="nonsense")
    add("device", "activation", device=5)
    add("seed", "activation", seed="zero")
    add("seed", "activation", seed=-1)
    for units in [[], [-1], [99], ["a"], 5]:
        add("units", "layer", units=units)
    for smooth in [-1, 1.5, "3"]:
        add("smooth_samples", "saliency", smooth_samples=smooth)
    for noise in [-0.1, float("nan"), "0.1"]:
        add("smooth_noise", "saliency", smooth_noise=noise)
    for method in ["gradcam+", "", None, 3]:
        add("method", "cam", method=method)
    for penultimate in ["nope", "fc", 99, "act2#1"]:
        add("penultimate_layer", "cam", penultimate_layer=penultimate)
    for seed_input in [np.zeros((16, 16, 2)), np.full((16, 16, 3), np.nan), "missing.jpg", [], None]:
        add("seed_input", "saliency", seed_input=seed_input)
        add("seed_input", "cam", seed_input=seed_input)
    for colormap, alpha, heatmap in [
        ("nope", 0.5, None),
        ("jet", 1.5, None),
        ("jet", -0.1, None),
        ("jet", 0.5, np.zeros((2, 2, 2))),
        ("jet", 0.5, np.full((4, 4), np.nan)),
    ]:
        argument = "colormap" if colormap == "nope" else ("alpha" if heatmap is None else "heatmap")
        add(argument, "overlay", colormap=colormap, alpha=alpha, heatmap=heatmap)
    # the arguments of issue 18: the unit axis, one token, the token grid, the input's axes
    for layer, axis in [
        ("fc", 0),
        ("fc", 2),
        ("fc", -3),
        ("conv2", 4),
        ("conv2", -5),
        ("fc", "1"),
        ("fc", 1.5),
    ]:
        add("unit_axis", "activation", layer=layer, unit_axis=axis)
    for layer, token in [("fc", 0), ("conv2", 999), ("conv2", -999), ("fc", "a"), ("conv2", 1.5)]:
        add("token", "activation", layer=layer, token=token)
    for grid in ["x", (0, 2), (1, 2, 3), (2.0, 2), 4]:
        add("token_grid", "cam", token_grid=grid)
    add("unit_axis", "cam", unit_axis=5)
    add("unit_axis", "saliency", unit_axis=-7)
    add("token", "saliency", token="first")
    for size in [(16,), (8, 8, 8), "16"]:
        add("size", "activation", size=size)
    add("unit_axis", "num_filters", unit_axis=9)
    add("input_shape", "num_filters", input_shape=16)
    add("indices", "labels", indices=1000)
    add("indices", "labels", indices=["cat"])
    add("input_array", "deprocess", input_array="image")
    add("path", "load_img", path="no_such_file.png")
    add("every", "print", every=0)
    add("path", "gif", path=3)
    # several inputs (issue 18) on a one-input model, forward(x): tests/model/test_several_inputs.py has more
    for given in [
        {"image": torch.zeros(1, 3, 16, 16)},
        {"x": torch.zeros(1, 3, 16, 16)},
        (featvis.Optimized(), torch.zeros(1, 2)),
        "x",
        {"x": featvis.Optimized(), "meta": (2,)},
    ]:
        add("inputs", "activation", inputs=given)
    add("inputs", "saliency", inputs={"img": torch.zeros(1, 3, 16, 16)})
    add("inputs", "cam", inputs=[torch.zeros(1, 3, 16, 16)])
    for call in ("saliency", "cam"):  # a keyword the call does not take, a misspelled convention
        add("window2", call, window2=4)
        add("input_rnage", call, input_rnage=(0, 1))
        add("seed", call, seed=-1)
        add("seed", call, seed=1.5)
    return cases


CALLS = {
    "num_filters": lambda model, kw: featvis.get_num_filters(model, "conv2", input_range=(0.0, 1.0), **kw),
    "labels": lambda model, kw: featvis.lookup_imagenet_labels(kw["indices"]),
    "deprocess": lambda model, kw: featvis.deprocess_input(kw["input_array"]),
    "load_img": lambda model, kw: featvis.load_img(kw["path"]),
    "print": lambda model, kw: featvis.Print(**kw),
    "gif": lambda model, kw: featvis.GifGenerator(kw["path"]),
    "activation": lambda model, kw: featvis.visualize_activation(
        model, kw.pop("layer", "fc"), kw.pop("filter_indices", 1), **{**OK, **kw}
    ),
    "with_losses": lambda model, kw: featvis.visualize_activation_with_losses(model, kw.pop("losses"), **OK),
    "layer": lambda model, kw: featvis.visualize_layer(model, "conv2", kw.pop("units"), **OK),
    "saliency": lambda model, kw: featvis.visualize_saliency(
        model, "fc", 1, kw.pop("seed_input", np.zeros((16, 16, 3))), **kw
    ),
    "cam": lambda model, kw: featvis.visualize_cam(
        model, "fc", 1, kw.pop("seed_input", np.zeros((16, 16, 3))), **kw
    ),
    "overlay": lambda model, kw: featvis.overlay(
        np.zeros((8, 8, 3), np.uint8),
        np.zeros((8, 8)) if kw["heatmap"] is None else kw["heatmap"],
        colormap=kw["colormap"],
        alpha=kw["alpha"],
    ),
}

CASES = _cases()


@pytest.mark.parametrize(("argument", "call", "kwargs"), CASES)
def test_bad_input_raises_featvis_error_naming_the_argument(argument, call, kwargs):
    model = Unreached().eval()
    torch.manual_seed(0)
    model.train()
    model.conv1.bias.requires_grad_(False)
    before = snapshot(model)
    with pytest.raises(featvis.FeatvisError) as info:
        CALLS[call](model, dict(kwargs))
    named = (rf"(?<![A-Za-z]){re.escape(name)}(?![A-Za-z])" for name in (argument, argument.split("_")[0]))
    assert any(re.search(pattern, str(info.value)) for pattern in named), str(info.value)
    assert_untouched(model, before)


CLI_BASE = ["--model", "conftest:make_tiny", "--preprocess", "none", "--out", "x.png"]
CLI_CASES = [
    ["activation", "--layer", "nope", "--filter", "1"],
    ["activation", "--layer", "fc", "--filter", "99"],
    ["activation", "--layer", "fc", "--filter", "-1"],
    ["activation", "--layer", "fc", "--filter", "cat"],
    ["activation", "--layer", "fc", "--filter", "1,,2"],
    ["activation", "--layer", "fc", "--steps", "0"],
    ["activation", "--layer", "fc", "--steps", "x"],
    ["activation", "--layer", "fc", "--views", "0"],
    ["activation", "--layer", "fc", "--size", "0"],
    ["activation", "--layer", "fc", "--size", "-3"],
    ["activation", "--layer", "fc", "--method", "magic"],
    ["activation", "--layer", "fc", "--grad-modifier", "sideways"],
    ["activation", "--layer", "fc", "--backprop-modifier", "sideways"],
    ["activation", "--layer", "fc", "--input-range", "255,0"],
    ["activation", "--layer", "fc", "--input-range", "a,b"],
    ["activation", "--layer", "fc", "--input-range", "1"],
    ["activation", "--layer", "fc", "--tv-weight", "-1"],
    ["activation", "--layer", "fc", "--lp-weight", "nan"],
    ["activation", "--layer", "fc", "--device", "nonsense"],
    ["activation", "--layer", "fc", "--gif-every", "0", "--gif", "g.gif"],
    ["activation", "--filter", "1"],
    ["activation", "--layer", "fc", "--model", "missing.pt"],
    ["activation", "--layer", "fc", "--model", "missing.keras"],
    ["activation", "--layer", "fc", "--model", "no_module_here:f"],
    ["activation", "--layer", "fc", "--model", "conftest:nothing"],
    ["activation", "--layer", "fc", "--model", "conftest:snapshot"],
    ["activation", "--layer", "fc", "--model", "justaname"],
    ["activation", "--layer", "fc", "--model", "bad.pt"],
    ["saliency", "--layer", "fc", "--filter", "1", "--image", "missing.png"],
    ["saliency", "--layer", "fc", "--filter", "1", "--image", "bad.pt"],
    ["saliency", "--layer", "fc", "--filter", "1", "--image", "ok.png", "--smooth", "-1"],
    ["saliency", "--layer", "fc", "--filter", "1", "--image", "ok.png", "--size", "0"],
    ["saliency", "--layer", "nope", "--filter", "1", "--image", "ok.png"],
    ["cam", "--layer", "fc", "--filter", "1", "--image", "ok.png", "--penultimate", "nope"],
    ["cam", "--layer", "fc", "--filter", "1", "--image", "ok.png", "--method", "nope"],
    ["cam", "--layer", "fc", "--filter", "77", "--image", "ok.png"],
    ["layer", "--layer", "conv2", "--units", "0,99"],
    ["layer", "--layer", "conv2", "--units", "x"],
    ["layer", "--layer", "nope"],
    ["gallery", "--layer", "nope"],
    ["gallery", "--layer", "conv2", "--steps", "0"],
    ["frobnicate"],
]


@pytest.mark.parametrize("args", CLI_CASES, ids=[" ".join(a[:6]) for a in CLI_CASES])
def test_cli_bad_input_exits_with_one_line(args, tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    (tmp_path / "bad.pt").write_text("not a model")
    full = (
        args if args[0] == "frobnicate" else [*args, *[a for a in CLI_BASE if a not in args or a == "--out"]]
    )
    if "--model" in args:
        full = [*args, "--preprocess", "none", "--out", "x.png"]
    with pytest.raises(SystemExit) as info:
        main(full)
    # the raw-values warning comes once per model class and process: whether it shows depends on
    # the tests run before this one, and it is a warning, not the error
    err = [
        line
        for line in capsys.readouterr().err.strip().splitlines()
        if not line.startswith("featvis: warning:")
    ]
    assert info.value.code == 2
    assert len(err) == 1 and err[0].startswith("featvis: error:"), err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "g.gif").exists()


class FoldsPatches(nn.Module):
    """MobileViT's way: 2 x 2 patches folded into the batch axis around a layer, then unfolded."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.inner = nn.Conv2d(8, 8, 1)  # sees (4 N, 8, H / 2, W / 2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        n, c, h, w = x.shape
        patches = (
            x.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(n * 4, c, h // 2, w // 2)
        )
        x = (
            self.inner(patches)
            .reshape(n, 2, 2, c, h // 2, w // 2)
            .permute(0, 3, 1, 4, 2, 5)
            .reshape(n, c, h, w)
        )
        return self.head(x.mean((2, 3)))


def test_a_layer_that_folds_patches_into_the_batch_is_refused_naming_why():
    """Before: an IndexError from the loss (8 rows for 2 images) or 'a loss returned 4 values'."""
    torch.manual_seed(0)
    model = FoldsPatches().eval()
    kwargs = dict(input_range=(0.0, 1.0), size=16, max_iter=2, seed=0, progress=False)
    with pytest.raises(
        featvis.FeatvisValueError, match=r"one row per image: 'inner' gives 4 rows for one image"
    ):
        featvis.visualize_layer(model, "inner", [0, 1], **kwargs)
    with pytest.raises(featvis.FeatvisValueError, match="one row per image"):
        featvis.dataset_examples(model, "inner", torch.rand(3, 3, 16, 16), input_range=(0.0, 1.0))
    assert featvis.visualize_layer(model, "stem", [0, 1], **kwargs).shape == (2, 16, 16, 3)
    cam = featvis.visualize_cam(model, "head", 1, torch.rand(1, 3, 16, 16), input_range=(0.0, 1.0))
    assert cam.shape == (1, 16, 16)  # the automatic layer passes over the folded one
