"""Feature inversion of the astronaut photo at three depths of EfficientNet-Lite0, and a caricature.

Each inversion starts from the same random image and matches the photo's activations at one
layer: `_blocks.1` (56 x 56 x 24) keeps almost every pixel, `_blocks.5` (14 x 14 x 80) the
layout and edges but not the colors, `_blocks.10` (14 x 14 x 112) the outlines, in the
network's own textures. The caricature maximizes the dot product with the photo's
activations at `_blocks.5` instead, exaggerating what that layer sees.

Run: python examples/inversion_astronaut.py [out_dir]
"""

import sys
import time

import numpy as np
from PIL import Image
from skimage import data

import featvis

out = sys.argv[1] if len(sys.argv) > 1 else "docs/examples"
lite0 = featvis.zoo.efficientnet_lite0()
photo = np.asarray(Image.fromarray(data.astronaut()).resize((224, 224), Image.LANCZOS))
common = dict(preprocess=lite0.preprocess, seed=0, max_iter=256)
pictures, labels = [photo], ["photo"]
for layer in ("_blocks.1", "_blocks.5", "_blocks.10"):
    start = time.perf_counter()
    pictures.append(featvis.invert(lite0.model, layer, photo, **common))
    labels.append(f"{layer} ({time.perf_counter() - start:.0f} s)")
    print(labels[-1], "mean abs error", np.abs(pictures[-1].astype(float) - photo).mean().round(1))
start = time.perf_counter()
pictures.append(featvis.invert(lite0.model, "_blocks.5", photo, caricature=True, **common))
labels.append(f"caricature _blocks.5 ({time.perf_counter() - start:.0f} s)")
print(labels[-1])
grid = featvis.stitch_images(pictures, cols=5, labels=labels)
print("wrote", featvis.save_image(grid, f"{out}/inversion_astronaut.png"))
