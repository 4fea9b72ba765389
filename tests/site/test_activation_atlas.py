"""The activation atlas: cells that group what the layer groups, icons that grow their cell's
direction, the classes each cell pushes toward, and a resumable, sharded run."""

from __future__ import annotations

import functools
import os
from pathlib import Path
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import featvis
from featvis.site import activation_atlas as module

from conftest import assert_untouched, snapshot

ROOT = Path(__file__).resolve().parents[2]


class DigitsMLP(nn.Module):
    """A small CNN on scikit-learn's 8x8 digits with a 32-unit hidden layer (`hidden`)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.hidden = nn.ReLU()
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc2(self.hidden(self.fc1(x.flatten(1))))


@functools.lru_cache(maxsize=1)
def trained_digits() -> tuple[DigitsMLP, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    labels = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = DigitsMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for index in torch.randperm(len(images)).split(128):
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), images, labels


def purity(cells, labels: torch.Tensor) -> float:
    """The share of samples whose image's label is its cell's most common label."""
    agree = sum(np.bincount(labels[cell.sources].numpy(), minlength=10).max() for cell in cells)
    return agree / sum(cell.count for cell in cells)


def digits_atlas(layout: str, **options):
    model, images, labels = trained_digits()
    settings = dict(input_range=(0.0, 1.0), grid=6, min_count=4, max_iter=8, batch_size=64) | options
    result = featvis.activation_atlas(model, "hidden", images[:400], layout=layout, **settings)
    return model, result, labels[:400]


def test_the_cells_of_a_digits_network_group_by_digit_and_push_toward_it():
    """PCA's 2-D layout of the hidden layer: the samples in a cell are mostly one digit (chance, ten
    balanced digits: about 0.1-0.2), and the class a cell pushes toward most is that digit."""
    model, result, labels = digits_atlas("pca")
    assert result.layout == "pca" and len(result.cells) >= 8
    assert purity(result.cells, labels) > 0.6
    majority = [np.bincount(labels[c.sources].numpy(), minlength=10).argmax() for c in result.cells]
    pushes = [c.classes[0][0] for c in result.cells]
    agree = np.mean([m == p for m, p in zip(majority, pushes)])
    assert agree > 0.7, (majority, pushes)


@pytest.mark.slow
def test_umap_separates_the_digits_better_than_chance_by_far():
    pytest.importorskip("umap")
    _, result, labels = digits_atlas("umap", seed=0)
    assert result.layout == "umap"
    assert purity(result.cells, labels) > 0.8


def test_each_icon_grows_its_own_cells_direction_more_than_the_others():
    """Run every cell's icon through the model: its hidden activation, measured from the cells'
    common center, points toward its own cell's average more than toward the others' on average
    for nearly every cell, and its own cell is among the 3 nearest of about 25 for most (chance:
    about 1 in 8)."""
    model, result, _ = digits_atlas("pca", max_iter=32)
    icons = torch.tensor(result.icons, dtype=torch.float32).permute(0, 3, 1, 2) / 255
    with torch.no_grad():
        reached = model.hidden(model.fc1(F.max_pool2d(F.relu(model.conv(icons)), 2).flatten(1)))
    means = torch.stack([cell.mean for cell in result.cells])
    center = means.mean(0)
    cosine = F.normalize(reached - center, dim=1) @ F.normalize(means - center, dim=1).T
    own = cosine.diagonal()
    others = (cosine.sum(1) - own) / (len(means) - 1)
    assert (own > others).float().mean() >= 0.85
    assert ((cosine > own[:, None]).sum(1) < 3).float().mean() >= 0.5
    assert result.image.shape == (6 * 8, 6 * 8, 1)


def test_a_missing_umap_falls_back_to_pca_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap raises ImportError
    with pytest.warns(featvis.FeatvisWarning, match="umap-learn is not installed"):
        _, result, _ = digits_atlas("auto")
    assert result.layout == "pca"
    with pytest.raises(featvis.FeatvisValueError, match="layout='umap'"):
        digits_atlas("umap")


def test_the_page_the_picture_and_a_rerun_that_draws_nothing(tmp_path, monkeypatch):
    model, images, _ = trained_digits()
    before = snapshot(model)
    options = dict(
        input_range=(0.0, 1.0), grid=5, min_count=4, layout="pca", max_iter=4, icon_size=8, batch_size=4
    )
    first = featvis.activation_atlas(model, "hidden", images[:200], out=tmp_path, **options)
    page = (tmp_path / "index.html").read_text()
    assert page.count('class="cell"') == len(first.cells) and "samples" in page
    assert (tmp_path / "atlas.png").stat().st_size > 0
    calls = []
    original = module.visualize_activation_with_losses
    monkeypatch.setattr(
        module, "visualize_activation_with_losses", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    again = featvis.activation_atlas(model, "hidden", images[:200], out=tmp_path, **options)
    assert calls == [] and np.array_equal(again.image, first.image)
    assert_untouched(model, before)


def test_bad_arguments_are_named_and_the_model_is_untouched():
    model, images, _ = trained_digits()
    before = snapshot(model)
    for options, argument in [
        (dict(layout="tsne"), "layout"),
        (dict(grid=1), "grid"),
        (dict(samples=0), "samples"),
    ]:
        with pytest.raises(featvis.FeatvisError, match=argument):
            featvis.activation_atlas(model, "hidden", images[:20], input_range=(0.0, 1.0), **options)
    with pytest.raises(featvis.FeatvisError, match="layer"):
        featvis.activation_atlas(model, "hiden", images[:20], input_range=(0.0, 1.0))
    assert_untouched(model, before)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SCRIPT = """
import sys, torch
sys.path[:0] = [{tests!r}, {here!r}]
from test_activation_atlas import trained_digits
import featvis
model, images, _ = trained_digits()
featvis.activation_atlas(model, "hidden", images[:200], out=sys.argv[1], input_range=(0.0, 1.0), grid=5,
                         min_count=4, layout="pca", max_iter=4, icon_size=8, batch_size=4)
"""


@pytest.mark.slow
def test_torchrun_shards_the_cells_and_writes_the_same_files(tmp_path):
    script = tmp_path / "run.py"
    here = Path(__file__).resolve().parent
    script.write_text(SCRIPT.format(tests=str(here.parent), here=str(here)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], check=True, env=env, timeout=600)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    rendezvous = ["--master-port", str(free_port())]
    subprocess.run(
        [*torchrun, *rendezvous, str(script), str(tmp_path / "two")], check=True, env=env, timeout=600
    )
    one, two = tmp_path / "one", tmp_path / "two"
    names = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_the_command_line_writes_the_picture_and_the_page(tmp_path, capsys):
    from PIL import Image

    from featvis.cli import main

    model, images, _ = trained_digits()
    torch.save(model, tmp_path / "digits.pth")
    (tmp_path / "digits").mkdir()
    for index, image in enumerate(images[:120]):
        Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).save(
            tmp_path / "digits" / f"{index:03d}.png"
        )
    main(
        [
            "activation-atlas", "--model", str(tmp_path / "digits.pth"), "--preprocess", "none",
            "--input-range", "0,1", "--layer", "hidden", "--data", str(tmp_path / "digits"), "--data-size", "8",
            "--grid", "4", "--min-count", "3", "--layout", "pca", "--steps", "4", "--out", str(tmp_path / "atlas"),
        ]
    )  # fmt: skip
    said = capsys.readouterr().out
    assert "cells, laid out by pca" in said
    assert (tmp_path / "atlas" / "atlas.png").exists() and (tmp_path / "atlas" / "index.html").exists()


def test_direction_per_image_gives_each_image_its_own_directions_value():
    """The atlas's batched objective: image i's value is `Direction`'s value for vectors[i]."""
    from conftest import loss_values

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU()).eval()
    images, vectors = torch.rand(3, 3, 12, 12), torch.randn(3, 6)
    together = loss_values(model, featvis.losses.DirectionPerImage("1", vectors, cossim_pow=2), images)
    alone = [
        loss_values(model, featvis.losses.Direction("1", v, cossim_pow=2), images)[i]
        for i, v in enumerate(vectors)
    ]
    torch.testing.assert_close(together, torch.stack(alone))
    with pytest.raises(featvis.FeatvisValueError, match="vectors"):
        loss_values(model, featvis.losses.DirectionPerImage("1", vectors[:2]), images)
