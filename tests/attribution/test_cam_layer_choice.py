"""Grad-CAM's automatic layer choice on the shapes timm's and Hugging Face's transformers give: attention
modules of their own (not `nn.MultiheadAttention`), (N, heads, tokens, dim) tensors inside them, class
attention on the class token alone, one-token layers. Found by the compatibility matrix
(benchmarks/zoo_matrix.py); small models written here in the libraries' style."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import featvis
from featvis.targets import unit_axis_of

from conftest import assert_untouched, snapshot

SIZE = 32  # 8 x 8 patches of 4 px, one class token


class Attention(nn.Module):
    """timm's attention: one qkv Linear, per-head norms on (N, heads, tokens, dim), a fused kernel."""

    def __init__(self, dim: int, heads: int = 2, position: nn.Module | None = None):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.position = [position]  # CoaT's: a conv of the model's, shared by the blocks (not a child)

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        x = x.transpose(1, 2).reshape(n, t, c)
        if self.position[0] is not None:  # the patches' values as a map through the shared conv
            side = int((t - 1) ** 0.5)
            grid = x[:, 1:].transpose(1, 2).reshape(n, c, side, side)
            x = torch.cat([x[:, :1], x[:, 1:] + self.position[0](grid).flatten(2).transpose(1, 2)], 1)
        return self.proj(x)


class ClassAttention(nn.Module):
    """CaiT's class attention: the class token's query over every token, a softmax module of its own."""

    def __init__(self, dim: int):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        weights = self.softmax(self.q(x[:, :1]) @ self.k(x).transpose(1, 2) / x.shape[-1] ** 0.5)
        return self.proj(weights @ self.v(x))  # (N, 1, dim)


class Block(nn.Module):
    def __init__(self, dim: int, position: nn.Module | None = None):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, position=position)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU())
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.mlp(self.norm2(x)))


class ClassBlock(nn.Module):
    """The class token alone after the attention: its layers give (N, 1, dim) outputs."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), ClassAttention(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Linear(dim, dim)

    def forward(self, x):
        cls = x[:, :1] + self.attn(self.norm1(x))
        return cls + self.mlp(self.norm2(cls))


class Transformer(nn.Module):
    """A ViT in timm's style whose head reads the class token; with `class_attention`, CaiT's."""

    def __init__(self, class_attention: bool = False, dim: int = 32, shared_position: bool = False):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.position = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if shared_position else None
        self.blocks = nn.ModuleList([Block(dim, self.position) for _ in range(2)])
        self.class_blocks = nn.ModuleList([ClassBlock(dim)] if class_attention else [])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        for block in self.class_blocks:
            x = torch.cat([block(x), x[:, 1:]], dim=1)
        return self.head(self.norm(x)[:, 0])


def _cam(model, **kwargs):
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return featvis.visualize_cam(model, "head", 1, image, input_range=(0.0, 1.0), **kwargs)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, "blocks.1.norm1"),
        ({"class_attention": True}, "class_blocks.0.norm1"),
        ({"shared_position": True}, "blocks.1.norm1"),
    ],
)
def test_the_automatic_layer_of_a_timm_style_transformer_is_its_last_attentions_input(options, expected):
    """Before: the (N, heads, tokens, dim) output of `k_norm` was taken for a map (heads as channels, a
    17 x 16 'image'), class attention's one-token layers for a 1 x 1 grid (a constant map), and the
    map of a conv the attention calls (CoaT's shared position encoding) for the last map."""
    torch.manual_seed(0)
    model = Transformer(**options).eval()
    before = snapshot(model)
    auto = _cam(model)
    assert auto.shape == (1, SIZE, SIZE) and np.isfinite(auto).all() and auto.max() - auto.min() > 0.5
    np.testing.assert_array_equal(auto, _cam(model, penultimate_layer=expected))
    assert_untouched(model, before)


def test_the_probe_names_the_modules_that_compute_an_attention():
    model = Transformer(class_attention=True).eval()
    with featvis.PreparedModel(model, input_range=(0.0, 1.0)) as prepared:
        prepared.probe(torch.rand(1, 3, SIZE, SIZE))
        # the class attention's softmax is a module: the attention is the module that holds it
        assert prepared.seen.attention_modules == {"blocks.0.attn", "blocks.1.attn", "class_blocks.0.attn"}


def test_a_one_token_output_has_its_units_on_the_feature_axis():
    """LeViT's last stage at a small input is one token: (N, 1, 1024) after a norm of another width
    had its units read on the token axis (one unit), and 1024 'tokens' made a 32 x 32 grid."""
    assert unit_axis_of((2, 1, 1024), 384, 1) == -1
    assert unit_axis_of((2, 1024, 1), 384, -1) == 1
    assert unit_axis_of((2, 16, 1024), 384, 1) == 1  # no axis of one: the defining module's convention


class InPlaceAfterTheMap(nn.Module):
    """torchvision's DenseNet: the last map is a norm's output, which a ReLU changes in place."""

    def __init__(self, inplace: bool):
        super().__init__()
        self.inplace = inplace
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.norm(self.conv(x)), inplace=self.inplace)
        return self.head(x.mean((2, 3)))


def test_gradcam_on_a_map_that_the_model_changes_in_place_is_that_of_the_map_kept_apart():
    """Before: autograd's 'a leaf Variable that requires grad is being used in an in-place operation'."""
    torch.manual_seed(0)
    model = InPlaceAfterTheMap(inplace=True).eval()
    before = snapshot(model)
    apart = InPlaceAfterTheMap(inplace=False).eval()
    apart.load_state_dict(model.state_dict())
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cam = featvis.visualize_cam(model, "head", 1, image, input_range=(0.0, 1.0))
    np.testing.assert_allclose(cam, featvis.visualize_cam(apart, "head", 1, image, input_range=(0.0, 1.0)))
    assert cam.max() - cam.min() > 0.5
    assert_untouched(model, before)


class ResidualBlock(nn.Module):
    """ConvNeXt's block: the skip plus a scaled branch, an addition that no leaf of the block gives."""

    def __init__(self):
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 8, 1))

    def forward(self, x):
        return x + 1e-3 * self.branch(x)  # a layer scale that starts small


class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.block = ResidualBlock()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def test_the_automatic_layer_of_a_block_that_ends_in_an_addition_is_the_block_not_its_branch():
    """Before: the branch's last conv (the last leaf run), a 1e-3 correction, not the map the head sees
    (torchvision's ConvNeXt: a constant map)."""
    torch.manual_seed(0)
    model = ResidualNet().eval()
    before = snapshot(model)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cam = functools.partial(featvis.visualize_cam, model, "head", 1, image, input_range=(0.0, 1.0))
    auto = cam()
    np.testing.assert_array_equal(auto, cam(penultimate_layer="block"))
    assert not np.allclose(auto, cam(penultimate_layer="block.branch.2"), atol=0.05)
    assert_untouched(model, before)


class TupleStage(nn.Module):
    """PiT's stages (and a Hugging Face base model's ModelOutput): the map and the class token, a tuple."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Linear(8, 8)

    def forward(self, x):
        x = self.conv(x)
        return x, self.cls(x.mean((2, 3)))


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stage = TupleStage()
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        maps, cls = self.stage(x)
        return self.head(torch.cat([maps.mean((2, 3)), cls], 1))


def test_a_block_that_outputs_a_tuple_is_passed_over_by_the_automatic_layer_and_named_when_given():
    """Before (once blocks counted): 'not a layer the loss depends on' for the tuple's first tensor."""
    torch.manual_seed(0)
    model = TupleNet().eval()
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cam = functools.partial(featvis.visualize_cam, model, "head", 1, image, input_range=(0.0, 1.0))
    np.testing.assert_array_equal(cam(), cam(penultimate_layer="stage.conv"))
    with pytest.raises(featvis.FeatvisValueError, match=r"one tensor \('stage' gives a tuple"):
        cam(penultimate_layer="stage")


def test_a_prepared_model_reused_at_another_image_size_still_finds_the_map():
    """One PreparedModel first drew a square 32 px image, then explains a 48 x 24 photo: the CAM
    layer is chosen from the photo's own layer shapes, not the square image's."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    ).eval()
    before = snapshot(model)
    photo = torch.rand(1, 3, 48, 24)
    with featvis.PreparedModel(model, input_range=(0.0, 1.0)) as prepared:
        featvis.visualize_activation(prepared, "4", 0, size=32, max_iter=2, seed=0)
        maps = featvis.visualize_cam(prepared, "4", 0, photo)
    assert maps.shape == (1, 48, 24) and maps.max() > 0
    assert_untouched(model, before)


class RowPooled(nn.Module):
    """A text recognizer's head: the map pooled to rows, (N, C, 8, 1), then read by the classifier."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.act = nn.ReLU()
        self.rows = nn.AdaptiveAvgPool2d((8, 1))
        self.head = nn.Linear(64, 4)

    def forward(self, x):
        return self.head(self.rows(self.act(self.conv(x))).flatten(1))


def test_a_four_axis_output_that_is_no_map_is_not_taken_for_a_token_layer():
    """The rows-only pooling after the last map is (N, C, 8, 1): not a map of the image, and only a
    (N, tokens, features) output can be a token grid, so the automatic layer is the map before it."""
    torch.manual_seed(0)
    model = RowPooled().eval()
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    cam = functools.partial(featvis.visualize_cam, model, "head", 1, image, input_range=(0.0, 1.0))
    auto = cam()
    assert auto.max() - auto.min() > 0.5
    np.testing.assert_array_equal(auto, cam(penultimate_layer="act"))
    assert not np.allclose(auto, cam(penultimate_layer="rows"), atol=0.05)


class ConvAfterAttention(nn.Module):
    """MobileViT's block: patches through an attention, folded back to a map, then a conv."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        maps = self.embed(x)
        n, c, h, w = maps.shape
        tokens = maps.flatten(2).transpose(1, 2)
        tokens = self.attn(tokens, tokens, tokens, need_weights=False)[0]
        folded = tokens.transpose(1, 2).reshape(n, c, h, w)
        return self.head(F.relu(self.conv(folded)).mean((2, 3)))


def test_the_automatic_layer_of_a_conv_run_after_an_attention_is_that_conv():
    """The conv that runs right after the attention is not one of the attention's own layers."""
    torch.manual_seed(0)
    model = ConvAfterAttention().eval()
    before = snapshot(model)
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    cam = functools.partial(featvis.visualize_cam, model, "head", 0, image, input_range=(0.0, 1.0))
    auto = cam()
    assert auto.max() - auto.min() > 0.5
    np.testing.assert_array_equal(auto, cam(penultimate_layer="conv"))
    assert not np.allclose(auto, cam(penultimate_layer="embed"), atol=0.05)
    assert_untouched(model, before)


def test_the_automatic_layer_for_an_inner_block_is_that_blocks_attention_input():
    """A CAM of the first block's output: the input of the attention that runs before it
    (blocks.0.norm1), not that of a later block, which the loss's layer does not see."""
    torch.manual_seed(0)
    model = Transformer().eval()
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    cam = functools.partial(featvis.visualize_cam, model, "blocks.0", 1, image, input_range=(0.0, 1.0))
    auto = cam()
    assert auto.shape == (1, SIZE, SIZE) and auto.max() - auto.min() > 0.5
    np.testing.assert_array_equal(auto, cam(penultimate_layer="blocks.0.norm1"))
