"""Throughput of the data pipeline against plain single-process loops over the same files.

    python bench/data.py --subset 100            # first 100 images of ../shared/data/train
    python bench/data.py --images DIR --repeats 5

Prepare: `prepare_patches` on Ray Data vs a Pillow + numpy + pyarrow loop that decodes, cuts
the same number of random crops and writes one Parquet file. Read-to-batch: one epoch of
`read_patches` + `iter_patch_batches` (flipped float32 NCHW batches) vs a pyarrow loop over
the same shards, and vs a Pillow + numpy loop that decodes the images and crops batches
directly (what training from a folder of JPEGs does); all three flip the same way. Medians
of --repeats runs; the first read epoch, which starts Ray's workers, is not counted. Without
the shared data set, a synthetic corpus is made.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caeadmm.distributed.prepare import prepare_patches  # noqa: E402
from caeadmm.distributed.session import connect  # noqa: E402
from caeadmm.distributed.shards import iter_patch_batches, read_patches  # noqa: E402
from caeadmm.images import list_images  # noqa: E402
from caeadmm.patches import PatchSpec, patch_array, random_flips  # noqa: E402

SHARED_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "train"


def synthetic_corpus(folder: Path, count: int = 40) -> list[Path]:
    """Smooth random 480x320 JPEGs, roughly as costly to decode as photos of that size."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((480, 320), Image.BICUBIC)
        paths.append(folder / f"img{i:03d}.jpg")
        image.save(paths[-1], quality=90)
    return paths


def median_time(run: Callable[[], int], repeats: int) -> tuple[float, int]:
    """Median seconds of `run` over repeats, and the item count it returned."""
    times, count = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), count


def pillow_prepare(files: list[Path], spec: PatchSpec, out: Path) -> int:
    """The peer of prepare: decode, crop, write one Parquet file, all in this process."""
    rng = np.random.default_rng(spec.seed)
    p = spec.patch_size
    patches, sources, xs, ys = [], [], [], []
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        if h < p or w < p:
            continue
        for _ in range(spec.crops):
            y, x = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
            patches.append(image[y : y + p, x : x + p].tobytes())
            sources.append(str(path))
            xs.append(x)
            ys.append(y)
    table = pa.table({"patch": patches, "source": sources, "x": xs, "y": ys})
    pq.write_table(table, out)
    return len(patches)


def pillow_batches(files: list[Path], spec: PatchSpec, batch_size: int) -> int:
    """The peer of the read path without shards: decode images, crop, flip, batch."""
    rng = np.random.default_rng(1)
    p = spec.patch_size
    pending: list[np.ndarray] = []
    count = 0
    for path in files:
        image = np.asarray(Image.open(path).convert("RGB"))
        h, w = image.shape[:2]
        if h < p or w < p:
            continue
        for _ in range(spec.crops):
            y, x = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
            pending.append(image[y : y + p, x : x + p])
            if len(pending) == batch_size:
                count += len(_to_tensor(random_flips(np.stack(pending), "hv", rng)))
                pending = []
    if pending:
        count += len(_to_tensor(random_flips(np.stack(pending), "hv", rng)))
    return count


def arrow_batches(shards: list[Path], patch_size: int, batch_size: int) -> int:
    """The peer of the read path over the same shards: pyarrow in this process, no Ray."""
    rng = np.random.default_rng(2)
    count = 0
    for shard in shards:
        for rows in pq.ParquetFile(shard).iter_batches(batch_size, columns=["patch"]):
            images = random_flips(patch_array(rows.column(0), patch_size), "hv", rng)
            count += len(_to_tensor(images))
    return count


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
    return torch.from_numpy(nchw).div_(255.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help=f"image folder (default {SHARED_TRAIN})")
    parser.add_argument("--subset", type=int, help="use only the first N images")
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rows-per-shard", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: cores)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    folder = args.images or (SHARED_TRAIN if SHARED_TRAIN.is_dir() else None)
    files = list_images([folder]) if folder else synthetic_corpus(work)
    files = files[: args.subset] if args.subset else files
    spec = PatchSpec(patch_size=args.patch_size, crops=args.crops)
    connect(num_cpus=args.num_cpus)
    # Ray runs its workers at nice 15; run this process's loops at the same priority so that
    # on a shared, busy machine both sides of each comparison compete alike.
    os.nice(15 - os.nice(0))
    print(
        f"{len(files)} images from {folder or 'a synthetic corpus'}, P={spec.patch_size}, "
        f"{spec.crops} crops each, batch {args.batch_size}, {os.cpu_count()} cores, "
        f"median of {args.repeats}"
    )

    shards_dir = work / "shards"

    def ray_prepare() -> int:
        manifest = prepare_patches(
            [str(f) for f in files], str(shards_dir), spec,
            rows_per_shard=args.rows_per_shard, overwrite=True, progress=False,
        )
        return manifest["counts"]["patches"]

    prepare_patches(  # warm-up: starts Ray's workers
        [str(f) for f in files[:4]], str(shards_dir), spec, overwrite=True, progress=False
    )
    results = [
        ("prepare", "Ray Data job", *median_time(ray_prepare, args.repeats)),
        ("prepare", "Pillow+numpy loop", *median_time(
            lambda: pillow_prepare(files, spec, work / "peer.parquet"), args.repeats)),
    ]

    train, _ = read_patches(str(shards_dir), val_fraction=0.0)
    epoch = lambda: sum(len(b) for b in iter_patch_batches(train, args.batch_size))  # noqa: E731
    epoch()  # warm-up epoch
    shards = sorted(shards_dir.glob("part-*.parquet"))
    results += [
        ("read-to-batch", "read_patches + iter_patch_batches", *median_time(epoch, args.repeats)),
        ("read-to-batch", "pyarrow loop over shards", *median_time(
            lambda: arrow_batches(shards, spec.patch_size, args.batch_size), args.repeats)),
        ("read-to-batch", "Pillow+numpy loop over images", *median_time(
            lambda: pillow_batches(files, spec, args.batch_size), args.repeats)),
    ]

    print("\n| stage | path | patches | median s | patches/s | vs first of stage |")
    print("|---|---|---:|---:|---:|---:|")
    first: dict[str, float] = {}
    for stage, path, seconds, count in results:
        rate = count / seconds
        first.setdefault(stage, rate)
        print(f"| {stage} | {path} | {count} | {seconds:.2f} | {rate:,.0f} | "
              f"{rate / first[stage]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
