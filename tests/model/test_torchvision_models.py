"""torchvision's ViT-B/16, Swin-T and ConvNeXt-T (random weights: mechanics only) through the public API:
a class image, an MLP neuron on the feature axis, Grad-CAM on the right layer, and the model untouched."""

import numpy as np
import pytest
import torch

import featvis

from conftest import assert_untouched, snapshot
from torchvision_models import torchvision_models

SIZE = 32  # the smallest input all three take: seconds, not minutes, on a CPU
KW = dict(input_range=(0.0, 1.0), size=SIZE, max_iter=2, seed=0, progress=False)


def _model(name: str):
    torch.manual_seed(0)
    models = torchvision_models()
    if name == "vit_b_16":
        model = models.vit_b_16(image_size=SIZE)
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts the head at zero
    else:
        model = getattr(models, name)()
    return model


# (model, class layer, MLP layer and its hidden width, the text verbose prints for it, the layer Grad-CAM uses)
CASES = {
    "vit_b_16": (
        "heads.head",
        "encoder.layers.encoder_layer_1.mlp.0",
        3072,
        "(N, 5, 3072)",
        "encoder.layers.encoder_layer_11.ln_1#0",
    ),
    "swin_t": ("head", "features.1.0.mlp.0", 384, "(N, 8, 8, 384)", None),
    "convnext_tiny": ("classifier.2", "features.1.0.block.3", 384, "(N, 8, 8, 384)", None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_class_neuron_and_gradcam_run_and_leave_the_model_as_it_was(name, capsys):
    head, mlp, width, shape_text, cam_layer = CASES[name]
    model = _model(name)
    model.train()  # featvis evaluates in eval mode and puts training mode back
    before = snapshot(model)
    image = featvis.visualize_activation(model, head, 3, **KW)
    assert image.shape == (SIZE, SIZE, 3)
    neuron = featvis.visualize_activation(model, mlp, 7, verbose=True, **KW)
    out = capsys.readouterr().out
    assert f"units [7] on axis -1 ({width} units) of {shape_text}" in out, out
    assert featvis.get_num_filters(model, mlp, input_shape=(3, SIZE, SIZE)) == width
    photo = np.random.default_rng(0).random((SIZE, SIZE, 3)).astype(np.float32)
    cam = featvis.visualize_cam(model, head, 3, photo, input_range=(0.0, 1.0))
    assert cam.shape == (1, SIZE, SIZE) and np.isfinite(cam).all() and 0 <= cam.min() <= cam.max() <= 1
    if cam_layer is not None:  # the ViT's last block's first norm, found by itself
        chosen = featvis.visualize_cam(
            model, head, 3, photo, input_range=(0.0, 1.0), penultimate_layer=cam_layer
        )
        np.testing.assert_array_equal(cam, chosen)
    saliency = featvis.visualize_saliency(
        model, head, 3, photo, input_range=(0.0, 1.0), backprop_modifier="guided"
    )
    assert saliency.shape == (1, SIZE, SIZE) and saliency.max() > 0
    assert neuron.shape == image.shape
    assert_untouched(model, before)


def test_vit_with_torchvisions_all_zero_head_warns_that_its_maps_show_nothing():
    torch.manual_seed(0)
    model = torchvision_models().vit_b_16(image_size=SIZE)  # weights=None: the head starts at zero
    before = snapshot(model)
    photo = np.random.default_rng(0).random((SIZE, SIZE, 3)).astype(np.float32)
    for explain in (featvis.visualize_cam, featvis.visualize_saliency):
        with pytest.warns(featvis.FeatvisWarning) as records:
            maps = explain(model, "heads.head", 3, photo, input_range=(0.0, 1.0))
        assert maps.max() == maps.min()
        said = [str(r.message) for r in records if "constant" in str(r.message)]
        assert len(said) == 1 and "zero" in said[0], said
    assert_untouched(model, before)
