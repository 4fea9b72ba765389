"""Seeded random draws on the device that uses them.

A visualization is seeded by one `torch.Generator`. On a GPU, drawing random
transforms or initial images on the CPU and copying them over costs a host-to-device
copy per draw; `generator_on` gives a generator on the images' device instead,
seeded from the given one, so the same seed still gives the same images.

Example:
    >>> generator = generator_on(torch.device("cuda"), torch.Generator().manual_seed(0))
    >>> torch.rand(4, generator=generator, device=generator.device).device.type
    'cuda'
"""

from __future__ import annotations

import torch


def generator_on(device: torch.device, generator: torch.Generator | None) -> torch.Generator | None:
    """`generator` itself when it lives on `device` (or is None), else a new one there seeded from it."""
    if generator is None or generator.device.type == torch.device(device).type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Copy a small tensor to `device` without making the host wait for the GPU."""
    device = torch.device(device)
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
