"""Single-process training over a folder of images: the reference path, and the entry point
for a machine (a GPU box included) without Ray. It never imports Ray.

Data: every image under `cfg.images` is decoded once (caeadmm.images) and kept in memory;
the batch for step s is B random P x P crops, each flipped left-right with probability 1/2,
drawn from a generator seeded by (seed, s). The batches are therefore a pure function of the
step, so a resumed run sees exactly the batches the crashed one would have. A torch
DataLoader (with `loader_workers` processes) cuts them ahead of the training step.

Output directory:
- `checkpoint.pt`: the latest full checkpoint (every `checkpoint_every` steps and at the end);
  an existing one is resumed from unless resume=False;
- `model.pt`: the inference-only export at the end (config, weights, mask);
- `log.csv`: one row per `log_every` steps with the window's mean training metrics, and
  the ADMM diagnostics of the latest update;
- `summary.json`: throughput, final metrics and the hard-prune jump (the inference MSE of
  fixed training patches just before and just after the mask is applied).
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from caeadmm.checkpoint import (
    export_model,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from caeadmm.config import TrainConfig
from caeadmm.images import ImageLoadError, list_images, load_rgb
from caeadmm.model import CAE
from caeadmm.training import (
    Schedule,
    evaluate,
    hard_prune,
    make_optimizer,
    maybe_inject_failure,
    new_admm,
    train_step,
)

LOG_COLUMNS = [
    "step", "phase", "loss", "distortion", "penalty", "mse", "psnr", "ssim", "msssim", "lr",
    "grad_norm", "admm_residual", "energy_outside_top_k", "support_churn", "patches_per_s",
    "elapsed_s",
]


class TrainDataError(ValueError):
    """No usable training images (missing folder, nothing decodable, all too small)."""


def load_images(
    folder: str | Path, patch_size: int, log: Callable[[str], None] = print
) -> list[np.ndarray]:
    """Decode every image under `folder` that is at least patch_size on both sides."""
    paths = list_images([folder]) if Path(folder).is_dir() else []
    if not paths:
        raise TrainDataError(f"no image files under {folder}")
    images, skipped = [], 0
    for path in paths:
        try:
            image = load_rgb(path)
        except ImageLoadError as exc:
            log(f"skipping {path}: {exc}")
            skipped += 1
            continue
        if min(image.shape[:2]) < patch_size:
            skipped += 1
            continue
        images.append(image)
    if not images:
        raise TrainDataError(
            f"none of the {len(paths)} files under {folder} is a readable image of at least "
            f"{patch_size} x {patch_size} px"
        )
    log(f"{len(images)} training images loaded ({skipped} skipped) from {folder}")
    return images


def random_patches(
    images: list[np.ndarray], n: int, patch_size: int, seed: list[int]
) -> torch.Tensor:
    """n random crops (uniform image, uniform position), each flipped left-right with p = 1/2,
    as a float tensor (n, 3, P, P) in [0, 1]. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, patch_size, patch_size, 3), dtype=np.uint8)
    for i in range(n):
        image = images[rng.integers(len(images))]
        y = rng.integers(image.shape[0] - patch_size + 1)
        x = rng.integers(image.shape[1] - patch_size + 1)
        patch = image[y : y + patch_size, x : x + patch_size]
        out[i] = patch[:, ::-1] if rng.random() < 0.5 else patch
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)


class StepBatches(Dataset):
    """Map-style dataset whose item s is the training batch of step s."""

    def __init__(self, images: list[np.ndarray], cfg: TrainConfig):
        self.images = images
        self.batch_size = cfg.batch_size
        self.patch_size = cfg.model.patch_size
        self.seed = cfg.seed
        self.total = cfg.total_steps()

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, step: int) -> torch.Tensor:
        return random_patches(self.images, self.batch_size, self.patch_size, [self.seed, 0, step])


def train(
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    *,
    resume: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train (or resume) a run as `cfg` describes; returns the summary also written to disk."""
    if not cfg.images:
        raise TrainDataError("the local trainer needs `images` (a folder of training images)")
    out = Path(out_dir) if out_dir is not None else Path(cfg.storage_path) / cfg.run_name
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: autotune convs

    images = load_images(cfg.images, cfg.model.patch_size, log)
    eval_patches = random_patches(images, cfg.eval_patches, cfg.model.patch_size, [cfg.seed, 1])
    model = CAE(cfg.model).to(device)
    admm = new_admm(cfg, device)
    optimizer = make_optimizer(model, cfg)
    schedule = Schedule(cfg)

    ckpt_path = out / "checkpoint.pt"
    start, resumed = 0, False
    summary: dict = {}
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        start = restore_training_state(ckpt, model=model, admm=admm, optimizer=optimizer)
        summary = ckpt["extra"].get("summary", {})
        resumed = True
        log(f"resumed from {ckpt_path} at step {start}")
    elif cfg.init_from:
        init = load_checkpoint(cfg.init_from, map_location=device)
        if init["model_config"] != cfg.model.to_dict():
            raise TrainDataError(
                f"init_from model config {init['model_config']} differs from this run's "
                f"{cfg.model.to_dict()}"
            )
        model.load_state_dict(init["model"])
        log(f"initialised weights from {cfg.init_from}")
    _truncate_log(out / "log.csv", start)

    loader = DataLoader(
        StepBatches(images, cfg),
        batch_size=None,
        sampler=range(start, schedule.total),
        num_workers=cfg.loader_workers,
        pin_memory=device.type == "cuda",
        # Its own generator: starting an iterator must not draw from the global torch RNG,
        # or a resumed run would continue a different random stream than the original.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    window: list[dict[str, float]] = []
    recent_mse: deque[float] = deque(maxlen=cfg.log_every)  # training MSE, last steps
    after_prune: list[float] = []  # training MSE of the first log_every fine-tune steps
    admm_stats = dict.fromkeys(["admm_residual", "energy_outside_top_k", "support_churn"], math.nan)
    t_start = t_window = time.perf_counter()
    for step, batch in zip(range(start, schedule.total), loader, strict=True):
        maybe_inject_failure(cfg, step, resumed)
        if schedule.prune_at(step):
            summary["prune"] = _prune(model, admm, eval_patches, recent_mse, log)
        window.append(train_step(model, admm, optimizer, batch, step, cfg, schedule))
        recent_mse.append(window[-1]["mse"])
        if "prune" in summary and "train_mse_after" not in summary["prune"]:
            after_prune.append(window[-1]["mse"])
            if len(after_prune) == cfg.log_every or step + 1 == schedule.total:
                summary["prune"]["train_mse_after"] = float(np.mean(after_prune))
        if schedule.update_due(step):
            admm_stats = _admm_update(admm)
        done = step + 1
        if done % cfg.log_every == 0 or done == schedule.total:
            now = time.perf_counter()
            rate = len(window) * cfg.batch_size / (now - t_window)
            row = _log_row(done, window, admm_stats, rate)
            row["elapsed_s"] = now - t_start
            _append_log(out / "log.csv", row)
            log(_progress_line(row, schedule))
            window, t_window = [], now
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < schedule.total:
            _save(ckpt_path, model, admm, optimizer, done, cfg, summary)

    final = evaluate(model, eval_patches)
    summary.update(
        steps=schedule.total,
        final_eval_mse=final["mse"],
        final_eval_psnr=final["psnr"],
        kept_slots=admm.k if schedule.pruning else int(np.prod(cfg.model.latent_shape())),
        masked=model.mask is not None,
    )
    _save(ckpt_path, model, admm, optimizer, schedule.total, cfg, summary)
    export_model(ckpt_path, out / "model.pt")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"done: final eval PSNR {final['psnr']:.2f} dB; model in {out / 'model.pt'}")
    return summary


def _prune(model, admm, eval_patches, recent_mse, log) -> dict:
    """Apply the hard prune and measure its jump on the fixed patches (same weights)."""
    before = evaluate(model, eval_patches)
    hard_prune(model, admm)
    after = evaluate(model, eval_patches)
    recent = list(recent_mse) or [float("nan")]
    stats = {
        "eval_mse_before": before["mse"],
        "eval_mse_after": after["mse"],
        "eval_psnr_before": before["psnr"],
        "eval_psnr_after": after["psnr"],
        "train_mse_before": float(np.mean(recent)),  # over the last log_every steps
    }
    log(
        f"hard prune: kept {admm.k} slots; eval MSE {before['mse']:.5f} -> {after['mse']:.5f} "
        f"(PSNR {before['psnr']:.2f} -> {after['psnr']:.2f} dB)"
    )
    return stats


def _admm_update(admm) -> dict[str, float]:
    sums, count = admm.pending()
    stats = {
        "admm_residual": admm.residual(sums[0] / count),
        "energy_outside_top_k": admm.energy_outside(sums[1] / count),
    }
    before = admm.support.clone() if admm.updates else None
    admm.update(sums, count)
    # Share of the kept slots that changed: near 0 once the ADMM support has settled.
    changed = (admm.support & ~before).sum() / admm.k if before is not None else math.nan
    stats["support_churn"] = float(changed)
    return stats


def _save(path, model, admm, optimizer, step, cfg, summary) -> None:
    save_checkpoint(
        path, model=model, admm=admm, optimizer=optimizer, step=step, config=cfg,
        extra={"summary": summary},
    )


def _log_row(step: int, window: list[dict], admm_stats: dict, patches_per_s: float) -> dict:
    row: dict[str, float] = {"step": step}
    for key in LOG_COLUMNS[1:14]:
        if key in admm_stats:
            row[key] = admm_stats[key]
        else:
            row[key] = float(np.mean([m[key] for m in window]))
    row["patches_per_s"] = patches_per_s
    return row


def _progress_line(row: dict, schedule: Schedule) -> str:
    phase = ("warmup", "admm", "finetune")[int(round(row["phase"]))]
    return (
        f"step {row['step']}/{schedule.total} [{phase}] loss {row['loss']:.2f} "
        f"mse {row['mse']:.5f} psnr {row['psnr']:.2f} ms-ssim {row['msssim']:.4f} "
        f"penalty {row['penalty']:.3f} outside-top-k {row['energy_outside_top_k']:.3f} "
        f"lr {row['lr']:.2e} {row['patches_per_s']:.1f} patches/s"
    )


def _append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_log(path: Path, start: int) -> None:
    """Drop log rows past the resumed step (written by the run that crashed after them)."""
    if not path.exists():
        return
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(float(r["step"])) <= start]
    path.unlink()
    for r in rows:
        _append_log(path, r)
