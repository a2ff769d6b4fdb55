"""The Ray layer of the data pipeline: image corpus -> Parquet patch shards -> training batches.

Prepare (`prepare_patches`): the driver lists the input files (local paths or any pyarrow
filesystem URI, e.g. s3://); a Ray Data pipeline then reads each file's bytes, decodes them
with `caeadmm.images.load_rgb` and cuts patches with `caeadmm.patches.cut_patches`, regroups
the rows into blocks of `rows_per_shard` and writes each block as one Parquet shard into a
staging folder. Files that fail travel down the same stream as one "reject" row each, so the
driver learns every reason without a second pass. Only when every shard is written are they
renamed into place, and `_manifest.json` is written last: a folder without a manifest is
incomplete, and `read_patches` refuses it.

Read (`read_patches`): the shards listed in the manifest, split into train and validation by
source image, decoded to uint8 (N, P, P, 3) "image" batches inside the read tasks (random
flips for training), turned into float32 NCHW tensors in [0, 1] by `PatchesToTensor`, the
`collate_fn` of `iter_torch_batches` (`iter_patch_batches` wraps that call).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import posixpath
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data import DataContext, DataIterator, Dataset, TaskPoolStrategy
from ray.data.block import BlockAccessor
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.data.datasource import Datasink

from caeadmm.images import IMAGE_EXTENSIONS, ImageLoadError, load_rgb
from caeadmm.patches import (
    PATCH_SCHEMA,
    ImageTooSmallError,
    PatchSpec,
    cut_patches,
    patch_array,
    random_flips,
    split_sources,
)

if TYPE_CHECKING:
    import torch

MANIFEST_NAME = "_manifest.json"
MANIFEST_FORMAT = "caeadmm-patches/1"
LIST_EXTENSIONS = (".txt", ".lst")  # an input file with one of these is a list of paths

# CPUs asked by each read task (one per shard: read, split, decode, flip). Small on purpose: on
# a 2-core machine declared as 4 logical CPUs, a training worker keeps its CPUs and Ray Data
# still finds room to read ahead (docs/data.md, "Resources").
READ_TASK_CPUS = 0.25
# Read tasks in flight at once, by default. Each turns about 5000 patches/s (P = 128) into
# batches, so two keep ahead of a training process; more only fight over the cores (on
# 2 cores, unbounded concurrency made an epoch 4x slower). Raise it for many GPU workers.
READ_CONCURRENCY = 2

# Rows per Parquet row group: the reader's unit of work (one read task per row group), so
# patches stream to training in 12 MB pieces at P = 128 and epochs shuffle at this grain.
ROW_GROUP_ROWS = 256

# The rows that travel from the cutting tasks to the writer: patch rows, plus one row per
# rejected file with only `source` and `reject` (the reason) set.
_STAGE_SCHEMA = pa.schema(
    [field.with_nullable(True) for field in PATCH_SCHEMA] + [pa.field("reject", pa.string())]
)


class ShardError(ValueError):
    """Bad prepare input or output folder, or a folder that is not a complete set of shards."""


# ---------------------------------------------------------------------------------------------
# Ray start-up


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray quietly: `address`, else $RAY_ADDRESS (set by `ray job submit`), else
    start an embedded local instance with `num_cpus` CPUs (default: this machine's cores).

    Does nothing when this process is already connected.
    """
    if ray.is_initialized():
        return
    quiet: dict[str, Any] = {
        "log_to_driver": False,
        "configure_logging": True,
        "logging_level": logging.ERROR,
    }
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
    else:
        # "local" never attaches to some other cluster found on this machine.
        cpus = num_cpus or os.cpu_count()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, **quiet)


@contextlib.contextmanager
def _data_options(*, preserve_order: bool, progress: bool) -> Iterator[None]:
    """Set Ray Data's options for one job, then put the caller's back.

    Without progress, Ray Data's own log lines are silenced too; with it, they are its
    progress display (bars on a terminal, periodic lines otherwise).
    """
    ctx = DataContext.get_current()
    data_logger = logging.getLogger("ray.data")
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, data_logger.level)
    ctx.execution_options.preserve_order = preserve_order
    ctx.enable_progress_bars = progress
    if not progress:
        data_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved[:2]
        data_logger.setLevel(saved[2])


# ---------------------------------------------------------------------------------------------
# Listing inputs


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for a local path or a URI."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _expand(uri: str, allow_lists: bool) -> Iterator[tuple[str, pafs.FileSystem, str]]:
    """(source label, filesystem, path) of each file an input names.

    A folder gives its image files (by extension, recursively); a .txt/.lst file gives the
    paths it lists, one per line (relative ones from the list's folder); anything else,
    missing paths included, is taken as one image file and is judged when it is read.
    """
    fs, path = _filesystem(uri)
    info = fs.get_file_info(path)
    local = "://" not in uri
    if info.type == pafs.FileType.Directory:
        root = path.rstrip("/")
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        for f in sorted(found, key=lambda f: f.path):
            if f.type == pafs.FileType.File and _extension(f.path) in IMAGE_EXTENSIONS:
                label = f.path if local else uri.rstrip("/") + f.path[len(root) :]
                yield label, fs, f.path
    elif allow_lists and info.type == pafs.FileType.File and _extension(path) in LIST_EXTENSIONS:
        with fs.open_input_stream(path) as stream:
            lines = stream.read().decode("utf-8").splitlines()
        base = uri.rsplit("/", 1)[0] if not local else os.path.dirname(path)
        for line in (s.strip() for s in lines):
            if line and not line.startswith("#"):
                entry = line if "://" in line or os.path.isabs(line) else f"{base}/{line}"
                yield from _expand(entry, allow_lists=False)
    else:
        yield (path if local else uri), fs, path


def list_sources(inputs: Sequence[str]) -> tuple[list[dict[str, Any]], list[pafs.FileSystem]]:
    """Expand the inputs into items {"source", "path", "fs"} sorted by source, duplicates
    removed, and the filesystems that `fs` indexes."""
    filesystems: list[pafs.FileSystem] = []
    items: dict[str, dict[str, Any]] = {}
    for uri in inputs:
        for label, fs, path in _expand(str(uri), allow_lists=True):
            index = next((i for i, known in enumerate(filesystems) if known.equals(fs)), None)
            if index is None:
                filesystems.append(fs)
                index = len(filesystems) - 1
            items.setdefault(label, {"source": label, "path": path, "fs": index})
    return [items[label] for label in sorted(items)], filesystems


# ---------------------------------------------------------------------------------------------
# Prepare: the Ray Data job


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    try:
        with fs.open_input_stream(path) as stream:
            data = stream.read()
    except FileNotFoundError as exc:
        raise ImageLoadError("unreadable: not found") from exc
    except OSError as exc:
        raise ImageLoadError(f"unreadable: {exc}") from exc
    if not data:
        raise ImageLoadError("empty file (0 bytes)")
    return data


def _cut_files(
    batch: dict[str, np.ndarray],
    *,
    spec: PatchSpec,
    filesystems: list[pafs.FileSystem],
    max_pixels: int | None,
) -> pa.Table:
    """Ray task body: read, decode and cut a batch of files into stage rows."""
    tables = []
    for source, path, fs_index in zip(batch["source"], batch["path"], batch["fs"], strict=True):
        source = str(source)
        try:
            image = load_rgb(_read_bytes(filesystems[int(fs_index)], str(path)), max_pixels)
            patches = cut_patches(image, source, spec)
            reject = pa.nulls(patches.num_rows, pa.string())
            tables.append(patches.append_column("reject", reject).cast(_STAGE_SCHEMA))
        except (ImageLoadError, ImageTooSmallError) as exc:
            reject_row = {"source": source, "reject": str(exc)}  # the other columns null
            tables.append(pa.Table.from_pylist([reject_row], schema=_STAGE_SCHEMA))
    return pa.concat_tables(tables)


class _ShardSink(Datasink):
    """Writes each incoming block's patch rows as one Parquet shard into the staging folder;
    each write task returns its shards, rejects and per-source patch counts to the driver."""

    def __init__(self, fs: pafs.FileSystem, staging: str, compression: str) -> None:
        self.fs = fs
        self.staging = staging
        self.compression = compression
        self.returns: list[dict[str, Any]] = []

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        shards: list[dict[str, Any]] = []
        rejected: list[dict[str, str]] = []
        counts: Counter[str] = Counter()
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            is_reject = pc.is_valid(table["reject"])
            for row in table.filter(is_reject).select(["source", "reject"]).to_pylist():
                rejected.append({"path": row["source"], "reason": row["reject"]})
            patches = table.filter(pc.invert(is_reject)).select(PATCH_SCHEMA.names)
            if patches.num_rows == 0:
                continue
            name = f"{uuid.uuid4().hex}.parquet"
            pq.write_table(
                patches.cast(PATCH_SCHEMA),
                f"{self.staging}/{name}",
                filesystem=self.fs,
                compression=self.compression,
                row_group_size=ROW_GROUP_ROWS,
            )
            shards.append({"path": name, "rows": patches.num_rows})
            per_source = pc.value_counts(patches["source"]).to_pylist()
            counts.update({item["values"]: item["counts"] for item in per_source})
        return {"shards": shards, "rejected": rejected, "counts": dict(counts)}

    def on_write_complete(self, write_result: Any) -> None:
        self.returns = list(write_result.write_returns)


def _check_output(fs: pafs.FileSystem, out_dir: str, output: str, overwrite: bool) -> None:
    info = fs.get_file_info(out_dir)
    if info.type == pafs.FileType.File:
        raise ShardError(f"output {output} is a file, not a folder")
    if info.type == pafs.FileType.Directory:
        if fs.get_file_info(pafs.FileSelector(out_dir)):
            if not overwrite:
                raise ShardError(f"output folder {output} is not empty (overwrite replaces it)")
            fs.delete_dir_contents(out_dir)
    fs.create_dir(out_dir, recursive=True)


def _codec_available(name: str) -> bool:
    try:
        return pa.Codec.is_available(name)
    except ValueError:  # a name pyarrow does not know at all
        return False


def _write_json(fs: pafs.FileSystem, path: str, data: dict[str, Any]) -> None:
    """Write JSON next to its final place, then move it there, so it appears whole."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as stream:
        stream.write(json.dumps(data, indent=1).encode("utf-8"))
    fs.move(tmp, path)


def _cut_and_write(
    items: list[dict[str, Any]],
    filesystems: list[pafs.FileSystem],
    spec: PatchSpec,
    sink: _ShardSink,
    *,
    rows_per_shard: int,
    files_per_task: int,
    max_pixels: int | None,
    progress: bool,
) -> None:
    """The Ray Data pipeline: files -> decoded, cut rows -> shards of rows_per_shard."""
    # Order is preserved so that the same arguments give the same shards, row for row.
    with _data_options(preserve_order=True, progress=progress):
        ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / files_per_task))
        ds = ds.map_batches(
            _cut_files,
            fn_kwargs={"spec": spec, "filesystems": filesystems, "max_pixels": max_pixels},
            batch_size=files_per_task,
            batch_format="numpy",
            num_cpus=1,
        )
        ds = ds.repartition(target_num_rows_per_block=rows_per_shard, strict=True)
        ds.write_datasink(sink, ray_remote_args={"num_cpus": 0.5})


def _commit(
    fs: pafs.FileSystem, out_dir: str, staging: str, returns: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Move the staged shards into place as part-NNNNN.parquet, in row order."""
    shards = []
    for index, shard in enumerate(s for r in returns for s in r["shards"]):
        name = f"part-{index:05d}.parquet"
        fs.move(f"{staging}/{shard['path']}", f"{out_dir}/{name}")
        shards.append({"path": name, "rows": shard["rows"]})
    fs.delete_dir(staging)
    return shards


def prepare_patches(
    inputs: Sequence[str],
    output: str,
    spec: PatchSpec | None = None,
    *,
    rows_per_shard: int = 1024,
    files_per_task: int = 8,
    compression: str = "none",
    max_pixels: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Cut the images under `inputs` into Parquet patch shards in `output`; return the manifest.

    inputs: folders (searched recursively), image files, or .txt/.lst lists of paths; local
    or pyarrow URIs. `files_per_task` files are decoded per Ray task. A shard holds at most
    `rows_per_shard` patches, usually exactly that many; `compression` is its Parquet codec
    ("none" reads fastest; "zstd" is about 2.5x smaller on photos). Rows come in source
    order, and the same arguments give byte-identical shards. Bad files are recorded in the
    manifest's "rejected" with the reason, never fatal. Connects to Ray with `init_ray()`
    unless this process already is.
    """
    spec = spec or PatchSpec()
    if rows_per_shard < 1 or files_per_task < 1:
        raise ShardError("rows_per_shard and files_per_task must be >= 1")
    if compression != "none" and not _codec_available(compression):
        raise ShardError(f"unknown or unavailable Parquet compression {compression!r}")
    items, filesystems = list_sources(inputs)
    if not items:
        raise ShardError(f"no image files found in {list(inputs)}")
    out_fs, out_dir = _filesystem(output)
    _check_output(out_fs, out_dir, output, overwrite)
    init_ray()

    started = time.time()
    staging = f"{out_dir}/_staging-{uuid.uuid4().hex[:12]}"
    out_fs.create_dir(staging)
    sink = _ShardSink(out_fs, staging, compression)
    try:
        _cut_and_write(
            items, filesystems, spec, sink,
            rows_per_shard=rows_per_shard, files_per_task=files_per_task,
            max_pixels=max_pixels, progress=progress,
        )
    except BaseException:
        out_fs.delete_dir(staging)  # nothing half-written stays behind
        raise
    shards = _commit(out_fs, out_dir, staging, sink.returns)

    counts: Counter[str] = Counter()
    for r in sink.returns:
        counts.update(r["counts"])
    rejected = sorted((x for r in sink.returns for x in r["rejected"]), key=lambda x: x["path"])
    manifest = {
        "format": MANIFEST_FORMAT,
        **asdict(spec),
        "rows_per_shard": rows_per_shard,
        "row_group_rows": ROW_GROUP_ROWS,
        "compression": compression,
        "inputs": [str(u) for u in inputs],
        "counts": {
            "files": len(items),
            "images": len(counts),
            "rejected": len(rejected),
            "patches": sum(s["rows"] for s in shards),
            "shards": len(shards),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - started, 3),
        "shards": shards,
        "sources": dict(sorted(counts.items())),
        "rejected": rejected,
    }
    _write_json(out_fs, f"{out_dir}/{MANIFEST_NAME}", manifest)  # last: marks the set complete
    return manifest


def format_summary(manifest: dict[str, Any], max_rejects: int = 20) -> str:
    """A few lines saying what a prepare run did, for people."""
    c = manifest["counts"]
    lines = [
        f"{c['files']} files: {c['images']} images cut into {c['patches']} patches of "
        f"{manifest['patch_size']}x{manifest['patch_size']} ({manifest['mode']}, seed "
        f"{manifest['seed']}) in {c['shards']} shards, {c['rejected']} rejected, "
        f"{manifest['seconds']:.1f} s",
    ]
    for reject in manifest["rejected"][:max_rejects]:
        lines.append(f"  rejected {reject['path']}: {reject['reason']}")
    if c["rejected"] > max_rejects:
        lines.append(f"  ... and {c['rejected'] - max_rejects} more (see {MANIFEST_NAME})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Read: shards -> training batches


def load_manifest(shards_dir: str) -> dict[str, Any]:
    """The manifest of a complete shard folder; ShardError if there is none."""
    fs, root = _filesystem(shards_dir)
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
    fs, root = _filesystem(shards_dir)
    units = _read_units(fs, root, manifest)
    _, val = split_sources(manifest["sources"], val_fraction, seed)

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
            compute=TaskPoolStrategy(size=concurrency),
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
