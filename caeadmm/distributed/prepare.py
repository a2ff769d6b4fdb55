"""The shard preparation job on Ray Data: image corpus -> Parquet patch shards + manifest.

The driver lists the input files (`caeadmm.inputs.list_sources`: local paths or any pyarrow
filesystem URI, e.g. s3://); a Ray Data pipeline then reads each file's bytes, decodes them
with `caeadmm.images.load_rgb` and cuts patches with `caeadmm.patches.cut_patches`, regroups
the rows into blocks of `rows_per_shard` and writes each block as one Parquet shard into a
staging folder. Files that fail travel down the same stream as one "reject" row each, so the
driver learns every reason without a second pass. Only when every shard is written are they
renamed into place, and the manifest is written last: a folder without one is incomplete,
and the reader (`caeadmm.distributed.shards`) refuses it.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from caeadmm.distributed.session import connect, quiet_data
from caeadmm.distributed.shards import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    ROW_GROUP_ROWS,
    ShardError,
)
from caeadmm.images import ImageLoadError, load_rgb
from caeadmm.inputs import filesystem_and_path, list_sources
from caeadmm.patches import PATCH_SCHEMA, ImageTooSmallError, PatchSpec, cut_patches

# The rows that travel from the cutting tasks to the writer: patch rows, plus one row per
# rejected file with only `source` and `reject` (the reason) set.
_STAGE_SCHEMA = pa.schema(
    [field.with_nullable(True) for field in PATCH_SCHEMA] + [pa.field("reject", pa.string())]
)


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
    with quiet_data(preserve_order=True, progress=progress):
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
    manifest's "rejected" with the reason, never fatal. Connects to Ray with
    `caeadmm.distributed.session.connect()` unless this process already is.
    """
    spec = spec or PatchSpec()
    if rows_per_shard < 1 or files_per_task < 1:
        raise ShardError("rows_per_shard and files_per_task must be >= 1")
    if compression != "none" and not _codec_available(compression):
        raise ShardError(f"unknown or unavailable Parquet compression {compression!r}")
    items, filesystems = list_sources(inputs)
    if not items:
        raise ShardError(f"no image files found in {list(inputs)}")
    out_fs, out_dir = filesystem_and_path(output)
    _check_output(out_fs, out_dir, output, overwrite)
    connect()

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

