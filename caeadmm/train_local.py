"""Single-process training over a folder of images: the reference path, and the entry point
for a machine (a GPU box included) without Ray. A thin driver of `caeadmm.train_loop`.

Data: every image under `cfg.images` is decoded once (caeadmm.images) and kept in memory;
the batch for step s is B random P x P crops, each flipped left-right with probability 1/2,
drawn from a generator seeded by (seed, s). The batches are therefore a pure function of the
step, so a resumed run sees exactly the batches the crashed one would have. A torch
DataLoader (with `loader_workers` processes) cuts them ahead of the training step; with
`data_on_device` the images are kept on the training device instead and `DeviceBatches` cuts
each step's crops there (GPU runs, see scripts/gpu_train.py). The
validation patches are `eval_patches` crops drawn the same way from seed (seed, 1); they are
measured around the hard prune and at the end, not at every log step (the log's val_*
columns stay empty: the log step stays cheap for short GPU runs, see scripts/gpu_train.py).

Output directory:
- `checkpoint.pt`: the latest full checkpoint (every `checkpoint_every` steps and at the end);
  an existing one is resumed from unless resume=False;
- `model.pt`: the inference-only export at the end (config, weights, mask);
- `log.csv`: the run log of `caeadmm.train_loop` (a row per `log_every` steps);
- `summary.json`: final metrics and the hard-prune jump (the inference MSE of the
  validation patches just before and just after the mask is applied).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from caeadmm import train_loop
from caeadmm.checkpoint import export_model, load_checkpoint
from caeadmm.config import TrainConfig
from caeadmm.images import ImageLoadError, list_images, load_rgb
from caeadmm.train_loop import CHECKPOINT_FILE, LOG_FILE, MODEL_FILE

SUMMARY_FILE = "summary.json"


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


class DeviceBatches:
    """The training batches cut on the training device: the images are copied there once
    (one flat uint8 buffer) and each step's B random P x P crops, each flipped left-right with
    probability 1/2, are gathered there in one indexing operation (no loader processes, no
    host-to-device copies, no host syncs). Iterating from step `start` yields the batches of
    steps start, start + 1, ..., each drawn from a device generator seeded by (seed, step), so
    a resumed run sees the batches the crashed one would have (their stream differs from
    StepBatches', which cuts on the host).
    """

    def __init__(self, images: list[np.ndarray], cfg: TrainConfig, device: torch.device,
                 start: int = 0):  # fmt: skip
        self.batch_size, self.patch_size = cfg.batch_size, cfg.model.patch_size
        self.seed, self.start, self.total = cfg.seed, start, cfg.total_steps()
        self.device = device
        sizes = [image.size for image in images]
        self.pixels = torch.from_numpy(np.concatenate([image.ravel() for image in images]))
        self.pixels = self.pixels.to(device)
        self.offsets = torch.tensor(np.cumsum([0, *sizes[:-1]]), device=device)
        self.heights = torch.tensor([image.shape[0] for image in images], device=device)
        self.widths = torch.tensor([image.shape[1] for image in images], device=device)
        self.generator = torch.Generator(device)

    def batch(self, step: int) -> torch.Tensor:
        """The batch of `step`: (B, 3, P, P) float32 in [0, 1] on the device."""
        b, p, gen = self.batch_size, self.patch_size, self.generator
        gen.manual_seed(_step_seed(self.seed, step))
        pick = torch.randint(len(self.heights), (b,), generator=gen, device=self.device)
        h, w = self.heights[pick], self.widths[pick]
        # Uniform positions: floor(u * (number of positions)), u in [0, 1).
        u = torch.rand(3, b, generator=gen, device=self.device)
        y = (u[0] * (h - p + 1)).long().clamp_max(h - p)
        x = (u[1] * (w - p + 1)).long().clamp_max(w - p)
        flip = u[2] < 0.5
        span = torch.arange(p, device=self.device)
        cols = x[:, None] + torch.where(flip[:, None], p - 1 - span, span)  # (B, P)
        rows = y[:, None] + span  # (B, P)
        index = (
            self.offsets[pick, None, None, None]
            + (rows[:, None, :, None] * w[:, None, None, None] + cols[:, None, None, :]) * 3
            + torch.arange(3, device=self.device)[None, :, None, None]
        )  # (B, 3, P, P) into the HWC buffer
        return self.pixels[index].float().div_(255.0)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.batch(step) for step in range(self.start, self.total))


def _step_seed(seed: int, step: int) -> int:
    """A 63-bit seed of (seed, step) for a torch generator."""
    digest = hashlib.sha256(repr((seed, 0, step)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed shapes: autotune convs

    images = load_images(cfg.images, cfg.model.patch_size, log)
    val = None
    if cfg.eval_patches:
        val = random_patches(images, cfg.eval_patches, cfg.model.patch_size, [cfg.seed, 1])
    ckpt_path = out / CHECKPOINT_FILE
    ckpt = None
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        log(f"resumed from {ckpt_path} at step {ckpt['step']}")
    start = ckpt["step"] if ckpt else 0
    data: Iterable[torch.Tensor]
    if cfg.data_on_device:
        data = DeviceBatches(images, cfg, device, start)
    else:
        data = DataLoader(
            StepBatches(images, cfg),
        batch_size=None,
            sampler=range(start, cfg.total_steps()),
            num_workers=cfg.loader_workers,
            pin_memory=device.type == "cuda",
            # Its own generator: starting an iterator must not draw from the global torch RNG,
            # or a resumed run would continue a different random stream than the original.
            generator=torch.Generator().manual_seed(cfg.seed),
        )

    def report(step: int, metrics: dict, save: train_loop.Save | None) -> None:
        if save is not None:
            save(ckpt_path)

    summary = train_loop.train(
        cfg, data, device=device, val=val, report=report, log_path=out / LOG_FILE,
        resume=ckpt, log=log, log_validation=False,
    )
    export_model(ckpt_path, out / MODEL_FILE)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    log(f"done: final eval PSNR {summary.get('final_eval_psnr', float('nan')):.2f} dB; "
        f"model in {out / MODEL_FILE}")  # fmt: skip
    return summary
