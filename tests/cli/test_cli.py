"""The command line: it writes images, and bad input gives one line and a non-zero exit."""

import os
from pathlib import Path
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from featvis.cli import main

TINY = "conftest:make_tiny"


def run(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr()


def test_activation_command_writes_a_png(tmp_path, capsys, monkeypatch):
    out = tmp_path / "unit.png"
    main(
        [
            "activation",
            "--model",
            TINY,
            "--preprocess",
            "none",
            "--layer",
            "fc",
            "--filter",
            "3",
            "--steps",
            "5",
            "--size",
            "32",
            "--out",
            str(out),
        ]
    )
    assert Image.open(out).size == (32, 32)


def test_layer_command_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    main(
        [
            "layer",
            "--model",
            TINY,
            "--preprocess",
            "none",
            "--layer",
            "conv2",
            "--units",
            "0,1,2,3",
            "--steps",
            "3",
            "--size",
            "16",
            "--out",
            str(out),
        ]
    )
    assert Image.open(out).size[0] > 32


@pytest.mark.parametrize(
    "args",
    [
        ["activation", "--model", TINY, "--layer", "nope", "--filter", "1", "--out", "x.png"],
        ["activation", "--model", TINY, "--layer", "fc", "--filter", "flamingo", "--out", "x.png"],
        ["activation", "--model", TINY, "--layer", "fc", "--filter", "-3", "--out", "x.png"],
        ["activation", "--model", TINY, "--layer", "fc", "--steps", "0", "--out", "x.png"],
        ["activation", "--model", TINY, "--layer", "fc", "--input-range", "9", "--out", "x.png"],
        ["activation", "--model", "no_such_module:f", "--layer", "fc", "--out", "x.png"],
        ["activation", "--model", "missing.pt", "--layer", "fc", "--out", "x.png"],
        ["activation", "--layer", "_fc", "--filter", "flamingoo", "--out", "x.png"],
        ["activation", "--layer", "_fc"],
        ["nonsense"],
    ],
)
def test_bad_input_exits_non_zero_with_one_line(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, captured = run(args, capsys)
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featvis: error:"), captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "x.png").exists()


def test_help_lists_examples():
    out = subprocess.run(
        [sys.executable, "-m", "featvis.cli", "activation", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Examples:" in out and "--filter" in out


@pytest.mark.parametrize(
    "command",
    [
        ["saliency"],
        ["saliency", "--smooth", "2"],
        ["cam", "--penultimate", "act2"],
        ["cam", "--penultimate", "act2", "--guided"],
    ],
)
def test_attention_commands_write_overlays(tmp_path, command):
    image = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (120, 30, 200)).save(image)
    out = tmp_path / "map.png"
    main(
        [
            *command,
            "--model",
            TINY,
            "--preprocess",
            "none",
            "--layer",
            "fc",
            "--image",
            str(image),
            "--filter",
            "2",
            "--size",
            "32",
            "--out",
            str(out),
        ]
    )
    assert Image.open(out).size == (40, 30)  # the photo's own size: the map is resized to it


@pytest.mark.parametrize(
    "args",
    [
        ["cam", "--image", "missing.png", "--filter", "1"],
        ["saliency", "--image", "in.png", "--filter", "1", "--smooth", "-1"],
    ],
)
def test_attention_commands_bad_input(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    code, captured = run(
        [*args, "--model", TINY, "--preprocess", "none", "--layer", "fc", "--out", "x.png"], capsys
    )
    assert code == 2 and len(captured.err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_torchscript_model_output_works_and_inner_layers_say_why_not(tmp_path, capsys):
    import torch

    from conftest import make_tiny

    path = tmp_path / "tiny.pt"
    torch.jit.script(make_tiny()).save(str(path))
    out = tmp_path / "out.png"
    main(
        [
            "activation",
            "--model",
            str(path),
            "--preprocess",
            "none",
            "--layer",
            "",
            "--filter",
            "1",
            "--size",
            "32",
            "--steps",
            "3",
            "--out",
            str(out),
        ]
    )
    assert Image.open(out).size == (32, 32)
    code, captured = run(
        [
            "activation",
            "--model",
            str(path),
            "--preprocess",
            "none",
            "--layer",
            "scripted.fc",
            "--filter",
            "1",
            "--out",
            str(tmp_path / "x.png"),
        ],
        capsys,
    )
    assert code == 2 and "TorchScript" in captured.err


# library errors reach the command line user in its words: --flags, not Python arguments


@pytest.mark.parametrize(
    ("extra", "option", "argument"),
    [
        (["--filter", "99"], "--filter", "filter_indices"),
        (["--steps", "0"], "--steps", "max_iter"),
        (["--filter", "1", "--input-range", "5,1"], "--input-range", "input_range"),
        (["--filter", "1", "--unit-axis", "5"], "--unit-axis", "unit_axis"),
        (["--filter", "1", "--setting", "lr=-1"], "--setting lr=-1", "lr="),
    ],
)
def test_a_library_error_names_the_option_not_the_python_argument(extra, option, argument, capsys, tmp_path):
    args = ["activation", "--model", TINY, "--preprocess", "none", "--layer", "fc", "--size", "8"]
    code, captured = run([*args, "--input-range", "0,1", *extra, "--out", str(tmp_path / "x.png")], capsys)
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("featvis: error: "), captured.err
    assert option in lines[0] and argument not in lines[0].replace(option, ""), lines[0]


def _verbose_losses(args, capsys) -> list[str]:
    """The total loss of each step that `featvis activation --verbose` prints."""
    main(args)
    return [
        line.split("total")[-1].strip() for line in capsys.readouterr().out.splitlines() if "total" in line
    ]


def test_settings_without_an_option_of_their_own_are_set_with_setting(tmp_path, capsys):
    args = ["activation", "--model", TINY, "--preprocess", "none", "--layer", "fc", "--filter", "1"]
    args += ["--size", "16", "--steps", "3", "--verbose", "--out", str(tmp_path / "x.png")]
    still = _verbose_losses([*args, "--setting", "input_modifiers=[]", "--setting", "lr=1e-12"], capsys)
    moved = _verbose_losses([*args, "--setting", "input_modifiers=[]"], capsys)
    assert len(still) == len(moved) == 3
    assert len(set(still)) == 1 and len(set(moved)) == 3  # no transforms: only the learning rate moves it
    for settings, says in [
        (["lrr=0.1"], "close matches: 'lr'"),
        (["max_iter=3"], "use --steps"),
        (["lr"], "NAME=VALUE"),
        (["lr=fast"], "--setting lr has type str"),
        (["lr=0.1", "lr=0.2"], "lr is given twice"),
        (["method=pixel", "--method", "fourier"], "not also given as --method"),
    ]:
        extra = [
            part
            for setting in settings
            for part in (["--setting", setting] if "=" in setting or setting == "lr" else [setting])
        ]
        code, captured = run([*args, *extra], capsys)
        assert code == 2 and says in captured.err, captured.err


def test_setting_takes_none_a_dtype_name_and_the_fields_a_command_has_no_option_for(tmp_path, capsys):
    """`layer` has no --method: --setting method=... sets it; none and bfloat16 are read as None and the dtype."""
    args = [
        "layer",
        "--model",
        TINY,
        "--preprocess",
        "none",
        "--layer",
        "conv2",
        "--units",
        "0,1",
        "--size",
        "16",
    ]
    args += ["--steps", "2", "--seed", "0"]
    main(
        [
            *args,
            "--out",
            str(tmp_path / "pixel.png"),
            "--setting",
            "method=pixel",
            "--setting",
            "image_ema=none",
        ]
    )
    main(
        [
            *args,
            "--out",
            str(tmp_path / "fourier.png"),
            "--setting",
            "method=fourier",
            "--setting",
            "autocast=bfloat16",
        ]
    )
    pixel = np.asarray(Image.open(tmp_path / "pixel.png"), dtype=np.int16)
    fourier = np.asarray(Image.open(tmp_path / "fourier.png"), dtype=np.int16)
    assert pixel.shape == fourier.shape and np.abs(pixel - fourier).mean() > 5  # two parameterizations


def test_an_atlas_made_with_other_settings_says_use_restart(capsys, tmp_path):
    args = ["atlas", "--model", TINY, "--preprocess", "none", "--layer", "fc", "--size", "8", "--views", "1"]
    main([*args, "--steps", "1", "--out", str(tmp_path / "site")])
    capsys.readouterr()
    code, captured = run([*args, "--steps", "2", "--out", str(tmp_path / "site")], capsys)
    line = captured.err.strip()
    assert code == 2 and line.startswith("featvis: error: ") and "\n" not in line, captured.err
    assert "--steps: 1 -> 2" in line  # what differs, in the options' words
    assert "--restart" in line and "restart=True" not in line, line


# progress: long work shows it on a terminal, whatever its length; a pipe gets no bar


def _featvis(args: list[str], terminal: bool) -> tuple[int, str]:
    """Run the command as a user does, its stderr on a pseudo-terminal (or a pipe); what it wrote there."""
    import fcntl
    import pty
    import struct
    import termios

    tests = Path(__file__).resolve().parents[1]  # conftest.py, for the models the commands load
    command = [sys.executable, "-m", "featvis", *args]
    env = {**os.environ, "PYTHONPATH": str(tests), "OMP_NUM_THREADS": "1"}
    if not terminal:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        return done.returncode, done.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    chunks = []
    try:
        while True:
            try:
                data = os.read(leader, 4096)
            except OSError:  # EIO: the command ended and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = process.wait(timeout=300)
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, b"".join(chunks).decode(errors="replace")


PREVIEW = ["--model", TINY, "--preprocess", "none", "--input-range", "0,1", "--quality", "preview"]


@pytest.mark.parametrize(
    "command",
    [
        ["activation", *PREVIEW, "--layer", "fc", "--filter", "1", "--size", "32"],
        ["layer", *PREVIEW, "--layer", "conv2", "--units", "0,1", "--size", "16"],  # one batch
    ],
    ids=["activation", "layer"],
)
def test_a_preview_shows_its_progress_on_a_terminal(command, tmp_path):
    code, shown = _featvis([*command, "--out", str(tmp_path / "x.png")], terminal=True)
    assert code == 0, shown
    assert "/32" in shown, shown  # the bar of the 32 steps


def test_no_progress_bar_on_a_pipe(tmp_path):
    command = ["activation", *PREVIEW, "--layer", "fc", "--filter", "1", "--size", "32"]
    code, shown = _featvis([*command, "--out", str(tmp_path / "x.png")], terminal=False)
    assert code == 0 and "/32" not in shown and "it/s" not in shown, shown


def test_atlas_fed_by_zero_leaves_the_row_out(tmp_path, capsys):
    """`--fed-by 0`: no "fed by" row on the cards; the default shows one on the second layer's."""
    import torch

    from conftest import make_tiny

    path = tmp_path / "tiny.pth"
    torch.save(make_tiny(), path)
    pages = {}
    for fed_by in ("0", "4"):
        out = tmp_path / f"site{fed_by}"
        main(
            [
                "atlas", "--model", str(path), "--preprocess", "none", "--input-range", "0,1",
                "--layer", "conv1", "--layer", "conv2", "--steps", "1", "--size", "16",
                "--fed-by", fed_by, "--out", str(out),
            ]
        )  # fmt: skip
        pages[fed_by] = "".join(p.read_text() for p in out.rglob("*.html"))
    assert "fed by" not in pages["0"] and "fed by" in pages["4"]
