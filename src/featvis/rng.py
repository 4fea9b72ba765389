"""Seeded random draws, one independent stream per image, that never touch torch's global generators.

Every image of a batch owns a *key*: a 63-bit number derived from the visualization's
seed and what the image is for (``derive_key(seed, "_blocks.10#0", 7)`` for unit 7 of
that layer). `Streams` draws each image's numbers from its key and a counter with a
counter-based generator: small draws (a transform's few numbers per image) are SplitMix64
hashes of (key, counter), vectorized over the batch on the images' device; large ones
(noise images, initial spectra) come from a torch generator per image seeded from
(key, counter). So an image's draws do not depend on which other images share its
batch or on the batch size: a unit gets the same initial image and the same random
transforms whether it runs alone or among 64 others.

Examples:
    >>> streams = Streams([derive_key(0, "fc#0", unit) for unit in (3, 5)])
    >>> streams.uniform(2).shape           # two numbers for each image
    torch.Size([2, 2])
    >>> Streams([derive_key(0, "fc#0", 5)]).uniform(2)[0].equal(streams.uniform(2)[1])
    False
"""

from __future__ import annotations

from collections.abc import Sequence
import hashlib
import math
import secrets

import torch

from featvis.errors import check_int

_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1
_LARGE = 4096  # draws per image above which a torch generator per image is faster than hashing


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 that holds it."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 patterns (torch's >> keeps the sign)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix(state: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function of int64 states (products wrap modulo 2**64)."""
    z = state
    z = (z ^ _shift_right(z, 30)) * _signed(_MIX1)
    z = (z ^ _shift_right(z, 27)) * _signed(_MIX2)
    return z ^ _shift_right(z, 31)


def derive_key(seed: int, *parts: object) -> int:
    """A 63-bit key from a seed and labels (the same on every machine and Python run).

    Examples:
        >>> derive_key(0, "_fc#0", 130) == derive_key(0, "_fc#0", 130)
        True
    """
    text = repr((int(seed), *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def fresh_seed() -> int:
    """A seed from the operating system's entropy, for ``seed=None`` (torch's generators untouched)."""
    return secrets.randbits(62)


def seed_or_fresh(seed: int | None) -> int:
    """An entry point's `seed` argument checked (an int >= 0), or `fresh_seed()` for None.

    Examples:
        >>> seed_or_fresh(7), seed_or_fresh(None) >= 0
        (7, True)
    """
    return fresh_seed() if seed is None else check_int("seed", seed, 0)


class Streams:
    """One random stream per image (row); each draw advances every stream by the same count.

    Examples:
        >>> streams = Streams([1, 2, 3], device="cpu")
        >>> streams.normal(3, 8, 8).shape
        torch.Size([3, 3, 8, 8])
    """

    def __init__(self, keys: Sequence[int] | torch.Tensor, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.host_keys = [
            _signed(int(k)) for k in (keys.tolist() if isinstance(keys, torch.Tensor) else keys)
        ]
        self.keys = torch.tensor(self.host_keys, dtype=torch.int64, device=self.device)
        self.counter = 0

    def __len__(self) -> int:
        return self.keys.shape[0]

    def __repr__(self) -> str:
        return f"Streams({len(self)} images, counter {self.counter}, {self.device})"

    def per_view(self, views: int) -> Streams:
        """Streams for each image repeated `views` times (rows i*views ... i*views+views-1), each its own."""
        if views == 1:
            return self
        return Streams(
            [derive_key(key, view) for key in self.host_keys for view in range(views)], self.device
        )

    def bits(self, count: int) -> torch.Tensor:
        """(rows, count) random int64 patterns; the next call continues the streams."""
        offsets = torch.arange(self.counter + 1, self.counter + count + 1, device=self.device)
        self.counter += count
        return _splitmix(self.keys[:, None] + offsets[None] * _signed(_GOLDEN))

    def _per_generator(self, draw, shape: tuple[int, ...]) -> torch.Tensor:
        """(rows, *shape) draws of `draw` (torch.rand or torch.randn) from a torch generator per image,
        seeded from its key and the counter (which moves on by one)."""
        self.counter += 1
        generators = [
            torch.Generator(self.device).manual_seed(derive_key(k, self.counter)) for k in self.host_keys
        ]
        return torch.stack([draw(shape, generator=g, device=self.device) for g in generators])

    def uniform(self, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """(rows, *shape) float32 draws in [low, high)."""
        count = math.prod(shape)
        if count > _LARGE:
            return low + (high - low) * self._per_generator(torch.rand, shape)
        values = _shift_right(self.bits(count), 40).float() * 2.0**-24
        return (low + (high - low) * values).view(len(self), *shape)

    def integers(self, low: int, high: int, *shape: int) -> torch.Tensor:
        """(rows, *shape) int64 draws in [low, high)."""
        return (self.uniform(*shape) * (high - low)).long().clamp_(max=high - low - 1) + low

    def normal(self, *shape: int) -> torch.Tensor:
        """(rows, *shape) float32 standard normal draws (Box-Muller on the two halves of each pattern)."""
        count = math.prod(shape)
        if count > _LARGE:
            return self._per_generator(torch.randn, shape)
        bits = self.bits(count)
        radius_part = (_shift_right(bits, 40).float() + 1) * 2.0**-24  # (0, 1]
        angle_part = (bits & 0xFFFFFF).float() * 2.0**-24
        values = torch.sqrt(-2 * torch.log(radius_part)) * torch.cos(2 * math.pi * angle_part)
        return values.view(len(self), *shape)
