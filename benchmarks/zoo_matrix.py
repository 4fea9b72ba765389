"""The compatibility matrix: timm, Hugging Face and torchvision architectures x featvis's entry points.

Run: python benchmarks/zoo_matrix.py [--quick] [--device cuda] [--only ID ...] [--threads N]
     [--json out.json] [--docs docs/compatibility.md]

Every model is built with random weights at a small size (widths and depths cut where the
architecture allows, small inputs) through the zoo bundles (`featvis.zoo.from_timm`,
`from_huggingface`; torchvision's models as a `ZooModel`), and each entry point is checked:

- ``layer_names``: the leaf calls are listed;
- ``visualize_layer``: the two units of a middle block most active on the photographs rise
  (`activations_reached` on the final images above the images the optimization started from);
- ``visualize_activation``: the model's top class on a photograph (an embedding unit for a model
  with none) rises the same way;
- ``visualize_cam``: Grad-CAM with the automatic layer choice gives a finite, non-constant map of
  the input's size (for transformers, on their patch-token grid);
- ``integrated_gradients``: the attributions sum to score(input) - score(baseline) within 2%
  (featvis's black baseline, else gray; the fewest of 32 ... 2048 steps that reach it);
- ``dataset_examples``: the middle block's two units rank four photographs;
- ``unchanged``: the model's weights, hooks, train/eval flags and requires_grad are as before.

An entry point works, gives a featvis error that names why (recorded with its message), or fails
(a check does not hold, or another exception). Prints each architecture's line, the counts and
the run's settings; ``--json`` writes every result, ``--docs`` the Markdown page
(docs/compatibility.md). ``--quick``: one model per family (the quick test suite's).
tests/model/test_zoo_matrix.py runs the same cases. timm and transformers import torchvision: where
its wheel does not match the torch installed, `tests/torchvision_models.import_model_library`
lets it import (as the test session does).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
import functools
import importlib
import json
import os
from pathlib import Path
import platform
import sys
import time
import traceback

import numpy as np
import torch

import featvis
from featvis.zoo import ZooModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import assert_untouched, snapshot  # noqa: E402
from torchvision_models import import_model_library, torchvision_models  # noqa: E402

ENTRY_POINTS = (
    "layer_names",
    "visualize_layer",
    "visualize_activation",
    "visualize_cam",
    "integrated_gradients",
    "dataset_examples",
    "unchanged",
)
# Activation maximization: 8 steps, without the random jitter, zoom and rotation featvis optimizes
# under by default (a random network is not invariant to them, so in 8 steps its units rise on the
# transformed images and not always on the image itself): the gradient path is what is checked.
OPTIMIZE = dict(max_iter=8, input_modifiers=[], progress=False)
IG_STEPS = (32, 128, 512, 2048)
BASELINES = (("black", None), ("gray", 128))  # featvis's default, then a flat gray image (0-255)
# |sum of attributions - (score(input) - score(baseline))| / |score(input) - score(baseline)|
IG_TOLERANCE = 0.02


@dataclass(frozen=True)
class Case:
    """One architecture: where it comes from, its family, its input size and how it is made small.

    `options` go to ``timm.create_model`` (or to the class `make` names, for a variant whose widths
    and depths its timm name fixes), the Hugging Face config or the torchvision builder; `size`
    is the input size (a model made with ``img_size`` runs at that size, its bundle's own);
    `quick` puts it in the quick suite (one model per family); `block` names the middle block
    when the automatic choice (`middle_block`) is not wanted.
    """

    source: str  # "timm", "hf" or "torchvision"
    name: str
    family: str
    size: int = 64
    options: dict = field(default_factory=dict)
    quick: bool = False
    block: str | None = None
    make: str | None = None
    output: str | None = None  # the field of a structured output to read (zoo bundles' output=)
    init_std: float | None = None  # convolutions and linear layers drawn from a truncated normal of this std

    @property
    def id(self) -> str:
        return f"{self.source}:{self.name}"


def _t(name, family, size=64, quick=False, block=None, make=None, init_std=None, **options) -> Case:
    size = options.get("img_size", size)
    return Case("timm", name, family, size, options, quick, block, make, init_std=init_std)


SMALL_SWIN = dict(img_size=64, window_size=4, embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))
SMALL_MIXER = dict(img_size=64, patch_size=16, num_blocks=2, embed_dim=64)

TIMM = [
    _t("resnet18", "ResNet", quick=True),
    _t("resnext26ts", "ResNeXt"),
    _t("regnetx_002", "RegNet", quick=True),
    _t("efficientnet_b0", "EfficientNet", quick=True),
    _t("tf_efficientnetv2_b0", "EfficientNet V2"),
    _t("mobilenetv3_small_050", "MobileNetV3", quick=True),
    _t("mobilenetv4_conv_small_035", "MobileNetV4"),
    _t("convnext_atto", "ConvNeXt", quick=True),
    _t("convnextv2_atto", "ConvNeXt V2"),
    _t("vit_tiny_patch16_224", "ViT", quick=True, img_size=64, depth=4),
    _t("deit_tiny_distilled_patch16_224", "DeiT", img_size=64, depth=4),
    _t("beit_base_patch16_224", "BEiT", img_size=64, embed_dim=64, depth=2, num_heads=2),
    _t("eva02_tiny_patch14_224", "EVA", img_size=56, depth=2),
    _t("vit_small_patch14_reg4_dinov2", "ViT registers", quick=True, img_size=56, depth=2),
    _t("swin_tiny_patch4_window7_224", "Swin", quick=True, **SMALL_SWIN),
    _t("swinv2_tiny_window8_256", "Swin V2", **SMALL_SWIN),
    _t("maxvit_pico_rw_256", "MaxViT", quick=True, img_size=64),
    _t("coatnet_nano_rw_224", "CoAtNet", img_size=64),
    _t("poolformer_s12", "PoolFormer", quick=True),
    _t(
        "caformer",
        "MetaFormer",
        make="timm.models.metaformer.MetaFormer",
        depths=(1, 1, 2, 1),
        dims=(16, 32, 64, 128),
        token_mixers=("timm.models.metaformer.SepConv",) * 2 + ("timm.models.metaformer.Attention",) * 2,
        norm_layers=("timm.models.metaformer.LayerNorm2dNoBias",) * 2
        + ("timm.models.metaformer.LayerNormNoBias",) * 2,
    ),
    _t("mixer", "MLP-Mixer", quick=True, make="timm.models.mlp_mixer.MlpMixer", **SMALL_MIXER),
    _t(
        "resmlp",
        "ResMLP",
        make="timm.models.mlp_mixer.MlpMixer",
        block_layer="timm.models.mlp_mixer.ResBlock",
        norm_layer="timm.models.mlp_mixer.Affine",
        mlp_ratio=4,
        **SMALL_MIXER,
    ),
    _t(
        "gmlp",
        "gMLP",
        make="timm.models.mlp_mixer.MlpMixer",
        block_layer="timm.models.mlp_mixer.SpatialGatingBlock",
        mlp_layer="timm.layers.GatedMlp",
        mlp_ratio=6,
        **SMALL_MIXER,
    ),
    _t("levit_128s", "LeViT", quick=True, img_size=128),
    _t("efficientvit_b0", "EfficientViT"),
    _t("efficientvit_m0", "EfficientViT (MSRA)", img_size=64),
    _t("fastvit_t8", "FastViT", quick=True),
    _t("repvgg_a0", "RepVGG", quick=True),
    _t("densenet121", "DenseNet", quick=True),
    _t("inception_v3", "Inception", size=96, init_std=0.1),
    _t("inception_next_atto", "InceptionNeXt"),
    _t("test_nfnet", "NFNet", quick=True),
    _t("pvt_v2_b0", "PVTv2", quick=True),
    _t("focalnet", "FocalNet", make="timm.models.focalnet.FocalNet", embed_dim=32, depths=(1, 1, 2, 1)),
    _t("hiera_tiny_224", "Hiera", quick=True, img_size=64),
    _t("ghostnet_050", "GhostNet"),
    _t("efficientformerv2_s0", "EfficientFormer", img_size=64),
    _t("mobilevit_xxs", "MobileViT", quick=True),
    _t("cait_xxs24_224", "CaiT", img_size=64, depth=2),
    _t("xcit_nano_12_p16_224", "XCiT", img_size=64, depth=2),
    _t("tiny_vit_5m_224", "TinyViT"),
    _t("edgenext_xx_small", "EdgeNeXt"),
    _t("repvit_m0_9", "RepViT"),
    _t("pit_ti_224", "PiT", img_size=64),
    _t("coat_lite_tiny", "CoaT", img_size=64),
    _t("mvitv2_tiny", "MViTv2", img_size=64),
    _t("dpn68b", "DPN"),
    _t("hrnet_w18_small", "HRNet"),
    _t("nest_tiny", "NesT", img_size=64),
    _t("mambaout_femto", "MambaOut"),
    _t("botnet26t_256", "BoTNet", img_size=64),
    _t("convit_tiny", "ConViT", img_size=64, depth=2),
    _t("twins_svt_small", "Twins", embed_dims=(16, 32, 64, 128), depths=(1, 1, 2, 1)),
    _t("davit_tiny", "DaViT", embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)),
    _t("crossvit_tiny_240", "CrossViT", size=240),
    _t("sequencer2d_s", "Sequencer", layers=(1, 1, 1, 1)),
    _t("starnet_s050", "StarNet"),
    _t("hgnetv2_b0", "HGNetV2"),
    _t("dla34", "DLA"),
    _t("cs3darknet_s", "CSPNet"),
]


def _hf(name, family, size=64, quick=False, block=None, output=None, **config) -> Case:
    """A Hugging Face model class and its config's options (a transformer's `image_size` included)."""
    return Case("hf", name, family, config.get("image_size", size), config, quick, block, output=output)


SMALL_TRANSFORMER = dict(
    image_size=64,
    patch_size=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
)
SMALL_STAGES = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1])

HF = [
    _hf("ViTForImageClassification", "ViT", quick=True, num_labels=10, **SMALL_TRANSFORMER),
    _hf("DeiTForImageClassificationWithTeacher", "DeiT", num_labels=10, **SMALL_TRANSFORMER),
    _hf("BeitForImageClassification", "BEiT", num_labels=10, **SMALL_TRANSFORMER),
    _hf("Dinov2ForImageClassification", "DINOv2", num_labels=10, **{**SMALL_TRANSFORMER, "patch_size": 8}),
    _hf(
        "Dinov2WithRegistersForImageClassification",
        "DINOv2 registers",
        num_labels=10,
        num_register_tokens=4,
        **{**SMALL_TRANSFORMER, "patch_size": 8},
    ),
    _hf(
        "CLIPVisionModelWithProjection",
        "CLIP vision tower",
        quick=True,
        output="image_embeds",
        projection_dim=16,
        **SMALL_TRANSFORMER,
    ),
    _hf("SiglipVisionModel", "SigLIP vision tower", output="pooler_output", **SMALL_TRANSFORMER),
    _hf(
        "SwinForImageClassification",
        "Swin",
        quick=True,
        num_labels=10,
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 2],  # a fourth stage (2 x 2) smaller than its window fails in transformers' Swin
        num_heads=[1, 2, 4],
        window_size=4,
    ),
    _hf("ConvNextForImageClassification", "ConvNeXt", num_labels=10, **SMALL_STAGES),
    _hf("ResNetForImageClassification", "ResNet", num_labels=10, embedding_size=16, **SMALL_STAGES),
    _hf(
        "MobileViTForImageClassification",
        "MobileViT",
        num_labels=10,
        image_size=64,
        hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
    ),
    _hf(
        "PvtV2ForImageClassification",
        "PVTv2",
        num_labels=10,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 2, 4],
    ),
]


def _tv(name, family, size=64, quick=False, block=None, make=None, init_std=None, **options) -> Case:
    """A torchvision builder (or the class `make` names) and its options."""
    return Case("torchvision", name, family, size, options, quick, block, make, init_std=init_std)


TORCHVISION = [
    _tv("resnet18", "ResNet", quick=True, num_classes=10),
    _tv("resnext50_32x4d", "ResNeXt", num_classes=10),
    _tv("alexnet", "AlexNet", num_classes=10),
    _tv("vgg11_bn", "VGG", num_classes=10),
    _tv("squeezenet1_1", "SqueezeNet", num_classes=10),
    _tv("densenet121", "DenseNet", num_classes=10),
    _tv("inception_v3", "Inception", size=96, num_classes=10, aux_logits=False, init_weights=True),
    _tv("googlenet", "GoogLeNet", num_classes=10, aux_logits=False, init_weights=False, init_std=0.1),
    _tv("shufflenet_v2_x0_5", "ShuffleNetV2", num_classes=10),
    _tv("mobilenet_v2", "MobileNetV2", num_classes=10),
    _tv("mobilenet_v3_small", "MobileNetV3", quick=True, num_classes=10),
    _tv("mnasnet0_5", "MNASNet", num_classes=10),
    _tv("efficientnet_b0", "EfficientNet", num_classes=10),
    _tv("efficientnet_v2_s", "EfficientNet V2", num_classes=10),
    _tv("regnet_y_400mf", "RegNet", num_classes=10),
    _tv("convnext_tiny", "ConvNeXt", num_classes=10),
    _tv(
        "vit",
        "ViT",
        quick=True,
        make="torchvision.models.VisionTransformer",
        image_size=64,
        patch_size=16,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=10,
    ),
    _tv("swin_t", "Swin", num_classes=10),
    _tv("swin_v2_t", "Swin V2", num_classes=10),
    _tv(
        "maxvit",
        "MaxViT",
        make="torchvision.models.MaxVit",
        input_size=(64, 64),
        stem_channels=16,
        partition_size=2,
        block_channels=[16, 32, 64, 128],
        block_layers=[1, 1, 1, 1],
        head_dim=8,
        stochastic_depth_prob=0.0,
        num_classes=10,
    ),
]
CASES = TIMM + HF + TORCHVISION
SOURCES = ("timm", "hf", "torchvision")


# -- building -------------------------------------------------------------------------------------
def build(case: Case) -> ZooModel:
    """The case's model as a zoo bundle with random weights (seeded); weights its library starts at
    zero so that a fresh network is the identity or constant (classifier heads, the last norm of
    residual branches) set as a head or a norm starts elsewhere, so that every class and block
    depends on the image. Hugging Face draws convolutions and batch-norm scales with std 0.02 (its
    config's initializer_range), which leaves a deep CNN's output exactly zero (MobileViT's):
    they are drawn as PyTorch draws them. Inception v3 and GoogLeNet are drawn as their papers' code
    draws them (`init_std`: a truncated normal of std 0.1, as torchvision's Inception v3 keeps it);
    with PyTorch's default draw (timm's) their score is so rough along a straight path that
    Integrated Gradients needs 2048 steps. Where the output is still the same for every photograph
    (vanished into rounding or constant): grouped convolutions redrawn (`_grouped_fan_out`), then
    batch norms calibrated (`_calibrate`)."""
    torch.manual_seed(0)
    if case.source == "timm":
        import_model_library("timm")
        if case.make is not None:
            options = {k: _named(v) for k, v in case.options.items()}
            bundle = featvis.zoo.from_timm(_named(case.make)(**options))
        else:
            bundle = featvis.zoo.from_timm(case.name, **case.options)
    elif case.source == "hf":
        transformers = import_model_library("transformers")
        model_class = getattr(transformers, case.name)
        model = model_class(model_class.config_class(**case.options))
        for module in model.modules():  # convolutions and batch norms as PyTorch draws them (below)
            if isinstance(module, torch.nn.modules.conv._ConvNd | torch.nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()
        bundle = featvis.zoo.from_huggingface(model, output=case.output)
    elif case.source == "torchvision":
        models = torchvision_models()
        make = _named(case.make) if case.make else getattr(models, case.name)
        bundle = ZooModel(f"torchvision:{case.name}", make(**case.options).eval(), case.size)
    else:
        raise ValueError(case.source)
    with torch.no_grad():
        if case.init_std is not None:  # the architecture's own draw (Inception's: truncated normal, 0.1)
            for module in bundle.model.modules():
                if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                    torch.nn.init.trunc_normal_(
                        module.weight, std=case.init_std, a=-2 * case.init_std, b=2 * case.init_std
                    )
        for name, parameter in bundle.model.named_parameters():
            if not name.endswith("bias") and parameter.numel() > 1 and not parameter.any():
                if parameter.ndim == 1:  # a scale (a residual branch's last norm): as a norm starts
                    parameter.fill_(1.0)
                else:  # a classifier head
                    parameter.normal_(std=0.02)
    if not _lively(bundle, case):
        _grouped_fan_out(bundle.model)
    if not _lively(bundle, case):
        _calibrate(bundle, case)
    return bundle


def _grouped_fan_out(model: torch.nn.Module) -> None:
    """Grouped convolutions' weights drawn with one group's fan-out (kaiming), as timm draws them:
    torchvision's fan-out counts every group's outputs, sqrt(groups) times too small a draw, which
    leaves its MobileNets' and EfficientNet's logits at 1e-10."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d) and module.groups > 1:
                fan_out = module.weight[0].numel() * module.out_channels // module.in_channels
                module.weight.normal_(0, (2 / fan_out) ** 0.5)


def _lively(bundle: ZooModel, case: Case) -> bool:
    """Whether the random network's output tells the photographs apart (its largest spread over them,
    per output unit, in [1e-7, 1e7]): not vanished into rounding, exploded or constant."""
    size = input_size(bundle, case)
    with bundle.prepare(size=size) as prepared:
        out = prepared.layer_output("", prepared.load_images(_photos(size)))
    spread = float(out.flatten(1).float().std(0).max())
    return 1e-7 <= spread <= 1e7


def _calibrate(bundle: ZooModel, case: Case) -> None:
    """Batch norms' statistics measured on the photographs, darkened too (one pass in training mode),
    as training would leave them, for a network whose initial statistics (mean 0, variance 1) leave
    its output the same for every image (timm's RepVGG: a spread of 1e-9). Only there, and with no
    channel's variance below its layer's mean: a network normalized to unit gain per channel on a
    few images is much rougher along the straight paths Integrated Gradients sums over."""
    norms = [m for m in bundle.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    photos = torch.from_numpy(_photos(input_size(bundle, case))).permute(0, 3, 1, 2).float()
    images = torch.cat([photos * scale for scale in (1.0, 0.6, 0.3)])
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average of this one pass
    bundle.model.train()
    try:
        with torch.no_grad():
            bundle.model(bundle.preprocess(images))
    finally:
        bundle.model.eval()
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.running_var.clamp_(min=float(m.running_var.mean()))  # no channel's gain above its layer's


def _named(value):
    """A dotted name ("timm.models.mlp_mixer.ResBlock") as the object it names; a tuple of them as a
    list; anything else as it is."""
    if isinstance(value, tuple) and value and all(isinstance(v, str) and "." in v for v in value):
        return [_named(v) for v in value]
    if isinstance(value, str) and value.count(".") >= 2:
        module, _, attribute = value.rpartition(".")
        return getattr(importlib.import_module(module), attribute)
    return value


def prepare(bundle: ZooModel, case: Case) -> featvis.PreparedModel:
    """The bundle prepared at the case's input size (a model made for one size: its own)."""
    return bundle.prepare() if _own_size(case) else bundle.prepare(size=case.size)


def input_size(bundle: ZooModel, case: Case) -> tuple[int, int]:
    """(height, width) the case runs at."""
    return tuple(bundle.image_size) if _own_size(case) else (case.size, case.size)


def _own_size(case: Case) -> bool:
    """Whether the bundle knows the case's input size (a timm name made with ``img_size``, a Hugging
    Face config's ``image_size``)."""
    if case.source == "hf":
        return "image_size" in case.options
    return case.source == "timm" and case.make is None and "img_size" in case.options


# -- the checks -----------------------------------------------------------------------------------
class CheckFailed(AssertionError):
    """A check of the matrix did not hold (featvis ran but gave a wrong result)."""


def _photos(size: tuple[int, int]) -> np.ndarray:
    """Four scikit-image sample photographs resized to `size` (height, width), (4, H, W, 3) uint8."""
    return _resized_photos(tuple(size)).copy()


@functools.cache
def _resized_photos(size: tuple[int, int]) -> np.ndarray:
    from PIL import Image
    from skimage import data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(data, name)()).convert("RGB").resize(size[::-1], Image.BILINEAR)
        out.append(np.asarray(image))
    return np.stack(out)


def middle_block(prepared: featvis.PreparedModel) -> str:
    """The middle one of the model's blocks, in the order they finish: the modules with layers of their
    own, run once, with a map or token output of one row per image, that are children of a
    Sequential or ModuleList (of the model itself when it has none)."""
    names = {name: module for module, name in prepared.seen_modules().items()}
    seen = prepared.seen

    def blocks_of(containers) -> list[str]:
        children = {id(c) for m in containers for c in m.children()}
        return [
            name
            for name, call, shape, leaf in seen.events
            if not leaf
            and name
            and seen.calls[name] == 1
            and id(names[name]) in children
            and shape is not None
            and len(shape) in (3, 4)
            and shape[0] == 1  # one row per image (not patches folded into the batch)
        ]

    sequences = [
        m for m in prepared.model.modules() if isinstance(m, torch.nn.Sequential | torch.nn.ModuleList)
    ]
    blocks = blocks_of(sequences) or blocks_of([prepared.model])
    if not blocks:
        raise CheckFailed("no block found: give the case a block=")
    return blocks[len(blocks) // 2]


def _start_images(store: list):
    """A callback that keeps the images an optimization starts from (step 0), in [0, 1]."""

    def keep(step, terms, images):
        if step == 0:
            store.append(images.cpu())

    return keep


def _unit(state, prepared) -> int:
    """The unit a class map or attribution is of: the model's top class (output unit) on the photo."""
    if "unit" not in state:
        out = prepared.layer_output("", prepared.load_images(state["photos"][:1]))
        if out.ndim == 3:  # (N, tokens, features): a feature, averaged over the tokens as featvis does
            out = out.mean(1)
        state["unit"] = int(out.flatten(1)[0].argmax())
    return state["unit"]


def _block(state, prepared, case) -> str:
    """The middle block and its two units most active on the photographs (a random network's unit 0
    may be off on every image, as a ReLU's can: no gradient moves it)."""
    if "block" not in state:
        prepared.probe(prepared.random_images(prepared.default_size()))
        block = state["block"] = case.block or middle_block(prepared)
        out = prepared.layer_output(block, prepared.load_images(state["photos"]))
        out = out.movedim(prepared.resolve(block).unit_axis, 1).flatten(2).mean(2).mean(0)
        state["units"] = sorted(int(u) for u in out.topk(2).indices)
    return state["block"]


def check_layer_names(bundle, case, state):
    names = featvis.layer_names(bundle.model, input_shape=(3, *state["size"]))
    if not names:
        raise CheckFailed("no layer names")
    return f"{len(names)} leaf calls"


def check_visualize_layer(bundle, case, state):
    start: list = []
    with prepare(bundle, case) as prepared:
        block = _block(state, prepared, case)
        units = state["units"]
        images = featvis.visualize_layer(
            prepared, block, units, seed=0, callbacks=[_start_images(start)], **OPTIMIZE
        )
        first = featvis.image.to_array(start[0], prepared.input_range)
        reached = featvis.activations_reached(prepared, block, units, images)
        before = featvis.activations_reached(prepared, block, units, first)
    if not (reached > before).all():
        raise CheckFailed(f"{block}: units {units} reached {reached} from {before}")
    return f"{block} units {units}: {np.round(before, 3).tolist()} -> {np.round(reached, 3).tolist()}"


def check_visualize_activation(bundle, case, state):
    start: list = []
    with prepare(bundle, case) as prepared:
        unit = _unit(state, prepared)
        image = featvis.visualize_activation(
            prepared, "", unit, seed=0, callbacks=[_start_images(start)], **OPTIMIZE
        )
        scores = prepared.layer_output(
            "", torch.cat([prepared.load_images(image), start[0].to(prepared.device)])
        )
    made, first = float(scores[0].flatten()[unit]), float(scores[1].flatten()[unit])
    if not made > first:
        raise CheckFailed(f"unit {unit}: {made:.4g} from {first:.4g}")
    return f"unit {unit}: {first:.3g} -> {made:.3g}"


def check_visualize_cam(bundle, case, state):
    photo = state["photos"][:1]
    with prepare(bundle, case) as prepared:
        cam = featvis.visualize_cam(prepared, "", _unit(state, prepared), photo)
    if cam.shape != (1, *state["size"]):
        raise CheckFailed(f"map of shape {cam.shape}, not (1, {state['size']})")
    if not np.isfinite(cam).all() or float(cam.max() - cam.min()) <= 0:
        raise CheckFailed("the map is not finite or is constant")
    return f"spread {float(cam.std()):.3f}"


def check_integrated_gradients(bundle, case, state):
    """Completeness from featvis's default baseline (black), else from gray, with 32, 128, 512 or 2048
    steps of featvis's default rule (Gauss-Legendre; the fewest steps that reach it), measured here
    from the model's own scores; featvis's ``return_delta`` must tell the same error. Each baseline
    is near-singular for some random networks: black for MobileViT's and MobileNetV4's, whose
    scores are steep on dark images, gray for MaxViT's, CoAtNet's and GhostNet's."""
    photo = state["photos"][:1]
    with prepare(bundle, case) as prepared:
        unit = _unit(state, prepared)
        loss = featvis.ActivationMaximization("", unit)
        images = prepared.load_images(photo)
        deltas, errors = {}, {}
        for name, given in BASELINES:
            low, high = prepared.input_range
            baseline = torch.full_like(images, 0.0 if given is None else (given - low) / (high - low))
            with torch.no_grad():
                scores = prepared.layer_output("", torch.cat([images, baseline]))
            deltas[name] = float(scores[0].flatten()[unit] - scores[1].flatten()[unit])
        for steps in IG_STEPS:
            for name, given in BASELINES:
                attributions, told = featvis.integrated_gradients(
                    prepared, loss, photo, steps=steps, baseline=given, return_delta=True
                )
                off = float(attributions.sum()) - deltas[name]
                if abs(float(told[0]) - off) > 1e-3 * abs(deltas[name]) + 1e-6:
                    raise CheckFailed(
                        f"featvis's delta {float(told[0]):.4g} is not the error measured, {off:.4g}"
                    )
                errors[name] = abs(off) / max(abs(deltas[name]), 1e-12)
                if errors[name] <= IG_TOLERANCE:
                    return f"{errors[name]:.2%} off at {steps} steps from {name}"
        tried = [
            f"{errors[n]:.1%} off at {steps} steps from {n} (the score rose by {deltas[n]:.3g})"
            for n in errors
        ]
    raise CheckFailed("; ".join(tried))


def check_dataset_examples(bundle, case, state):
    with prepare(bundle, case) as prepared:
        block = _block(state, prepared, case)
    examples = featvis.dataset_examples(
        bundle.model, block, state["photos"], state["units"], k=2, progress=False, **bundle.conventions
    )
    if examples.indices.shape != (2, 2) or not np.isfinite(examples.values).all():
        raise CheckFailed(f"indices of shape {examples.indices.shape}")
    if not (examples.values[:, 0] >= examples.values[:, 1]).all():
        raise CheckFailed("the top examples are not in order")
    return f"{block}: top {examples.indices[:, 0].tolist()}"


CHECKS: dict[str, Callable] = {
    "layer_names": check_layer_names,
    "visualize_layer": check_visualize_layer,
    "visualize_activation": check_visualize_activation,
    "visualize_cam": check_visualize_cam,
    "integrated_gradients": check_integrated_gradients,
    "dataset_examples": check_dataset_examples,
}


def run_case(case: Case, device: str = "cpu") -> dict:
    """{entry point: {"status": "works" | "error" | "fails", "detail": str, "seconds": float}} for one case.

    "error": featvis raised a `FeatvisError` (its message names why); "fails": a check did not hold
    or another exception escaped."""
    started = time.perf_counter()
    results: dict[str, dict] = {}
    try:
        bundle = build(case)
        bundle.model.to(device)
    except Exception as err:  # the model itself could not be made: every entry point is unknown
        detail = f"could not build the model: {type(err).__name__}: {err}"
        return {"case": case.id, "family": case.family, "build_error": detail, "results": {}, "seconds": 0.0}
    before = snapshot(bundle.model)
    size = input_size(bundle, case)
    state = {"size": tuple(size), "photos": _photos(size)}
    for entry, check in CHECKS.items():
        start = time.perf_counter()
        try:
            detail, status = check(bundle, case, state), "works"
        except featvis.FeatvisError as err:
            detail, status = f"{type(err).__name__}: {err}", "error"
        except CheckFailed as err:
            detail, status = str(err), "fails"
        except Exception as err:
            tail = traceback.format_exc().strip().splitlines()[-3:]
            detail, status = f"{type(err).__name__}: {err} [{' | '.join(tail)}]", "fails"
        results[entry] = {
            "status": status,
            "detail": detail,
            "seconds": round(time.perf_counter() - start, 2),
        }
    try:
        assert_untouched(bundle.model, before)
        results["unchanged"] = {"status": "works", "detail": "", "seconds": 0.0}
    except AssertionError as err:
        results["unchanged"] = {"status": "fails", "detail": str(err) or "changed", "seconds": 0.0}
    return {
        "case": case.id,
        "family": case.family,
        "size": list(state["size"]),
        "results": results,
        "seconds": round(time.perf_counter() - started, 2),
    }


LABELS = {"works": "works", "error": "named error", "fails": "FAILS"}


def _cell(result: dict) -> str:
    """A table cell: "works", or the error featvis gave (its first clause), or what failed."""
    if result["status"] == "works":
        return "works"
    text = result["detail"].replace("|", "/").replace("\n", " ")
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{LABELS[result['status']]}: {text}"


def counts(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Per entry point: how many architectures work, give a named error, fail."""
    out = {entry: {"works": 0, "error": 0, "fails": 0} for entry in ENTRY_POINTS}
    for row in rows:
        for entry in ENTRY_POINTS:
            status = row["results"].get(entry, {"status": "fails"})["status"]
            out[entry][status] += 1
    return out


def markdown(report: dict) -> str:
    """docs/compatibility.md: the counts, the command and its time, and the table."""
    rows = report["rows"]
    by_source = {source: sum(r["case"].startswith(f"{source}:") for r in rows) for source in SOURCES}
    lines = [
        "# Compatibility matrix",
        "",
        "Generated by `benchmarks/zoo_matrix.py` (do not edit by hand; `tests/model/test_zoo_matrix.py` runs the",
        "same cases as tests). Every architecture is built with random weights at a small size",
        "(widths and depths cut where the architecture allows) through the zoo bundles",
        "(`featvis.zoo.from_timm`, `featvis.zoo.from_huggingface`; torchvision's models as a `ZooModel`),",
        "and each entry point is checked:",
        "",
        "- `layer_names`: the leaf calls are listed;",
        "- `visualize_layer`: the two units of a middle block most active on the photographs rise",
        "  (`activations_reached` on the final images above the images the optimization started from);",
        "- `visualize_activation`: the model's top class on a photograph (an embedding unit for a model",
        "  with none) rises;",
        "- `visualize_cam`: Grad-CAM with the automatic layer choice gives a finite, non-constant map of the",
        "  input's size (for transformers, on their patch-token grid);",
        "- `integrated_gradients`: the attributions sum to score(photo) - score(baseline) within "
        f"{IG_TOLERANCE:.0%} ({' / '.join(map(str, IG_STEPS))} Gauss-Legendre steps, the fewest that reach",
        "  it; `return_delta` tells the same error), from",
        "  featvis's default black baseline, else from gray (each is near-singular for some random networks:",
        "  black for MobileViT's and MobileNetV4's, gray for MaxViT's, CoAtNet's and GhostNet's);",
        "- `dataset_examples`: the middle block's two units rank four photographs;",
        "- `unchanged`: the model's weights, hooks, train/eval flags and requires_grad are as before.",
        "",
        "Activation maximization runs 8 steps without featvis's default jitter, zoom and rotation (a random",
        "network is not invariant to them). Where a library's random draw leaves the output the same for",
        "every photograph (torchvision's MobileNets and EfficientNet: logits of 1e-10, its grouped",
        "convolutions drawn sqrt(groups) times too small), grouped convolutions are redrawn with one group's",
        "fan-out, as timm draws them; where it still is (timm's RepVGG), batch norms' statistics are",
        'measured on the photographs. "named error" is a featvis error that says why and what to do.',
        "",
        "## Counts",
        "",
        f"{len(rows)} architectures tried: {by_source['timm']} timm, {by_source['hf']} Hugging Face "
        f"transformers, {by_source['torchvision']} torchvision.",
        "",
        "| entry point | works | named error | fails |",
        "|---|---|---|---|",
    ]
    for entry, count in counts(rows).items():
        lines.append(f"| `{entry}` | {count['works']} | {count['error']} | {count['fails']} |")
    lines += [
        "",
        "## The run",
        "",
        f"`{report['command']}`: {report['seconds']:.0f} s on {report['device']} ({report['threads']} threads, "
        f"{report['cpus']} CPUs), torch {report['torch']}, timm {report['timm']}, transformers "
        f"{report['transformers']}, torchvision {report['torchvision']}.",
        "",
        "## Table",
        "",
        "| architecture | family | input | " + " | ".join(f"`{e}`" for e in ENTRY_POINTS) + " |",
        "|---|---|---|" + "---|" * len(ENTRY_POINTS),
    ]
    for row in rows:
        if "build_error" in row:
            cells = [f"FAILS: {row['build_error'][:160]}"] * len(ENTRY_POINTS)
        else:
            cells = [_cell(row["results"][entry]) for entry in ENTRY_POINTS]
        size = "x".join(map(str, row.get("size", ())))
        lines.append(f"| `{row['case']}` | {row['family']} | {size} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one model per family (the quick suite's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", help="case ids or names to run")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--docs", help="write the Markdown table here (e.g. docs/compatibility.md)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [c for c in CASES if not args.quick or c.quick]
    if args.only:
        cases = [c for c in cases if c.id in args.only or c.name in args.only]
    started = time.perf_counter()
    rows = []
    for case in cases:
        row = run_case(case, args.device)
        rows.append(row)
        marks = " ".join(f"{e}={r['status']}" for e, r in row["results"].items() if r["status"] != "works")
        print(
            f"{case.id:45s} {row['seconds']:6.1f}s {marks or 'all work'} {row.get('build_error', '')}",
            flush=True,
        )
        for entry, r in row["results"].items():
            if r["status"] != "works":
                print(f"    {entry}: {r['detail'][:400]}", flush=True)
    total = time.perf_counter() - started
    report = {
        "command": " ".join(["python", "benchmarks/zoo_matrix.py", *sys.argv[1:]]),
        "machine": platform.node(),
        "device": args.device
        if args.device != "cpu"
        else f"cpu ({platform.processor() or platform.machine()})",
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "seconds": round(total, 1),
        **{name: _version(name) for name in ("torch", "timm", "transformers", "torchvision")},
        "rows": rows,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))
    print(f"{'entry point':22s} works  named error  fails")
    for entry, count in counts(rows).items():
        print(f"{entry:22s} {count['works']:5d}  {count['error']:11d}  {count['fails']:5d}")
    print(f"{len(rows)} architectures in {total:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.docs:
        Path(args.docs).write_text(markdown(report))


def _version(name: str) -> str:
    module = sys.modules.get(name)
    return getattr(module, "__version__", "not loaded") if module else "not loaded"


if __name__ == "__main__":
    main()
