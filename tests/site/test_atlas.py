"""The atlas: a whole model's units in one site, the same files on 1 or 2 processes, resumable after SIGKILL."""

import json
import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest
import torch
from torch import nn

import featvis
from featvis.atlas import Batch, default_layers, plan, shard

from conftest import assert_untouched, snapshot

TOY = """
import torch
from torch import nn


class Toy(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(width, 6, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(6, 5, 3, padding=1, stride=2), nn.ReLU()),
        )
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def make():
    torch.manual_seed(0)
    return Toy().eval()


def make_wide():
    torch.manual_seed(0)
    return Toy(width=24).eval()
"""
OPTIONS = ["--preprocess", "none", "--input-range", "0,1", "--steps", "4", "--views", "1", "--size", "16"]


def _env(folder: Path) -> dict:
    # one thread per process in every run: a convolution's float sums may depend on the thread count
    return {**os.environ, "PYTHONPATH": str(folder), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy")
    (folder / "toy.py").write_text(TOY)
    photos = folder / "photos"  # 11 pictures: two ranks' shares differ in size
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(11):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(photos / f"p{i:02d}.png")
    return folder


def _atlas_command(*args) -> list[str]:
    return [sys.executable, "-m", "featvis", "atlas", "--model", "toy:make", *OPTIONS, *args]


def _data(folder: Path) -> list[str]:
    return ["--data", str(folder / "photos"), "--examples", "3"]


@pytest.fixture(scope="module")
def one_process_site(toy_folder) -> Path:
    out = toy_folder / "one"
    command = _atlas_command(*_data(toy_folder), "--out", str(out))
    subprocess.run(command, env=_env(toy_folder), check=True, capture_output=True)
    return out


def _files(site: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(site)): p.read_bytes()
        for p in sorted(site.rglob("*"))
        if p.is_file() and "timings" not in p.parts
    }


def _index_units(site: Path) -> list[tuple[str, int]]:
    page = (site / "index.html").read_text()
    units = json.loads(re.search(r"const units = (\[.*?\]);", page).group(1))
    return [(u["layer"], u["unit"]) for u in units]


@pytest.mark.slow
def test_two_processes_under_torchrun_write_the_same_files_as_one(toy_folder, one_process_site):
    out = toy_folder / "two"
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "featvis",
            "atlas",
            "--model",
            "toy:make",
        ]
        + OPTIONS
        + _data(toy_folder)
        + ["--out", str(out)],
        env=_env(toy_folder),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = {
        json.loads(line)["rank"]
        for log in (out / "timings").glob("*.jsonl")
        for line in log.read_text().splitlines()
    }
    assert ranks == {0, 1}  # both processes did work
    assert _files(out) == _files(one_process_site)  # every PNG, record, page: bitwise the same
    assert len(list(out.glob("units/*/*.examples.png"))) == 18  # each unit's dataset examples too
    units = _index_units(out)
    expected = [
        (layer, u)
        for layer, n in [("stem", 4), ("blocks.0", 6), ("blocks.1", 5), ("fc", 3)]
        for u in range(n)
    ]
    assert sorted(units) == sorted(expected) and len(units) == len(set(units))  # every unit once


def _torchrun(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone` (a free port of its own) on 2 CPU processes; no process outlives it."""
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", *args]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        try:  # torchrun and its workers: one process group
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.slow
def test_under_torchrun_rank_0_alone_reports_the_data_with_the_totals_of_all_ranks(toy_folder, tmp_path):
    photos = tmp_path / "photos"  # 21 files, 2 of them unreadable: the ranks read 11 and 10
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(19):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(photos / f"p{i:02d}.png")
    for name in ("broken_a.png", "broken_b.png"):
        (photos / name).write_bytes(b"not an image")
    args = ["-m", "featvis", "atlas", "--model", "toy:make", *OPTIONS, "--layer", "fc"]
    done = _torchrun(
        [*args, "--data", str(photos), "--examples", "2", "--out", str(tmp_path / "site")], _env(toy_folder)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reports = [line for line in done.stderr.splitlines() if re.search(r"used \d+ of \d+ images", line)]
    assert len(reports) == 1, done.stderr[-2000:]
    assert reports[0].startswith("featvis: warning: ") and "used 19 of 21 images" in reports[0], reports
    assert "broken_a.png" in reports[0] and "broken_b.png" in reports[0]


@pytest.mark.slow
def test_an_atlas_killed_half_way_resumes_without_redoing_written_units(toy_folder):
    out = toy_folder / "killed"
    command = [sys.executable, "-m", "featvis", "atlas", "--model", "toy:make_wide", *OPTIONS]
    command += ["--steps", "30", "--batch-size", "2", "--out", str(out)]
    process = subprocess.Popen(
        command, env=_env(toy_folder), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while len(list(out.glob("units/*/*.json"))) < 6 and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    written = len(list(out.glob("units/*/*.json")))
    total = 24 + 6 + 5 + 3
    assert 6 <= written < total
    for png in out.glob("units/*/*.png"):  # nothing half-written, even at a kill
        Image.open(png).verify()
    assert not list(out.rglob("*.part"))
    rerun = subprocess.run(command, env=_env(toy_folder), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    made, skipped = map(int, re.search(r"(\d+) units made, (\d+) already there", rerun.stderr).groups())
    assert made + skipped == total
    assert skipped >= written - 1  # at most the batch in flight (2 units, one maybe written) is redone
    assert len(list(out.glob("units/*/*.json"))) == total
    for png in out.glob("units/*/*.png"):
        Image.open(png).verify()


def test_the_python_api_writes_a_site_and_a_rerun_skips_and_other_settings_are_refused(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3)).eval()
    before = snapshot(model)
    options = dict(size=12, max_iter=3, views=1, input_range=(0.0, 1.0), progress=False)
    index = featvis.atlas(model, tmp_path, ["0", "2"], class_names=["red", "green", "blue"], **options)
    assert_untouched(model, before)
    page = index.read_text()
    assert 'href="layer_0.html"' in page and 'href="layer_2.html"' in page
    assert _index_units(tmp_path) == [("0", u) for u in range(4)] + [("2", u) for u in range(3)]
    assert '"label": "green"' in page  # the 3-unit layer is labeled by the class names
    first = _files(tmp_path)
    featvis.atlas(model, tmp_path, ["0", "2"], class_names=["red", "green", "blue"], **options)
    assert _files(tmp_path) == first
    with pytest.raises(featvis.FeatvisValueError, match=r"max_iter: 3 -> 5"):
        featvis.atlas(model, tmp_path, ["0"], **{**options, "max_iter": 5})
    featvis.atlas(model, tmp_path, ["0"], restart=True, **{**options, "max_iter": 5})
    assert _index_units(tmp_path) == [("0", u) for u in range(4)]


def test_dataset_examples_on_every_card_are_the_images_that_drive_the_unit_most(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3)).eval()
    before = snapshot(model)
    data = torch.rand(13, 3, 12, 12)
    options = dict(size=12, max_iter=2, views=1, input_range=(0.0, 1.0), progress=False)
    index = featvis.atlas(model, tmp_path, ["0", "2"], data=data, examples=3, **options)
    assert_untouched(model, before)
    for layer, units in (("0", 4), ("2", 3)):
        expected = featvis.dataset_examples(model, layer, data, k=3, input_range=(0.0, 1.0))
        for unit in range(units):
            record = json.loads((tmp_path / f"units/{layer}/unit_{unit:05d}.examples.json").read_text())
            assert record["sources"] == expected.sources(unit)
            assert record["values"] == pytest.approx(expected.values[unit].tolist(), rel=1e-5)
            assert record["values"] == sorted(record["values"], reverse=True)
            strip = Image.open(tmp_path / f"units/{layer}/unit_{unit:05d}.examples.png")
            assert strip.size[0] >= 2 * 64  # the three crops, 64 px each, two to a row
    page = (tmp_path / "layer_2.html").read_text()
    assert page.count(".examples.png") == 3 and 'loading="lazy"' in page
    assert index.exists()
    with pytest.raises(featvis.FeatvisValueError, match="examples"):
        featvis.atlas(model, tmp_path, ["0", "2"], data=data, examples=5, **options)


def test_an_atlas_of_a_token_layer_has_one_card_per_feature_with_its_examples(tmp_path):
    from toy_models import TinyViT

    torch.manual_seed(0)
    vit = TinyViT(dim=8, depth=1).eval()  # blocks.0.mlp.0: Linear(8, 16) on (N, 17 tokens, 8)
    before = snapshot(vit)
    data = torch.rand(7, 1, 16, 16)
    options = dict(size=16, max_iter=2, views=1, input_range=(0.0, 1.0), channels=1, progress=False)
    featvis.atlas(vit, tmp_path, ["blocks.0.mlp.0"], data=data, examples=2, **options)
    assert_untouched(vit, before)
    assert json.loads((tmp_path / "atlas.json").read_text())["layers"] == {"blocks.0.mlp.0": 16}
    assert _index_units(tmp_path) == [("blocks.0.mlp.0", u) for u in range(16)]  # features, not 17 tokens
    expected = featvis.dataset_examples(vit, "blocks.0.mlp.0", data, k=2, input_range=(0.0, 1.0), channels=1)
    for unit in (0, 15):
        record = json.loads((tmp_path / f"units/blocks.0.mlp.0/unit_{unit:05d}.examples.json").read_text())
        assert record["values"] == pytest.approx(expected.values[unit].tolist(), rel=1e-5)
    featvis.atlas(vit, tmp_path / "tokens", ["blocks.0.mlp.0"], unit_axis=1, token=None, **options)
    assert len(_index_units(tmp_path / "tokens")) == 17  # unit_axis=1: the tokens, on request
    with pytest.raises(featvis.FeatvisValueError, match="unit_axis"):
        featvis.atlas(vit, tmp_path / "bad", ["blocks.0.mlp.0"], unit_axis=0, **options)


def test_merged_shares_give_the_examples_of_one_pass():
    from torch.utils.data import DistributedSampler

    from featvis.dataset_examples import merge_examples
    from featvis.datasource import image_source

    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)).eval()
    model(torch.rand(1, 3, 10, 10))
    data = torch.rand(9, 3, 10, 10)
    whole = featvis.dataset_examples(model, ["0", "3"], data, k=4, input_range=(0.0, 1.0))
    source = image_source(data, input_range=(0.0, 1.0))
    shares = [
        featvis.dataset_examples(
            model,
            ["0", "3"],
            data,
            k=4,
            input_range=(0.0, 1.0),
            sampler=DistributedSampler(source, num_replicas=3, rank=rank, shuffle=False),
        )
        for rank in range(3)
    ]
    for layer in ("0", "3"):
        merged = merge_examples([share[layer] for share in shares], k=4)
        assert np.array_equal(merged.indices, whole[layer].indices)
        assert np.array_equal(merged.lowest_indices, whole[layer].lowest_indices)
        assert np.allclose(merged.values, whole[layer].values)
        if whole[layer].positions is not None:
            assert np.array_equal(merged.positions, whole[layer].positions)


def test_the_plan_and_shares_do_not_depend_on_the_world_size_and_balance_cost():
    batches = plan({"early": 10, "late": 4}, {"early": 1.0, "late": 5.0}, 4)
    assert [(b.layer, b.units) for b in batches] == [
        ("early", (0, 1, 2, 3)),
        ("early", (4, 5, 6)),
        ("early", (7, 8, 9)),
        ("late", (0, 1, 2, 3)),
    ]
    for world in (1, 2, 3):
        shares = shard(batches, world)
        assert sorted(i for share in shares for i in share) == list(range(len(batches)))
    loads = [sum(batches[i].cost for i in share) for share in shard(batches, 2)]
    assert loads == [20.0, 10.0]  # the costly late batch alone; the three early ones together
    assert shard([Batch("a", (0,), 1.0)] * 4, 2) == [[0, 2], [1, 3]]


def test_default_layers_are_block_outputs_stem_head_and_classifier():
    lite = featvis.zoo.efficientnet_lite0().model
    layers = default_layers(lite)
    assert layers == ["_conv_stem", *[f"_blocks.{i}" for i in range(16)], "_conv_head", "_fc"]
    with featvis.PreparedModel(lite) as prepared:
        assert sum(prepared.unit_count(layer, (64, 64)) for layer in layers) == 4120
        assert default_layers(prepared) == layers


@pytest.mark.slow
def test_the_site_opens_in_a_browser_with_every_visible_image_loaded(one_process_site, tmp_path):
    from browser import CHROMIUM_FLAGS, chromium

    browser = chromium()
    report = (
        "<script>window.addEventListener('load', () => setTimeout(() => {"
        "SEARCH;"
        "setTimeout(() => { const shown = [...document.images].filter(i => {"
        " const r = i.getBoundingClientRect(); return r.width > 0 && r.top < innerHeight; });"
        "document.body.insertAdjacentHTML('beforeend', '<pre id=\"result\">loaded=' +"
        " shown.filter(i => i.complete && i.naturalWidth > 0).length + ' shown=' + shown.length +"
        " ' results=' + document.querySelectorAll('#results .card').length + '</pre>'); }, 500); }, 100));"
        "</script></body>"
    )
    search = (
        "const box = document.getElementById('search'); box.value = '2';box.dispatchEvent(new Event('input'))"
    )
    checks = {"index.html": search, "layer_blocks.0.html": "0"}
    for page, action in checks.items():
        probe = one_process_site / f"check_{page}"
        probe.write_text(
            (one_process_site / page).read_text().replace("</body>", report.replace("SEARCH", action))
        )
        dom = subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=5000",
                "--window-size=1000,800",
                "--dump-dom",
                probe.as_uri(),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        loaded, shown, results = map(int, re.search(r"loaded=(\d+) shown=(\d+) results=(\d+)", dom).groups())
        assert shown > 0 and loaded == shown, page
        if page == "index.html":
            assert results == 4  # unit 2 of stem, blocks.0, blocks.1 and fc
        probe.unlink()


def test_an_atlas_of_a_prepared_model_is_the_atlas_of_the_model_with_its_conventions(tmp_path):
    """Every unit's image, record and dataset examples, and the manifest, are the same files."""
    namespace: dict = {}
    exec(TOY, namespace)  # noqa: S102 - the toy model of these tests
    model = namespace["make"]()
    before = snapshot(model)
    conventions = dict(input_range=(0.0, 1.0), preprocess=featvis.zoo.Normalize())
    photos = np.random.default_rng(0).uniform(0, 1, (5, 12, 12, 3)).astype(np.float32)
    run = dict(size=16, batch_size=4, data=photos, examples=2, max_iter=3, views=1, progress=False)
    featvis.atlas(model, tmp_path / "model", ["blocks.0", "fc"], **run, **conventions)
    assert_untouched(model, before)
    with featvis.PreparedModel(model, **conventions) as prepared:
        featvis.atlas(prepared, tmp_path / "prepared", ["blocks.0", "fc"], **run)
    assert_untouched(model, before)

    def files(site: Path) -> dict[str, bytes]:
        return {
            str(f.relative_to(site)): f.read_bytes()
            for f in sorted((site / "units").rglob("*"))
            if f.is_file()
        }

    made = files(tmp_path / "model")
    assert len([name for name in made if name.endswith(".examples.png")]) == 6 + 3
    assert files(tmp_path / "prepared") == made
    manifest = json.loads((tmp_path / "model" / "atlas.json").read_text())
    assert json.loads((tmp_path / "prepared" / "atlas.json").read_text()) == manifest
    assert (
        manifest["settings"]["input_range"] == [0.0, 1.0]
        and "Normalize" in manifest["settings"]["preprocess"]
    )


def _fed_by_rows(page: str) -> dict[int, tuple[str, list[tuple[int, float, str]]] | None]:
    """Per card of a layer page, its "fed by" row: the earlier layer and each (unit, contribution, text)
    shown, or None."""
    rows = {}
    for card in page.split('<div class="card" ')[1:]:
        unit = int(re.match(r'data-unit="(\d+)"', card).group(1))
        row = re.search(r'<div class="fedby" data-layer="([^"]*)"', card)
        shown = re.findall(
            r'data-unit="(\d+)" data-contribution="([^"]+)"[^>]*>.*?<span class="\w+">([^<]*)</span>', card
        )
        rows[unit] = (row.group(1), [(int(u), float(v), text) for u, v, text in shown]) if row else None
    return rows


def _weighted_two_layers(between: nn.Module) -> nn.Module:
    """conv -> ReLU -> `between` -> 1x1 conv whose unit 0 is 2 x unit 3 - 1.5 x unit 5 of the ReLU's output
    (the first conv's bias keeps every unit of it positive)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), between, nn.Conv2d(8, 2, 1)).eval()
    with torch.no_grad():
        model[0].weight.mul_(0.1)
        model[0].bias.fill_(1.0)
        model[3].weight.zero_()
        model[3].weight[0, 3] = 2.0
        model[3].weight[0, 5] = -1.5
        model[3].weight[1, 0] = 1.0
    return model


def test_every_card_shows_the_units_of_the_layer_before_that_feed_it_with_their_signs(tmp_path):
    from featvis.site.atlas import fed_by

    model = _weighted_two_layers(nn.Identity())
    before = snapshot(model)
    options = dict(size=12, max_iter=3, views=1, input_range=(0.0, 1.0), progress=False)
    featvis.atlas(model, tmp_path, ["1", "3"], **options)
    assert_untouched(model, before)
    rows = _fed_by_rows((tmp_path / "layer_3.html").read_text())
    assert rows[0] == ("1", [(3, 2.0, "3 +2"), (5, -1.5, "5 -1.5")])  # from the weights: exact
    assert rows[1] == ("1", [(0, 1.0, "0 +1")])  # units that contribute nothing are left out
    assert set(_fed_by_rows((tmp_path / "layer_1.html").read_text()).values()) == {None}  # the first layer
    page = (tmp_path / "layer_3.html").read_text()
    assert 'href="layer_1.html#unit-3"' in page and 'src="units/1/unit_00003.thumb.png"' in page
    expected = featvis.circuits(model, "3", 0, "1", k=4, input_range=(0.0, 1.0))
    assert fed_by(tmp_path, "3", 0) == [c for c in expected if c.sign != 0]
    assert fed_by(tmp_path, "1", 0) == []
    with pytest.raises(featvis.FeatvisValueError, match="unit"):
        fed_by(tmp_path, "3", 7)
    featvis.atlas(model, tmp_path / "off", ["1", "3"], fed_by=0, **options)
    assert set(_fed_by_rows((tmp_path / "off" / "layer_3.html").read_text()).values()) == {None}
    with pytest.raises(featvis.FeatvisValueError, match=r"fed_by: 4 -> 1"):
        featvis.atlas(model, tmp_path, ["1", "3"], fed_by=1, **options)


def test_fed_by_through_a_pooling_is_gradient_times_activation_over_the_units_own_image(tmp_path):
    from featvis.site.atlas import fed_by

    model = _weighted_two_layers(nn.AvgPool2d(2))  # no direct weight path between "1" and "3"
    options = dict(size=12, max_iter=3, views=1, input_range=(0, 255), progress=False, fed_by=2)
    featvis.atlas(model, tmp_path, ["3", "1"], **options)  # in any order: "1" runs before "3"
    layer, shown = _fed_by_rows((tmp_path / "layer_3.html").read_text())[0]
    assert layer == "1" and [(u, np.sign(value)) for u, value, _ in shown] == [(3, 1), (5, -1)]
    image = np.asarray(Image.open(tmp_path / "units/3/unit_00000.png"))  # the unit's own image, as saved
    expected = featvis.contributions(model, "3", 0, "1", data=image[None], input_range=(0, 255))
    assert expected.method.startswith("gradient x activation")
    assert fed_by(tmp_path, "3", 0) == expected.top(2)
    with pytest.raises(featvis.FeatvisValueError, match="fed_by"):
        featvis.atlas(model, tmp_path / "axis", ["1", "3"], unit_axis=1, **options)


@pytest.mark.parametrize(("conv", "kind"), [(nn.Conv1d, "1-D signals"), (nn.Conv3d, "3-D volumes")])
def test_an_atlas_or_gallery_of_a_signal_or_volume_model_is_refused_pointing_at_what_draws_it(
    tmp_path, conv, kind
):
    model = nn.Sequential(conv(1, 4, 3, padding=1), nn.ReLU(), conv(4, 3, 3, padding=1))
    before = snapshot(model)
    for write in (
        lambda: featvis.atlas(model, tmp_path / "atlas", ["0", "2"], input_range=(0.0, 1.0), max_iter=2),
        lambda: featvis.gallery.write_gallery(
            model, ["2"], tmp_path / "gallery", input_range=(0.0, 1.0), max_iter=2
        ),
    ):
        with pytest.raises(featvis.FeatvisValueError, match=f"takes {kind}.*visualize_layer.*save_"):
            write()
    assert not (tmp_path / "atlas").exists() and not (tmp_path / "gallery").exists()
    assert_untouched(model, before)
