"""timm and Hugging Face models with no glue: `featvis.zoo.from_timm`, `from_huggingface`, and the CLI's
``--model timm:NAME`` / ``hf:FOLDER``. Weights are random (nothing is downloaded)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import torch

import featvis
from featvis.cli import main
from featvis.errors import FeatvisValueError

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _tiny_vit_folder(tmp_path, labels=("cat", "dog", "fish")):
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path)
    processor = transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3]
    )
    processor.save_pretrained(tmp_path)
    return tmp_path


def test_from_timm_gives_the_data_config_and_imagenet_names():
    vit = featvis.zoo.from_timm("vit_tiny_patch16_224")
    assert vit.image_size == (224, 224)
    assert vit.preprocess.mean == (0.5, 0.5, 0.5) and vit.preprocess.std == (0.5, 0.5, 0.5)
    assert vit.class_index("tabby cat") == 281 and not vit.model.training
    resnet = featvis.zoo.from_timm("resnet18", num_classes=7)
    assert resnet.preprocess.mean == featvis.zoo.IMAGENET_MEAN and resnet.class_names is None
    with pytest.raises(FeatvisValueError, match="has no class names"):
        resnet.class_index("tabby cat")


def test_a_timm_model_made_for_another_input_size_runs_at_that_size_by_default():
    """A ViT made with img_size=32 takes only 32 px; its data config still says 224, which the bundle
    gave, so every entry point failed on the model's own size (found by the compatibility matrix)."""
    vit = featvis.zoo.from_timm("vit_tiny_patch16_224", img_size=32, depth=1)
    assert vit.image_size == (32, 32)
    made = timm.create_model("vit_tiny_patch16_224", img_size=(32, 48), depth=1)
    assert featvis.zoo.from_timm(made).image_size == (32, 48)  # a model object: the size it holds
    with vit.prepare() as prepared:
        image = featvis.visualize_activation(prepared, "", 1, max_iter=2, seed=0, progress=False)
    assert image.shape == (32, 32, 3)


def test_from_timm_loads_a_local_weights_file_and_refuses_a_wrong_one(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet18", num_classes=5)
    path = tmp_path / "resnet18.safetensors"
    safetensors_torch.save_file(source.state_dict(), str(path))
    loaded = featvis.zoo.from_timm("resnet18", num_classes=5, weights=path)
    assert torch.equal(loaded.model.fc.weight, source.fc.weight)
    with pytest.raises(FeatvisValueError, match="weights="):
        featvis.zoo.from_timm("resnet18", weights=path)  # a 1000-class head does not fit
    with pytest.raises(FeatvisValueError, match="weights="):
        featvis.zoo.from_timm("resnet18", weights=tmp_path / "missing.pth")


def test_an_unknown_timm_name_lists_close_ones():
    with pytest.raises(FeatvisValueError, match="convnext_tiny"):
        featvis.zoo.from_timm("convnxt_tiny")


def test_a_hugging_face_folder_gives_its_processor_size_and_labels(tmp_path):
    vit = featvis.zoo.from_huggingface(_tiny_vit_folder(tmp_path))
    assert vit.image_size == (32, 32)
    assert vit.preprocess.mean == (0.4, 0.5, 0.6) and vit.preprocess.std == (0.2, 0.25, 0.3)
    assert vit.class_names == ("cat", "dog", "fish") and vit.class_index("dog") == 1
    with vit.prepare() as prepared:
        assert prepared.default_size() == (32, 32)
        made = featvis.visualize_activation(prepared, "", 1, seed=0)
        scores = prepared.layer_output("", prepared.load_images([made, np.full_like(made, 128)]))
    assert scores[0, 1] > scores[1, 1]  # the class image raises the class logit over a gray image


def test_a_hub_id_that_is_not_cached_says_nothing_is_downloaded(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FeatvisValueError, match="downloads nothing"):
        featvis.zoo.from_huggingface("google/vit-base-patch16-224")


def test_a_model_without_logits_reads_its_last_hidden_state_or_the_field_asked_for():
    config = transformers.Dinov2Config(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    dino = featvis.zoo.from_huggingface(transformers.Dinov2Model(config))
    assert dino.class_names is None and dino.image_size == (32, 32)
    with dino.prepare() as prepared:
        assert prepared.layer_output("", torch.rand(1, 3, 32, 32)).shape == (1, 17, 32)
    pooled = featvis.zoo.from_huggingface(transformers.Dinov2Model(config), output="pooler_output")
    with pooled.prepare() as prepared:
        assert prepared.layer_output("", torch.rand(1, 3, 32, 32)).shape == (1, 32)


def test_the_cli_runs_a_timm_model_with_its_own_weights_file_and_class_names(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.safetensors"
    safetensors_torch.save_file(timm.create_model("resnet18").state_dict(), str(weights))
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "a.png"
    )
    out = tmp_path / "cam.png"
    main(
        ["cam", "--model", "timm:resnet18", "--weights", str(weights), "--layer", "", "--filter", "tabby"]
        + ["--image", str(tmp_path / "a.png"), "--size", "64", "--out", str(out)]
    )
    assert Image.open(out).size == (64, 64)


def test_the_cli_runs_a_hugging_face_folder_by_its_label_names(tmp_path):
    folder = _tiny_vit_folder(tmp_path / "vit")
    out = tmp_path / "dog.png"
    main(
        ["activation", "--model", f"hf:{folder}", "--layer", "", "--filter", "dog", "--size", "32"]
        + ["--steps", "4", "--out", str(out)]
    )
    assert Image.open(out).size == (32, 32)


def test_importing_featvis_imports_neither_timm_nor_transformers():
    code = "import sys, featvis; print('timm' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_fixed_size_model_takes_photos_of_any_size_resized_as_its_processor_does(tmp_path):
    vit = featvis.zoo.from_huggingface(_tiny_vit_folder(tmp_path))  # 32 x 32 only
    photos = [np.zeros((50, 80, 3), np.uint8), np.full((90, 40, 3), 200, np.uint8)]
    with vit.prepare() as prepared:
        maps = featvis.visualize_cam(prepared, "", 0, photos)
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()
    assert featvis.overlay(photos[0], maps[0]).shape == (50, 80, 3)
