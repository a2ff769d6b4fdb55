"""What one training step does, and when: shared by the local trainer and the Ray Train loop.

A training loop, single-process or distributed, is:

    model = CAE(cfg.model); admm = new_admm(cfg); optimizer = make_optimizer(model, cfg)
    schedule = Schedule(cfg)
    for step in range(start, schedule.total):
        if schedule.prune_at(step):                      # once, first fine-tune step
            hard_prune(model, admm)
        metrics = train_step(model, admm, optimizer, batch, step, cfg)
        if schedule.update_due(step):                    # every admm_every steps
            sums, count = admm.pending()   # sum of latents and of their squares
            # distributed: all-reduce sums and count (SUM) over the workers here
            admm.update(sums, count)

`model` may be wrapped (DistributedDataParallel): train_step only calls it, and `unwrap`
reaches the CAE where its own methods are needed.

Schedule (steps count optimizer steps from 0, W = warmup, A = admm, F = finetune):
- [0, W): warm-up, MSE only, no penalty;
- [W, W + A): ADMM phase, full distortion + penalty (off until the first projection);
- [W + A, W + A + F): masked fine-tune, full distortion, no penalty; the mask is frozen
  from the ADMM support just before step W + A.
ADMM updates run after steps W - 1, W - 1 + admm_every, ... and after W + A - 1 (the last
ADMM step); latents are accumulated over the admm_every steps before each, so the first
projection (at the end of warm-up) already gives Z and U a meaningful start and the mask
comes from the latest projection. Learning rate: `lr` until the fine-tune,
then a cosine decay to lr * lr_final_scale over it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from caeadmm.admm import ADMM
from caeadmm.config import TrainConfig
from caeadmm.losses import distortion
from caeadmm.model import unwrap

PHASES = ("warmup", "admm", "finetune")


class InjectedFailure(RuntimeError):
    """Raised on purpose at `fail_at_step`, to test recovery from a crashed run."""


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


def new_admm(cfg: TrainConfig, device: torch.device | str = "cpu") -> ADMM:
    return ADMM(
        cfg.model.latent_shape(), cfg.pruning_ratio, cfg.rho, device=device,
        structure=cfg.prune_structure,
    )


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam over all parameters; the learning rate is set per step by train_step."""
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_step(
    model: nn.Module,
    admm: ADMM,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    step: int,
    cfg: TrainConfig,
    schedule: Schedule | None = None,
) -> dict[str, float]:
    """Forward, loss, backward and optimizer step on one batch (B, 3, P, P) in [0, 1].

    Also accumulates the batch's latents for the next ADMM update when the schedule says so.
    Returns float metrics: loss, distortion, penalty, mse, psnr, ssim, msssim, lr, grad_norm,
    phase (0 warm-up, 1 ADMM, 2 fine-tune).
    """
    schedule = schedule or Schedule(cfg)
    phase = schedule.phase(step)
    lr = schedule.lr_at(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    device = next(model.parameters()).device
    x = batch.to(device, non_blocking=True)

    model.train()
    x_hat, latent = model(x)
    dist, terms = distortion(
        x_hat, x, w_msssim=cfg.w_msssim, w_ssim=cfg.w_ssim, w_mse=cfg.w_mse, w_psnr=cfg.w_psnr,
        psnr_ref=cfg.psnr_ref, mse_only=phase == "warmup",
    )
    penalty = admm.penalty(latent) if schedule.penalized(step) else dist.new_zeros(())
    loss = dist + penalty

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    if schedule.accumulates(step):
        admm.accumulate(latent)

    return {
        "loss": float(loss.detach()),
        "distortion": float(dist.detach()),
        "penalty": float(penalty.detach()),
        **terms,
        "lr": lr,
        "grad_norm": float(grad_norm),
        "phase": float(PHASES.index(phase)),
    }


def maybe_inject_failure(cfg: TrainConfig, step: int, resumed: bool) -> None:
    """Raise InjectedFailure at `cfg.fail_at_step`, only in a run that did not resume from a
    checkpoint, so that the restarted run gets past the step (fault-tolerance tests)."""
    if cfg.fail_at_step is not None and step == cfg.fail_at_step and not resumed:
        raise InjectedFailure(f"injected failure at step {step} (fail_at_step)")


def admm_update(admm: ADMM) -> None:
    """The single-process ADMM update (a distributed loop all-reduces `pending()` first)."""
    sums, count = admm.pending()
    admm.update(sums, count)


def hard_prune(model: nn.Module, admm: ADMM) -> torch.Tensor:
    """Freeze the ADMM support as the model's mask (the start of the fine-tune); returns it."""
    mask = admm.mask()
    unwrap(model).set_mask(mask)
    return mask


@torch.no_grad()
def evaluate(model: nn.Module, patches: torch.Tensor, batch_size: int = 16) -> dict[str, float]:
    """Inference-mode MSE and PSNR (dB) of the model on fixed patches (N, 3, P, P) in [0, 1].

    Used to measure the hard-prune jump: the same weights with and without the mask.
    """
    net = unwrap(model)
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    total_se, psnrs = 0.0, []
    for start in range(0, len(patches), batch_size):
        x = patches[start : start + batch_size].to(device)
        x_hat, _ = net(x)
        se = (x_hat - x).square().flatten(1).mean(dim=1)
        total_se += float(se.sum())
        psnrs.append(-10 * torch.log10(se.clamp_min(1e-10)))
    net.train(was_training)
    return {"mse": total_se / len(patches), "psnr": float(torch.cat(psnrs).mean())}
