"""Vanilla, guided and SmoothGrad saliency, Grad-CAM, Grad-CAM++ and guided Grad-CAM side by side.

On scikit-image's cat photograph (`chelsea`), for ImageNet class 285 (Egyptian cat).

Run: python examples/attention_maps.py [out_dir]
"""

import sys

import numpy as np
from PIL import Image
from skimage import data

import featvis

out = sys.argv[1] if len(sys.argv) > 1 else "docs/examples"
lite0 = featvis.zoo.efficientnet_lite0()
cat = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224), Image.BILINEAR))
common = dict(preprocess=lite0.preprocess)
maps = {
    "vanilla": featvis.visualize_saliency(lite0.model, "_fc", 285, cat, **common),
    "guided": featvis.visualize_saliency(lite0.model, "_fc", 285, cat, backprop_modifier="guided", **common),
    "SmoothGrad": featvis.visualize_saliency(lite0.model, "_fc", 285, cat, smooth_samples=25, **common),
    "Grad-CAM": featvis.visualize_cam(lite0.model, "_fc", 285, cat, **common),
    "Grad-CAM++": featvis.visualize_cam(lite0.model, "_fc", 285, cat, method="gradcam++", **common),
    "guided Grad-CAM": featvis.visualize_guided_cam(lite0.model, "_fc", 285, cat, **common),
}
pictures = [cat] + [featvis.overlay(cat, m[0], alpha=0.6) for m in maps.values()]
grid = featvis.stitch_images(pictures, cols=7, labels=["image", *maps])
print("wrote", featvis.save_image(grid, f"{out}/attention.png"))
