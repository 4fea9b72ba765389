"""Shared fixtures: tiny models and a check that a model was left exactly as it was."""

from __future__ import annotations

from pathlib import Path
import sys

import pytest
import torch
from torch import nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from torchvision_models import allow_torchvision_import  # noqa: E402  (timm and transformers import it)

allow_torchvision_import()


@pytest.fixture(autouse=True)
def _same_random_draws_in_any_order():
    """Each test starts from the same global seed, so its draws do not depend on the tests run before it."""
    torch.manual_seed(0)


class TinyNet(nn.Module):
    """conv-ReLU-conv-ReLU-pool-linear on 3x32x32 inputs, with module ReLUs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.act2 = nn.ReLU()
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.bn(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.fc(x.mean(dim=(2, 3)))


class FunctionalNet(nn.Module):
    """The same shape with functional and in-place ReLUs, and a softmax at the end."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = torch.relu_(self.conv2(x))
        return torch.softmax(self.fc(x.mean(dim=(2, 3))), dim=1)


class SharedActivationNet(nn.Module):
    """One activation module called twice, like EfficientNet-Lite's `_swish`."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def make_tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyNet().eval()


@pytest.fixture
def tiny() -> nn.Module:
    return make_tiny()


@pytest.fixture
def functional_net() -> nn.Module:
    torch.manual_seed(1)
    return FunctionalNet().eval()


@pytest.fixture
def shared_net() -> nn.Module:
    torch.manual_seed(2)
    return SharedActivationNet().eval()


def snapshot(model: nn.Module) -> dict:
    """Everything featvis promises to leave unchanged."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": hook_count(model),
    }


def hook_count(model: nn.Module) -> int:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return sum(len(getattr(m, name, {})) for m in model.modules() for name in names)


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]


def loss_values(model: nn.Module, loss, images: torch.Tensor) -> torch.Tensor:
    """The loss's per-image values on `images`, as an optimization would see them at one step."""
    from featvis.model.prepared import preparing
    from featvis.optvis.losses import LossContext

    with preparing(model, input_range=(0, 1)) as prepared:
        prepared.probe(images)
        targets = prepared.resolve_all(loss.layers())
        activations = prepared.capture(list(targets.values())).run(
            prepared.model, prepared.model_input(images)
        )
        return loss(LossContext(images=images, views=1, activations=activations, targets=targets))
