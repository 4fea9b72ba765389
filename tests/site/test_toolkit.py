"""GIFs, loss plots, notebook display and the HTML gallery (opened in headless Chromium)."""

from pathlib import Path
import re
import subprocess

from browser import CHROMIUM_FLAGS, chromium
import numpy as np
from PIL import Image
import pytest

import featvis
from featvis.gallery import write_gallery
from featvis.watch import GifRecorder, history_figure, plot_history

from conftest import make_tiny


def test_gif_has_one_frame_per_saved_step(tmp_path):
    gif = GifRecorder(every=3)
    featvis.visualize_activation(make_tiny(), "fc", 1, size=32, max_iter=10, seed=0, callbacks=[gif])
    path = gif.save(tmp_path / "run.gif")
    assert gif.steps == [0, 3, 6, 9]
    assert Image.open(path).n_frames == 4


def test_plot_has_one_line_per_loss_term(tmp_path):
    result = featvis.visualize_activation(
        make_tiny(), "fc", 1, lp_norm_weight=0.1, size=32, max_iter=5, seed=0, return_result=True
    )
    figure = history_figure(result.history)
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == ["ActivationMaximization", "TotalVariation", "LpNorm"]
    assert [len(line.get_xdata()) for line in figure.axes[0].get_lines()] == [5, 5, 5]
    path = plot_history(result.history, tmp_path / "loss.png")
    assert Image.open(path).size == (600, 350)


def test_result_displays_itself_in_notebooks():
    result = featvis.visualize_activation(
        make_tiny(), "fc", 1, size=32, max_iter=2, seed=0, return_result=True, batch_size=2
    )
    png = result._repr_png_()
    assert png.startswith(b"\x89PNG")
    import io

    shown = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    tiles = featvis.stitch_images(
        list(np.rint(255 * result.images.permute(0, 2, 3, 1).numpy()).astype(np.uint8))
    )
    np.testing.assert_array_equal(shown, tiles)  # both images, side by side, as stitch_images tiles them
    assert shown.shape == (4 + 32 + 4, 4 + 2 * (32 + 4), 3)
    single = featvis.visualize_activation(
        make_tiny(), "fc", 1, size=32, max_iter=2, seed=0, return_result=True, image_ema=None
    )
    alone = np.asarray(Image.open(io.BytesIO(single._repr_png_())).convert("RGB"))
    expected = np.rint(255 * single.images[0].permute(1, 2, 0).clamp(0, 1).numpy()).astype(np.uint8)
    np.testing.assert_array_equal(alone, expected)  # one image: shown as it is, no margin


def test_result_repr_is_short_and_says_what_is_inside():
    result = featvis.visualize_activation(
        make_tiny(),
        "fc",
        1,
        batch_size=2,
        return_result=True,
        size=64,
        max_iter=2,
        views=1,
        seed=0,
        progress=False,
    )
    text = repr(result)
    assert len(text) < 300, text
    assert text.startswith("Result(") and "(2, 3, 64, 64)" in text and "steps=2" in text
    assert "interrupted=False" in text and "tensor(" not in text


def test_gallery_thumbnails_all_load_in_a_browser_and_reruns_add_layers(tmp_path):
    model = make_tiny()
    site = tmp_path / "site"
    photos = np.random.default_rng(0).integers(0, 256, (12, 20, 20, 3), dtype=np.uint8)
    write_gallery(model, ["conv1"], site, size=24, max_iter=4, seed=0, data=photos, k=3)
    index = write_gallery(model, ["conv2"], site, size=24, max_iter=4, seed=0)  # adds, keeps conv1
    page = index.read_text()
    assert 'data-layer="conv1"' in page and 'data-layer="conv2"' in page
    assert page.count("<details>") == 8  # conv1's units show dataset examples, most negative on demand
    probe = site / "check.html"
    probe.write_text(
        page.replace(
            "</body>",
            "<script>window.addEventListener('load', () => {"
            "const imgs = [...document.images];"
            "document.body.insertAdjacentHTML('beforeend', '<pre id=\"result\">loaded=' +"
            " imgs.filter(i => i.complete && i.naturalWidth > 0).length + ' total=' + imgs.length + '</pre>');"
            "});</script></body>",
        )
    )
    browser = chromium()
    profile = tmp_path / "profile"
    dom = subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    loaded, total = map(int, re.search(r"loaded=(\d+) total=(\d+)", dom).groups())
    assert total == 8 * (1 + 3 + 3) + 16  # conv1: 8 channels, each with 3 top and 3 bottom crops; conv2: 16
    assert loaded == total
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=900,700",
            index.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert Image.open(shot).size == (900, 700)


def test_gallery_cli_writes_index(tmp_path):
    from featvis.cli import main

    main(
        [
            "gallery",
            "--model",
            "conftest:make_tiny",
            "--preprocess",
            "none",
            "--layer",
            "conv1",
            "--units",
            "0,1",
            "--steps",
            "2",
            "--size",
            "16",
            "--out",
            str(tmp_path / "site"),
        ]
    )
    page = (tmp_path / "site" / "index.html").read_text()
    assert sorted(p.name for p in Path(tmp_path / "site" / "conv1").iterdir()) == [
        "unit_0000.png",
        "unit_0001.png",
    ]
    # the page links both units of conv1, each labeled with its unit and the activation reached
    assert 'data-layer="conv1"' in page and "2 units, 2 steps, 16 px" in page
    labels = re.findall(
        r'<img src="(conv1/unit_000\d\.png)" alt="unit (\d)".*?<span>(\d) · ([-\d.e]+)</span>', page
    )
    assert [(src, alt, unit) for src, alt, unit, _ in labels] == [
        ("conv1/unit_0000.png", "0", "0"),
        ("conv1/unit_0001.png", "1", "1"),
    ]
    for src, _, unit, value in labels:
        image = Image.open(tmp_path / "site" / src)
        assert image.size == (16, 16)
        reached = featvis.activations_reached(make_tiny(), "conv1", [int(unit)], [np.asarray(image)])
        assert float(value) == pytest.approx(float(reached[0]), rel=1e-2, abs=1e-2)  # the label is true


def test_gallery_rerun_with_other_units_merges_them(tmp_path):
    model = make_tiny()
    site = tmp_path / "site"
    write_gallery(model, ["conv1"], site, units=[0, 1], size=16, max_iter=2, seed=0)
    index = write_gallery(model, ["conv1"], site, units=[5, 1], size=16, max_iter=2, seed=0)
    page = index.read_text()
    assert [int(u) for u in re.findall(r'alt="unit (\d+)"', page)] == [0, 1, 5]
    for unit in (0, 1, 5):
        assert (site / "conv1" / f"unit_{unit:04d}.png").exists()
        assert f'src="conv1/unit_{unit:04d}.png"' in page  # no PNG is orphaned


def test_examples_cli_writes_a_page_per_layer(tmp_path, capsys):
    from featvis.cli import main

    photos = tmp_path / "photos" / "class_a"
    photos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    site = tmp_path / "site"
    main(
        [
            "examples",
            "--model",
            "conftest:make_tiny",
            "--preprocess",
            "none",
            "--layer",
            "conv1",
            "--layer",
            "fc",
            "--data",
            str(tmp_path / "photos"),
            "--size",
            "32",
            "--k",
            "2",
            "--out",
            str(site),
        ]
    )
    warned = [line for line in capsys.readouterr().err.splitlines() if "broken.jpg" in line]
    assert len(warned) == 1 and warned[0].startswith("featvis: warning: dataset_examples: used 6 of 7"), (
        warned
    )
    page = (site / "examples_conv1.html").read_text()
    assert page.count("<details>") == 8 and "skipped 1" in page and "receptive field" in page
    assert "spatial maximum" in page
    dense = (site / "examples_fc.html").read_text()
    assert "whole image" in dense and "ranked by its value" in dense
    assert len(list((site / "conv1" / "examples").iterdir())) == 8 * 2
    main(
        [
            "gallery",
            "--model",
            "conftest:make_tiny",
            "--preprocess",
            "none",
            "--layer",
            "conv2",
            "--units",
            "0,1",
            "--steps",
            "2",
            "--size",
            "16",
            "--data",
            str(tmp_path / "photos"),
            "--k",
            "2",
            "--out",
            str(site),
        ]
    )
    assert (site / "index.html").read_text().count("<details>") == 2
