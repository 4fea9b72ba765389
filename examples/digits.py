"""keras-vis's MNIST example on scikit-learn's 8x8 digits: what each class looks like to a small CNN.

The model ends in a softmax; featvis visualizes the logits before it and says so.

Run: python examples/digits.py [out_dir]
"""

import sys
import warnings

import numpy as np

import featvis

from toy_models import digit_settings, train_digits_cnn

out = sys.argv[1] if len(sys.argv) > 1 else "docs/examples"
model = train_digits_cnn(seed=0)
images = []
with warnings.catch_warnings():
    warnings.simplefilter("ignore", featvis.FeatvisWarning)
    for digit in range(10):
        image = featvis.visualize_activation(model, "softmax", digit, **digit_settings(digit))
        images.append(np.kron(image, np.ones((16, 16, 1))))
grid = featvis.stitch_images(images, cols=5, labels=[str(d) for d in range(10)])
print("wrote", featvis.save_image(grid, f"{out}/digits.png"))
