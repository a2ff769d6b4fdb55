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

Drivers: `caeadmm.train_local` (one process, a folder of images) and
`caeadmm.distributed.train` (Ray Train workers with DDP). The only distributed code here is
torch.distributed: with a process group of two or more ranks the ADMM sums and the logged
means are all-reduced, without one (or with one rank) nothing is. Ray is never imported.

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

import csv
import hashlib
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

import coding
from caeadmm import zoo
from caeadmm.admm import ADMM
from caeadmm.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
from caeadmm.config import PRECISIONS, ConfigError, ModelConfig, TrainConfig
from caeadmm.entropy_model import count_bits, fit_counts, symbol_counts
from caeadmm.images import to_uint8
from caeadmm.losses import compute_loss, per_image_mse, psnr_of_mse
from caeadmm.metrics import PSNR_CAP_DB, quality_metrics
from caeadmm.model import CAE, LATENT_MAX, channel_support, eval_mode, unwrap

# A run's files, the same for both drivers: in the output folder (local) or in every
# reported checkpoint folder (Ray; the run log also in the run folder).
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"  # the inference-only export of the final checkpoint
LOG_FILE = "log.csv"

PHASES = ("warmup", "admm", "finetune")
# "bpp" is the entropy model's estimate (NaN in the log without a rate term); "val_bpp" is
# real bytes.
TRAIN_COLUMNS = [
    "loss", "distortion", "penalty", "mse", "psnr", "ssim", "msssim", "bpp", "lr", "grad_norm",
]
ADMM_COLUMNS = ["admm_residual", "energy_outside_top_k", "support_churn"]
VAL_COLUMNS = ["val_psnr", "val_msssim", "val_bpp", "latent_zero_fraction", "mask_density"]
LOG_COLUMNS = [
    "step", "phase", *TRAIN_COLUMNS, *ADMM_COLUMNS, *VAL_COLUMNS, "patches_per_s", "elapsed_s",
]

# save(path) writes the full training checkpoint of the current step to `path`.
Save = Callable[[Path], Path]
# report(step, metrics, save): the driver's checkpoint callback; save is None when the run
# had already finished (nothing new to save).
Report = Callable[[int, dict[str, Any], Save | None], None]


class InjectedFailure(RuntimeError):
    """Raised on purpose at `fail_at_step`, to test recovery from a crashed run."""


class ConsensusError(RuntimeError):
    """Ranks hold different Z or U after an ADMM update (debug check)."""


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
    start, summary = 0, {}
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
            log(_prune_line(summary["prune"], admm.k))
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
            admm_stats = admm_update(admm)
            log(_admm_line(admm, step, admm_stats) + _debug_checks(admm, step, local, debug))
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
            summary["entropy_fit"] = fit_entropy_model(net, pixels, cfg.entropy_fit_steps)
            log(_entropy_fit_line(summary["entropy_fit"], cfg.entropy_fit_steps))
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
# What: the state, the step, the ADMM update, the hard prune


def new_admm(cfg: TrainConfig, device: torch.device | str = "cpu") -> ADMM:
    return ADMM(
        cfg.model.latent_shape(), cfg.pruning_ratio, cfg.rho, device=device,
        structure=cfg.prune_structure,
    )


# The entropy model learns at this multiple of the network's learning rate: its estimate
# must follow the latent closely for the rate term to mean the bits the coder will spend.
ENTROPY_LR_SCALE = 10.0
# The final fit of the entropy model uses the symbols of this many last training batches.
ENTROPY_FIT_BATCHES = 64
# Adam's rate of the final fit of the entropy model alone (fit_entropy_model).
ENTROPY_FIT_LR = 0.01


# A variable-rate model's gain vectors learn at this multiple of the network's learning rate:
# a continuation's rate is small, and the gains must move far from their start.
GAIN_LR_SCALE = 20.0


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


# The model-config fields that set the network's tensor shapes: init_from must match them.
# patch_size only sets the mask's shape: a channel mask (the same in every position) is
# re-tiled to the run's patch size, so training may continue on larger crops.
SHAPE_FIELDS = ("preset", "width", "n_blocks", "latent_channels", "patch_size", "norm")



def init_weights(cfg: TrainConfig, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The weights (and mask) of `cfg.init_from`: a checkpoint, an exported model, or the name
    of a registered model (so training continues from the shipped weights).

    Raises ConfigError when its network's shape (SHAPE_FIELDS) is not this run's. Its other
    model fields (quantizer and rate options) may differ: `load_into` then keeps what fits.
    """
    path = Path(cfg.init_from)
    if not path.exists():
        registered = {m.name: m for m in zoo.list_models()}
        if cfg.init_from not in registered:
            raise ConfigError(
                f"init_from={cfg.init_from} is neither a file nor a registered model "
                f"({', '.join(registered) or 'none registered'})"
            )
        path = registered[cfg.init_from].file
    init = load_checkpoint(path, map_location=device)
    theirs, ours = ModelConfig.from_dict(init["model_config"]), cfg.model
    differ = [f for f in SHAPE_FIELDS if getattr(theirs, f) != getattr(ours, f)]
    mask = init["model"].get("mask")
    if differ == ["patch_size"] and (mask is None or channel_support(mask) is not None):
        differ = []
    if differ:
        raise ConfigError(
            f"init_from={cfg.init_from} holds a model of config {init['model_config']}, but "
            f"this run trains {cfg.model.to_dict()} ({', '.join(differ)} differ)"
        )
    return init["model"]


def load_into(net: CAE, weights: dict[str, torch.Tensor]) -> list[str]:
    """Load every tensor of `weights` whose name and shape fit `net` (the mask included);
    returns the names of `net`'s tensors that start fresh (e.g. a new entropy model)."""
    own = net.state_dict()
    weights = net.fold_latent_batchnorm(weights)
    fitting = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if "mask" in weights:
        fitting["mask"] = mask = weights["mask"]
        side = net.config.latent_shape()[1]
        if mask.shape[1] != side and (channels := channel_support(mask)) is not None:
            fitting["mask"] = channels[:, None, None].expand(-1, side, side).clone()
    net.load_state_dict(fitting, strict=False)
    return sorted(k for k in own if k not in fitting)


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


def admm_update(admm: ADMM) -> dict[str, float]:
    """One ADMM update from the latents of all ranks; returns its diagnostics (ADMM_COLUMNS).

    The latent sums and counts each rank gathered since the last update are all-reduced
    (SUM) over the process group, if there is one of two or more ranks; every rank then runs
    the same deterministic `admm.update` on the same totals, so all hold the same Z and U.
    """
    sums, local_count = admm.pending()
    count = torch.tensor([local_count], dtype=torch.float64, device=sums.device)
    if rank_and_world()[1] > 1:
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        dist.all_reduce(count, op=dist.ReduceOp.SUM)
    total = int(count.item())
    stats = {
        "admm_residual": admm.residual(sums[0] / max(total, 1)),
        "energy_outside_top_k": admm.energy_outside(sums[1] / max(total, 1)),
    }
    before = admm.support.clone() if admm.updates else None
    admm.update(sums, total)
    # Share of the kept slots that changed: near 0 once the ADMM support has settled.
    changed = (admm.support & ~before).sum() / admm.k if before is not None else math.nan
    stats["support_churn"] = float(changed)
    return stats


def check_consensus(admm: ADMM) -> str:
    """Raise ConsensusError unless every rank holds bit-identical Z and U; returns the
    checksum they share (hex)."""
    words = _checksum(admm.Z, admm.U)
    _, world = rank_and_world()
    if world > 1:
        mine = torch.tensor(words, dtype=torch.int64, device=admm.device)
        gathered = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(gathered, mine)
        sums = [tuple(int(v) for v in g.tolist()) for g in gathered]
        if len(set(sums)) != 1:
            raise ConsensusError(
                f"after ADMM update {admm.updates} the ranks hold different Z/U (checksums by "
                f"rank: {sums})"
            )
    return f"{words[0]:016x}"


def hard_prune(
    model: nn.Module,
    admm: ADMM,
    val: torch.Tensor | None = None,
    recent_mse: Iterable[torch.Tensor] = (),
) -> dict[str, float]:
    """Freeze the ADMM support as the model's mask (the start of the fine-tune) and measure
    the jump: inference MSE and PSNR of `val` with the same weights just before and just
    after (NaN without `val`), and the mean training MSE of `recent_mse`."""
    net = unwrap(model)
    recent = list(recent_mse)
    before = validate(net, val)
    net.set_mask(admm.mask())
    after = validate(net, val)
    return {
        "eval_mse_before": before["mse"],
        "eval_mse_after": after["mse"],
        "eval_psnr_before": before["psnr"],
        "eval_psnr_after": after["psnr"],
        "train_mse_before": float(torch.stack(recent).mean()) if recent else math.nan,
    }


@torch.no_grad()
def latent_counts(net: CAE, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """Per-channel histograms (C, 2 LATENT_MAX + 1) of the symbols `net.encode` gives for
    the batches (inference rounding, exactly what the codec writes); a pruned channel's row
    stays empty. Summed over the ranks of a process group."""
    device = next(net.parameters()).device
    kept = torch.ones(net.config.latent_channels, dtype=torch.bool, device=device)
    if net.mask is not None:
        kept = net.mask.flatten(1).any(dim=1)
    counts = torch.zeros(net.config.latent_channels, 2 * LATENT_MAX + 1, dtype=torch.float64,
                         device=device)  # fmt: skip
    for batch in batches:
        symbols = net.encode(batch.to(device))
        columns = symbols.transpose(0, 1).flatten(1).T  # (N, C)
        counts += symbol_counts(columns.cpu(), LATENT_MAX).to(device, torch.float64)
    counts[~kept] = 0
    if rank_and_world()[1] > 1:
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return counts.cpu()


def fit_entropy_model(net: CAE, batches: Iterable[torch.Tensor], steps: int) -> dict[str, float]:
    """Fit the entropy model alone, the network frozen, to the symbols of `batches` (the
    final phase of a run with `entropy_fit_steps`): during training the density chases a
    moving latent (and, with mixed rounding, sees noisy values, not integers), so at the end
    its estimate lags the symbols the coder writes (docs/rate.md). Every rank fits the same
    all-reduced histograms from the same parameters, so all end with the same model.

    Returns bits per kept symbol of the estimate before and after, and the order-0 entropy of
    the histograms (the floor of any per-channel density), with the symbol count."""
    counts = latent_counts(net, batches)
    total = float(counts.sum())
    if total == 0:
        return {"symbols": 0.0}
    entropy = net.entropy.cpu()
    with torch.no_grad():
        before = float(count_bits(entropy, counts.float()).sum())
    after = fit_counts(entropy, counts.float(), steps, lr=ENTROPY_FIT_LR)
    net.entropy.to(next(net.parameters()).device)
    p = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    floor = float(-(counts * torch.log2(torch.where(p > 0, p, 1))).sum())
    return {"symbols": total, "bits_before": before / total, "bits_after": after / total,
            "entropy_bits": floor / total}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Measuring: validation, window means, distribution


@torch.no_grad()
def validate(model: nn.Module, patches: torch.Tensor | None, batch_size: int = 16) -> dict:
    """Inference-mode MSE and mean PSNR (dB) of the model on fixed patches (N, 3, P, P) in
    [0, 1]; NaN without patches."""
    if patches is None or len(patches) == 0:
        return {"mse": math.nan, "psnr": math.nan}
    net = unwrap(model)
    device = next(net.parameters()).device
    errors = []
    quality = validation_quality(net)
    with eval_mode(net):
        for start in range(0, len(patches), batch_size):
            x = patches[start : start + batch_size].to(device)
            output = net(x, quality=quality) if quality is not None else net(x)
            errors.append(per_image_mse(output[0], x))
    mse = torch.cat(errors)
    return {"mse": float(mse.sum()) / len(patches), "psnr": float(psnr_of_mse(mse).mean())}


@torch.no_grad()
def validation_row(net: CAE, val: torch.Tensor | None) -> dict[str, float]:
    """The log's validation columns: PSNR and MS-SSIM of the 8-bit decoded patches, the
    real coded bpp of the kept symbols (coded as the codec codes one image's tiles), the zero
    fraction of the rounded (masked) latent and the mask density."""
    density = 1.0 if net.mask is None else float(net.mask.float().mean())
    if val is None or len(val) == 0:
        return dict.fromkeys(VAL_COLUMNS, math.nan) | {"mask_density": density}
    device = next(net.parameters()).device
    quality = validation_quality(net)
    symbols = net.encode(val.to(device), quality).cpu()
    decoded = net.decode(symbols.to(device), quality).cpu()
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


def validation_quality(net: CAE) -> float | None:
    """The quality a variable-rate model is validated at in the log (the middle of its
    range); None for a fixed-rate model."""
    levels = net.config.quality_levels
    return (levels - 1) / 2 if levels else None


def window_means(window: list[dict]) -> dict[str, float]:
    """Mean of each training metric (train_step's) over the window's steps and over all
    ranks; the phase of the window's last step. Reads the device once."""
    keys = [k for k in TRAIN_COLUMNS if isinstance(window[-1].get(k), torch.Tensor)]
    means = torch.stack([torch.stack([m[k] for m in window]).double().mean() for k in keys])
    _, world = rank_and_world()
    if world > 1:  # on the rank's device: NCCL reduces GPU tensors only
        dist.all_reduce(means, op=dist.ReduceOp.SUM)
        means = means / world
    row = dict.fromkeys(TRAIN_COLUMNS, math.nan) | dict(zip(keys, means.tolist(), strict=True))
    row["lr"] = float(np.mean([m["lr"] for m in window]))
    row["phase"] = window[-1]["phase"]
    return row


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the size of torch.distributed's group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _debug_checks(
    admm: ADMM, step: int, local: tuple[torch.Tensor, int], debug: Debug | None
) -> str:
    """In debug mode, after an ADMM update: check the consensus and save this rank's record
    (its local sums and count, the resulting Z and U); returns the log line's suffix."""
    if debug is None:
        return ""
    rank, world = rank_and_world()
    checksum = check_consensus(admm)
    if debug.folder:
        path = debug.folder / f"update{admm.updates:04d}_rank{rank}.pt"
        _save_record(path, admm, step=step, local_sums=local[0], local_count=local[1],
                     world=world, **debug.tags)  # fmt: skip
    return f", Z/U checksum {checksum} on all {world} rank(s)"


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _checksum(*tensors: torch.Tensor) -> list[int]:
    """Two int64 words of sha256 over the tensors' bytes (non-negative, so they fit)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    digest = h.digest()
    return [int.from_bytes(digest[i : i + 8], "little") >> 1 for i in (0, 8)]


def _save_record(path: Path, admm: ADMM, **fields: Any) -> None:
    """Debug record: this rank's Z and U and update count, with `fields` (tensors to CPU)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"updates": admm.updates, "Z": admm.Z.cpu(), "U": admm.U.cpu()}
    for key, value in fields.items():
        record[key] = value.cpu() if isinstance(value, torch.Tensor) else value
    torch.save(record, path)


# ---------------------------------------------------------------------------------------------
# The run log and the progress lines


class RunLog:
    """The run's CSV log: LOG_COLUMNS, a row per log step. Resuming at step s drops the rows
    past s (a crashed attempt wrote them after its last checkpoint); a fresh run starts an
    empty log. path None: no log (ranks other than 0)."""

    def __init__(self, path: Path | None, start: int):
        self.path = path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if start > 0 and path.exists():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(float(r["step"])) <= start]
        path.unlink(missing_ok=True)
        for r in rows:
            self.append(r)

    def append(self, row: dict) -> None:
        if self.path is None:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


# The progress line's fields in three groups (training | validation | speed): (key in the
# log row, its template, scale); a field that is NaN or absent in the row is left out.
PROGRESS_FIELDS = (
    (
        ("loss", "loss {:.2f}", 1), ("mse", "mse {:.5f}", 1), ("psnr", "psnr {:.2f}", 1),
        ("bpp", "est-bpp {:.3f}", 1), ("penalty", "penalty {:.3f}", 1),
        ("energy_outside_top_k", "outside-top-k {:.3f}", 1), ("lr", "lr {:.2e}", 1),
    ),
    (
        ("val_psnr", "val psnr {:.2f}", 1), ("val_msssim", "ms-ssim {:.4f}", 1),
        ("val_bpp", "bpp {:.3f}", 1), ("latent_zero_fraction", "zeros {:.1f}%", 100),
        ("mask_density", "mask {:.1f}%", 100),
    ),
    (("patches_per_s", "{:.1f} patches/s", 1),),
)


def progress_line(row: dict[str, float], total: int) -> str:
    """The log row as one line; fields without a value (NaN: no rate term, no ADMM, no
    validation at this step) are left out."""
    phase = PHASES[int(round(row["phase"]))]
    groups = []
    for fields in PROGRESS_FIELDS:
        values = [(template, row.get(key, math.nan) * scale) for key, template, scale in fields]
        parts = [template.format(value) for template, value in values if not math.isnan(value)]
        if parts:
            groups.append(" ".join(parts))
    return f"step {int(row['step'])}/{total} [{phase}] " + " | ".join(groups)


def _entropy_fit_line(stats: dict[str, float], steps: int) -> str:
    if not stats["symbols"]:
        return "entropy model fit: no kept symbols"
    return (
        f"entropy model fitted alone for {steps} steps on {int(stats['symbols'])} kept symbols "
        f"of the last training batches: {stats['bits_before']:.4f} -> "
        f"{stats['bits_after']:.4f} bits per symbol (order-0 entropy "
        f"{stats['entropy_bits']:.4f})"
    )


def _admm_line(admm: ADMM, step: int, stats: dict[str, float]) -> str:
    return (
        f"ADMM update {admm.updates} after step {step}: support of {admm.k} slots, latent "
        f"energy outside it {stats['energy_outside_top_k']:.3f}, churn "
        f"{stats['support_churn']:.3f}"
    )


def _prune_line(stats: dict[str, float], k: int) -> str:
    if math.isnan(stats["eval_mse_before"]):
        return f"hard prune: kept {k} slots"
    return (
        f"hard prune: kept {k} slots; validation MSE {stats['eval_mse_before']:.5f} -> "
        f"{stats['eval_mse_after']:.5f} (PSNR {stats['eval_psnr_before']:.2f} -> "
        f"{stats['eval_psnr_after']:.2f} dB)"
    )
