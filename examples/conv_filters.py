"""A grid of conv filters of one layer, all optimized in batches (one image per channel).

Run: python examples/conv_filters.py [out_dir]
"""

import sys

import featvis

out = sys.argv[1] if len(sys.argv) > 1 else "docs/examples"
lite0 = featvis.zoo.efficientnet_lite0()
units = list(range(16))
images = featvis.visualize_layer(
    lite0.model, "_blocks.10", units, preprocess=lite0.preprocess, max_iter=128, seed=0
)
grid = featvis.stitch_images(list(images), cols=4, labels=[f"channel {u}" for u in units])
print("wrote", featvis.save_image(grid, f"{out}/blocks10_channels.png"))
