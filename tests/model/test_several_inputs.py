"""Models of several inputs: the image optimized beside fixed inputs, several inputs optimized together,
attention maps with the other inputs fixed, Keras functional models, and bad `inputs=` refused."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import featvis  # noqa: E402

from conftest import assert_untouched, snapshot  # noqa: E402

RUN = dict(size=16, max_iter=64, views=1, seed=0, input_range=(0.0, 1.0), progress=False)
QUICK = {**RUN, "max_iter": 8}
META = torch.tensor([[0.3, 1.0]])  # the fixed value: far from what unit 0 likes best, (1, 0)


class ImageAndMeta(nn.Module):
    """``forward(image, meta)``: unit 0 of `head` rises with the image's red filter and with
    2 * meta[0] - 2 * meta[1]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 + 2, 3)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0  # filter 0: red minus green
            self.conv.weight[0, 1] = -1.0
            self.head.weight[0] = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, -2.0])

    def forward(self, image, meta):
        features = self.conv(image).relu().mean((2, 3))
        return self.head(torch.cat([features, meta], 1))


class Outer(nn.Module):
    """The two-input model nested in another, whose meta is keyword-only."""

    def __init__(self):
        super().__init__()
        self.body = ImageAndMeta()

    def forward(self, image, *, meta):
        return self.body(image, meta)


def _start(model, layer):
    """Unit 0 on the gray image the pixel parameterization starts near, with the fixed meta."""
    gray = np.full((16, 16, 3), 0.5, np.float32)
    return featvis.activations_reached(
        model, layer, [0], gray[None], inputs={"meta": META}, input_range=(0, 1)
    )[0]


@pytest.mark.parametrize(("make", "layer"), [(ImageAndMeta, "head"), (Outer, "body.head")])
def test_image_with_meta_fixed_raises_the_unit_and_both_together_raise_it_more(make, layer):
    model = make()
    before = snapshot(model)
    image = featvis.visualize_activation(model, layer, 0, inputs={"meta": META}, method="pixel", **RUN)
    both = featvis.visualize_activation(
        model, layer, 0, inputs={"meta": featvis.Optimized((2,))}, method="pixel", return_result=True, **RUN
    )
    assert_untouched(model, before)
    start = _start(model, layer)
    image_only = featvis.activations_reached(
        model, layer, [0], image[None], inputs={"meta": META}, input_range=(0, 1)
    )[0]
    meta = both.inputs["meta"]
    together = featvis.activations_reached(
        model, layer, [0], both.images.permute(0, 2, 3, 1).numpy(), inputs={"meta": meta}, input_range=(0, 1)
    )[0]
    assert image_only > start + 3.0  # measured: -1.49 -> 6.73
    assert together > image_only + 2.0  # measured: 10.13, meta at (1, 0): 2 * 0.7 + 2 * 1 more
    assert meta.shape == (1, 2) and meta[0, 0] > 0.8 and meta[0, 1] < 0.2  # toward (1, 0), within [0, 1]
    assert_untouched(model, before)


def test_the_same_call_is_the_same_and_a_tuple_in_forward_order_works_like_a_dict():
    model = ImageAndMeta()
    by_name = featvis.visualize_activation(
        model, "head", 0, inputs={"image": featvis.Optimized(), "meta": (2,)}, return_result=True, **QUICK
    )
    by_order = featvis.visualize_activation(
        model, "head", 0, inputs=(featvis.Optimized(), featvis.Optimized((2,))), return_result=True, **QUICK
    )
    assert torch.equal(by_name.images, by_order.images)
    assert torch.equal(by_name.inputs["meta"], by_order.inputs["meta"])


def test_an_optimized_input_keeps_to_its_own_range():
    model = ImageAndMeta()
    spec = featvis.Optimized((2,), input_range=(-3.0, 3.0))
    result = featvis.visualize_activation(
        model, "head", 0, inputs={"meta": spec}, return_result=True, **{**RUN, "max_iter": 32}
    )
    meta = result.inputs["meta"][0]
    assert -3.0 <= meta.min() and meta.max() <= 3.0
    assert meta[0] > 1.0 and meta[1] < -1.0  # beyond [0, 1]: the range is the input's own


def test_a_grad_modifier_turns_every_optimized_input_the_same_way():
    model = ImageAndMeta()
    result = featvis.visualize_activation(
        model,
        "head",
        0,
        inputs={"meta": (2,)},
        grad_modifier="negate",
        return_result=True,
        **{**RUN, "max_iter": 32},
    )
    meta = result.inputs["meta"][0]
    assert meta[0] < 0.2 and meta[1] > 0.8  # lowered with the image: toward (0, 1), not (1, 0)


def test_a_batch_gives_each_image_its_own_meta_and_visualize_layer_takes_inputs():
    model = ImageAndMeta()
    result = featvis.visualize_activation(
        model, "head", 0, inputs={"meta": (2,)}, batch_size=2, return_result=True, **QUICK
    )
    assert result.inputs["meta"].shape == (2, 2)
    assert not torch.equal(result.images[0], result.images[1])  # each its own random start
    images = featvis.visualize_layer(model, "conv", [0, 1], inputs={"meta": META}, **QUICK)
    assert images.shape == (2, 16, 16, 3)


class Spot(nn.Module):
    """Unit 0 is the mean of rows 2-5, columns 9-12 of the image, times meta[0]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()

    def forward(self, image, meta):
        spot = self.conv(image)[:, :, 2:6, 9:13].square().mean((1, 2, 3))
        return torch.stack([spot * meta[:, 0], meta[:, 1]], 1)


def test_saliency_and_grad_cam_with_meta_fixed_point_at_what_the_unit_reads():
    model = Spot()
    before = snapshot(model)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    saliency = featvis.visualize_saliency(
        model, "", 0, seed_input=image, inputs={"meta": torch.tensor([[1.0, 0.0]])}, input_range=(0.0, 1.0)
    )[0]
    inside = saliency[2:6, 9:13].sum() / saliency.sum()
    assert inside > 0.99
    fixed = dict(inputs={"meta": torch.tensor([[1.0, 0.0]])}, input_range=(0.0, 1.0))
    paths = featvis.visualize_saliency(model, "", 0, image, method="integrated_gradients", **fixed)[0]
    assert paths[2:6, 9:13].sum() / paths.sum() > 0.99  # rows of many images, each with the meta
    # the score is quadratic along the path, so the rule is exact; the delta's scores see the meta too
    _, delta = featvis.integrated_gradients(
        model, featvis.ActivationMaximization("", 0), image, return_delta=True, **fixed
    )
    assert delta.shape == (1,) and abs(delta.item()) < 1e-5
    occluded = featvis.visualize_saliency(
        model, "", 0, image, method="occlusion", window=4, stride=2, **fixed
    )[0]
    row, col = np.unravel_index(occluded.argmax(), occluded.shape)
    assert 2 <= row < 6 and 9 <= col < 13
    cam = featvis.visualize_cam(
        model,
        "",
        0,
        seed_input=image,
        penultimate_layer="conv",
        inputs={"meta": torch.tensor([[1.0, 0.0]])},
        input_range=(0.0, 1.0),
    )
    assert cam.shape == (1, 16, 16) and np.isfinite(cam).all()
    assert_untouched(model, before)


@pytest.fixture(scope="module")
def keras_two_inputs():
    keras.utils.set_random_seed(0)
    image = keras.Input((16, 16, 3), name="image")
    meta = keras.Input((2,), name="meta")
    features = keras.layers.GlobalAveragePooling2D(name="pool")(keras.layers.Conv2D(4, 3, name="conv")(image))
    joined = keras.layers.Concatenate(name="joined")([features, meta])
    model = keras.Model([image, meta], keras.layers.Dense(3, name="dense")(joined))
    dense = model.get_layer("dense")
    kernel, bias = dense.get_weights()
    kernel[4:, 0] = [2.0, -2.0]  # unit 0 likes meta (1, 0)
    dense.set_weights([kernel, bias])
    return model


def test_keras_two_input_functional_model_from_the_api(keras_two_inputs):
    model = keras_two_inputs
    weights = [w.copy() for w in model.get_weights()]

    def unit(image, meta):
        return model([torch.as_tensor(image).reshape(1, 16, 16, 3), torch.as_tensor(meta)])[0, 0].item()

    image = featvis.visualize_activation(model, "dense", 0, inputs={"meta": META}, method="pixel", **RUN)
    both = featvis.visualize_activation(
        model, "dense", 0, inputs={"meta": featvis.Optimized((2,))}, method="pixel", return_result=True, **RUN
    )
    start = unit(np.full((16, 16, 3), 0.5, np.float32), META)
    image_only = unit(image, META)
    together = unit(both.images.permute(0, 2, 3, 1), both.inputs["meta"])
    assert image_only > start + 0.5  # measured: -1.51 -> -0.37, and 3.03 together
    assert together > image_only + 2.0
    saliency = featvis.visualize_saliency(
        model, "dense", 0, seed_input=image, inputs={"meta": META}, input_range=(0, 1)
    )
    assert saliency.shape == (1, 16, 16) and saliency.max() > 0
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


def test_a_keras_image_input_after_another_has_its_own_channels():
    keras.utils.set_random_seed(0)
    meta = keras.Input((2,), name="meta")
    gray = keras.Input((16, 16, 1), name="gray")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(gray))
    model = keras.Model(
        [meta, gray], keras.layers.Dense(3, name="dense")(keras.layers.Concatenate()([meta, features]))
    )
    image = featvis.visualize_activation(model, "dense", 0, inputs={"meta": META}, **{**QUICK, "max_iter": 2})
    assert image.shape == (16, 16, 1)  # read from the image input, not the first one


def _tiny_two():
    model = ImageAndMeta()
    model.train()
    model.conv.bias.requires_grad_(False)
    return model


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ({"metta": META}, ["'metta'", "image, meta", "close matches: meta"]),
        ({"image": torch.zeros(1, 3, 16, 16), "meta": META}, ["exactly one image input", "found 0"]),
        ({"meta": torch.zeros(2)}, ["inputs['meta']", "batch axis of 1", "(1, 2)"]),
        ({"meta": "fast"}, ["inputs['meta']", "str"]),
        ({"meta": None}, ["inputs['meta']", "NoneType"]),
        ((featvis.Optimized(), META, META), ["tuple of 3", "image, meta"]),
        ((META, META), ["exactly one image input"]),
        ((featvis.Optimized(), featvis.Optimized()), ["exactly one image input", "found 2"]),
        ("meta", ["inputs", "dict"]),
        ({"meta": torch.zeros(1, 5)}, ["inputs", "meta (1, 5)"]),  # the model itself fails: shapes listed
    ],
)
def test_bad_inputs_are_refused_naming_them_and_the_model_stays_as_it_was(inputs, words):
    model = _tiny_two()
    before = snapshot(model)
    with pytest.raises(featvis.FeatvisError) as info:
        featvis.visualize_activation(model, "head", 0, inputs=inputs, **{**QUICK, "max_iter": 2})
    for word in words:
        assert word in str(info.value), str(info.value)
    assert_untouched(model, before)


def test_bad_inputs_of_attention_maps_and_keras_models(keras_two_inputs):
    model = _tiny_two()
    before = snapshot(model)
    image = torch.rand(1, 3, 16, 16)
    with pytest.raises(featvis.FeatvisError, match="close matches: meta"):
        featvis.visualize_saliency(
            model, "head", 0, seed_input=image, inputs={"mta": META}, input_range=(0, 1)
        )
    with pytest.raises(featvis.ModelError, match=r"image \(1, 3, 16, 16\), meta \(1, 3\)"):
        featvis.visualize_cam(
            model, "head", 0, seed_input=image, inputs={"meta": torch.zeros(1, 3)}, input_range=(0, 1)
        )
    assert_untouched(model, before)
    with pytest.raises(featvis.FeatvisValueError, match=r"declares, \(None, 2\)"):
        featvis.visualize_activation(keras_two_inputs, "dense", 0, inputs={"meta": torch.zeros(1, 3)}, **RUN)
    with pytest.raises(featvis.FeatvisValueError, match="missing"):
        featvis.visualize_activation(
            keras_two_inputs, "dense", 0, inputs={"image": featvis.Optimized()}, **RUN
        )
    with pytest.raises(featvis.FeatvisTypeError, match="shape"):
        featvis.Optimized((0,))
    with pytest.raises(featvis.FeatvisValueError, match="input_range"):
        featvis.Optimized(input_range=(0, 255))  # the image's range is the call's


def test_an_atlas_of_a_two_input_model_writes_every_unit_and_its_dataset_examples(tmp_path):
    model = ImageAndMeta()
    before = snapshot(model)
    options = dict(inputs={"meta": META}, input_range=(0, 1), size=16, max_iter=4, progress=False)
    featvis.atlas(model, tmp_path / "site", ["conv", "head"], **options)
    for layer, count in (("head", 3), ("conv", 4)):  # every unit's image, none more
        made = sorted(p.name for p in (tmp_path / "site" / "units" / layer).glob("unit_?????.png"))
        assert made == [f"unit_{unit:05d}.png" for unit in range(count)]
    data = np.random.default_rng(0).random((4, 16, 16, 3)).astype(np.float32)
    featvis.atlas(model, tmp_path / "other", ["head"], data=data, examples=2, **options)
    examples = sorted(p.name for p in (tmp_path / "other" / "units" / "head").glob("*.examples.json"))
    assert examples == [f"unit_{unit:05d}.examples.json" for unit in range(3)]
    optimized = {**options, "inputs": {"meta": featvis.Optimized((2,))}}
    with pytest.raises(featvis.FeatvisValueError, match=r"inputs=.*optimized.*fixed tensors"):
        featvis.atlas(model, tmp_path / "third", ["head"], data=data, **optimized)
    assert_untouched(model, before)


class Gated(nn.Module):
    """The image's features times `meta`: the sign of meta decides which images a unit likes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, image, meta):
        return self.head(self.conv(image).mean((2, 3)) * meta)


def test_dataset_examples_of_a_two_input_model_rank_the_images_with_the_fixed_inputs():
    model = Gated().eval()
    before = snapshot(model)
    images = np.random.default_rng(0).random((20, 16, 16, 3)).astype(np.float32)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    found = []
    for meta in (torch.ones(1, 4), -torch.ones(1, 4)):
        ex = featvis.dataset_examples(
            model, "head", images, k=3, input_range=(0.0, 1.0), inputs={"meta": meta}
        )
        with torch.no_grad():
            expected = model(batch, meta.expand(20, -1)).argsort(0, descending=True)[:3].T
        np.testing.assert_array_equal(ex.indices, expected.numpy())
        found.append(ex.indices)
    assert not np.array_equal(*found)  # the other meta, other examples
    with pytest.raises(featvis.FeatvisValueError, match=r"inputs=.*optimized.*fixed tensors"):
        featvis.dataset_examples(model, "head", images, input_range=(0.0, 1.0), inputs={"meta": (4,)})
    assert_untouched(model, before)


def test_a_two_input_model_called_without_inputs_says_to_give_them():
    with pytest.raises(featvis.ModelError, match=r"meta.*inputs= for a model of several inputs"):
        featvis.visualize_saliency(ImageAndMeta(), "head", 0, torch.rand(1, 3, 8, 8), input_range=(0.0, 1.0))


def test_layer_names_probes_a_model_of_several_inputs_given_inputs():
    model = Outer().eval()
    before = snapshot(model)
    assert featvis.layer_names(model, inputs={"meta": META}) == ["body.conv", "body.head"]
    assert featvis.layer_names(model, (3, 8, 8), inputs={"meta": META}) == ["body.conv", "body.head"]
    with featvis.PreparedModel(model, inputs={"meta": META}) as prepared:
        assert featvis.find_layer_idx(prepared, "body.head") == 1
    with pytest.raises(featvis.ModelError, match=r"meta.*inputs= for a model of several inputs"):
        featvis.layer_names(model)
    with pytest.raises(featvis.FeatvisValueError, match=r"inputs.*'size'"):
        featvis.layer_names(model, inputs={"size": META})
    assert_untouched(model, before)
