"""What new users of the command line trip over: channels, models from the current folder or a
torch.save file, non-square photos, output folders, the Keras backend, class names."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image
import pytest
import torch

from featvis import attention
from featvis.cli import main

COUNTER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Counter(nn.Module):
        '''A one-channel (grayscale) regression CNN, like the README's disk counter.'''

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.act(self.conv(x)).mean(dim=(2, 3)))


    def make_counter():
        torch.manual_seed(0)
        return Counter().eval()

    class Tokens(nn.Module):
        '''Patch tokens (N, 16, 8) through an MLP layer (N, 16, 6): a ViT's layout, features last.'''

        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(1, 8, 4, stride=4)
            self.mlp = nn.Linear(8, 6)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            tokens = self.embed(x).flatten(2).transpose(1, 2)
            return self.head(torch.relu(self.mlp(tokens)).mean(1))


    def make_tokens():
        torch.manual_seed(0)
        return Tokens().eval()


    class Classifier(nn.Module):
        '''A grayscale classifier whose output ends in a softmax.'''

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return torch.softmax(self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3))), dim=1)


    def make_classifier():
        torch.manual_seed(0)
        return Classifier().eval()
    """
)


def run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


def one_error_line(code, err) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("featvis: error: "), err
    return lines[0]


@pytest.fixture
def user_folder(tmp_path, monkeypatch, request):
    """A folder holding the user's package `<name>/nets.py`, made the current folder."""
    name = f"userpkg_{request.node.name.split('[')[0][-20:]}".replace("-", "_")
    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(COUNTER_MODULE)
    monkeypatch.chdir(tmp_path)
    yield name
    for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
        del sys.modules[module]


# --model package.module:factory from the current folder (python -m style)


def test_model_factory_is_imported_from_the_current_folder(user_folder, tmp_path):
    path_before = list(sys.path)
    main(
        [
            "activation",
            "--model",
            f"{user_folder}.nets:make_counter",
            "--preprocess",
            "none",
            "--input-range",
            "0,1",
            "--channels",
            "1",
            "--layer",
            "head",
            "--filter",
            "0",
            "--size",
            "16",
            "--steps",
            "3",
            "--grad-modifier",
            "negate",
            "--out",
            "fewer.png",
        ]
    )
    image = Image.open(tmp_path / "fewer.png")
    assert image.size == (16, 16) and image.mode == "L"  # one channel in, one channel out
    assert sys.path == path_before  # the folder is on sys.path only while the model loads


def test_unit_axis_and_token_reach_the_visualization(user_folder, tmp_path, capsys):
    from featvis import visualize_activation

    model_options = ["--model", f"{user_folder}.nets:make_tokens", "--layer", "mlp", "--channels", "1"]
    model_options += ["--preprocess", "none", "--input-range", "0,1", "--size", "16"]

    def cli_image(*unit_options):
        main(["activation", *model_options, "--filter", "5", "--steps", "8", *unit_options, "--out", "t.png"])
        return np.asarray(Image.open(tmp_path / "t.png"), dtype=np.int16)

    class_token = cli_image("--unit-axis", "-1", "--token", "0")
    model = sys.modules[f"{user_folder}.nets"].make_tokens()
    options = dict(max_iter=8, size=16, channels=1, input_range=(0.0, 1.0), seed=0)
    api = visualize_activation(model, "mlp", 5, unit_axis=-1, token=0, **options)
    np.testing.assert_allclose(class_token, np.rint(255 * api[..., 0]), atol=1)  # api: [0, 1]
    assert np.abs(cli_image("--unit-axis", "-1", "--token", "1") - class_token).mean() > 5
    code, err = run(["activation", *model_options, "--unit-axis", "3", "--out", "x.png"], capsys)
    assert "--unit-axis=3" in one_error_line(code, err)


def test_a_module_that_is_not_in_the_current_folder_says_where_it_looked(user_folder, capsys, tmp_path):
    code, err = run(
        ["activation", "--model", "nopkg_here.nets:make", "--layer", "head", "--out", "x.png"], capsys
    )
    line = one_error_line(code, err)
    assert "--model 'nopkg_here.nets:make'" in line and str(tmp_path) in line
    assert "No module named 'nopkg_here'" in line


# --channels, through every command


@pytest.mark.parametrize(
    "command",
    [
        ["layer", "--layer", "conv", "--units", "0,1", "--steps", "2", "--size", "16", "--out", "grid.png"],
        ["gallery", "--layer", "conv", "--units", "0,1", "--steps", "2", "--size", "16", "--out", "site"],
        [
            "saliency",
            "--layer",
            "head",
            "--filter",
            "0",
            "--image",
            "gray.png",
            "--size",
            "16",
            "--out",
            "s.png",
        ],
        ["cam", "--layer", "head", "--filter", "0", "--image", "gray.png", "--size", "16", "--out", "c.png"],
        ["cam", "--layer", "head", "--filter", "0", "--image", "rgb.png", "--size", "16", "--out", "c.png"],
    ],
    ids=["layer", "gallery", "saliency", "cam", "cam-rgb-photo"],
)
def test_channels_one_runs_a_grayscale_model_in_every_command(user_folder, tmp_path, command):
    Image.fromarray((np.random.default_rng(0).random((20, 24)) * 255).astype(np.uint8), "L").save("gray.png")
    Image.new("RGB", (24, 20), (200, 40, 90)).save("rgb.png")  # read as grayscale for one channel
    model = ["--model", f"{user_folder}.nets:make_counter", "--preprocess", "none", "--channels", "1"]
    main([*command, *model])
    out = tmp_path / command[command.index("--out") + 1]
    assert (out / "index.html").is_file() if out.is_dir() else out.is_file()


@pytest.mark.parametrize("channels", ["0", "-1"])
def test_channels_below_one_is_refused_naming_the_option(user_folder, capsys, tmp_path, channels):
    args = ["activation", "--model", f"{user_folder}.nets:make_counter", "--layer", "head"]
    code, err = run([*args, "--channels", channels, "--out", "x.png"], capsys)
    assert f"--channels={int(channels)}" in one_error_line(code, err)
    assert not (tmp_path / "x.png").exists()


def test_a_grayscale_model_needs_no_channels_option_featvis_reads_it_from_the_model(user_folder):
    args = ["activation", "--model", f"{user_folder}.nets:make_counter", "--preprocess", "none"]
    main([*args, "--input-range", "0,1", "--layer", "head", "--size", "16", "--steps", "2", "--out", "x.png"])
    assert Image.open("x.png").mode == "L"  # one channel, read from the model's first convolution


def test_a_channels_option_that_contradicts_the_model_fails_with_one_line(user_folder, capsys):
    args = [
        "activation",
        "--model",
        f"{user_folder}.nets:make_counter",
        "--preprocess",
        "none",
        "--input-range",
        "0,1",
        "--channels",
        "3",
    ]
    code, err = run([*args, "--layer", "head", "--size", "16", "--steps", "2", "--out", "x.png"], capsys)
    line = one_error_line(code, err)
    assert "model raised RuntimeError" in line  # the model's own words on what it got
    for option in ("--preprocess", "--input-range", "--channels", "--size"):  # what the user can change
        assert option in line, line
    assert "input_range" not in line


TINY_ONE_CHANNEL = ["--model", "conftest:make_tiny", "--layer", "fc", "--filter", "1", "--channels", "1"]


@pytest.mark.parametrize(
    "command",
    [
        ["activation", *TINY_ONE_CHANNEL, "--steps", "1"],
        ["cam", *TINY_ONE_CHANNEL, "--image", "gray.png"],
        ["activation", "--model", "{counter}", "--layer", "head", "--filter", "0"],  # 1 channel, read
    ],
    ids=["rgb-model-channels-1", "cam-rgb-model-channels-1", "gray-model"],
)
def test_one_channel_with_the_default_imagenet_preprocess_is_refused(user_folder, capsys, tmp_path, command):
    """ImageNet's mean and std are for 3 channels: a gray image is not silently broadcast into them."""
    Image.new("L", (20, 24)).save("gray.png")
    args = [a.replace("{counter}", f"{user_folder}.nets:make_counter") for a in command]
    code, err = run([*args, "--size", "16", "--out", "x.png"], capsys)
    line = one_error_line(code, err)
    assert "--channels" in line and "--preprocess" in line, line
    assert not (tmp_path / "x.png").exists()


def test_the_python_api_refuses_a_three_channel_normalization_of_one_channel_images(tiny):
    import featvis

    with pytest.raises(featvis.FeatvisValueError, match=r"channels=1.*preprocess"):
        featvis.visualize_activation(
            tiny, "fc", 1, channels=1, preprocess=featvis.zoo.Normalize(), max_iter=1
        )


# warnings: one line each, once


def test_warnings_are_one_line_each_and_each_once(user_folder, tmp_path):
    (tmp_path / "photos").mkdir()
    for i in range(5):
        Image.new("L", (12, 12), 40 * i).save(tmp_path / "photos" / f"p{i}.png")
    (tmp_path / "photos" / "broken.png").write_bytes(b"not an image")
    model = ["--model", f"{user_folder}.nets:make_classifier", "--preprocess", "none", "--input-range", "0,1"]
    # the model's output (a softmax) is read by the dataset pass and by the optimization of each layer
    args = ["gallery", *model, "--layer", "", "--layer", "fc", "--units", "0", "--steps", "1", "--size", "8"]
    done = subprocess.run(  # as a user runs it: Python's own warning display, not pytest's
        [sys.executable, "-m", "featvis", *args, "--data", "photos", "--k", "2", "--out", "site"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert all(line.startswith("featvis: warning: ") for line in lines), lines  # no source lines
    softmax = [line for line in lines if "end in a softmax" in line]
    data = [line for line in lines if "used 5 of 6 images" in line]
    assert len(softmax) == 1 and len(data) == 1 and "broken.png" in data[0], lines
    assert len(lines) == 2, lines


# --model file.pt written by torch.save(model)


def test_a_torch_save_model_file_loads(user_folder, tmp_path):
    sys.path.insert(0, str(tmp_path))
    try:
        nets = __import__(f"{user_folder}.nets", fromlist=["make_counter"])
        torch.save(nets.make_counter(), tmp_path / "counter.pt")
    finally:
        sys.path.remove(str(tmp_path))
    del sys.modules[f"{user_folder}.nets"], sys.modules[user_folder]  # loaded again from the folder
    main(
        [
            "activation",
            "--model",
            "counter.pt",
            "--preprocess",
            "none",
            "--input-range",
            "0,1",
            "--channels",
            "1",
            "--layer",
            "conv",
            "--filter",
            "2",
            "--size",
            "16",
            "--steps",
            "2",
            "--out",
            "up.png",
        ]
    )
    assert Image.open(tmp_path / "up.png").size == (16, 16)


def test_a_state_dict_file_says_it_holds_weights_not_a_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "weights.pt")
    code, err = run(["activation", "--model", "weights.pt", "--layer", "", "--out", "x.png"], capsys)
    line = one_error_line(code, err)
    assert "--model 'weights.pt' holds a state dict" in line and "torch.save(model" in line


def test_a_broken_model_file_is_neither_torchscript_nor_torch_save(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.pt").write_bytes(b"\x80\x04not really a pickle")
    code, err = run(["activation", "--model", "broken.pt", "--layer", "", "--out", "x.png"], capsys)
    line = one_error_line(code, err)
    assert "neither a TorchScript file" in line and "nor a torch.save(model) file" in line


def test_a_pickled_model_whose_class_cannot_be_imported_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gone_pkg_x").mkdir()
    (tmp_path / "gone_pkg_x" / "__init__.py").write_text(COUNTER_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        import gone_pkg_x

        torch.save(gone_pkg_x.make_counter(), tmp_path / "m.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("gone_pkg_x", None)
    shutil.rmtree(tmp_path / "gone_pkg_x")  # with the __pycache__ that importing it may have left
    code, err = run(["activation", "--model", "m.pt", "--layer", "", "--out", "x.png"], capsys)
    line = one_error_line(code, err)
    assert "gone_pkg_x" in line and "class importable" in line


# non-square photos: aspect ratio and size kept


@pytest.fixture
def chelsea(tmp_path, monkeypatch):
    from skimage import data

    monkeypatch.chdir(tmp_path)
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.png")  # 451 x 300
    return tmp_path / "cat.png"


@pytest.mark.parametrize("extra", [[], ["--no-overlay"], ["--guided"]])
def test_cam_on_a_non_square_photo_keeps_its_size_and_aspect(chelsea, monkeypatch, extra):
    fed = []
    for name in ("visualize_cam", "visualize_guided_cam"):
        original = getattr(attention, name)

        def spy(model, layer, indices, image, *args, _original=original, **kwargs):
            fed.append(np.asarray(image).shape)
            return _original(model, layer, indices, image, *args, **kwargs)

        monkeypatch.setattr(attention, name, spy)
    main(
        [
            "cam",
            "--model",
            "conftest:make_tiny",
            "--preprocess",
            "none",
            "--layer",
            "fc",
            "--penultimate",
            "act2",
            "--filter",
            "1",
            "--image",
            str(chelsea),
            "--size",
            "64",
            *extra,
            "--out",
            "cam.png",
        ]
    )
    assert set(fed) == {(64, 96, 3)}  # shorter side 64, aspect ratio 451:300 kept
    assert Image.open("cam.png").size == (451, 300)  # written at the photo's own size


def test_saliency_size_wxh_resizes_exactly_for_fixed_size_models(chelsea, monkeypatch):
    fed = []
    original = attention.visualize_saliency
    monkeypatch.setattr(
        attention,
        "visualize_saliency",
        lambda model, layer, indices, image, **kw: (
            fed.append(image.shape) or original(model, layer, indices, image, **kw)
        ),
    )
    args = ["saliency", "--model", "conftest:make_tiny", "--preprocess", "none", "--layer", "fc"]
    main([*args, "--filter", "1", "--image", str(chelsea), "--size", "32x32", "--out", "s.png"])
    assert fed == [(32, 32, 3)]
    assert Image.open("s.png").size == (451, 300)


@pytest.mark.parametrize("size", ["0", "abc", "224x", "0x10", "-5", "1.5"])
def test_a_bad_attention_size_is_refused_naming_the_option(chelsea, capsys, size):
    args = ["cam", "--model", "conftest:make_tiny", "--preprocess", "none", "--layer", "fc", "--filter", "1"]
    code, err = run([*args, "--image", str(chelsea), "--size", size, "--out", "x.png"], capsys)
    assert f"--size='{size}'" in one_error_line(code, err)


# --out in a folder that does not exist


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["activation", "--layer", "fc", "--filter", "1", "--out", "{missing}/x.png"], "--out"),
        (["activation", "--layer", "fc", "--out", "x.png", "--gif", "{missing}/r.gif"], "--gif"),
        (["activation", "--layer", "fc", "--out", "x.png", "--plot", "{missing}/l.png"], "--plot"),
        (["layer", "--layer", "conv2", "--out", "{missing}/grid.png"], "--out"),
        (["gallery", "--layer", "conv2", "--out", "{missing}/site"], "--out"),
        (["saliency", "--filter", "1", "--image", "ok.png", "--out", "{missing}/s.png"], "--out"),
        (["cam", "--filter", "1", "--image", "ok.png", "--out", "{missing}/c.png"], "--out"),
    ],
    ids=["activation", "gif", "plot", "layer", "gallery", "saliency", "cam"],
)
def test_an_output_in_a_missing_folder_is_refused_and_nothing_is_created(
    command, option, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    missing = tmp_path / "nonexistent" / "dir"
    args = [a.replace("{missing}", str(missing)) for a in command]
    code, err = run([*args, "--model", "conftest:make_tiny", "--preprocess", "none"], capsys)
    line = one_error_line(code, err)
    assert line.startswith(f"featvis: error: {option}='{missing}") and "does not exist" in line
    assert not (tmp_path / "nonexistent").exists() and not (tmp_path / "x.png").exists()


def test_gallery_creates_its_own_site_folder_in_an_existing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["gallery", "--model", "conftest:make_tiny", "--preprocess", "none", "--layer", "conv1"]
    main([*args, "--units", "0", "--steps", "1", "--size", "8", "--out", "site"])
    assert (tmp_path / "site" / "index.html").is_file()


# Keras backend


def test_a_keras_file_with_another_keras_backend_says_set_keras_backend_torch(tmp_path):
    (tmp_path / "net.keras").write_bytes(b"")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    args = ["activation", "--model", "net.keras", "--layer", "conv2d", "--out", "x.png"]
    done = subprocess.run(
        [sys.executable, "-m", "featvis.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert (
        "set KERAS_BACKEND=torch (it is 'jax')" in done.stderr
        and "needs the keras package" not in done.stderr
    )


# class names


def test_cli_filter_cat_lists_the_cat_classes(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["activation", "--layer", "_fc", "--filter", "cat", "--out", "x.png"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("featvis: error: --filter='cat'") and "Egyptian cat (285)" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("command", ["activation", "layer", "gallery", "saliency", "cam"])
def test_help_documents_channels_and_output_folders(command):
    from click.testing import CliRunner

    from featvis.cli import cli

    text = " ".join(CliRunner().invoke(cli, [command, "--help"], terminal_width=200).output.split())
    assert "--channels" in text and "grayscale" in text
    assert "must exist" in text
    if command in ("saliency", "cam"):
        assert "shorter side" in text and "photo's own size" in text


def test_cam_passes_its_seed_on(chelsea, monkeypatch):
    from featvis import attention

    seeds: list = []
    original = attention.visualize_cam
    monkeypatch.setattr(
        attention, "visualize_cam", lambda *a, **kw: seeds.append(kw.get("seed")) or original(*a, **kw)
    )
    args = ["cam", "--model", "conftest:make_tiny", "--preprocess", "none", "--layer", "fc", "--filter", "1"]
    main([*args, "--image", str(chelsea), "--size", "32", "--aug-smooth", "--seed", "7", "--out", "c.png"])
    assert seeds == [7]


def test_a_bad_unit_list_of_examples_is_refused_naming_units(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "photos" / "a.png")
    args = ["examples", "--model", "conftest:make_tiny", "--preprocess", "none", "--layer", "conv2"]
    code, err = run([*args, "--data", "photos", "--units", "1,x", "--out", "site"], capsys)
    assert "--units" in one_error_line(code, err)
