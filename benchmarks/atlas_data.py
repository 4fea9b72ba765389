"""The atlas's dataset-examples pass at scale: images per second under torchrun, and a resume after a kill.

Run: python benchmarks/atlas_data.py --make-folder 10000 [--folder DIR] [--procs 2] [--kill-after 20]

1. ``--make-folder N``: N JPEG files (64-160 px) cut from scikit-image's photographs
   (``skimage.data``) with random crops and flips, into ``--folder`` (default: a temporary one);
2. clean: ``torchrun --nproc-per-node P -m featvis atlas --layer _conv_stem --steps 1 --data DIR``
   (Lite0, whose stem is cheap: the pass is mostly decoding, resizing to 224 and the running
   top-k), timed whole: images per second = N / the wall time (the 32 stem units, one step each,
   are a second or two of it);
3. resumed: the same into a fresh folder with ``--max-restarts 1``, rank 1 killed (SIGKILL) after
   ``--kill-after`` seconds; torchrun restarts the group, which goes on from each rank's
   checkpoint. Reports where the checkpoints stood at the kill, the wall time, and that the
   examples are the same files as the clean run's.

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image
import torch


def make_folder(root: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEG files of 64-160 px cut from scikit-image's photographs, randomly cropped and flipped."""
    import skimage.data

    names = ["astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "motorcycle_left"]
    photos = [
        np.asarray(getattr(skimage.data, name)())[..., :3] for name in names if hasattr(skimage.data, name)
    ]
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = photo[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out = int(rng.integers(64, 161))
        Image.fromarray(np.ascontiguousarray(crop)).resize((out, out)).save(root / f"{i:05d}.jpg", quality=90)
    return root


def torchrun(args: list[str], procs: int, restarts: int, env: dict) -> subprocess.Popen:
    command = [
        str(Path(sys.executable).with_name("torchrun")),
        "--standalone",
        "--nproc-per-node",
        str(procs),
    ]
    command += ["--max-restarts", str(restarts), "-m", "featvis", "atlas", *args]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def finish(process: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return process.returncode, stderr


def examples(site: Path) -> dict[str, bytes]:
    return {str(p.relative_to(site)): p.read_bytes() for p in sorted(site.glob("units/*/*.examples.*"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-folder", type=int, default=10000, metavar="N", help="images to make")
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--kill-after", type=float, default=20.0, help="seconds before rank 1 is killed")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="atlas-data-"))
    folder = args.folder or work / "photos"
    start = time.perf_counter()
    make_folder(folder, args.make_folder)
    made = time.perf_counter() - start
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--layer", "_conv_stem", "--steps", "1", "--views", "1", "--size", "64", "--data", str(folder)]
    common += ["--examples", "4"]
    load_before = os.getloadavg()[0]

    start = time.perf_counter()
    code, stderr = finish(torchrun([*common, "--out", str(work / "clean")], args.procs, 0, env), 3600)
    clean = time.perf_counter() - start
    assert code == 0, stderr[-2000:]

    resumed_out = work / "resumed"
    start = time.perf_counter()
    process = torchrun([*common, "--out", str(resumed_out)], args.procs, 1, env)
    at_kill = {}
    try:
        time.sleep(args.kill_after)
        victims = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
        for proc in victims:  # rank 1 of the first group: a worker whose environment says RANK=1
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"RANK=1" in environ and f"--out\0{resumed_out}".encode() in (proc / "cmdline").read_bytes():
                for checkpoint in sorted((resumed_out / "checkpoints").glob("*.pt")):
                    at_kill[checkpoint.name] = torch.load(checkpoint, weights_only=False)["next"]
                os.kill(int(proc.name), signal.SIGKILL)
                break
        code, stderr = finish(process, 3600)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    resumed = time.perf_counter() - start
    assert code == 0, stderr[-2000:]
    result = {
        "images": args.make_folder,
        "procs": args.procs,
        "threads_per_proc": 1,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "make_folder_s": made,
        "clean_wall_s": clean,
        "clean_images_per_s": args.make_folder / clean,
        "killed_after_s": args.kill_after,
        "checkpoints_at_kill_next": at_kill,
        "killed": "exitcode: -9" in stderr,
        "resumed_wall_s": resumed,
        "same_examples": examples(work / "clean") == examples(resumed_out),
        "examples_files": len(examples(resumed_out)),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
