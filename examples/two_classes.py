"""Two classes in one image (the seed's "cat fish"): flamingo and goldfish together.

Run: python examples/two_classes.py [out_dir]
"""

import sys

import featvis

out = sys.argv[1] if len(sys.argv) > 1 else "docs/examples"
lite0 = featvis.zoo.efficientnet_lite0()
classes = [lite0.class_index("Egyptian cat"), lite0.class_index("goldfish")]
image = featvis.visualize_activation(
    lite0.model, "_fc", classes, preprocess=lite0.preprocess, max_iter=256, seed=0
)
print("wrote", featvis.save_image(image, f"{out}/cat_fish.png"))
