"""A regression model: increase, then decrease, how many disks a counting CNN sees.

Trains a tiny "count the disks" CNN on synthetic images in seconds, then starts
from one of its images (``seed_input``, as the seed recommends for regression)
and pushes its output up (default) and down (``grad_modifier='negate'``).

Run: python examples/regression_counting.py [out_dir]
"""

import sys

import numpy as np
import torch

import featvis

from toy_models import counting_settings, disk_images, train_disk_counter

out = sys.argv[1] if len(sys.argv) > 1 else "docs/examples"
counter = train_disk_counter(seed=0)
start, _ = disk_images(1, seed=5)
kwargs = counting_settings(start[0])
more = featvis.visualize_activation(counter, "head", 0, **kwargs)
fewer = featvis.visualize_activation(counter, "head", 0, grad_modifier="negate", **kwargs)


def count(image: np.ndarray) -> float:
    with torch.no_grad():
        return counter(torch.as_tensor(image).permute(2, 0, 1)[None].float())[0, 0].item()


images = [start[0].permute(1, 2, 0).numpy(), more, fewer]
labels = [f"{name}: {count(img):.1f}" for name, img in zip(["start", "increase", "negate"], images)]
for name, img in zip(["start", "increase", "negate"], images):
    print(f"{name:9s} predicted count {count(img):.2f}")
big = [np.kron(img, np.ones((4, 4, 1))) for img in images]
print("wrote", featvis.save_image(featvis.stitch_images(big, cols=3, labels=labels), f"{out}/counting.png"))
