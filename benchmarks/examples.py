"""Speed and memory of `featvis.dataset_examples` with EfficientNet-Lite0.

Run: python benchmarks/examples.py [--images 512] [--batch 32] [--repeats 3]
                                  [--memory-images 10000] [--memory-size 224] [--files 64]

1. bare: a batched ``torch.inference_mode`` forward of the same images (already
   float, in [0, 255]), preprocessed and run by hand up to the deepest layer;
2. featvis: one pass of `dataset_examples` over `_blocks.10` (112 units, k=9), and
   over three layers at once (`_blocks.4`, `_blocks.8`, `_blocks.10`), the images
   given as a uint8 tensor, so no decoding: images per second of the pass
   (`seconds["pass"]`: batching, conversion, forward, running top-k) and its
   ratio to bare (best runs, and medians). The receptive-field measurement (once per model and layer,
   whatever the data, then cached) is reported apart. Bare and featvis runs alternate, and each figure is
   the best of `--repeats` runs (the CPU is shared);
3. decoding, apart: images per second of decoding a folder of JPEG photographs
   (scikit-image's, 64 files of varied sizes) in DataLoader workers, resized to
   224, and of the whole pass from that folder;
4. memory: one pass over `--memory-images` generated images of `--memory-size`
   px (a Dataset that makes each image when asked), resident memory sampled
   every 250 images; the growth after the first 1,000 (``--memory-images 0``
   skips it).

Prints JSON with every figure and a short table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import platform
import resource
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import featvis
from featvis.datasource import collate, image_source

ONE, THREE, SIZE = "_blocks.10", ["_blocks.4", "_blocks.8", "_blocks.10"], 224


def up_to(model, x, last: int):
    """EfficientNet-Lite0 run by hand up to and including `_blocks.<last>`."""
    x = model._swish(model._bn0(model._conv_stem(x)))
    for block in model._blocks[: last + 1]:
        x = block(x)
    return x


def bare_seconds(model, preprocess, images: torch.Tensor, batch: int) -> float:
    """A batched inference_mode forward of float images up to `_blocks.10`."""
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for chunk in images.split(batch):
            up_to(model, preprocess(chunk), 10)
    return time.perf_counter() - start


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Generated(Dataset):
    """`n` random (3, size, size) images in [0, 255], each made when asked; samples the RSS as it goes."""

    def __init__(self, n: int, size: int = SIZE):
        self.n, self.size, self.samples = n, size, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        if index % 250 == 0:
            self.samples.append((index, rss_mib()))
        generator = torch.Generator().manual_seed(index)
        return torch.randint(
            0, 256, (3, self.size, self.size), generator=generator, dtype=torch.uint8
        ).float()


def photo_folder(root: Path, count: int) -> Path:
    """`count` JPEG files cut from scikit-image's photographs, of varied sizes."""
    from PIL import Image

    photos, _ = featvis.datasource.sample_photos()
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        Image.fromarray(photo[top : top + ch, left : left + cw]).convert("RGB").save(root / f"{i:03d}.jpg")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-images", type=int, default=10000)
    parser.add_argument("--memory-size", type=int, default=SIZE, help="side of the generated images")
    parser.add_argument("--files", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    lite0 = featvis.zoo.efficientnet_lite0()
    model, preprocess = lite0.model, lite0.preprocess
    images = torch.randint(0, 256, (args.images, 3, SIZE, SIZE), dtype=torch.uint8)
    floats = images.float()
    common = dict(preprocess=preprocess, batch_size=args.batch, progress=False)

    bare, one, three, field_seconds = [], [], [], {}
    for _ in range(args.repeats):  # alternate, so that a busy moment of the shared CPU hits all alike
        bare.append(bare_seconds(model, preprocess, floats, args.batch))
        result = featvis.dataset_examples(model, ONE, images, **common)
        one.append(result.seconds["pass"])
        field_seconds.setdefault("_blocks.10", result.seconds["receptive_field"])  # then cached
        results = featvis.dataset_examples(model, THREE, images, **common)
        three.append(next(iter(results.values())).seconds["pass"])
        field_seconds.setdefault(
            "_blocks.4 and _blocks.8", next(iter(results.values())).seconds["receptive_field"]
        )
    fields = {layer: results[layer].receptive_field for layer in THREE}

    with tempfile.TemporaryDirectory() as tmp:
        folder = photo_folder(Path(tmp), args.files)
        source = image_source(folder, size=SIZE)
        decode = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _batch in DataLoader(source, batch_size=args.batch, num_workers=2, collate_fn=collate):
                pass
            decode.append(time.perf_counter() - start)
        start = time.perf_counter()
        from_files = featvis.dataset_examples(model, ONE, folder, **common)
        files_total = time.perf_counter() - start

    generated = Generated(args.memory_images, args.memory_size)
    start = time.perf_counter()
    if args.memory_images:  # 0: skip the memory pass
        featvis.dataset_examples(model, ONE, generated, **common)
    memory_seconds = time.perf_counter() - start
    after_first = [mib for index, mib in generated.samples if index >= 1000]
    growth = (after_first[-1] - after_first[0]) / after_first[0] if after_first else float("nan")

    n = args.images
    figures = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "images": n,
        "batch": args.batch,
        "bare_images_per_s": n / min(bare),
        "one_layer_images_per_s": n / min(one),
        "three_layers_images_per_s": n / min(three),
        "one_layer_vs_bare": min(one) / min(bare),
        "three_layers_vs_bare": min(three) / min(bare),
        "one_layer_vs_bare_median": float(np.median(one) / np.median(bare)),
        "three_layers_vs_bare_median": float(np.median(three) / np.median(bare)),
        "receptive_field_seconds": field_seconds,
        "receptive_fields": {k: None if v is None else v.__dict__ for k, v in fields.items()},
        "decode_images_per_s_2_workers": args.files / min(decode),
        "files_pass_images_per_s_incl_decoding": args.files / from_files.seconds["pass"],
        "files_call_seconds_total": files_total,
        "memory_images": args.memory_images,
        "memory_image_size": args.memory_size,
        "memory_pass_seconds": memory_seconds,
        "rss_mib_samples": generated.samples,
        "rss_growth_after_first_1000": growth,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "raw_seconds": {"bare": bare, "one": one, "three": three, "decode": decode},
    }
    print(json.dumps(figures, indent=1))
    print(f"\n| figure | {figures['machine']} |\n|---|---|")
    rows = [
        ("bare inference_mode forward to _blocks.10, images/s", f"{figures['bare_images_per_s']:.1f}"),
        ("dataset_examples, _blocks.10, images/s", f"{figures['one_layer_images_per_s']:.1f}"),
        ("dataset_examples, 3 layers at once, images/s", f"{figures['three_layers_images_per_s']:.1f}"),
        (
            "one layer / bare (time; best runs, medians)",
            f"{figures['one_layer_vs_bare']:.3f}; {figures['one_layer_vs_bare_median']:.3f}",
        ),
        (
            "three layers / bare (time; best runs, medians)",
            f"{figures['three_layers_vs_bare']:.3f}; {figures['three_layers_vs_bare_median']:.3f}",
        ),
        (
            "receptive fields measured (once per model and layer), s",
            ", ".join(f"{k}: {v:.1f}" for k, v in field_seconds.items()),
        ),
        ("decoding JPEGs alone, 2 workers, images/s", f"{figures['decode_images_per_s_2_workers']:.1f}"),
        ("pass from the JPEG folder, images/s", f"{figures['files_pass_images_per_s_incl_decoding']:.1f}"),
        (
            f"RSS growth over {args.memory_images} images ({args.memory_size} px) after the first 1,000",
            f"{100 * growth:.2f}% ({after_first[0]:.0f} -> {after_first[-1]:.0f} MiB)"
            if after_first
            else "n/a",
        ),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
