"""Dataset examples: the top and bottom images per unit, receptive-field crops, bad data, resumes."""

from __future__ import annotations

import io
import sys
import warnings

import numpy as np
from PIL import Image
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import featvis
from featvis.dataset_examples import ReceptiveField

from conftest import assert_untouched, make_tiny, snapshot
from toy_models import train_digits_cnn


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16
    return train_digits_cnn(seed=0, epochs=8), images, data.target


def test_every_digit_logit_has_its_digit_on_top_and_none_at_the_bottom(digits):
    model, images, labels = digits
    before = snapshot(model)
    ex = featvis.dataset_examples(model, "fc", images, k=9, input_range=(0.0, 1.0), channels=1)
    assert_untouched(model, before)
    assert ex.units == list(range(10)) and ex.indices.shape == ex.values.shape == (10, 9)
    assert ex.summary.used == len(images) and not ex.summary.skipped
    for digit in range(10):
        assert (labels[ex.indices[digit]] == digit).sum() >= 8, digit
        assert (labels[ex.lowest_indices[digit]] == digit).sum() == 0, digit
        assert np.all(np.diff(ex.values[digit]) <= 0) and np.all(np.diff(ex.lowest_values[digit]) >= 0)
    with torch.no_grad():  # the values are the logits of those images
        logits = model.logits(images[ex.indices[3]])[:, 3].numpy()
    np.testing.assert_allclose(ex.values[3], logits, rtol=1e-4, atol=1e-4)
    assert ex.images(3)[0].shape == (8, 8, 1)  # dense: the whole image


def test_several_layers_cost_one_pass_and_match_single_layer_passes(digits):
    model, images, _ = digits
    calls = []
    handle = model.conv1.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    both = featvis.dataset_examples(
        model, ["conv2", "fc"], images[:300], k=5, input_range=(0.0, 1.0), channels=1, batch_size=100
    )
    handle.remove()
    assert calls.count(100) == 3  # one pass of 3 batches (the others: the probe, the receptive field)
    ran = []
    handle = model.fc.register_forward_hook(lambda module, args, out: ran.append(len(args[0])))
    featvis.dataset_examples(model, ["conv1", "conv2"], images[:200], input_range=(0.0, 1.0), channels=1)
    handle.remove()
    assert 32 not in ran  # the forward pass stopped after conv2: fc never ran on a batch
    alone = featvis.dataset_examples(model, "fc", images[:300], k=5, input_range=(0.0, 1.0), channels=1)
    np.testing.assert_array_equal(both["fc"].indices, alone.indices)
    assert both["conv2"].receptive_field == ReceptiveField(size=(5, 5), stride=(1, 1), offset=(-2, -2))


def test_softmax_layer_is_read_as_logits_with_a_warning(digits):
    model, images, _ = digits
    with pytest.warns(featvis.FeatvisWarning, match="softmax"):
        ex = featvis.dataset_examples(model, "softmax", images[:200], k=3, input_range=(0.0, 1.0), channels=1)
    assert ex.values.max() > 1  # logits, not probabilities


class _Known(nn.Module):
    """A network whose receptive field is known by construction: all-ones kernels, no bias."""

    def __init__(self, *layers):
        super().__init__()
        self.body = nn.Sequential(*layers)
        for module in self.body:
            if isinstance(module, nn.Conv2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.body(x)


def _conv(stride=1, dilation=1):
    return nn.Conv2d(1, 1, 3, stride=stride, padding=dilation, dilation=dilation)


@pytest.mark.parametrize(
    ("layers", "size", "stride"),
    [
        ((_conv(), nn.ReLU(), _conv()), 5, 1),  # two 3x3 convs: 5x5
        ((_conv(stride=2), _conv()), 7, 2),  # 3 + 2 * (3 - 1)
        ((_conv(), nn.MaxPool2d(2), _conv()), 8, 2),  # ((3 - 1) * 2 + 2) + 2
        ((_conv(dilation=2), _conv()), 7, 1),  # 5 + 2
    ],
)
def test_crop_is_the_real_receptive_field_and_holds_the_maximum(layers, size, stride):
    model = _Known(*layers).eval()
    rng = np.random.default_rng(0)
    images = np.zeros((40, 1, 40, 40), np.float32)
    spots = rng.integers(10, 30, size=(40, 2))
    for image, (r, c) in zip(images, spots):
        image[0, r, c] = 1.0 + rng.random()  # one bright pixel in a dark image
    before = snapshot(model)
    ex = featvis.dataset_examples(model, len(layers) - 1, images, k=3, input_range=(0.0, 2.0), channels=1)
    assert_untouched(model, before)
    assert ex.receptive_field.size == (size, size) and ex.receptive_field.stride == (stride, stride)
    for (top, left, bottom, right), position in zip(ex.boxes(0), ex.indices[0]):
        r, c = spots[position]
        assert top <= r < bottom and left <= c < right  # the crop holds the pixel that fired the unit
        assert (bottom - top, right - left) == (size, size)  # not clipped here: the whole field
    crops = ex.images(0)
    assert crops[0].shape == (size, size, 1) and crops[0].max() > 0


def test_images_gives_a_list_of_uint8_crops_one_per_example():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 5, padding=2), torch.nn.Conv2d(4, 4, 5, padding=2)
    ).eval()
    images = np.random.default_rng(0).uniform(0, 255, (12, 20, 20, 3)).astype(np.float32)
    ex = featvis.dataset_examples(model, "1", images, k=3)
    crops = ex.images(2)
    assert isinstance(crops, list) and len(crops) == 3  # one per example: k of them
    assert all(c.dtype == np.uint8 and c.ndim == 3 and c.shape[2] == 3 for c in crops)


def test_receptive_field_is_measured_after_a_preprocess_ran_in_inference_mode():
    normalize = featvis.zoo.Normalize()
    with torch.inference_mode():  # Normalize caches its constants: here, inference tensors
        normalize(torch.rand(1, 3, 8, 8))
    model = make_tiny()
    ex = featvis.dataset_examples(model, "conv2", torch.rand(6, 3, 16, 16) * 255, k=2, preprocess=normalize)
    assert ex.receptive_field == ReceptiveField(size=(5, 5), stride=(1, 1), offset=(-2, -2))


def test_receptive_field_box_is_clipped_to_the_image():
    field = ReceptiveField(size=(7, 7), stride=(2, 2), offset=(-3, -3))
    assert field.box(0, 0, (16, 16)) == (0, 0, 4, 4)
    assert field.box(3, 4, (16, 16)) == (3, 5, 10, 12)
    assert field.box(7, 7, (16, 16)) == (11, 11, 16, 16)


def _bad_folder(root):
    """A folder of good, convertible and broken files; returns (used, skipped) counts."""
    rng = np.random.default_rng(0)
    good = root / "class_a"
    odd = root / "class_b" / "nested"
    good.mkdir(parents=True)
    odd.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(good / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (33, 71, 3), dtype=np.uint8)).save(good / "odd_size.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(good / "gray.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "RGBA").save(odd / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16)).save(odd / "sixteen.png")
    Image.new("CMYK", (25, 35), (10, 200, 30, 0)).save(odd / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (1, 300, 3), dtype=np.uint8)).save(odd / "one_row.png")
    Image.fromarray(rng.integers(0, 255, (10, 10), dtype=np.uint8)).convert("P").save(odd / "palette.gif")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    (root / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    (root / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "corrupt.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 255, 200, dtype=np.uint8))
    )
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"ignored: hidden files are not data")
    return 8, 5


def test_bad_files_are_converted_or_skipped_counted_and_named(tmp_path):
    used, skipped = _bad_folder(tmp_path)
    model = make_tiny()
    before = snapshot(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ex = featvis.dataset_examples(model, "conv2", tmp_path, k=4, size=32, batch_size=4, num_workers=2)
    assert_untouched(model, before)
    assert ex.summary.used == used and len(ex.summary.skipped) == skipped
    assert sorted(name.rsplit("/", 1)[-1] for name, _ in ex.summary.skipped) == [
        "corrupt.png",
        "empty.jpg",
        "notes.txt",
        "truncated.jpg",
        "truncated.png",
    ]
    assert ex.summary.converted == {
        "16-bit": 1,
        "CMYK": 1,
        "grayscale": 1,
        "transparency over white": 1,
    }
    named = [w for w in caught if issubclass(w.category, featvis.SkippedImagesWarning)]
    assert len(named) == 1 and "skipped 5" in str(named[0].message) and "notes.txt" in str(named[0].message)
    assert ex.indices.shape == (16, 4)
    paths = ex.sources(0)
    assert all(path.startswith(str(tmp_path)) for path in paths)
    assert all(crop.ndim == 3 and crop.shape[2] == 3 for crop in ex.images(0) + ex.images(0, lowest=True))


def test_sixteen_bit_and_transparent_images_are_converted_faithfully(tmp_path):
    from featvis.datasource import read_image

    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "white16.png")
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    white, note = read_image(tmp_path / "white16.png")
    assert note == "16-bit" and white.shape == (3, 4, 4) and torch.allclose(white, torch.ones(1))
    clear, note = read_image(tmp_path / "clear.png")
    assert note == "transparency over white" and torch.allclose(clear, torch.ones(1))


def test_images_of_other_sizes_are_resized_shorter_side_then_center_cropped():
    from featvis.datasource import _shorter_side_center_crop

    wide = torch.zeros(3, 20, 40)
    wide[:, :, 8:32] = 1  # the central square (and a margin) is white, the sides black
    out = _shorter_side_center_crop(wide, 10)
    assert out.shape == (3, 10, 10) and out.min() > 0.99
    assert _shorter_side_center_crop(torch.zeros(3, 40, 20), 10).shape == (3, 10, 10)


class _InterruptAt(nn.Module):
    """Wraps a model; raises KeyboardInterrupt (as Ctrl-C does) at the given batch: `calls` counts
    the forwards of more than one image (the probe and the fused copy's checks run one)."""

    def __init__(self, model, at):
        super().__init__()
        self.model, self.at, self.calls = model, at, 0

    def forward(self, x):
        self.calls += len(x) > 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.model(x)


def test_ctrl_c_returns_what_the_pass_has(digits):
    model, images, _ = digits
    wrapped = _InterruptAt(model, at=3)  # batches 1-2, then Ctrl-C
    before = snapshot(wrapped)
    ex = featvis.dataset_examples(
        wrapped, "model.fc", images[:500], k=3, input_range=(0.0, 1.0), channels=1, batch_size=100
    )
    assert_untouched(wrapped, before)
    assert ex.interrupted and ex.summary.used == 200
    assert ex.indices.max() < 200


class _FailsAt(_InterruptAt):
    def forward(self, x):
        self.calls += len(x) > 1
        if self.calls == self.at:
            raise RuntimeError("out of memory")
        return self.model(x)


def test_a_model_that_raises_mid_pass_is_left_as_it_was(digits):
    model, images, _ = digits
    wrapped = _FailsAt(model, at=2)
    handle = wrapped.model.conv1.register_forward_hook(lambda *args: None)
    before = snapshot(wrapped)
    with pytest.raises(featvis.ModelError, match="out of memory"):
        featvis.dataset_examples(wrapped, "model.fc", images[:300], input_range=(0.0, 1.0), channels=1)
    assert_untouched(wrapped, before)
    handle.remove()


def test_checkpoint_resumes_where_it_stopped_and_checks_settings(digits, tmp_path):
    model, images, _ = digits
    common = dict(k=4, input_range=(0.0, 1.0), channels=1, batch_size=100)
    path = tmp_path / "run.pt"
    first = featvis.dataset_examples(
        _InterruptAt(model, at=4), "model.fc", images[:700], checkpoint=path, checkpoint_every=1, **common
    )
    assert first.interrupted and first.summary.used == 300 and path.exists()
    counter = _InterruptAt(model, at=-1)
    resumed = featvis.dataset_examples(counter, "model.fc", images[:700], checkpoint=path, **common)
    assert counter.calls == 4  # the 4 batches left
    whole = featvis.dataset_examples(model, "fc", images[:700], **common)
    assert not resumed.interrupted and resumed.summary.used == 700
    np.testing.assert_array_equal(resumed.indices, whole.indices)
    np.testing.assert_array_equal(resumed.lowest_indices, whole.lowest_indices)
    np.testing.assert_allclose(resumed.values, whole.values, rtol=1e-5)
    again = _InterruptAt(model, at=-1)
    done = featvis.dataset_examples(again, "model.fc", images[:700], checkpoint=path, **common)
    np.testing.assert_array_equal(done.indices, whole.indices)
    assert again.calls == 0  # a finished checkpoint: no pass (only one-image forwards for the shapes)
    with pytest.raises(featvis.FeatvisValueError, match="k=4.*k=5"):
        featvis.dataset_examples(again, "model.fc", images[:700], checkpoint=path, **{**common, "k": 5})
    with pytest.raises(featvis.FeatvisValueError, match="layers"):
        featvis.dataset_examples(model, "fc", images[:700], checkpoint=path, **common)


def test_the_pass_as_an_object_stops_at_a_budget_goes_on_and_resumes_from_its_checkpoint(digits, tmp_path):
    model, images, _ = digits
    common = dict(k=4, batch_size=100)
    path = tmp_path / "run.pt"
    whole = featvis.dataset_examples(model, "fc", images[:700], input_range=(0.0, 1.0), channels=1, **common)
    counter = _InterruptAt(model, at=-1)
    before = snapshot(counter)
    with featvis.PreparedModel(counter, input_range=(0.0, 1.0), channels=1) as prepared:
        scan = featvis.DatasetPass(
            prepared, "model.fc", images[:700], checkpoint=path, checkpoint_every=100, **common
        )
        steps = []
        for done in scan:  # a budget of 300 images
            steps.append(done)
            if done >= 300:
                break
        assert steps == [100, 200, 300] and counter.calls == 3 and not path.exists()
        scan.checkpoint()  # on the caller's schedule
        part = scan.finish()
        assert part.interrupted and part.summary.used == 300 and part.indices.max() < 300
        again = _InterruptAt(model, at=-1)
        with featvis.PreparedModel(again, input_range=(0.0, 1.0), channels=1) as other:  # from the checkpoint
            resumed = featvis.DatasetPass(other, "model.fc", images[:700], checkpoint=path, **common)
            assert [done for done in resumed] == [400, 500, 600, 700]
            from_file = resumed.finish()
        assert again.calls == 4  # the 4 batches left
        assert list(scan) == [400, 500, 600, 700]  # the same object goes on where it stopped
        assert counter.calls == 7  # each batch read once
        rest = scan.finish()
    assert_untouched(counter, before)
    for result in (rest, from_file):
        assert not result.interrupted and result.summary.used == 700
        np.testing.assert_array_equal(result.indices, whole.indices)
        np.testing.assert_array_equal(result.lowest_indices, whole.lowest_indices)
        np.testing.assert_allclose(result.values, whole.values, rtol=1e-5)
    assert torch.load(path, weights_only=True)["complete"]
    with pytest.raises(featvis.FeatvisTypeError, match="prepared.*PreparedModel"):
        featvis.DatasetPass(model, "fc", images[:10])
    with featvis.PreparedModel(model, input_range=(0.0, 1.0), channels=1) as prepared:
        early = featvis.DatasetPass(prepared, "fc", images[:300], **common)
        with pytest.raises(featvis.FeatvisValueError, match="read nothing yet.*iterate it"):
            early.finish()
        for done in early:  # a budget that ends with the data: nothing was left unread
            if done >= 300:
                break
        assert not early.finish().interrupted


def test_arrays_datasets_loaders_and_path_lists_give_the_same_examples(tmp_path):
    model = make_tiny()
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    chw = torch.from_numpy(hwc).permute(0, 3, 1, 2).float()
    reference = featvis.dataset_examples(model, "conv2", chw, k=3)
    paths = []
    for i, image in enumerate(hwc):
        Image.fromarray(image).save(tmp_path / f"{i:02d}.png")
        paths.append(tmp_path / f"{i:02d}.png")
    for data in (
        hwc,
        TensorDataset(chw, torch.zeros(24)),
        DataLoader(TensorDataset(chw), batch_size=5),
        paths,
    ):
        ex = featvis.dataset_examples(model, "conv2", data, k=3, size=16 if data is paths else None)
        np.testing.assert_array_equal(ex.indices, reference.indices)
        np.testing.assert_allclose(ex.values, reference.values, rtol=1e-4, atol=1e-4)
        assert ex.images(5)[0].shape[2] == 3
    assert reference.reduce == "max"
    shuffled = featvis.dataset_examples(model, "conv2", DataLoader(TensorDataset(chw), shuffle=True), k=3)
    with pytest.raises(featvis.FeatvisValueError, match="not sequential"):
        shuffled.images(0)
    mean = featvis.dataset_examples(model, "conv2", chw, k=3, reduce="mean")
    with featvis.PreparedModel(model) as prepared:  # chw holds values in the default input_range (0, 255)
        expected = prepared.layer_output("conv2", chw / 255).mean(dim=(2, 3))[:, 0]
    assert np.isclose(mean.values[0, 0], expected.max().item(), rtol=1e-5)


class _Unreliable(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, index):
        if index == 2:
            raise OSError("disk error")
        return torch.full((3, 8, 8), float(index * 10))


def test_a_dataset_item_that_raises_is_skipped():
    with pytest.warns(featvis.SkippedImagesWarning, match="item 2 .disk error"):
        ex = featvis.dataset_examples(make_tiny(), "fc", _Unreliable(), k=2)
    assert ex.summary.used == 5 and 2 not in ex.indices


def test_a_data_loader_batch_that_raises_is_skipped_and_the_pass_goes_on():
    loader = DataLoader(_Unreliable(), batch_size=2)  # the batch of items 2 and 3 raises
    with pytest.warns(featvis.SkippedImagesWarning, match="item 2 .its batch raised OSError: disk error"):
        ex = featvis.dataset_examples(make_tiny(), "fc", loader, k=6)
    assert ex.summary.used == 4 and len(ex.summary.skipped) == 2
    assert sorted(ex.indices[0]) == [0, 1, 4, 5]  # the positions after the bad batch are right


def test_units_and_bad_arguments():
    model = make_tiny()
    images = torch.rand(10, 3, 8, 8) * 255
    ex = featvis.dataset_examples(model, "conv1", images, units=[3, 5], k=20)
    assert ex.units == [3, 5] and ex.indices.shape == (2, 10)  # k shrinks to the images used
    assert ex.row(5) == 1
    with pytest.raises(featvis.FeatvisValueError, match="unit"):
        ex.images(4)
    with pytest.raises(featvis.FeatvisValueError, match="units"):
        featvis.dataset_examples(model, "conv1", images, units=[8])
    with pytest.raises(featvis.FeatvisValueError, match="reduce"):
        featvis.dataset_examples(model, "conv1", images, reduce="median")
    with pytest.raises(featvis.LayerNotFoundError, match="conv3"):
        featvis.dataset_examples(model, "conv3", images)
    with pytest.raises(featvis.FeatvisTypeError, match="k"):
        featvis.dataset_examples(model, "conv1", images, k=2.5)
    with pytest.raises(featvis.FeatvisValueError, match="data"):
        featvis.dataset_examples(model, "conv1", "/no/such/folder")
    with pytest.raises(featvis.FeatvisValueError, match="input_range"):
        featvis.dataset_examples(model, "conv1", images / 255 * 2, input_range=(0.0, 1.0))


def test_missing_scikit_image_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(featvis.FeatvisValueError, match=r"featvis\[photos\]"):
        featvis.dataset_examples(make_tiny(), "fc")


@pytest.mark.slow
def test_lite0_top_egyptian_cat_among_the_photos_is_the_cat():
    lite0 = featvis.zoo.efficientnet_lite0()
    before = snapshot(lite0.model)
    ex = featvis.dataset_examples(lite0.model, ["_fc", "_blocks.10"], None, k=3, preprocess=lite0.preprocess)
    assert_untouched(lite0.model, before)
    assert ex["_fc"].sources(285)[0] == "chelsea"
    rf = ex["_blocks.10"].receptive_field
    # by hand, layer by layer: 3 + 4 + 4 + 8 + 16 + 32 + 16 + 32 + 32 + 64 + 64 + 64 = 339
    assert rf.stride == (16, 16) and rf.size == (339, 339)
    top, left, bottom, right = ex["_blocks.10"].boxes(0)[0]
    assert ex["_blocks.10"].images(0)[0].shape == (bottom - top, right - left, 3)


def test_examples_of_a_vit_mlp_neuron_are_ranked_on_the_feature_axis():
    from toy_models import digits_data, train_digits_vit

    vit = train_digits_vit(seed=0, epochs=1)
    images, _ = digits_data(16)
    images = images[:300]
    layer, units = "blocks.1.mlp.0", [5, 60]  # Linear(48, 96) on (N, 17 tokens, 48)
    store = {}
    hook = vit.blocks[1].mlp[0].register_forward_hook(lambda module, inputs, output: store.update(out=output))
    with torch.no_grad():
        vit(images)
    hook.remove()
    neurons = store["out"][:, :, units]  # brute force: (images, tokens, the two neurons)
    before = snapshot(vit)
    settings = dict(k=6, input_range=(0.0, 1.0), channels=1)
    for reduce, token, expected in (
        ("max", None, neurons.amax(1)),
        ("mean", None, neurons.mean(1)),
        ("max", 0, neurons[:, 0]),  # the class token
    ):
        ex = featvis.dataset_examples(vit, layer, images, units, reduce=reduce, token=token, **settings)
        for row in range(len(units)):
            top = expected[:, row].topk(6)
            np.testing.assert_array_equal(ex.indices[row], top.indices.numpy())
            np.testing.assert_allclose(ex.values[row], top.values.numpy(), rtol=1e-4, atol=1e-5)
            assert ex.images(units[row])[0].shape == (16, 16, 1)  # token units: whole images
    assert_untouched(vit, before)
    every = featvis.dataset_examples(vit, layer, images[:20], **settings)
    assert every.units == list(range(96))  # the features, not the 17 tokens
    tokens = featvis.dataset_examples(vit, layer, images[:20], unit_axis=1, **settings)
    assert tokens.units == list(range(17))
    np.testing.assert_allclose(tokens.values[3], store["out"][:20, 3].amax(1).topk(6).values, rtol=1e-4)
    with pytest.raises(featvis.FeatvisValueError, match=r"token.*\[0, 16\]"):
        featvis.dataset_examples(vit, layer, images[:4], token=17, **settings)
    with pytest.raises(featvis.FeatvisValueError, match="unit_axis"):
        featvis.dataset_examples(vit, layer, images[:4], unit_axis=3, **settings)
    with pytest.raises(featvis.FeatvisTypeError, match="token"):
        featvis.dataset_examples(vit, layer, images[:4], token="cls", **settings)


def test_each_batch_runs_in_chunks_of_16_images_of_112_px_on_the_cpu_with_the_same_examples():
    model = make_tiny()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (32, 3, 128, 128))).float()
    whole = featvis.dataset_examples(model, "conv2", images, k=3, batch_size=32)
    rows: list[int] = []
    handle = model.conv1.register_forward_pre_hook(lambda module, inputs: rows.append(len(inputs[0])))
    try:
        chunked = featvis.dataset_examples(model, "conv2", images, k=3, batch_size=32)
    finally:
        handle.remove()
    assert [n for n in rows if n > 1] == [12, 12, 8]  # 16 x 112 x 112 pixels hold 12 images of 128 px
    np.testing.assert_array_equal(chunked.indices, whole.indices)
    np.testing.assert_allclose(chunked.values, whole.values, rtol=1e-4, atol=1e-5)


def test_a_gray_model_reads_gray_data_without_being_told_the_channels():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    images = torch.rand(6, 1, 16, 16)
    ex = featvis.dataset_examples(model, "4", images, k=2, input_range=(0.0, 1.0))
    with torch.no_grad():
        expected = model(images).argsort(0, descending=True)[:2].T
    np.testing.assert_array_equal(ex.indices, expected.numpy())


def test_the_repr_is_one_line_that_names_the_layer_units_and_images():
    torch.manual_seed(0)
    ex = featvis.dataset_examples(
        make_tiny(), "conv2", torch.rand(20, 3, 16, 16), k=3, input_range=(0.0, 1.0)
    )
    text = repr(ex)
    assert text.startswith("DatasetExamples(layer='conv2', units=[0, 1, 2, 3, 4, 5, 6, 7, ...], k=3")
    assert "used 20 of 20 images" in text and "\n" not in text


class PositionMap(nn.Module):
    """XCiT's positional encoding: a conv of a coordinate grid, the same map whatever the image."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.pos = nn.Conv2d(2, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h, w = x.shape[-2:]
        grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij"))
        x = self.stem(x) + self.pos(grid[None].expand(len(x), -1, -1, -1))
        return self.head(x.mean((2, 3)))


def test_a_layer_that_does_not_depend_on_the_image_gives_whole_images_with_a_warning():
    """Before: the receptive-field measurement raised autograd's 'does not require grad'."""
    model = PositionMap().eval()
    with pytest.warns(featvis.FeatvisWarning, match="'pos' does not depend on the input image"):
        ex = featvis.dataset_examples(model, "pos", torch.rand(4, 3, 16, 16), k=2, input_range=(0.0, 1.0))
    assert ex.receptive_field is None and ex.boxes(0) == [(0, 0, 16, 16)] * 2


def test_a_prepared_model_with_its_conventions_gives_what_the_model_with_them_gives():
    """Given a PreparedModel, the pass uses its preprocess, input range, channels and device: the
    examples (values, crops, receptive fields) are those of the model given with the same conventions."""
    model = make_tiny()
    before = snapshot(model)
    conventions = dict(input_range=(-1.0, 1.0), preprocess=featvis.zoo.Normalize())
    images = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1  # in (-1, 1)
    for data in (images, DataLoader(TensorDataset(images), batch_size=5)):
        plain = featvis.dataset_examples(model, ["conv1", "fc"], data, k=3, **conventions)
        assert_untouched(model, before)
        with featvis.PreparedModel(model, **conventions) as prepared:
            shared = featvis.dataset_examples(prepared, ["conv1", "fc"], data, k=3)
        assert_untouched(model, before)
        for layer in ("conv1", "fc"):
            np.testing.assert_array_equal(shared[layer].indices, plain[layer].indices)
            np.testing.assert_array_equal(shared[layer].values, plain[layer].values)
            np.testing.assert_array_equal(shared[layer].lowest_indices, plain[layer].lowest_indices)
        assert (
            shared["conv1"].receptive_field
            == plain["conv1"].receptive_field
            == ReceptiveField((3, 3), (1, 1), (-1, -1))
        )
        np.testing.assert_array_equal(shared["conv1"].images(2)[0], plain["conv1"].images(2)[0])
    raw = featvis.dataset_examples(model, "fc", images, k=3, input_range=(-1.0, 1.0))  # no preprocess
    assert not np.array_equal(raw.values, plain["fc"].values)  # the conventions count


def test_a_prepared_model_that_feeds_tensors_as_given_is_refused_naming_input_range():
    model = make_tiny()
    with featvis.PreparedModel(model, input_range=None) as prepared:
        with pytest.raises(featvis.FeatvisValueError, match=r"input_range=None.*dataset examples"):
            featvis.dataset_examples(prepared, "fc", torch.rand(4, 3, 8, 8))
    with pytest.raises(
        featvis.FeatvisTypeError,
        match=r"model has type str, expected a torch.nn.Module or a featvis.PreparedModel",
    ):
        featvis.dataset_examples("model.pt", "fc", torch.rand(4, 3, 8, 8))


def _planted(seed: int = 0):
    """A 1x1 conv of 3 -> 6 channels with orthonormal weight columns, and images lit along one of
    them: the activation at an image's bright pixel points along column 0 or 1 (its "direction"),
    with a projection of the pixel's brightness on that direction and none on the other."""
    generator = torch.Generator().manual_seed(seed)
    columns, _ = torch.linalg.qr(torch.randn(6, 3, generator=generator))  # orthonormal (6, 3)
    model = nn.Conv2d(3, 6, 1, bias=False).eval()
    with torch.no_grad():
        model.weight.copy_(columns[:, :, None, None])
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 0.1, (30, 3, 10, 10)).astype(np.float32)  # dim noise
    along = np.repeat([0, 1, 2], 10)  # 10 images along direction 0, 10 along 1, 10 along neither
    spots = rng.integers(0, 10, (30, 2))
    for image, channel, (r, c) in zip(images, along, spots):
        if channel < 2:
            image[channel, r, c] = rng.uniform(0.5, 1.0)
    return model, columns[:, :2].T.contiguous(), images, along, spots


def test_examples_along_directions_are_the_images_planted_along_them():
    model, directions, images, along, spots = _planted()
    before = snapshot(model)
    ex = featvis.dataset_examples(model, "", images, k=5, input_range=(0.0, 1.0), directions=3 * directions)
    assert_untouched(model, before)
    assert (
        ex.units == [0, 1]
        and ex.indices.shape == (2, 5)
        and repr(ex).startswith("DatasetExamples(layer='', directions=2, k=5")
    )
    for i in (0, 1):
        assert (along[ex.indices[i]] == i).all()  # the top images along direction i: those planted along it
        assert (along[ex.lowest_indices[i]] != i).all()
        np.testing.assert_array_equal(ex.positions[i], spots[ex.indices[i]])  # at the planted pixel
        top, left, bottom, right = ex.boxes(i)[0]
        assert (bottom - top, right - left) == (1, 1)  # a 1x1 conv: the crop is the pixel
        # the score is the pixel's projection on the unit-norm direction: its brightness
        np.testing.assert_allclose(
            ex.values[i],
            images[ex.indices[i], i, spots[ex.indices[i], 0], spots[ex.indices[i], 1]],
            rtol=1e-5,
        )
    np.testing.assert_allclose(ex.directions, directions.numpy(), atol=1e-6)  # rows normalized


def _by_hand(model, images, directions, reduce, k):
    with torch.no_grad():
        acts = model(torch.as_tensor(images))  # (N, C, H, W)
    unit = directions / directions.norm(dim=1, keepdim=True)
    projections = torch.einsum("nchw,kc->nkhw", acts, unit).flatten(2)
    scores = projections.amax(2) if reduce == "max" else projections.mean(2)
    order = torch.sort(scores.T, dim=1, descending=True, stable=True)
    return order.indices[:, :k].numpy(), order.values[:, :k].numpy()


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_examples_along_directions_match_projections_by_hand_in_any_form_and_share(reduce, tmp_path):
    from featvis.concepts import CAV, Directions

    model, _, images, _, _ = _planted()
    directions = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))  # not unit norm
    common = dict(k=4, input_range=(0.0, 1.0), reduce=reduce, batch_size=7)
    ex = featvis.dataset_examples(model, "", images, directions=directions, **common)
    indices, values = _by_hand(model, images, directions, reduce, 4)
    np.testing.assert_array_equal(ex.indices, indices)
    np.testing.assert_allclose(ex.values, values, rtol=1e-5, atol=1e-6)
    found = Directions("", "pca", directions, torch.zeros(6), 30)
    cavs = [CAV("", row, 1.0, None, 1, 1) for row in directions]
    for given in (found, cavs, list(directions), directions.numpy(), directions.tolist()):
        again = featvis.dataset_examples(model, "", images, directions=given, **common)
        np.testing.assert_array_equal(again.indices, ex.indices)
    one = featvis.dataset_examples(model, "", images, directions=cavs[2], **common)
    np.testing.assert_array_equal(one.indices, ex.indices[2:])  # one CAV: one direction
    share = list(range(1, 30, 2))  # a sampler's share, checkpointed, then resumed when done
    path = tmp_path / "share.pt"
    shared = featvis.dataset_examples(
        model, "", images, directions=directions, sampler=share, checkpoint=path, checkpoint_every=1, **common
    )
    resumed = featvis.dataset_examples(
        model, "", images, directions=directions, sampler=share, checkpoint=path, **common
    )
    indices, values = _by_hand(model, images[share], directions, reduce, 4)
    for result in (shared, resumed):
        np.testing.assert_array_equal(result.indices, np.asarray(share)[indices])
        np.testing.assert_allclose(result.values, values, rtol=1e-5, atol=1e-6)
    with pytest.raises(featvis.FeatvisValueError, match="directions"):  # other directions, same checkpoint
        featvis.dataset_examples(
            model, "", images, directions=-directions, sampler=share, checkpoint=path, **common
        )


def test_bad_directions_are_errors_that_name_directions():
    model, directions, images, _, _ = _planted()
    common = dict(k=2, input_range=(0.0, 1.0))
    with pytest.raises(featvis.FeatvisValueError, match=r"directions.*of 5 channels.*of 6 channels"):
        featvis.dataset_examples(model, "", images, directions=torch.ones(2, 5), **common)
    with pytest.raises(featvis.FeatvisValueError, match=r"directions.*\(0, 6\).*at least one direction"):
        featvis.dataset_examples(model, "", images, directions=torch.ones(0, 6), **common)
    with pytest.raises(featvis.FeatvisValueError, match=r"directions.*rows \[1\] zero"):
        featvis.dataset_examples(model, "", images, directions=[[1.0] * 6, [0.0] * 6], **common)
    with pytest.raises(featvis.FeatvisTypeError, match="directions"):
        featvis.dataset_examples(model, "", images, directions=[[1.0, 2.0], [3.0]], **common)
    with pytest.raises(featvis.FeatvisValueError, match="directions= and units="):
        featvis.dataset_examples(model, "", images, units=[0], directions=directions, **common)
    with pytest.raises(featvis.FeatvisValueError, match="directions= lie in one layer"):
        featvis.dataset_examples(nn.Sequential(model), ["0", ""], images, directions=directions, **common)
