"""Compress a corpus on a Ray cluster (jobs/compress.py is the entry point).

Ray Data spreads the file list over a pool of actors; each actor loads the model once (on
its GPU with device "cuda", which gives every actor one unless num_gpus says otherwise) and
compresses its files with `codec.compress_file`, which writes every .cae atomically.
The driver collects one manifest row per file (source, output, bytes, bpp, status, error)
and writes the manifest Parquet atomically at the end, also when interrupted
(`Interrupted`), so it lists what was done; the Summary has the run's throughput.

Reruns: an existing output is checked whole (`caeadmm.outputs.check_stream`: header, payload
length against the file size, checksum, and the model fingerprint and quality asked for); a
complete one is skipped and its row rebuilt from its header, a damaged one or one made with
another model or quality is compressed again and reported. Files that failed are tried
again; leftover temporary files of an interrupted run (ours only, `caeadmm.files.TEMP_PREFIX`)
are removed. Bad images become "failed" rows, never a failed job.
On a multi-node cluster the inputs, the output directory and the model must be at the same
paths on every node (shared storage), or the model a registered name.
"""

from __future__ import annotations

import io
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from caeadmm import codec, zoo
from caeadmm.devices import DeviceError, resolve
from caeadmm.distributed.session import connect, quiet_data, shutdown_own_ray
from caeadmm.files import is_temp_file, write_atomic
from caeadmm.images import list_images
from caeadmm.inputs import plan_outputs
from caeadmm.lifeline import die_with_parent
from caeadmm.outputs import Wanted, check_stream
from caeadmm.progress import Progress, throughput
from caeadmm.refine import Refinement

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
    redone: int = 0  # damaged outputs of an earlier run, compressed again
    seconds: float = 0.0  # wall clock of the run, from the plan to the manifest
    pixels: int = 0  # of the images this run compressed
    stream_bytes: int = 0  # of the streams this run wrote

    def throughput(self) -> str:
        """The throughput line of this run, as caeadmm compress ends (progress.throughput)."""
        return throughput(self.compressed, self.seconds, self.pixels, self.stream_bytes)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or an `on_row` that raised KeyboardInterrupt) stopped the run; the manifest
    lists what finished. `done` of `total` input files have an output."""

    def __init__(self, done: int, total: int, manifest: Path):
        super().__init__(f"interrupted; {done} of {total} done")
        self.done, self.total, self.manifest = done, total, manifest


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
    refine: Refinement | None = None,
    progress: bool = False,
    on_row: Callable[[dict], None] | None = None,
    quality: float | None = None,
    target_bpp: float | None = None,
    device: str = "cpu",
) -> Summary:
    """Compress every image under `inputs` into `output_dir` (trees mirrored), NAME.cae.

    - model: registered name or checkpoint path (None: the registry's default);
    - concurrency: actors; num_cpus, num_gpus: per actor (num_gpus None: 1 with device
      "cuda", else 0);
    - device: "cpu", or "cuda" (the network on each actor's GPU; DeviceError when the
      cluster has none);
    - manifest: Parquet path (default OUTPUT_DIR/manifest.parquet);
    - refine: refine each image's latent before coding (caeadmm.refine.refinement_for);
    - quality, target_bpp: a variable-rate model's quality, or the bpp to fit
      (codec.compress);
    - progress: a progress bar on stderr; on_row: called with each new manifest row.
    Connects to Ray (`caeadmm.distributed.session.connect`) if this process is not yet.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device == "cpu" and num_gpus:
        raise ValueError("GPUs per actor need device cuda (--device cuda)")
    start = time.perf_counter()
    if device == "cuda":  # refused before anything is planned or written
        connect()
        _cluster_gpus()
    output_dir = Path(output_dir)
    manifest = Path(manifest) if manifest else output_dir / "manifest.parquet"
    pairs, errors = plan_outputs(
        list(inputs), ".cae", lambda root: list_images([root]), output_dir=output_dir
    )
    rows = [_row(str(src), "", error=message) for src, message in errors]
    _remove_temp_files({dst.parent for _, dst in pairs})
    todo, redone = [], 0
    # An existing output counts as done only if made with this model (and quality).
    wanted = None if force else Wanted(zoo.load(model).fingerprint(), model or "the default "
                                       "model", quality if target_bpp is None else None)
    for src, dst in pairs:
        done, damage = (None, None) if force else _done_row(src, dst, wanted)
        if done is not None:
            rows.append(done)
            continue
        if damage is not None:
            redone += 1
            print(f"[compress] {dst} {damage}; compressing it again", file=sys.stderr,
                  flush=True)
        todo.append({"source": str(src), "output": str(dst), "replace": damage is not None})
    skipped = len(rows) - sum(r["status"] == "failed" for r in rows)
    compressed = pixels = stream_bytes = 0
    bar = Progress(len(todo), "compress", "file", enabled=progress)
    results = _run_actors(todo, model, concurrency, num_cpus, num_gpus, force, device,
                          {"refine": refine, "quality": quality, "target_bpp": target_bpp})
    try:
        for row in results:
            rows.append(row)
            if row["status"] == "ok":
                compressed += 1
                pixels += round(8 * row["bytes"] / row["bpp"])
                stream_bytes += row["bytes"]
            bar.update()
            if on_row is not None:
                on_row(row)
    except KeyboardInterrupt:
        bar.close(summary=False)
        results.close()  # Ray Data stops the actors, in its own time ...
        shutdown_own_ray()  # ... or at once, when this process started Ray
        _remove_temp_files({dst.parent for _, dst in pairs})  # of actors stopped mid-write
        rows += _finished_unreported(todo, rows)  # written by an actor, not yet collected
        _write_manifest(manifest, rows)
        raise Interrupted(sum(r["status"] == "ok" for r in rows), len(pairs), manifest) from None
    except BaseException:
        bar.close(summary=False)
        _write_manifest(manifest, rows)  # what finished before the error
        raise
    bar.close()
    _write_manifest(manifest, rows)
    failed = sum(r["status"] == "failed" for r in rows)
    return Summary(compressed=compressed, skipped=skipped, failed=failed, manifest=manifest,
                   redone=redone, seconds=time.perf_counter() - start, pixels=pixels,
                   stream_bytes=stream_bytes)


class _Compressor:
    """Ray Data actor: holds one model, compresses a batch of (source, output) rows."""

    def __init__(self, model: str | None, overwrite: bool, threads: int,
                 refine: Refinement | None = None, quality: float | None = None,
                 target_bpp: float | None = None, device: str = "cpu"):
        import torch

        die_with_parent(os.getppid(), kernel_signal=False)  # the raylet: gone with the driver
        torch.set_num_threads(threads)
        # "cuda" works only where Ray gave this actor a GPU (DeviceError otherwise)
        self.model = zoo.load(model).to(resolve(device))
        self.overwrite = overwrite
        self.encode = {"refine": refine, "quality": quality, "target_bpp": target_bpp}

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = [self._one(str(s), str(d), bool(r)) for s, d, r in
                zip(batch["source"], batch["output"], batch["replace"], strict=True)]
        return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)

    def _one(self, src: str, dst: str, replace: bool) -> dict:
        try:
            nbytes, bpp, _ = codec.compress_file(src, dst, self.model, **self.encode,
                                                       overwrite=self.overwrite or replace)
        except Exception as exc:  # a bad file must never stop the corpus
            return _row(src, "", error=f"{type(exc).__name__}: {' '.join(str(exc).split())}")
        return _row(src, dst, nbytes, bpp)


def _run_actors(
    todo: list[dict], model: str | None, concurrency: int, num_cpus: float, num_gpus: float | None,
    overwrite: bool, device: str, encode: dict[str, Any],
) -> Iterator[dict]:
    if not todo:
        return
    connect()  # nothing to do when the caller (or jobs/compress.py) is connected already
    if device == "cuda":
        _cluster_gpus()
        num_gpus = 1 if num_gpus is None else num_gpus
    num_gpus = num_gpus or 0
    ds = ray.data.from_items(todo, override_num_blocks=min(len(todo), 2000))
    with warnings.catch_warnings():
        # max_restarts has no named parameter in Ray 2.60, so it goes through the deprecated
        # ray_remote_args; this run asks for it on purpose.
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        ds = _map(ds, model, concurrency, num_cpus, num_gpus, overwrite,
                  {**encode, "device": device}, len(todo))
    with quiet_data():
        yield from ds.iter_rows()


def _cluster_gpus() -> float:
    """The GPUs of the connected Ray cluster; DeviceError when it has none."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus <= 0:
        raise DeviceError("--device cuda: the Ray cluster has no GPUs (ray status lists its "
                          "resources); use --device cpu")
    return gpus


def _map(ds: ray.data.Dataset, model: str | None, concurrency: int, num_cpus: float,
         num_gpus: float, overwrite: bool, encode: dict[str, Any],
         n: int) -> ray.data.Dataset:
    return ds.map_batches(
        _Compressor,
        fn_constructor_kwargs={
            "model": model, "overwrite": overwrite, "threads": max(1, int(num_cpus)),
            **encode,  # refine, quality, target_bpp (compress_file's options), device
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(concurrency, n)),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        # No actor restarts: Ray Data passes its actors' arguments through the object store,
        # where a restart may not find them (Ray logs a core_worker error line saying so).
        # An actor that dies ends the job; a rerun resumes where it stopped.
        max_restarts=0,
    )


def _done_row(
    src: Path, dst: Path, wanted: Wanted | None = None
) -> tuple[dict | None, str | None]:
    """(the manifest row of a complete output an earlier run wrote, None) when there is one
    (made as `wanted` asks, when given); (None, why) for a damaged output of ours or one made
    with another model or quality; (None, None) when there is none."""
    existing = check_stream(dst, wanted)
    if existing.state == "missing":
        return None, None
    if existing.state == "damaged":
        return None, f"is damaged ({existing.reason})"
    if existing.state == "stale":
        return None, f"was {existing.reason}"
    if existing.state == "foreign":
        return _row(str(src), "", error=f"{dst} exists and is not a .cae file "
                    f"({existing.reason}); rerun with --force to replace it"), None
    header, size = existing.header, existing.size
    return _row(str(src), str(dst), size, 8 * size / (header.width * header.height)), None


def _finished_unreported(todo: list[dict], rows: list[dict]) -> list[dict]:
    """Rows for outputs of `todo` that are complete on disk but not among `rows`."""
    reported = {r["source"] for r in rows}
    found = []
    for item in todo:
        if item["source"] not in reported:
            row, _ = _done_row(Path(item["source"]), Path(item["output"]))
            if row is not None and row["status"] == "ok":
                found.append(row)
    return found


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
