"""Models whose output is not one tensor: Hugging Face ModelOutputs, dicts, tuples, named tuples."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn

import featvis
from featvis.errors import FeatvisTypeError, FeatvisValueError, LayerNotFoundError

Pair = namedtuple("Pair", ["logits", "features"])
Embeds = namedtuple("Embeds", ["features", "image_embeds"])


class Structured(nn.Module):
    """conv-ReLU-pool-linear whose forward returns the logits in a structure given by `kind`."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 4)
        self.embed = nn.Linear(8, 6)
        with torch.no_grad():  # a head that the image can move: unit 2 reads channels 0-3
            self.head.weight.zero_()
            self.head.weight[2, :4] = 1.0

    def forward(self, x):
        pooled = self.act(self.conv(x)).mean(dim=(2, 3))
        logits, embeds = self.head(pooled), self.embed(pooled)
        if self.kind == "dict":
            return {"features": embeds, "logits": logits}
        if self.kind == "tuple":
            return logits, embeds
        if self.kind == "namedtuple":
            return Pair(logits, embeds)
        if self.kind == "namedtuple-other":
            return Embeds(embeds, logits)  # a named tuple with no logits field
        return {"features": embeds, "image_embeds": logits}  # no logits field


class LogitsOnly(nn.Module):
    """The wrapper a user had to write before: the logits of a structured output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out["logits"] if isinstance(out, dict) else out[0]


@pytest.mark.parametrize("kind", ["dict", "tuple", "namedtuple"])
def test_the_logits_of_a_structured_output_rise_with_no_wrapper(kind):
    model = Structured(kind).eval()
    made = featvis.visualize_activation(model, "", 2, input_range=(0.0, 1.0), size=16, seed=0)
    wrapped = featvis.visualize_activation(LogitsOnly(model), "", 2, input_range=(0.0, 1.0), size=16, seed=0)
    np.testing.assert_array_equal(made, wrapped)
    image = torch.from_numpy(made).permute(2, 0, 1)[None]  # (H, W, 3) in [0, 1]
    with torch.no_grad():
        rise = LogitsOnly(model)(image)[0, 2] - LogitsOnly(model)(torch.full_like(image, 0.5))[0, 2]
    assert rise > 0.1


def test_a_hugging_face_model_output_gives_its_logits():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    model = transformers.ViTForImageClassification(config).eval()
    x = torch.rand(1, 3, 32, 32)
    scores = featvis.visualize_saliency(model, "", 3, x, input_range=(0.0, 1.0))
    assert scores.shape == (1, 32, 32) and np.isfinite(scores).all() and scores.std() > 0
    assert featvis.layer_names(model, input_shape=(3, 32, 32))[-1] == "classifier"


def test_output_picks_another_field_by_name_index_or_function():
    model = Structured("other").eval()
    x = torch.rand(2, 3, 16, 16)
    with featvis.PreparedModel(model, input_range=(0.0, 1.0), output="features") as prepared:
        assert prepared.layer_output("", x).shape == (2, 6)
    with featvis.PreparedModel(model, input_range=(0.0, 1.0), output=lambda out: out["image_embeds"]) as p:
        assert p.layer_output("", x).shape == (2, 4)
    with featvis.PreparedModel(Structured("tuple").eval(), input_range=(0.0, 1.0), output=1) as prepared:
        assert prepared.layer_output("", x).shape == (2, 6)


@pytest.mark.parametrize("kind", ["other", "namedtuple-other"])
def test_an_output_with_no_logits_names_its_fields_and_output(kind):
    """A dict or a named tuple without logits is not read by position: which field is meant is asked."""
    model = Structured(kind).eval()
    with pytest.raises(LayerNotFoundError, match=r"output=.*'features', 'image_embeds'"):
        featvis.visualize_saliency(model, "", 0, torch.rand(1, 3, 16, 16), input_range=(0.0, 1.0))


def test_a_bad_output_pick_names_the_argument_and_the_choices():
    model = Structured("dict").eval()
    with pytest.raises(FeatvisValueError, match=r"output='pooled'.*'features', 'logits'"):
        featvis.visualize_saliency(
            model, "", 0, torch.rand(1, 3, 16, 16), input_range=(0.0, 1.0), output="pooled"
        )
    with pytest.raises(FeatvisTypeError, match="output has type float"):
        featvis.PreparedModel(model, output=2.5)
    with pytest.raises(FeatvisValueError, match="returns a tensor"):
        featvis.visualize_saliency(
            model, "", 0, torch.rand(1, 3, 16, 16), input_range=(0.0, 1.0), output=lambda out: 3
        )


def test_dataset_examples_read_the_field_asked_for_and_take_a_zoo_bundles_conventions():
    model = Structured("other").eval()
    images = torch.rand(6, 3, 16, 16)
    examples = featvis.dataset_examples(model, "", images, k=2, input_range=(0.0, 1.0), output="features")
    with torch.no_grad():
        expected = model(images)["features"].argmax(0)
    assert examples.units == list(range(6)) and examples.indices[:, 0].tolist() == expected.tolist()
    bundle = featvis.zoo.ZooModel("structured", model, 16, output="image_embeds")  # 0-255, normalized
    ranked = featvis.dataset_examples(model, "head", images * 255, k=2, **bundle.conventions)
    assert ranked.indices.shape == (4, 2)
