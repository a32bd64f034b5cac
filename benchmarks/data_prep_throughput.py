"""Conversion throughput of the data_prep builders (images/s) for 1 and N worker processes.

    .venv/bin/python benchmarks/data_prep_throughput.py [--images 96] [--workers 1,2]
        [--kinds rgb_figure,grey_xray,rgb_tiff] [--max_image_side 512]

Generates full-resolution images in a ROCO release layout (the conversion path is the same for
every builder: read file -> decode -> normalise mode -> downscale -> re-encode -> write
ArrayRecord), then times `python -m data_prep.build`'s code path end to end for each worker
count, on a fresh output folder each time. Image kinds, at publishers' typical sizes:

* rgb_figure: 2048 x 1536 RGB JPEG (a PMC figure / BACH photo size);
* grey_xray:  2544 x 3056 8-bit grey JPEG (a MIMIC-CXR-JPG radiograph);
* rgb_tiff:   2048 x 1536 RGB TIFF, uncompressed (BACH's .tif microscopy photos).

With ``--medmnist_configs N`` it times instead what starting the conversion processes costs: a
MedMNIST build of N tiny npz configs (``--images`` 8x8 images per split), where converting is
nothing and a pool per split or config would be everything; ``--one_pool`` opens one
`core.conversion_pool` around the whole multi-config build.

    taskset -c 1 .venv/bin/python benchmarks/data_prep_throughput.py --medmnist_configs 3 \
        --images 4 --workers 1,2 [--one_pool]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep import build as build_lib  # noqa: E402
from data_prep import core, medmnist  # noqa: E402

KINDS = {
    "rgb_figure": ((2048, 1536), "RGB", "JPEG"),
    "grey_xray": ((2544, 3056), "L", "JPEG"),
    "rgb_tiff": ((2048, 1536), "RGB", "TIFF"),
}


def smooth_image(rng: np.random.Generator, size: tuple[int, int], mode: str) -> Image.Image:
    """Low-frequency structure plus noise, so JPEG sizes and decode costs are realistic."""
    channels = 3 if mode == "RGB" else 1
    coarse = rng.integers(0, 256, (size[1] // 64 + 1, size[0] // 64 + 1, channels), np.uint8)
    image = Image.fromarray(coarse.squeeze(-1) if channels == 1 else coarse, mode)
    image = image.resize(size, Image.Resampling.BILINEAR)
    noise = rng.integers(-12, 13, (size[1], size[0], channels), np.int16)
    pixels = np.asarray(image, np.int16).reshape(size[1], size[0], channels) + noise
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def write_release(root: str, kind: str, count: int) -> int:
    """A ROCO-layout train split of `count` generated images; returns the bytes written."""
    size, mode, fmt = KINDS[kind]
    folder = os.path.join(root, "train", "radiology")
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rng = np.random.default_rng(0)
    template = smooth_image(rng, size, mode)
    total = 0
    lines = []
    for i in range(count):
        # Vary each image a little (a shifted copy) so no two files are identical.
        image = Image.fromarray(np.roll(np.asarray(template), i * 7, axis=1), mode)
        out = io.BytesIO()
        image.save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        name = f"fig{i}." + ("jpg" if fmt == "JPEG" else "tif")
        with open(os.path.join(folder, "images", f"PMC{i}_{name}"), "wb") as f:
            f.write(out.getvalue())
        total += out.tell()
        lines.append((f"ROCO_{i:06d}\t generated image {i}",
                      f"ROCO_{i:06d}\twget -r ftp://x/PMC{i}.tar.gz -P dir\t{name}"))
    for index, file in enumerate(("captions.txt", "dlinks.txt")):
        with open(os.path.join(folder, file), "w") as f:
            f.write("\n".join(line[index] for line in lines) + "\n")
    return total


def time_build(raw: str, workers: int, max_side: int) -> tuple[float, int]:
    out = tempfile.mkdtemp(prefix="bench_out_")
    try:
        start = time.perf_counter()
        (report,) = build_lib.build("roco", raw, out, max_image_side=max_side, workers=workers)
        return time.perf_counter() - start, sum(report.written.values())
    finally:
        shutil.rmtree(out, ignore_errors=True)


def write_medmnist(root: str, configs: int, count: int) -> None:
    """`configs` MedMNIST npz files of `count` 8x8 RGB images per split."""
    rng = np.random.default_rng(0)
    for config in medmnist.CONFIGS[:configs]:
        arrays = {}
        for split in medmnist.PUBLISHER_SPLITS:
            arrays[f"{split}_images"] = rng.integers(0, 256, (count, 8, 8, 3), np.uint8)
            arrays[f"{split}_labels"] = np.zeros((count, 1), np.uint8)
        np.savez(os.path.join(root, f"{config.name}.npz"), **arrays)


def time_medmnist(raw: str, workers: int, one_pool: bool) -> float:
    out = tempfile.mkdtemp(prefix="bench_out_")
    try:
        start = time.perf_counter()
        with core.conversion_pool(workers) if one_pool else contextlib.nullcontext():
            build_lib.build("medmnist", raw, out, max_image_side=64, workers=workers)
        return time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main_medmnist(configs: int, count: int, workers: list[int], one_pool: bool) -> None:
    raw = tempfile.mkdtemp(prefix="bench_raw_")
    try:
        write_medmnist(raw, configs, count)
        print(f"{os.cpu_count()} CPUs; MedMNIST, {configs} configs x 3 splits x {count} images; "
              f"one pool around the build: {one_pool}")
        print("| workers | seconds |")
        print("|---|---|")
        for w in workers:
            print(f"| {w} | {time_medmnist(raw, w, one_pool):.1f} |", flush=True)
    finally:
        shutil.rmtree(raw, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 1}")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--max_image_side", type=int, default=512)
    parser.add_argument("--medmnist_configs", type=int, default=0,
                        help="time process start-up on a MedMNIST build of this many configs")
    parser.add_argument("--one_pool", action="store_true",
                        help="with --medmnist_configs: one conversion_pool around the build")
    args = parser.parse_args()
    workers = sorted({int(w) for w in args.workers.split(",")})
    if args.medmnist_configs:
        main_medmnist(args.medmnist_configs, args.images, workers, args.one_pool)
        return
    print(f"{os.cpu_count()} CPUs; {args.images} images per kind; max side {args.max_image_side}")
    print("| image kind | source size | MB on disk | workers | seconds | images/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        raw = tempfile.mkdtemp(prefix="bench_raw_")
        try:
            total = write_release(raw, kind, args.images)
            baseline = None
            for w in workers:
                seconds, written = time_build(raw, w, args.max_image_side)
                assert written == args.images, (written, args.images)
                rate = written / seconds
                baseline = baseline or rate
                size = "x".join(map(str, KINDS[kind][0]))
                print(f"| {kind} | {size} | {total / 1e6:.0f} | {w} | {seconds:.1f} | "
                      f"{rate:.1f} | {rate / baseline:.2f}x |", flush=True)
        finally:
            shutil.rmtree(raw, ignore_errors=True)


if __name__ == "__main__":
    main()
