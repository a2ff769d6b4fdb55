"""Distributed training on Ray Train: DDP, the ADMM consensus step, checkpoints, resume.

`fit(cfg)` is the one place where the TorchTrainer is configured: workers and their
resources (ScalingConfig), run name and storage (RunConfig, with FailureConfig and
CheckpointConfig) and the Ray Data datasets of `caeadmm.data.read_patches`. `train_func` is
the body every worker runs, in the style of Ray Train's own examples:

1. Build the CAE, the ADMM state and Adam as the single-process loop does
   (`caeadmm.training`), then restore the checkpoint Ray Train hands back, if any: after a
   worker failure (FailureConfig) and when a run is submitted again with the same name and
   storage path, `ray.train.get_checkpoint()` returns the latest one, with the weights,
   mask, Z, U, optimizer, step and RNG in the project's checkpoint format.
2. Wrap the model with `ray.train.torch.prepare_model` (DDP when there are 2+ workers).
3. Run `training.train_step` on batches of this worker's shard of the "train" dataset,
   following the schedule (warm-up, ADMM, hard prune, masked fine-tune).
4. Consensus: every `admm_every` steps the latent sums and counts that each worker gathered
   are all-reduced (SUM) over the process group Ray Train set up, and every rank calls
   `admm.update` on the same totals, so all hold the same Z and U. With `debug`, an
   all-gather of checksums asserts it after every update.
5. Every `checkpoint_every` steps and at the end, rank 0 writes `checkpoint.pt`
   (caeadmm.checkpoint, so `load_model` reads it) and reports it with `ray.train.report`;
   the final one also holds the exported `model.pt`.

Logs: every `log_every` steps the training metrics are averaged over the window and the
workers, and rank 0 measures a fixed validation batch that the driver took from the val
split (PSNR, MS-SSIM, the zero fraction of its latent, the mask density and the real coded
bpp from `coding.encoded_bits`), appends a
row to `<storage_path>/<run_name>/log.csv` and sends a progress line to the driver, which
prints it. Ray's own output stays in Ray's log files (the driver connects with
log_to_driver=False, see `jobs/train.py`).

Data order is not part of a checkpoint: a resumed run starts a new pass over its shard.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.data import DataContext
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

import coding
from caeadmm.admm import ADMM
from caeadmm.checkpoint import (
    export_model,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from caeadmm.config import TrainConfig
from caeadmm.data import ROW_GROUP_ROWS, iter_patch_batches, load_manifest, read_patches
from caeadmm.images import to_uint8
from caeadmm.metrics import PSNR_CAP_DB, quality_metrics
from caeadmm.model import CAE, unwrap
from caeadmm.training import (
    PHASES,
    Schedule,
    evaluate,
    hard_prune,
    make_optimizer,
    maybe_inject_failure,
    new_admm,
    train_step,
)

CHECKPOINT_FILE = "checkpoint.pt"  # inside each reported checkpoint directory
MODEL_FILE = "model.pt"  # the inference-only export, in the final checkpoint
LOG_FILE = "log.csv"  # in the run directory, and copied into every checkpoint
# Rows mixed before batching. A shard's row group holds 16 crops of each of 16 images in a
# row, so a buffer of a few batches gave batches of 2-4 images: a 150-step fine-tune then
# lost 1.75 dB of validation PSNR, against 0.8 dB for the single-process loop's random crops;
# with this buffer (four row groups, 64 images, 50 MB at 128 px) it lost 0.65 dB
# (docs/results.md, "How the models were trained").
SHUFFLE_BUFFER_ROWS = 4 * ROW_GROUP_ROWS
DEBUG_DIR = "debug"  # per-update consensus records (debug mode, local storage only)

# Defaults of `fit`: worker failures survived per run, checkpoints kept on storage.
MAX_FAILURES = 3
KEEP_CHECKPOINTS = 3

TRAIN_COLUMNS = [
    "loss", "distortion", "penalty", "mse", "psnr", "ssim", "msssim", "lr", "grad_norm",
]
LOG_COLUMNS = [
    "step", "phase", *TRAIN_COLUMNS, "admm_residual", "energy_outside_top_k",
    "val_psnr", "val_msssim", "val_bpp", "latent_zero_fraction", "mask_density",
    "patches_per_s", "elapsed_s",
]


class TrainRayError(ValueError):
    """A Ray training run cannot start as configured (see the message)."""


class ConsensusError(RuntimeError):
    """Workers hold different Z or U after an ADMM update (debug check)."""


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
    set-up and ray.train.TrainingFailedError when the run fails more than `max_failures`
    times.
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


@contextlib.contextmanager
def quiet_data() -> Iterator[None]:
    """No Ray Data progress bars, banners, INFO lines or warnings (such as "Progress bars
    disabled") on the driver's terminal while the datasets are set up and run; Ray Data's
    log file keeps everything."""
    ctx = DataContext.get_current()
    saved = ctx.enable_progress_bars, ctx.print_on_execution_start
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    consoles = [
        (h, h.level) for h in logging.getLogger("ray.data").handlers
        if type(h) is not logging.FileHandler and isinstance(h, logging.StreamHandler)
    ]
    for handler, _ in consoles:
        handler.setLevel(logging.ERROR)
    try:
        yield
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        for handler, level in consoles:
            handler.setLevel(level)


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
    """The training loop every Ray Train worker runs; returns rank 0's summary.

    config: {"cfg": TrainConfig.to_dict(), "debug": bool, "val": the validation batch (or
    None), "progress": a ray.util.queue.Queue for progress lines (or None)}.
    """
    cfg = TrainConfig.from_dict(config["cfg"])
    debug = bool(config.get("debug", False))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    log = _Logger(rank, config.get("progress"))
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = get_device()
    schedule = Schedule(cfg)
    model, admm, optimizer, start = _training_state(cfg, rank, device, log)
    debug_dir = _run_dir(cfg) / DEBUG_DIR if debug and _run_dir(cfg) else None
    if debug_dir is not None and start > 0:
        path = debug_dir / f"resume_step{start:07d}_rank{rank}.pt"
        _save_record(path, admm, unwrap(model), step=start)
    log_path = _log_path(cfg, rank, start)
    val = config.get("val") if rank == 0 else None
    batches = _endless_batches(ray.train.get_dataset_shard("train"), cfg)

    window: list[dict[str, float]] = []
    admm_stats = {"admm_residual": math.nan, "energy_outside_top_k": math.nan}
    last_row: dict[str, float] = {}
    train_seconds, t_start = 0.0, time.perf_counter()
    for step in range(start, schedule.total):
        t_step = time.perf_counter()
        if rank == world - 1:  # one worker dies; Ray Train then restarts the whole group
            maybe_inject_failure(cfg, step, resumed=start > 0)
        if schedule.prune_at(step):
            _prune(model, admm, val, log)
        window.append(train_step(model, admm, optimizer, next(batches), step, cfg, schedule))
        if schedule.update_due(step):
            admm_stats = consensus_update(admm, world, rank, step, debug, debug_dir)
        train_seconds += time.perf_counter() - t_step
        done = step + 1
        if done % cfg.log_every == 0 or done == schedule.total:
            row = _window_means(window, world, device) | admm_stats
            row["patches_per_s"] = len(window) * cfg.batch_size * world / max(train_seconds, 1e-9)
            window, train_seconds = [], 0.0
            if rank == 0:
                row |= _validate(unwrap(model), val)
                row |= {"step": done, "elapsed_s": time.perf_counter() - t_start}
                _append_row(log_path, row)
                log(_progress_line(row, schedule.total))
            last_row = row
        if done == schedule.total or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
            _report(model, admm, optimizer, cfg, done, rank, last_row, start, log_path)

    if start >= schedule.total:
        log(f"run {cfg.run_name} had already finished at step {start}: nothing to train")
        ray.train.report({"step": start, "start_step": start})
    return {"start_step": start, "steps": schedule.total, **last_row}


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


def _training_state(
    cfg: TrainConfig, rank: int, device: torch.device, log: _Logger
) -> tuple[torch.nn.Module, ADMM, torch.optim.Optimizer, int]:
    """(model prepared for DDP, ADMM, optimizer, first step): fresh, from `init_from`, or
    restored from the run's latest checkpoint."""
    torch.manual_seed(cfg.seed)  # the same initial weights everywhere (DDP broadcasts anyway)
    net = CAE(cfg.model).to(device)
    admm = new_admm(cfg, device)
    start, ckpt = 0, _latest_checkpoint()
    if ckpt is not None:
        start = restore_training_state(ckpt, model=net, admm=admm, restore_rng=rank == 0)
        log(f"resumed from the checkpoint at step {start} (run {cfg.run_name})")
    elif cfg.init_from:
        _init_weights(net, cfg)
        log(f"initialised weights from {cfg.init_from}")
    if ckpt is None or rank > 0:
        # Each rank its own stochastic-rounding stream; rank 0 of a resumed run keeps its own.
        torch.manual_seed(_seed(cfg.seed, rank, start))
    model = prepare_model(net)
    optimizer = make_optimizer(model, cfg)
    if ckpt is not None and ckpt["optimizer"] is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    return model, admm, optimizer, start


def _latest_checkpoint() -> dict | None:
    """The training state of Ray Train's latest checkpoint of this run, or None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        return load_checkpoint(Path(folder) / CHECKPOINT_FILE)


def _init_weights(net: CAE, cfg: TrainConfig) -> None:
    init = load_checkpoint(cfg.init_from)
    if init["model_config"] != cfg.model.to_dict():
        raise TrainRayError(
            f"init_from model config {init['model_config']} differs from this run's "
            f"{cfg.model.to_dict()}"
        )
    device = next(net.parameters()).device
    net.load_state_dict({k: v.to(device) for k, v in init["model"].items()})


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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


def consensus_update(
    admm: ADMM,
    world: int,
    rank: int,
    step: int,
    debug: bool = False,
    debug_dir: Path | None = None,
) -> dict[str, float]:
    """One ADMM update from the latents of ALL workers; returns its diagnostics.

    All-reduce (SUM) the latent sums and counts each worker gathered since the last update,
    then every rank runs the same deterministic `admm.update` on the same totals. With
    `debug`, an all-gather of checksums of Z and U then checks that every rank agrees, and
    `debug_dir` (if given) receives this rank's inputs and results.
    """
    local_sums, local_count = admm.pending()
    sums = local_sums.clone()
    count = torch.tensor([local_count], dtype=torch.float64, device=sums.device)
    if world > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
    total = int(count.item())
    stats = {
        "admm_residual": admm.residual(sums[0] / max(total, 1)),
        "energy_outside_top_k": admm.energy_outside(sums[1] / max(total, 1)),
    }
    admm.update(sums, total)
    if debug:
        check_consensus(admm, world)
    if debug_dir is not None:
        record = {"local_sums": local_sums.cpu(), "local_count": local_count, "world": world}
        record["node_id"] = ray.get_runtime_context().get_node_id()
        path = debug_dir / f"update{admm.updates:04d}_rank{rank}.pt"
        _save_record(path, admm, None, step, record)
    return stats


def check_consensus(admm: ADMM, world: int) -> None:
    """Raise ConsensusError unless every rank holds bit-identical Z and U."""
    if world == 1:
        return
    mine = torch.tensor(_checksum(admm.Z, admm.U), dtype=torch.int64, device=admm.device)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    sums = [tuple(int(v) for v in g.tolist()) for g in gathered]
    if len(set(sums)) != 1:
        raise ConsensusError(
            f"after ADMM update {admm.updates} the ranks hold different Z/U (checksums by "
            f"rank: {sums})"
        )


def _checksum(*tensors: torch.Tensor) -> list[int]:
    """Two int64 words of sha256 over the tensors' bytes (non-negative, so they fit)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    digest = h.digest()
    return [int.from_bytes(digest[i : i + 8], "little") >> 1 for i in (0, 8)]


def _save_record(
    path: Path, admm: ADMM, net: CAE | None, step: int, extra: dict | None = None
) -> None:
    """Debug record: Z, U (and the mask) of this rank at `step`, with `extra`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"step": step, "updates": admm.updates, "Z": admm.Z.cpu(), "U": admm.U.cpu()}
    if net is not None:
        record["mask"] = None if net.mask is None else net.mask.cpu()
    torch.save(record | (extra or {}), path)


def _prune(model: torch.nn.Module, admm: ADMM, val: torch.Tensor | None, log: _Logger) -> None:
    """The hard prune (every rank), with its jump on the validation batch (rank 0's log)."""
    before = evaluate(model, val) if val is not None and log.rank == 0 else None
    hard_prune(model, admm)
    if before is not None:
        after = evaluate(model, val)
        log(
            f"hard prune: kept {admm.k} slots; validation PSNR {before['psnr']:.2f} -> "
            f"{after['psnr']:.2f} dB"
        )
    else:
        log(f"hard prune: kept {admm.k} slots")


def _window_means(
    window: list[dict[str, float]], world: int, device: torch.device
) -> dict[str, float]:
    """Mean of each training metric over the window's steps and over all workers."""
    values = [[m[k] for k in TRAIN_COLUMNS] for m in window]
    means = torch.tensor(values, dtype=torch.float64, device=device).mean(dim=0)
    if world > 1:  # on the worker's device: NCCL reduces GPU tensors only
        dist.all_reduce(means, op=dist.ReduceOp.SUM)
        means /= world
    row = dict(zip(TRAIN_COLUMNS, means.tolist(), strict=True))
    row["phase"] = window[-1]["phase"]
    return row


@torch.no_grad()
def _validate(net: CAE, val: torch.Tensor | None) -> dict[str, float]:
    """Inference metrics of the validation batch: PSNR and MS-SSIM of the 8-bit decoded
    patches, zero fraction of the rounded (masked) latent, mask density, and the real coded
    bpp of the kept symbols, coded as the codec codes the tiles of one image."""
    density = 1.0 if net.mask is None else float(net.mask.float().mean())
    if val is None or len(val) == 0:
        nan = math.nan
        return {"val_psnr": nan, "val_msssim": nan, "val_bpp": nan,
                "latent_zero_fraction": nan, "mask_density": density}  # fmt: skip
    device = next(net.parameters()).device
    symbols = net.encode(val.to(device)).cpu()
    decoded = net.decode(symbols.to(device)).cpu()
    kept = net.mask.cpu() if net.mask is not None else torch.ones(symbols.shape[1:], dtype=bool)
    bits = coding.encoded_bits(symbols[:, kept].numpy().ravel())
    reference, output = to_uint8(val), to_uint8(decoded)
    quality = [quality_metrics(r, o) for r, o in zip(reference, output, strict=True)]
    n, _, h, w = val.shape
    return {
        "val_psnr": float(np.mean([min(q["psnr"], PSNR_CAP_DB) for q in quality])),
        "val_msssim": float(np.mean([q["ms_ssim"] for q in quality])),
        "val_bpp": bits / (n * h * w),
        "latent_zero_fraction": float((symbols == 0).float().mean()),
        "mask_density": density,
    }


def _report(
    model: torch.nn.Module,
    admm: ADMM,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    step: int,
    rank: int,
    row: dict[str, float],
    start: int,
    log_path: Path | None,
) -> None:
    """Checkpoint through ray.train.report: rank 0 writes the files, every rank reports."""
    metrics = {"step": step, "start_step": start, **row}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(
            Path(tmp) / CHECKPOINT_FILE, model=model, admm=admm, optimizer=optimizer,
            step=step, config=cfg, extra={"metrics": metrics},
        )
        if step == cfg.total_steps():
            export_model(path, Path(tmp) / MODEL_FILE)
        if log_path is not None and log_path.exists():
            shutil.copy(log_path, Path(tmp) / LOG_FILE)
        ray.train.report(
            metrics,
            checkpoint=Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_{step:07d}",
        )


# ---------------------------------------------------------------------------------------------
# The CSV log and the progress line (rank 0)


def _log_path(cfg: TrainConfig, rank: int, start: int) -> Path | None:
    """Rank 0's CSV log, cut back to `start` on resume (rows a crashed attempt wrote after its
    last checkpoint go). On remote storage it lives in a local temporary folder and travels
    inside the checkpoints."""
    if rank != 0:
        return None
    folder = _run_dir(cfg) or Path(tempfile.gettempdir()) / "caeadmm" / cfg.run_name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOG_FILE
    if start == 0:
        path.unlink(missing_ok=True)
    elif path.exists():
        with path.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(float(r["step"])) <= start]
        path.unlink()
        for r in rows:
            _append_row(path, r)
    return path


def _append_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _progress_line(row: dict[str, float], total: int) -> str:
    phase = PHASES[int(round(row["phase"]))]
    return (
        f"step {int(row['step'])}/{total} [{phase}] loss {row['loss']:.2f} "
        f"train psnr {row['psnr']:.2f} | val psnr {row['val_psnr']:.2f} "
        f"ms-ssim {row['val_msssim']:.4f} bpp {row['val_bpp']:.3f} "
        f"zeros {100 * row['latent_zero_fraction']:.1f}% mask {100 * row['mask_density']:.1f}% "
        f"| {row['patches_per_s']:.1f} patches/s"
    )
