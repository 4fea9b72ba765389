"""Building blocks of the cat photo (scikit-image's chelsea) at Lite0's `_blocks.10`: six NMF
groups, where each sits, what it looks like, and what it adds to the "tabby cat" logit.

    python examples/building_blocks_cat.py      # writes docs/examples/building_blocks_cat.png
"""

import time

from skimage import data

import featvis

lite0 = featvis.zoo.efficientnet_lite0()
start = time.perf_counter()
blocks = featvis.building_blocks(
    lite0.model,
    "_blocks.10",
    data.chelsea(),
    k=6,
    preprocess=lite0.preprocess,
    class_names=lite0.class_names,
    icon_size=128,
)
print(f"{blocks.class_name}: attribution {blocks.attribution.round(2)} ({time.perf_counter() - start:.0f} s)")
featvis.save_image(blocks.figure, "docs/examples/building_blocks_cat.png")
