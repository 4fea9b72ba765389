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
    """keras-vis's MNIST example, on scikit-learn's 8x8 digits (input in [0, 1], 1 channel;
    `size` x `size` for digits upsampled with `digits_data`)."""

    def __init__(self, size: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * (size // 2) ** 2, 10)
        self.softmax = nn.Softmax(dim=1)

    def logits(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))

    def forward(self, x):
        return self.softmax(self.logits(x))


def digits_data(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as (N, 1, size, size) images in [0, 1] (bilinear upsampling) and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp(0, 1), torch.tensor(digits.target)


def train_digits_cnn(seed: int = 0, epochs: int = 30, size: int = 8) -> DigitsCNN:
    """Train `DigitsCNN` on `sklearn.datasets.load_digits` (upsampled to `size`); seconds on a CPU."""
    torch.manual_seed(seed)
    images, labels = digits_data(size)
    model = DigitsCNN(size)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for index in torch.randperm(len(images)).split(128):
            loss = F.cross_entropy(model.logits(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


class ViTBlock(nn.Module):
    """A pre-norm transformer block: attention (where `mask` is True, a token does not attend) and an
    MLP (Linear, GELU, Linear), each residual."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x, mask=None):
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.norm2(x))


def neighbourhood_mask(rows: int, columns: int, radius: int) -> torch.Tensor:
    """The attention mask of a class token and a rows x columns patch grid: a patch attends to the
    patches at most `radius` rows and columns away (neighbourhood attention, as in NAT), the class
    token to every patch; True where attention is masked."""
    row, column = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
    row, column = row.flatten(), column.flatten()
    far = ((row[:, None] - row[None]).abs() > radius) | ((column[:, None] - column[None]).abs() > radius)
    mask = torch.zeros(rows * columns + 1, rows * columns + 1, dtype=torch.bool)
    mask[1:, 1:] = far
    mask[1:, 0] = True  # the patches do not read the class token
    return mask


class TinyViT(nn.Module):
    """A vision transformer for gray digits: 4x4 patches, a class token, learned position embeddings
    (tiled over the patch grid of a larger input, so each 16 x 16 tile of a collage sees them all),
    `depth` blocks; the head reads the class token plus the patch tokens' mean; input in [0, 1].

    `radius`: a patch attends to the patches at most that many rows and columns away (neighbourhood
    attention, as in NAT; Swin's windows are another local attention), the class token to all;
    None: every token attends to every token (ViT's global attention)."""

    def __init__(
        self,
        patch: int = 4,
        grid: int = 4,
        dim: int = 48,
        depth: int = 2,
        classes: int = 10,
        radius: int | None = 2,
    ):
        super().__init__()
        self.radius = radius
        self.patch_embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, dim, grid, grid))
        self.blocks = nn.ModuleList([ViTBlock(dim, 4, 2 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        patches = self.patch_embed(x)
        h, w = patches.shape[-2:]
        grid = self.pos_embed.shape[-1]
        pos = self.pos_embed.repeat(1, 1, -(-h // grid), -(-w // grid))[..., :h, :w]
        tokens = (patches + pos).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        mask = None if self.radius is None else neighbourhood_mask(h, w, self.radius).to(x.device)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x)
        return self.head(x[:, 0] + x[:, 1:].mean(1))  # the class token and the patches' mean


def train_digits_vit(
    seed: int = 0,
    epochs: int = 20,
    size: int = 16,
    noise: float = 0.1,
    depth: int = 2,
    radius: int | None = 2,
) -> TinyViT:
    """Train `TinyViT` (`depth` blocks, attention `radius`) on the digits upsampled to `size`, with
    Gaussian noise of std `noise` added to each training image (a smoother model, whose class
    images look like digits); ~10 s."""
    torch.manual_seed(seed)
    images, labels = digits_data(size)
    model = TinyViT(grid=size // 4, depth=depth, radius=radius)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = epochs * -(-len(images) // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    for _ in range(epochs):
        for index in torch.randperm(len(images)).split(128):
            batch = images[index] + noise * torch.randn_like(images[index])
            loss = F.cross_entropy(model(batch), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def waves(n: int, length: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` signals (N, 1, length) in [-1, 1]: sine (label 0) or square (label 1) waves of 3 to 8
    cycles, random phase and amplitude 0.6 to 0.9, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / length
    labels = rng.integers(0, 2, n)
    cycles = rng.uniform(3, 8, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    amplitude = rng.uniform(0.6, 0.9, (n, 1))
    sine = np.sin(2 * np.pi * cycles * t + phase)
    signal = np.where(labels[:, None] == 1, np.sign(sine), sine) * amplitude
    signal += rng.normal(0, 0.05, signal.shape)
    return torch.tensor(signal.clip(-1, 1), dtype=torch.float32)[:, None], torch.tensor(labels)


class WaveNet(nn.Module):
    """A 1-D CNN that tells sine from square waves (input (N, 1, L) in [-1, 1]); `head` gives the logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 16, 7, padding=3), nn.ReLU(), nn.Conv1d(16, 16, 7, padding=3), nn.ReLU()
        )
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.features(x).mean(2))


def train_wave_net(seed: int = 0, steps: int = 120) -> WaveNet:
    """Train `WaveNet` on `waves`; a couple of seconds on a CPU."""
    torch.manual_seed(seed)
    signals, labels = waves(2048, seed=seed)
    model = WaveNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        index = torch.randint(0, len(signals), (64,))
        loss = F.cross_entropy(model(signals[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
