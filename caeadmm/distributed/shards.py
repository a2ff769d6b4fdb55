"""Reading Parquet patch shards as training batches: the shard format and its Ray Data reader.

A shard folder holds part-NNNNN.parquet files and `_manifest.json`, written last by the
prepare job (`caeadmm.distributed.prepare`); a folder without a manifest is incomplete and
refused. `read_patches` gives (train, val) Ray Datasets of the shards listed in the
manifest, split by source image, decoded to uint8 (N, P, P, 3) "image" batches inside the
read tasks (random flips for training); `iter_patch_batches` turns them into float32 NCHW
tensors in [0, 1] with `PatchesToTensor`, the `collate_fn` of `iter_torch_batches`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data import DataIterator, Dataset, TaskPoolStrategy
from ray.data.collate_fn import NumpyBatchCollateFn

from caeadmm.inputs import filesystem_and_path
from caeadmm.patches import patch_array, random_flips, split_sources

if TYPE_CHECKING:
    import torch

MANIFEST_NAME = "_manifest.json"
MANIFEST_FORMAT = "caeadmm-patches/1"

# CPUs asked by each read task (one per row group: read, split, decode, flip). Small on
# purpose, so that Ray Data finds room to read ahead beside training workers that hold
# their CPUs (docs/data.md, "Resources").
READ_TASK_CPUS = 0.25
# Read tasks in flight at once, by default: two keep ahead of a training process on a small
# machine, more only fight over its cores (docs/data.md). Raise it for many GPU workers.
READ_CONCURRENCY = 2

# Rows per Parquet row group: the reader's unit of work (one read task per row group), so
# patches stream to training in 12 MB pieces at P = 128 and epochs shuffle at this grain.
ROW_GROUP_ROWS = 256


class ShardError(ValueError):
    """Bad prepare input or output folder, or a folder that is not a complete set of shards."""


def load_manifest(shards_dir: str) -> dict[str, Any]:
    """The manifest of a complete shard folder; ShardError if there is none."""
    fs, root = filesystem_and_path(shards_dir)
    try:
        with fs.open_input_stream(f"{root}/{MANIFEST_NAME}") as stream:
            manifest = json.loads(stream.read())
    except FileNotFoundError as exc:
        raise ShardError(
            f"{shards_dir} has no {MANIFEST_NAME}: not a shard folder, or its prepare job "
            "did not finish"
        ) from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ShardError(f"{shards_dir}: unknown manifest format {manifest.get('format')!r}")
    return manifest


def _to_images(
    table: pa.Table, *, val_sources: pa.Array, want_val: bool, patch_size: int, flips: str
) -> dict[str, np.ndarray]:
    """Keep one side of the split, decode the patches, flip them at random."""
    in_val = pc.is_in(table["source"], value_set=val_sources)
    table = table.filter(in_val if want_val else pc.invert(in_val))
    images = patch_array(table["patch"], patch_size)
    if flips:
        images = random_flips(images, flips, np.random.default_rng())
    return {
        "image": images,
        "source": table["source"].to_numpy(zero_copy_only=False),
        "x": table["x"].to_numpy(),
        "y": table["y"].to_numpy(),
    }


def _read_row_groups(
    batch: dict[str, np.ndarray], *, filesystem: pafs.FileSystem, **to_images: Any
) -> Iterator[dict[str, np.ndarray]]:
    """Read-task body: read the named (shard, row group)s and pass them through `_to_images`."""
    for path, group in zip(batch["path"], batch["group"], strict=True):
        with filesystem.open_input_file(str(path)) as stream:
            shard = pq.ParquetFile(stream)
            rows = shard.read_row_group(int(group), columns=["patch", "source", "x", "y"])
        images = _to_images(rows, **to_images)
        if len(images["image"]):
            yield images


def _read_units(fs: pafs.FileSystem, root: str, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The reader's tasks: every (shard path, row group index)."""
    units = []
    for shard in manifest["shards"]:
        path = f"{root}/{shard['path']}"
        if "row_group_rows" in manifest:
            groups = math.ceil(shard["rows"] / manifest["row_group_rows"])
        else:  # shards cut before the manifest recorded it: ask the Parquet footer
            groups = pq.read_metadata(path, filesystem=fs).num_row_groups
        units.extend({"path": path, "group": group} for group in range(groups))
    return units


def read_patches(
    shards_dir: str,
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    flips: str = "hv",
    num_cpus: float = READ_TASK_CPUS,
    concurrency: int | None = READ_CONCURRENCY,
) -> tuple[Dataset, Dataset]:
    """(train, val) Ray Datasets over a shard folder, split by source image.

    Rows: "image" uint8 (P, P, 3), "source" str, "x", "y" int32. The val sources are the
    `val_fraction` of source images with the smallest seeded hash (`split_sources`), so no
    image is in both. One read task per Parquet row group (ROW_GROUP_ROWS rows), each asking
    for `num_cpus` CPUs, at most `concurrency` at once (None: Ray Data decides). Training
    visits the row groups in a new random order each epoch and flips each patch left-right
    ("h" in flips) and upside down ("v") with probability 1/2; val is neither shuffled nor
    flipped.
    """
    if set(flips) - set("hv"):
        raise ValueError(f"flips may contain only 'h' and 'v', got {flips!r}")
    manifest = load_manifest(shards_dir)
    if not manifest["shards"]:
        raise ShardError(f"{shards_dir} holds no patches")
    fs, root = filesystem_and_path(shards_dir)
    units = _read_units(fs, root, manifest)
    _, val = split_sources(manifest["sources"], val_fraction, seed)
    # No more read tasks at once than row groups (Ray Data warns about a limit it cannot use).
    size = None if concurrency is None else min(concurrency, len(units))

    def side(want_val: bool) -> Dataset:
        ds = ray.data.from_items(units, override_num_blocks=len(units))
        if not want_val:
            ds = ds.randomize_block_order()
        return ds.map_batches(
            _read_row_groups,
            fn_kwargs={
                "filesystem": fs,
                "val_sources": pa.array(val, pa.string()),
                "want_val": want_val,
                "patch_size": manifest["patch_size"],
                "flips": "" if want_val else flips,
            },
            batch_size=1,
            num_cpus=num_cpus,
            compute=TaskPoolStrategy(size=size),
        )

    return side(False), side(True)


class PatchesToTensor(NumpyBatchCollateFn):
    """collate_fn for `iter_torch_batches`: the "image" column as float32 (N, 3, P, P) in [0, 1].

    Its other columns (source, x, y) are left out of the batch.
    """

    def __call__(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        import torch  # here, not at the top: Ray Data's read tasks import this module too

        nchw = np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2), dtype=np.float32)
        return torch.from_numpy(nchw).div_(255.0)


def iter_patch_batches(
    data: Dataset | DataIterator,
    batch_size: int,
    *,
    shuffle_buffer: int | None = None,
    drop_last: bool = False,
    device: str = "auto",
) -> Iterable[torch.Tensor]:
    """One epoch of float32 (N, 3, P, P) batches in [0, 1] from `read_patches`' datasets or
    from a Ray Train dataset shard (`ray.train.get_dataset_shard("train")`).

    shuffle_buffer: rows mixed in a local buffer before batching (training: several row
    groups, as a row group holds each image's crops in a row); device "auto" is the Ray
    Train worker's device, else the CPU.
    """
    return data.iter_torch_batches(
        batch_size=batch_size,
        collate_fn=PatchesToTensor(),
        drop_last=drop_last,
        local_shuffle_buffer_size=shuffle_buffer,
        device=device,
    )
