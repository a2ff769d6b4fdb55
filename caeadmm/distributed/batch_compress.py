"""Compress a corpus on a Ray cluster (jobs/compress.py is the entry point).

Ray Data spreads the file list over a pool of actors; each actor loads the model once (on
a GPU when it was given one) and compresses its files with `image_codec.compress_file`, which
writes every .cae atomically. The driver collects one manifest row per file (source,
output, bytes, bpp, status, error) and writes the manifest Parquet atomically at the end,
also when interrupted, so it lists what was done.

Reruns: an output that exists is complete (atomic writes), so it is skipped and its row
rebuilt from its header; files that failed are tried again; leftover temporary files of an
interrupted run are removed. Bad images become "failed" rows, never a failed job.
On a multi-node cluster the inputs, the output directory and the model must be at the same
paths on every node (shared storage), or the model a registered name.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from caeadmm import bitstream, image_codec, zoo
from caeadmm.distributed.session import connect, quiet_data
from caeadmm.files import is_temp_file, write_atomic
from caeadmm.images import list_images
from caeadmm.inputs import plan_outputs

MANIFEST_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("output", pa.string()),
    ("bytes", pa.int64()),
    ("bpp", pa.float64()),
    ("status", pa.string()),  # "ok" or "failed"
    ("error", pa.string()),
])


@dataclass(frozen=True)
class Summary:
    compressed: int  # written by this run
    skipped: int  # already done by an earlier run
    failed: int
    manifest: Path


def compress_corpus(
    inputs: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    model: str | None,
    *,
    manifest: str | os.PathLike | None = None,
    concurrency: int = 2,
    num_cpus: float = 1,
    num_gpus: float | None = None,
    force: bool = False,
    progress: bool = False,
    on_row: Callable[[dict], None] | None = None,
) -> Summary:
    """Compress every image under `inputs` into `output_dir` (trees mirrored), NAME.cae.

    - model: registered name or checkpoint path (None: the registry's default);
    - concurrency: actors; num_cpus, num_gpus: per actor (num_gpus None: 1 when the cluster
      has GPUs, else 0);
    - manifest: Parquet path (default OUTPUT_DIR/manifest.parquet);
    - progress: a progress bar on stderr; on_row: called with each new manifest row.
    Connects to Ray (`caeadmm.distributed.session.connect`) if this process is not yet.
    """
    output_dir = Path(output_dir)
    manifest = Path(manifest) if manifest else output_dir / "manifest.parquet"
    pairs, errors = plan_outputs(
        list(inputs), ".cae", lambda root: list_images([root]), output_dir=output_dir
    )
    rows = [_row(str(src), "", error=message) for src, message in errors]
    _remove_temp_files({dst.parent for _, dst in pairs})
    todo = []
    for src, dst in pairs:
        done = None if force else _done_row(src, dst)
        if done is None:
            todo.append({"source": str(src), "output": str(dst)})
        else:
            rows.append(done)
    skipped = len(rows) - sum(r["status"] == "failed" for r in rows)
    compressed = 0
    bar = tqdm(total=len(todo), unit="file", file=sys.stderr, disable=not progress)
    try:
        for row in _run_actors(todo, model, concurrency, num_cpus, num_gpus, force):
            rows.append(row)
            compressed += row["status"] == "ok"
            bar.update()
            if on_row is not None:
                on_row(row)
    finally:
        bar.close()
        _write_manifest(manifest, rows)
    failed = sum(r["status"] == "failed" for r in rows)
    return Summary(compressed=compressed, skipped=skipped, failed=failed, manifest=manifest)


class _Compressor:
    """Ray Data actor: holds one model, compresses a batch of (source, output) rows."""

    def __init__(self, model: str | None, overwrite: bool, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.model = zoo.load(model)
        if torch.cuda.is_available():  # true only when Ray gave this actor a GPU
            self.model.to("cuda")
        self.overwrite = overwrite

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = [self._one(str(s), str(d)) for s, d in zip(batch["source"], batch["output"],
                                                              strict=True)]
        return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)

    def _one(self, src: str, dst: str) -> dict:
        try:
            nbytes, bpp = image_codec.compress_file(src, dst, self.model, overwrite=self.overwrite)
        except Exception as exc:  # a bad file must never stop the corpus
            return _row(src, "", error=f"{type(exc).__name__}: {' '.join(str(exc).split())}")
        return _row(src, dst, nbytes, bpp)


def _run_actors(
    todo: list[dict], model: str | None, concurrency: int, num_cpus: float, num_gpus: float | None,
    overwrite: bool,
) -> Iterable[dict]:
    if not todo:
        return
    connect()  # nothing to do when the caller (or jobs/compress.py) is connected already
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 2000))
    ds = ds.map_batches(
        _Compressor,
        fn_constructor_kwargs={
            "model": model, "overwrite": overwrite, "threads": max(1, int(num_cpus)),
        },
        batch_size=1,
        concurrency=min(concurrency, len(todo)),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    with quiet_data():
        yield from ds.iter_rows()


def _done_row(src: Path, dst: Path) -> dict | None:
    """The manifest row of an output an earlier run wrote, None if there is none."""
    try:
        with open(dst, "rb") as f:
            header = bitstream.read_header(f.read(bitstream.HEADER_BYTES), max_pixels=None)
        size = dst.stat().st_size
    except FileNotFoundError:
        return None
    except (OSError, bitstream.BitstreamError) as exc:
        return _row(str(src), "", error=f"{dst} exists and is not a .cae file ({exc}); "
                    "rerun with force to replace it")
    return _row(str(src), str(dst), size, 8 * size / (header.width * header.height))


def _remove_temp_files(directories: set[Path]) -> None:
    for directory in directories:
        if directory.is_dir():
            for entry in os.scandir(directory):
                if is_temp_file(entry.name) and entry.is_file():
                    os.unlink(entry.path)


def _write_manifest(path: Path, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA).sort_by("source")
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_atomic(path, buffer.getvalue(), overwrite=True)


def _row(source: str, output: str, nbytes: int | None = None, bpp: float | None = None,
         error: str | None = None) -> dict:
    return {"source": source, "output": output, "bytes": nbytes, "bpp": bpp,
            "status": "failed" if error else "ok", "error": error}
