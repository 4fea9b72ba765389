"""Visualize a class logit: what EfficientNet-Lite0 thinks a flamingo looks like.

Run: python examples/class_logit_flamingo.py [out_dir]
"""

import sys

import featvis

out = sys.argv[1] if len(sys.argv) > 1 else "docs/examples"
lite0 = featvis.zoo.efficientnet_lite0()
image = featvis.visualize_activation(
    lite0.model, "_fc", lite0.class_index("flamingo"), preprocess=lite0.preprocess, max_iter=256, seed=0
)
print("wrote", featvis.save_image(image, f"{out}/flamingo.png"))
