"""Distributed training on Ray Train: a thin driver of `caeadmm.train_loop` on DDP workers.

`fit(cfg)` is the one place where the TorchTrainer is configured: workers and their
resources (ScalingConfig), run name and storage (RunConfig, with FailureConfig and
CheckpointConfig) and the Ray Data datasets of `distributed.shards.read_patches`.
`train_func` is the body every worker runs, in the style of Ray Train's own examples: it
hands the loop this worker's shard of the "train" dataset, its device, `prepare_model` (DDP
when there are 2+ workers), the checkpoint Ray Train gives back (after a worker failure, or
when a run is submitted again with the same name and storage path) and a report callback.
The loop does the rest, including the ADMM consensus (an all-reduce over the process group
Ray Train set up).

Every `checkpoint_every` steps and at the end rank 0 writes `checkpoint.pt` (the final one
with the exported `model.pt`) and a copy of the run log into a folder it reports with
`ray.train.report`. Rank 0's run log is `<storage_path>/<run_name>/log.csv`; it measures the
fixed validation batch that the driver took from the val split, and its progress lines go
to the driver, which prints them. Ray's own output stays in Ray's log files (the driver
connects with log_to_driver=False, see `jobs/train.py`).

Data order is not part of a checkpoint: a resumed run starts a new pass over its shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    Result,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer, get_device, prepare_model
from ray.util.queue import Empty, Queue

from caeadmm import train_loop
from caeadmm.checkpoint import (
    CheckpointError,
    export_model,
    init_weights,
    load_checkpoint,
    newest_complete_checkpoint,
)
from caeadmm.config import TrainConfig
from caeadmm.distributed.session import quiet_data
from caeadmm.distributed.shards import (
    ROW_GROUP_ROWS,
    iter_patch_batches,
    load_manifest,
    read_patches,
)
from caeadmm.train_loop import CHECKPOINT_FILE, LOG_FILE, MODEL_FILE

# Rows mixed before batching: four row groups (64 images, 50 MB at 128 px), as a row group
# holds each image's crops in a row (docs/history/training-rounds.md, "Stage 2").
SHUFFLE_BUFFER_ROWS = 4 * ROW_GROUP_ROWS
DEBUG_DIR = "debug"  # per-update consensus records (debug mode, local storage only)

# Defaults of `fit`: worker failures survived per run, checkpoints kept on storage.
MAX_FAILURES = 3
KEEP_CHECKPOINTS = 3


class TrainRayError(ValueError):
    """A Ray training run cannot start as configured (see the message)."""


# ---------------------------------------------------------------------------------------------
# Driver side


def fit(
    cfg: TrainConfig,
    *,
    debug: bool = False,
    max_failures: int = MAX_FAILURES,
    keep_checkpoints: int | None = KEEP_CHECKPOINTS,
    log: Callable[[str], None] | None = print,
) -> Result:
    """Train `cfg` on the Ray cluster this process is connected to; returns Ray's Result.

    The run lives in `<storage_path>/<run_name>` (a local path is made absolute): submitting
    the same name again resumes from its latest checkpoint, also after the run finished (it
    then ends at once). `debug` checks after every ADMM update that all workers hold the same
    Z and U and, on local storage, saves each worker's consensus inputs under `debug/`.
    `log` receives rank 0's progress lines (None: silent). Raises TrainRayError for a bad
    set-up, ConfigError for an `init_from` model of another config, and
    ray.train.TrainingFailedError when the run fails more than `max_failures` times.
    """
    if not cfg.shards:
        raise TrainRayError(
            "Ray training reads Parquet patch shards: set shards=<folder> "
            "(cut them with jobs/prepare_data.py)"
        )
    patch_size = load_manifest(cfg.shards)["patch_size"]
    if patch_size != cfg.model.patch_size:
        raise TrainRayError(
            f"the shards in {cfg.shards} hold {patch_size} px patches but the model is set "
            f"up for model.patch_size={cfg.model.patch_size}"
        )
    if cfg.init_from:
        # Workers run in another directory: a relative path would not be found there.
        if not Path(cfg.init_from).is_file():
            raise TrainRayError(f"init_from: no file at {cfg.init_from}")
        cfg = dataclasses.replace(cfg, init_from=str(Path(cfg.init_from).resolve()))
        init_weights(cfg)  # a model of another config: refused here, not on workers
    cfg = dataclasses.replace(cfg, storage_path=storage_path(cfg.storage_path))
    with quiet_data(), _ProgressRelay(log) as relay:
        train_ds, val_ds = read_patches(cfg.shards, seed=cfg.seed)
        val = _validation_batch(val_ds, cfg.eval_patches)
        trainer = TorchTrainer(
            train_func,
            train_loop_config={
                "cfg": cfg.to_dict(), "debug": debug, "val": val, "progress": relay.queue,
            },
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers,
                use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker},
            ),
            run_config=RunConfig(
                name=cfg.run_name,
                storage_path=cfg.storage_path,
                failure_config=FailureConfig(max_failures=max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
                logging_config=LoggingConfig(log_level="WARNING"),
            ),
            datasets={"train": train_ds},
        )
        return trainer.fit()


def _validation_batch(val_ds: ray.data.Dataset, n: int) -> torch.Tensor | None:
    """The first `n` validation patches as float32 NCHW: the fixed batch rank 0 measures at
    every log step (None when there are none or n is 0)."""
    if n == 0:
        return None
    return next(iter(iter_patch_batches(val_ds, n, device="cpu")), None)


def storage_path(path: str) -> str:
    """A local storage path made absolute (Ray needs that); URIs (s3://...) unchanged."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def _run_dir(cfg: TrainConfig) -> Path | None:
    """The run's directory on local storage; None for remote (URI) storage."""
    if "://" in cfg.storage_path:
        return None
    return Path(storage_path(cfg.storage_path)) / cfg.run_name


class _ProgressRelay:
    """Carries rank 0's progress lines to the driver, which prints them.

    The driver connects with log_to_driver=False to keep Ray's own messages out of the
    terminal, which also silences the workers' prints; a queue (a small Ray actor) carries
    just our lines instead.
    """

    def __init__(self, log: Callable[[str], None] | None):
        self.log = log
        self.queue = Queue(actor_options={"num_cpus": 0}) if log else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)

    def __enter__(self) -> _ProgressRelay:
        if self.queue is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.queue is None:
            return
        self._stop.set()
        self._thread.join()
        while not self.queue.empty():
            self.log(self.queue.get_nowait())
        self.queue.shutdown()

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                self.log(self.queue.get(timeout=0.5))
            except Empty:
                continue


# ---------------------------------------------------------------------------------------------
# Worker side


def train_func(config: dict[str, Any]) -> dict[str, Any]:
    """The body every Ray Train worker runs: `train_loop.train` on this worker's shard;
    returns the run's summary.

    config: {"cfg": TrainConfig.to_dict(), "debug": bool, "val": the validation batch (or
    None), "progress": a ray.util.queue.Queue for progress lines (or None)}.
    """
    cfg = TrainConfig.from_dict(config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    log = _Logger(rank, config.get("progress"))
    ckpt = _latest_checkpoint(_run_dir(cfg), log)
    if ckpt is not None:
        log(f"resumed from the checkpoint at step {ckpt['step']} (run {cfg.run_name})")
    run_dir = _run_dir(cfg)
    debug = None
    if config.get("debug"):
        node = ray.get_runtime_context().get_node_id()
        debug = train_loop.Debug(run_dir / DEBUG_DIR if run_dir else None, {"node_id": node})
    log_path = _log_path(cfg) if rank == 0 else None
    return train_loop.train(
        cfg,
        _endless_batches(ray.train.get_dataset_shard("train"), cfg),
        device=get_device(),
        val=config.get("val") if rank == 0 else None,
        report=partial(_report, final_step=cfg.total_steps(), rank=rank, log_path=log_path),
        log_path=log_path,
        resume=ckpt,
        wrap=prepare_model,
        log=log,
        debug=debug,
    )


class _Logger:
    """Rank 0's progress lines: to the driver's queue when there is one, and to stdout (the
    worker's log file); other ranks say nothing."""

    def __init__(self, rank: int, queue: Queue | None):
        self.rank = rank
        self.queue = queue

    def __call__(self, line: str) -> None:
        if self.rank != 0:
            return
        print(line, flush=True)
        if self.queue is not None:
            with contextlib.suppress(ray.exceptions.RayError):
                self.queue.put_nowait(line)


def _latest_checkpoint(run_dir: Path | None, log: Callable[[str], None]) -> dict | None:
    """The training state to resume from: the newer of Ray Train's latest checkpoint of this
    run and the newest complete one on local storage (Ray's record can lag behind the disk
    when a job is stopped between writing a checkpoint and reporting it, and a file on disk
    can be torn); None for none. Says so in `log` when the disk overrules Ray's record."""
    recorded = unreadable = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            try:
                recorded = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
            except CheckpointError as exc:
                unreadable = exc
                log(f"Ray Train's latest checkpoint does not load ({exc}); looking on disk")
    on_disk = newest_complete_checkpoint(run_dir, CHECKPOINT_FILE) if run_dir else None
    if unreadable is not None and on_disk is None:
        raise unreadable  # no complete checkpoint anywhere: do not start the run afresh
    if on_disk is not None and (recorded is None or on_disk["step"] > recorded["step"]):
        if recorded is not None:
            log(f"Ray Train recorded step {recorded['step']}; on disk: step {on_disk['step']}")
        return on_disk
    return recorded


def _endless_batches(shard: Any, cfg: TrainConfig) -> Iterator[torch.Tensor]:
    """Full batches of this worker's shard, pass after pass.

    Ray Train splits "train" equally (streaming_split(equal=True)), so every worker gets the
    same number of batches per pass and the workers step in lockstep.
    """
    while True:
        empty = True
        for batch in iter_patch_batches(
            shard, cfg.batch_size, shuffle_buffer=SHUFFLE_BUFFER_ROWS, drop_last=True
        ):
            empty = False
            yield batch
        if empty:
            raise TrainRayError(
                f"a worker's share of the training patches is smaller than batch_size="
                f"{cfg.batch_size}: cut more patches or use fewer workers"
            )


def _log_path(cfg: TrainConfig) -> Path:
    """Rank 0's run log: in the run directory, or on remote storage in a local temporary
    folder (it travels inside the checkpoints)."""
    folder = _run_dir(cfg) or Path(tempfile.gettempdir()) / "caeadmm" / cfg.run_name
    return folder / LOG_FILE


def _report(
    step: int,
    metrics: dict[str, Any],
    save: train_loop.Save | None,
    *,
    final_step: int,
    rank: int,
    log_path: Path | None,
) -> None:
    """The loop's report callback: rank 0 writes the checkpoint folder, every rank reports."""
    if rank != 0 or save is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = save(Path(tmp) / CHECKPOINT_FILE)
        if step == final_step:
            export_model(path, Path(tmp) / MODEL_FILE)
        if log_path is not None and log_path.exists():
            shutil.copy(log_path, Path(tmp) / LOG_FILE)
        ray.train.report(
            metrics,
            checkpoint=Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_{step:07d}",
        )
