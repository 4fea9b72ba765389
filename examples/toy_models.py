"""Small models the examples and tests train in seconds: a disk counter and a digits CNN.

Example:
    >>> counter = train_disk_counter(seed=0)          # regression: how many disks?
    >>> digits = train_digits_cnn(seed=0)             # scikit-learn's 8x8 digits
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


def disk_images(n: int, size: int = 32, max_disks: int = 5, seed: int = 0):
    """`n` gray images in [0, 1] with 0..max_disks bright disks each, and their counts."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, 1, size, size), np.float32)
    counts = rng.integers(0, max_disks + 1, n)
    for i, count in enumerate(counts):
        for _ in range(count):
            cy, cx = rng.uniform(4, size - 4, 2)
            images[i, 0][(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 1.0
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)
    return torch.from_numpy(images.clip(0, 1)), torch.from_numpy(counts.astype(np.float32))


def counting_settings(start: torch.Tensor) -> dict:
    """`visualize_activation` arguments for the counter, starting from image `start` (1, 32, 32)."""
    return dict(
        channels=1,
        input_range=(0.0, 1.0),
        seed_input=start,
        max_iter=60,
        seed=0,
        method="pixel",
        tv_weight=0.1,
    )


class DiskCounter(nn.Module):
    """A CNN that regresses the number of disks in a 32x32 gray image (input in [0, 1])."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def train_disk_counter(seed: int = 0, steps: int = 300) -> DiskCounter:
    """Train `DiskCounter` on synthetic images; a few seconds on a CPU."""
    torch.manual_seed(seed)
    images, counts = disk_images(2048, seed=seed)
    model = DiskCounter()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        index = torch.randint(0, len(images), (64,))
        loss = F.mse_loss(model(images[index])[:, 0], counts[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def digit_settings(digit: int) -> dict:
    """`visualize_activation` arguments for one class of the digits CNN (8x8, one channel, [0, 1])."""
    return dict(
        channels=1,
        size=8,
        input_range=(0.0, 1.0),
        max_iter=64,
        seed=digit,
        method="pixel",
        input_modifiers=[],
        tv_weight=0.05,
    )


class DigitsCNN(nn.Module):
    """keras-vis's MNIST example, on scikit-learn's 8x8 digits (input in [0, 1], 1 channel)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, 10)
        self.softmax = nn.Softmax(dim=1)

    def logits(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))

    def forward(self, x):
        return self.softmax(self.logits(x))


def train_digits_cnn(seed: int = 0, epochs: int = 30) -> DigitsCNN:
    """Train `DigitsCNN` on `sklearn.datasets.load_digits`; a few seconds on a CPU."""
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    labels = torch.tensor(digits.target)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for index in torch.randperm(len(images)).split(128):
            loss = F.cross_entropy(model.logits(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()
