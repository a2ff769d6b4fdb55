"""The training loop of CAE-ADMM, for one process or many workers: `train` reads top to bottom.

A driver hands `train` its batches, device, validation patches and a report callback;
`train` does the rest:

    seed; build the CAE, the ADMM state and Adam; resume a checkpoint or start from init_from
    for step in range(start, schedule.total):
        if schedule.prune_at(step): hard_prune      # mask := ADMM support, jump measured
        train_step                                   # forward, loss, backward, Adam
        if schedule.update_due(step): admm_update    # latent sums all-reduced over ranks
        every log_every steps: a log.csv row and a progress line
        every checkpoint_every steps and at the end: report(step, metrics, save)
    with entropy_fit_steps: after the last step, fit the entropy model alone to the symbols
    of the last ENTROPY_FIT_BATCHES batches (fit_entropy_model), before the final report

One step reads in four files: this one (the loop, the schedule, `train_step`),
caeadmm/model.py (the network), caeadmm/losses.py (the objective) and caeadmm/admm.py (the
penalty, and `admm_update`, the consensus step). Beside them: caeadmm/validation.py (the
measurements), caeadmm/run_log.py (log.csv and the progress lines), caeadmm/checkpoint.py
(save, resume, init_from) and caeadmm/entropy_fit.py (the final fit).

Drivers: `caeadmm.train_local` (one process, a folder of images) and
`caeadmm.distributed.train` (Ray Train workers with DDP). The only distributed code here is
torch.distributed (`sum_over_ranks`, `gather_from_ranks`, which the loop hands to the ADMM
and entropy-fit code): with a process group of two or more ranks the ADMM sums, the
entropy-fit histograms and the logged means are all-reduced, without one (or with one
rank) nothing is. Ray is never imported.

Schedule (steps count optimizer steps from 0, W = warmup, A = admm, F = finetune):
- [0, W): warm-up, MSE only, no penalty;
- [W, W + A): ADMM phase, full distortion + penalty (off until the first projection);
- [W + A, W + A + F): masked fine-tune, full distortion, no penalty; the mask is frozen
  from the ADMM support just before step W + A.
ADMM updates run after steps W - 1, W - 1 + admm_every, ... and after W + A - 1 (the last
ADMM step); latents are accumulated over the admm_every steps before each, so the first
projection (at the end of warm-up) already gives Z and U a meaningful start and the mask
comes from the latest projection. Learning rate: `lr` until the fine-tune, then a cosine
decay to lr * lr_final_scale over it. docs/training.md has the measurements behind it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from caeadmm.admm import ADMM, admm_update, check_consensus, hard_prune
from caeadmm.channel_rank import rank_channels
from caeadmm.checkpoint import init_weights, load_into, restore_training_state, save_checkpoint
from caeadmm.config import PRECISIONS, TrainConfig
from caeadmm.entropy_fit import ENTROPY_FIT_BATCHES, fit_entropy_model
from caeadmm.losses import compute_loss
from caeadmm.model import CAE
from caeadmm.run_log import (
    ADMM_COLUMNS,
    PHASES,
    TRAIN_COLUMNS,
    RunLog,
    admm_line,
    entropy_fit_line,
    progress_line,
    prune_line,
)
from caeadmm.validation import validate, validation_row

# A run's files, the same for both drivers: in the output folder (local) or in every
# reported checkpoint folder (Ray; the run log also in the run folder).
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"  # the inference-only export of the final checkpoint
LOG_FILE = "log.csv"  # caeadmm.run_log.RunLog

# save(path) writes the full training checkpoint of the current step to `path`.
Save = Callable[[Path], Path]
# report(step, metrics, save): the driver's checkpoint callback; save is None when the run
# had already finished (nothing new to save).
Report = Callable[[int, dict[str, Any], Save | None], None]


class InjectedFailure(RuntimeError):
    """Raised on purpose at `fail_at_step`, to test recovery from a crashed run."""


@dataclass
class Debug:
    """Debug mode: after every ADMM update, check that all ranks hold the same Z and U; with
    `folder`, every rank also saves its consensus inputs and results there."""

    folder: Path | None = None
    tags: dict[str, Any] = field(default_factory=dict)  # added to every record (a node id)


def train(
    cfg: TrainConfig,
    data: Iterable[torch.Tensor],
    *,
    device: torch.device,
    val: torch.Tensor | None,
    report: Report,
    log_path: Path | None,
    resume: dict | None = None,
    wrap: Callable[[CAE], nn.Module] | None = None,
    log: Callable[[str], None] = print,
    debug: Debug | None = None,
    log_validation: bool = True,
) -> dict[str, Any]:
    """Train (or resume) the run `cfg` describes; returns its summary (also in checkpoints).

    data: the batches (B, 3, P, P) in [0, 1] of the steps from the resumed step on.
    val: fixed validation patches (N, 3, P, P), measured around the hard prune, at the end
      and, with `log_validation`, at every log step (the VAL_COLUMNS of the log: coded bpp
      and 8-bit quality, which cost CPU time); None: not measured (ranks other than 0).
    report: called every `checkpoint_every` steps and at the end (see `Report`).
    log_path: the CSV run log (None: none, e.g. on ranks other than 0).
    resume: a loaded checkpoint to continue from. wrap: applied to the CAE before the
      optimizer is built (DDP). log: progress lines. debug: see `Debug`.
    """
    rank, world = rank_and_world()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    schedule = Schedule(cfg)

    # Model, ADMM state and optimizer: fresh, from init_from, or as the checkpoint left them.
    net = CAE(cfg.model).to(device)
    admm = new_admm(cfg, device)
    start, summary, fresh = 0, {}, []
    if resume is not None:
        start = restore_training_state(resume, model=net, admm=admm, restore_rng=rank == 0)
        summary = resume["extra"].get("summary", {})
    elif cfg.init_from:
        fresh = load_into(net, init_weights(cfg, device))
        log(f"initialised weights from {cfg.init_from}"
            + (f"; new (not in it): {', '.join(fresh)}" if fresh else ""))
    if world > 1 and (resume is None or rank > 0):
        # Each rank its own stochastic-rounding stream; rank 0 of a resumed run keeps its own.
        torch.manual_seed(_seed(cfg.seed, rank, start))
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    if cfg.compile:
        net.compile()
    model = wrap(net) if wrap is not None else net
    optimizer = make_optimizer(model, cfg)
    scaler = new_scaler(cfg, device)
    if resume is not None and resume["optimizer"] is not None:
        optimizer.load_state_dict(resume["optimizer"])
    if debug and debug.folder and start > 0:
        path = debug.folder / f"resume_step{start:07d}_rank{rank}.pt"
        _save_record(path, admm, step=start, mask=net.mask, **debug.tags)
    run_log = RunLog(log_path, start)
    if start >= schedule.total:
        log(f"run {cfg.run_name} had already finished at step {start}: nothing to train")
        report(start, {"step": start, "start_step": start}, None)
        return summary

    batches = iter(data)
    if "channel_rank" in fresh:  # nested supports on weights that have no channel order
        first = next(batches)
        net.channel_rank.copy_(rank_channels(net, first.to(device)))
        if world > 1:  # every rank its own first batch: rank 0's order for all
            dist.broadcast(net.channel_rank, src=0)
        batches = itertools.chain([first], batches)
        order = torch.argsort(net.channel_rank)[: len(net.kept_channels())]
        log(f"nested supports: channels by importance {order.tolist()}")
    window: list[dict] = []  # training metrics of the steps since the last row (train_step's)
    recent_mse: deque[torch.Tensor] = deque(maxlen=cfg.log_every)  # training MSE before prune
    after_prune: list[torch.Tensor] = []  # and over the first log_every steps after it
    row: dict[str, float] = {}
    fit_batches: deque[torch.Tensor] = deque(maxlen=ENTROPY_FIT_BATCHES)  # uint8, on the CPU
    admm_stats = dict.fromkeys(ADMM_COLUMNS, math.nan)
    train_seconds, t_start = 0.0, time.perf_counter()
    for step in range(start, schedule.total):
        t_step = time.perf_counter()
        if rank == world - 1:  # one rank fails; a distributed run then restarts them all
            maybe_inject_failure(cfg, step, resumed=start > 0)
        if schedule.prune_at(step):
            summary["prune"] = hard_prune(model, admm, val, recent_mse)
            log(prune_line(summary["prune"], admm.k))
        batch = next(batches)
        if cfg.entropy_fit_steps:
            # Batches are 8-bit pixels / 255: kept as uint8, exactly (a quarter of the memory).
            fit_batches.append(batch.detach().mul(255).round().to(torch.uint8).cpu())
        window.append(train_step(model, admm, optimizer, batch, step, cfg, schedule, scaler))
        recent_mse.append(window[-1]["mse"])
        if "prune" in summary and "train_mse_after" not in summary["prune"]:
            after_prune.append(window[-1]["mse"])
            if len(after_prune) == cfg.log_every or step + 1 == schedule.total:
                summary["prune"]["train_mse_after"] = float(torch.stack(after_prune).mean())
        if schedule.update_due(step):
            local = admm.pending()  # this rank's share, for the debug records
            admm_stats = admm_update(admm, sum_over_ranks)
            log(admm_line(admm.updates, admm.k, step, admm_stats)
                + _debug_checks(admm, step, local, debug))
        train_seconds += time.perf_counter() - t_step

        done = step + 1
        if done % cfg.log_every == 0 or done == schedule.total:
            t_read = time.perf_counter()
            row = window_means(window) | admm_stats  # waits for the steps still queued
            train_seconds += time.perf_counter() - t_read
            row["patches_per_s"] = len(window) * cfg.batch_size * world / max(train_seconds, 1e-9)
            row |= validation_row(net, val if log_validation else None)
            row |= {"step": done, "elapsed_s": time.perf_counter() - t_start}
            run_log.append(row)
            log(progress_line(row, schedule.total))
            window, train_seconds = [], 0.0
        if done == schedule.total and cfg.entropy_fit_steps:
            pixels = (b.float().div_(255) for b in fit_batches)
            summary["entropy_fit"] = fit_entropy_model(net, pixels, cfg.entropy_fit_steps,
                                                       sum_over_ranks)  # fmt: skip
            log(entropy_fit_line(summary["entropy_fit"], cfg.entropy_fit_steps))
        if done == schedule.total:
            final = validate(net, val)
            summary.update(
                steps=schedule.total,
                final_eval_mse=final["mse"],
                final_eval_psnr=final["psnr"],
                kept_slots=admm.k if schedule.pruning else math.prod(cfg.model.latent_shape()),
                masked=net.mask is not None,
            )
        if done == schedule.total or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
            metrics = {"step": done, "start_step": start, **row}
            extra = {"metrics": metrics, "summary": summary}
            save = partial(save_checkpoint, model=model, admm=admm, optimizer=optimizer,
                           step=done, config=cfg, extra=extra)  # fmt: skip
            report(done, metrics, save)
    return summary


# ---------------------------------------------------------------------------------------------
# When: the schedule


class Schedule:
    """Phase, learning rate and ADMM timing as pure functions of the step number."""

    def __init__(self, cfg: TrainConfig):
        self.warmup = cfg.warmup_steps
        self.admm_end = cfg.warmup_steps + cfg.admm_steps
        self.total = cfg.total_steps()
        self.every = cfg.admm_every
        self.lr = cfg.lr
        self.lr_final_scale = cfg.lr_final_scale
        # Pruning ratio 0 keeps every slot: no ADMM, no mask, plain training throughout.
        self.pruning = cfg.pruning_ratio > 0

    def phase(self, step: int) -> str:
        if step < self.warmup:
            return "warmup"
        return "admm" if step < self.admm_end else "finetune"

    def lr_at(self, step: int) -> float:
        if step < self.admm_end:
            return self.lr
        span = max(1, self.total - self.admm_end)
        progress = min(1.0, (step - self.admm_end) / span)
        scale = self.lr_final_scale + (1 - self.lr_final_scale) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )
        return self.lr * scale

    def accumulates(self, step: int) -> bool:
        """Whether this step's latents feed the next ADMM update."""
        return self.pruning and self.warmup - self.every <= step < self.admm_end

    def update_due(self, step: int) -> bool:
        """Whether an ADMM update follows this step."""
        in_range = max(0, self.warmup - 1) <= step < self.admm_end
        on_beat = (step + 1 - self.warmup) % self.every == 0 or step == self.admm_end - 1
        return self.pruning and in_range and on_beat

    def penalized(self, step: int) -> bool:
        return self.pruning and self.phase(step) == "admm"

    def prune_at(self, step: int) -> bool:
        """Whether the hard prune happens just before this step (the first fine-tune step)."""
        return self.pruning and step == self.admm_end and self.total > self.admm_end


def maybe_inject_failure(cfg: TrainConfig, step: int, resumed: bool) -> None:
    """Raise InjectedFailure at `cfg.fail_at_step`, only in a run that did not resume from a
    checkpoint, so that the restarted run gets past the step (fault-tolerance tests)."""
    if cfg.fail_at_step is not None and step == cfg.fail_at_step and not resumed:
        raise InjectedFailure(f"injected failure at step {step} (fail_at_step)")


# ---------------------------------------------------------------------------------------------
# What: the state and the step


def new_admm(cfg: TrainConfig, device: torch.device | str = "cpu") -> ADMM:
    return ADMM(
        cfg.model.latent_shape(), cfg.pruning_ratio, cfg.rho, device=device,
        structure=cfg.prune_structure,
    )


# The entropy model learns at this multiple of the network's learning rate: its estimate
# must follow the latent closely for the rate term to mean the bits the coder will spend.
ENTROPY_LR_SCALE = 10.0


# A variable-rate model's gain vectors learn at this multiple of the network's learning rate:
# a continuation's rate is small, and the gains must move far from their start.
GAIN_LR_SCALE = 50.0


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over all parameters (the entropy model's at ENTROPY_LR_SCALE x the rate, a
    variable-rate model's gains at GAIN_LR_SCALE x); the learning rate is set per step by
    train_step."""
    scales: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if ".entropy." in f".{name}":
            scale = ENTROPY_LR_SCALE
        elif "level_log_" in name:
            scale = GAIN_LR_SCALE
        else:
            scale = 1.0
        scales.setdefault(scale, []).append(param)
    groups = [{"params": params, "lr_scale": scale} for scale, params in scales.items()]
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_step(
    model: nn.Module,
    admm: ADMM,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    step: int,
    cfg: TrainConfig,
    schedule: Schedule | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, torch.Tensor | float]:
    """Forward, loss, backward and optimizer step on one batch (B, 3, P, P) in [0, 1].

    `model` may be wrapped (DDP). Also accumulates the batch's latents for the next ADMM
    update when the schedule says so. The network runs in `cfg.precision` (autocast); the
    loss and the penalty are computed in float32 from its outputs. `scaler`: the gradient
    scaler of an fp16 run (`new_scaler`). Returns the metrics loss, distortion, penalty, mse,
    psnr, ssim, msssim, grad_norm as detached 0-d tensors (reading one waits for the device,
    so the loop reads them once per log step), lr and phase (0 warm-up, 1 ADMM, 2 fine-tune)
    as floats.
    """
    schedule = schedule or Schedule(cfg)
    phase = schedule.phase(step)
    lr = schedule.lr_at(step)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    device = next(model.parameters()).device
    x = batch.to(device, non_blocking=True)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    model.train()
    if cfg.freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    # A variable-rate model trains each image at its own quality, drawn uniformly, with that
    # quality's rate weight.
    levels = cfg.model.quality_levels
    quality = torch.rand(len(x), device=device) * (levels - 1) if levels else None
    dtype = PRECISIONS[cfg.precision]
    with torch.autocast(device.type, dtype=getattr(torch, dtype or "float32"),
                        enabled=dtype is not None):  # fmt: skip
        # With a rate term the model also returns each image's estimated bits.
        rate = cfg.rate_lambda > 0
        outputs = model(x, rate=rate, quality=quality) if levels else model(x, rate=rate)
    x_hat, latent, *bits = (t.float() for t in outputs)
    objective, terms = compute_loss(
        x_hat, x, cfg, bits=bits[0] if bits else None, mse_only=phase == "warmup",
        lambdas=cfg.lambda_at(quality) if levels else None,
    )
    penalty = admm.penalty(latent) if schedule.penalized(step) else objective.new_zeros(())
    loss = objective + penalty

    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if scaler is not None:
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        scaler.update()
    else:
        optimizer.step()
    if schedule.accumulates(step):
        admm.accumulate(latent)

    return {
        "loss": loss.detach(),
        "penalty": penalty.detach(),
        **terms,
        "lr": lr,
        "grad_norm": grad_norm.detach(),
        "phase": float(PHASES.index(phase)),
    }


def new_scaler(cfg: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """The gradient scaler an fp16 run needs (None for fp32 and bf16)."""
    return torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None


# ---------------------------------------------------------------------------------------------
# Measuring: window means, distribution


def window_means(window: list[dict]) -> dict[str, float]:
    """Mean of each training metric (train_step's) over the window's steps and over all
    ranks; the phase of the window's last step. Reads the device once."""
    keys = [k for k in TRAIN_COLUMNS if isinstance(window[-1].get(k), torch.Tensor)]
    means = torch.stack([torch.stack([m[k] for m in window]).double().mean() for k in keys])
    # On the rank's device: NCCL reduces GPU tensors only.
    means = sum_over_ranks(means) / rank_and_world()[1]
    row = dict.fromkeys(TRAIN_COLUMNS, math.nan) | dict(zip(keys, means.tolist(), strict=True))
    row["lr"] = float(np.mean([m["lr"] for m in window]))
    row["phase"] = window[-1]["phase"]
    return row


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the size of torch.distributed's group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` all-reduced (SUM, in place) over torch.distributed's group when it has two or
    more ranks, else as it is; returns it. The `all_reduce` of admm_update and
    fit_entropy_model."""
    if rank_and_world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_from_ranks(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `tensor`, in rank order ([tensor] without a group of two or more). The
    `gather` of check_consensus."""
    _, world = rank_and_world()
    if world == 1:
        return [tensor]
    gathered = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(gathered, tensor)
    return gathered


def _debug_checks(
    admm: ADMM, step: int, local: tuple[torch.Tensor, int], debug: Debug | None
) -> str:
    """In debug mode, after an ADMM update: check the consensus and save this rank's record
    (its local sums and count, the resulting Z and U); returns the log line's suffix."""
    if debug is None:
        return ""
    rank, world = rank_and_world()
    checksum = check_consensus(admm, gather_from_ranks)
    if debug.folder:
        path = debug.folder / f"update{admm.updates:04d}_rank{rank}.pt"
        _save_record(path, admm, step=step, local_sums=local[0], local_count=local[1],
                     world=world, **debug.tags)  # fmt: skip
    return f", Z/U checksum {checksum} on all {world} rank(s)"


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _save_record(path: Path, admm: ADMM, **fields: Any) -> None:
    """Debug record: this rank's Z and U and update count, with `fields` (tensors to CPU)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"updates": admm.updates, "Z": admm.Z.cpu(), "U": admm.U.cpu()}
    for key, value in fields.items():
        record[key] = value.cpu() if isinstance(value, torch.Tensor) else value
    torch.save(record, path)
