"""Estimate the natural-image statistics featvis ships in src/featvis/assets/natural_stats.npz.

Run: python scripts/estimate_natural_statistics.py

Sources: scikit-image's photographs (astronaut, chelsea, coffee, rocket, and both
views of stereo_motorcycle). Two statistics come out:

- ``color_sqrt``: the symmetric square root of the RGB covariance of all their
  pixels (values in [0, 1]), divided by its largest column norm. Fourier images
  are made in a decorrelated space and mapped to RGB through this matrix.
- ``magnitude``: the mean magnitude of the 2-D real FFT (``torch.fft.rfft2``,
  "ortho" norm) of 224x224 crops, per RGB channel, shape (3, 224, 113). The crops
  are taken at 4 scales (the photo resized so its short side is 224, 320, 448
  and its full size) at 16 random positions each. MACO optimizes the phase only
  and keeps this magnitude fixed.
"""

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

SIZE = 224


def photographs() -> list[np.ndarray]:
    left, right, _ = data.stereo_motorcycle()
    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), left, right]


def crops(photo: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for short in (SIZE, 320, 448, min(photo.shape[:2])):
        h, w = photo.shape[:2]
        scale = short / min(h, w)
        size = (max(SIZE, round(w * scale)), max(SIZE, round(h * scale)))
        resized = np.asarray(Image.fromarray(photo).resize(size, Image.BICUBIC))
        for _ in range(16):
            y = rng.integers(0, resized.shape[0] - SIZE + 1)
            x = rng.integers(0, resized.shape[1] - SIZE + 1)
            out.append(resized[y : y + SIZE, x : x + SIZE].astype(np.float64) / 255)
    return out


def main() -> None:
    rng = np.random.default_rng(0)
    photos = photographs()
    pixels = np.concatenate([p.reshape(-1, 3).astype(np.float64) / 255 for p in photos])
    values, vectors = np.linalg.eigh(np.cov(pixels.T))
    sqrt = vectors @ np.diag(np.sqrt(values)) @ vectors.T
    sqrt /= np.linalg.norm(sqrt, axis=0).max()

    all_crops = [c for p in photos for c in crops(p, rng)]
    spectra = [np.abs(np.fft.rfft2(c.transpose(2, 0, 1), norm="ortho")) for c in all_crops]
    magnitude = np.mean(spectra, axis=0)

    out = Path(__file__).resolve().parents[1] / "src/featvis/assets/natural_stats.npz"
    np.savez_compressed(out, color_sqrt=sqrt.astype(np.float32), magnitude=magnitude.astype(np.float32))
    print(f"{len(all_crops)} crops from {len(photos)} photographs -> {out}")
    print("color_sqrt:\n", np.round(sqrt, 3))


if __name__ == "__main__":
    main()
