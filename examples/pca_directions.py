"""The top PCA directions of Lite0's `_blocks.10` over scikit-image's photos, each grown by one image of
a batch (`featvis.losses.Direction`), beside its strongest single channel for comparison.

Run: python examples/pca_directions.py [out_dir]
"""

import sys

import featvis
from featvis.losses import Direction

out = sys.argv[1] if len(sys.argv) > 1 else "docs/examples"
lite0 = featvis.zoo.efficientnet_lite0()
found = featvis.concepts.activation_directions(
    lite0.model, "_blocks.10", None, k=4, preprocess=lite0.preprocess
)  # None: scikit-image's photographs; each position of each photo a sample
print("explained variance ratio", [round(float(r), 3) for r in found.explained_variance_ratio])
# one image per direction, in one batched optimization: direction i only counts for image i
loss = sum(Direction("_blocks.10", v, cossim_pow=2, batch=i) for i, v in enumerate(found.vectors))
images = featvis.visualize_activation_with_losses(
    lite0.model, loss, batch_size=len(found), preprocess=lite0.preprocess, max_iter=128, seed=0
)
tops = [int(v.argmax()) for v in found.vectors]  # the most positively weighted channel
units = featvis.visualize_layer(
    lite0.model, "_blocks.10", tops, preprocess=lite0.preprocess, max_iter=128, seed=0
)
labels = [f"PCA direction {i}" for i in range(len(found))] + [f"its top channel {u}" for u in tops]
grid = featvis.stitch_images([*images, *units], cols=len(found), labels=labels)
print("wrote", featvis.save_image(grid, f"{out}/blocks10_pca_directions.png"))
