"""No call, good or bad, changes the user's model."""

import numpy as np
import pytest
import torch

import featvis

from conftest import assert_untouched, hook_count, snapshot

SMALL = dict(size=32, max_iter=3, seed=0, progress=False)

BAD_CALLS = {
    "unknown layer": dict(layer="nope"),
    "negative unit": dict(filter_indices=-1),
    "unit out of range": dict(filter_indices=99),
    "zero steps": dict(max_iter=0),
    "reversed range": dict(input_range=(255, 0)),
    "bad grad modifier": dict(grad_modifier="sideways"),
    "bad backprop modifier": dict(backprop_modifier="sideways"),
    "NaN seed": dict(seed_input=np.full((32, 32, 3), np.nan)),
    "wrong seed shape": dict(seed_input=np.zeros((32, 32, 5))),
    "bad method": dict(method="magic"),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_bad_calls_raise_featvis_errors_and_leave_model_untouched(tiny, case):
    tiny.train()  # a training-mode model must stay in training mode
    tiny.conv1.weight.requires_grad_(False)
    before = snapshot(tiny)
    kwargs = {**SMALL, "layer": "fc", "filter_indices": 0, **BAD_CALLS[case]}
    layer, filters = kwargs.pop("layer"), kwargs.pop("filter_indices")
    with pytest.raises(featvis.FeatvisError):
        featvis.visualize_activation(tiny, layer, filters, **kwargs)
    assert_untouched(tiny, before)


def test_good_call_on_training_model_changes_nothing(tiny):
    tiny.train()
    tiny.fc.bias.requires_grad_(False)
    handle = tiny.conv1.register_forward_hook(lambda *args: None)  # the user's own hook stays
    before = snapshot(tiny)
    featvis.visualize_activation(tiny, "bn", 2, **SMALL)  # BatchNorm stats would move in train mode
    featvis.visualize_layer(tiny, "conv2", [0, 1], **SMALL)
    assert_untouched(tiny, before)
    assert all(p.grad is None for p in tiny.parameters())
    handle.remove()


def test_model_that_raises_is_reported_and_cleaned_up(tiny):
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            x = self.conv(x)
            raise RuntimeError("boom")

    model = Broken()
    before = snapshot(model)
    with pytest.raises(featvis.ModelError, match="boom"):
        featvis.visualize_activation(model, "conv", 0, **SMALL)
    assert_untouched(model, before)


def test_many_calls_accumulate_no_hooks(tiny):
    for _ in range(20):
        featvis.visualize_activation(tiny, "conv2", 1, **SMALL)
    assert hook_count(tiny) == 0


def test_non_finite_loss_stops_with_the_step_and_term(tiny):
    from featvis.losses import FunctionLoss

    def blows_up(ctx):
        return ctx.images.mean(dim=(1, 2, 3)) * float("nan")

    before = snapshot(tiny)
    with pytest.raises(featvis.NonFiniteError, match=r"step 1: term\(s\) blows_up"):
        featvis.visualize_activation_with_losses(tiny, [(FunctionLoss(blows_up), 1.0)], **SMALL)
    assert_untouched(tiny, before)


def test_ctrl_c_returns_the_images_so_far_and_leaves_the_model_clean(tiny):
    before = snapshot(tiny)

    def interrupt(step, terms, images):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.warns(featvis.FeatvisWarning, match="interrupted"):
        result = featvis.visualize_activation(
            tiny, "fc", 0, callbacks=[interrupt], return_result=True, **{**SMALL, "max_iter": 50}
        )
    assert result.interrupted and len(result.history["total"]) == 5
    assert result.images.shape == (1, 3, 32, 32) and torch.isfinite(result.images).all()
    assert_untouched(tiny, before)


def test_failed_save_keeps_the_good_file(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "image.png"
    featvis.save_image(np.zeros((8, 8, 3), np.uint8), path)
    good = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half a PNG")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        featvis.save_image(np.ones((8, 8, 3), np.uint8), path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]


def test_ctrl_c_in_a_whole_layer_stops_after_the_current_batch(tiny):
    before = snapshot(tiny)
    calls = []

    def interrupt(step, terms, images):
        calls.append(step)
        if len(calls) == 3:
            raise KeyboardInterrupt

    with pytest.warns(featvis.FeatvisWarning, match="interrupted"):
        images = featvis.visualize_layer(
            tiny, "conv2", [0, 1, 2, 3], batch_size=2, callbacks=[interrupt], **SMALL
        )
    assert images.shape == (2, 32, 32, 3)  # the first batch, interrupted; no second batch started
    assert_untouched(tiny, before)


def test_saved_files_get_the_usual_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = featvis.save_image(np.zeros((4, 4, 3), np.uint8), tmp_path / "a.png")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
