"""Fixed-budget ablation of the rate-aware variants (issue 14, first probe; docs/rate.md).

    nice -n 5 .venv/bin/python bench/ablation.py [--steps 400] [--variants base-c16,rate-l8]

Every variant trains from the same seed on the same batches of random 64 px crops of
/work/shared/data/train (minus the held-out split) for the same number of Adam steps, with
the paper's mixed distortion and, where the variant has one, rate_lambda * estimated bpp,
through the project's one training loop (caeadmm.train_loop, as `caeadmm train` runs it;
no ADMM: the baseline's channel counts stand in for pruned models). Evaluation: a fixed
split of HELD_OUT training-corpus images never trained on (never Kodak), their central
256 x 256 crops, coded with the real coder (`coding.encode` of all symbols); the table gives
real bpp, the rate estimate over real bits, PSNR and MS-SSIM. One thread, as the machine is
shared.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# Run as a script, this file's folder comes first on sys.path, where bench/coding.py would
# shadow the `coding` package: look in the repository root instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)
import coding  # noqa: E402
from caeadmm import train_loop  # noqa: E402
from caeadmm.checkpoint import load_model  # noqa: E402
from caeadmm.config import TrainConfig  # noqa: E402
from caeadmm.images import list_images, load_rgb, to_uint8  # noqa: E402
from caeadmm.metrics import ms_ssim, psnr  # noqa: E402
from caeadmm.model import CAE  # noqa: E402

DATA = Path("/work/shared/data/train")
HELD_OUT = 8
CROP = 64
EVAL_SIDE = 256
POOL_IMAGES = 160
CROPS_PER_IMAGE = 16
BASE = {"preset": "custom", "width": 32, "n_blocks": 1, "latent_channels": 16, "patch_size": 64}
RATE = {"latent_norm": "none", "entropy_model": "factorized"}
# name: (model overrides, rate_lambda)
VARIANTS: dict[str, tuple[dict, float]] = {
    "base-c16": ({}, 0.0),
    "base-c4": ({"latent_channels": 4}, 0.0),
    "rate-l8": (RATE, 8.0),
    "rate-l32": (RATE, 32.0),
    "rate-l8-mixed": ({**RATE, "train_rounding": "mixed"}, 8.0),
    "rate-l8-gain": ({**RATE, "latent_gain": True}, 8.0),
    "rate-l8-gdn": ({**RATE, "norm": "gdn"}, 8.0),
    "rate-l8-laplacian": ({**RATE, "entropy_model": "laplacian"}, 8.0),
    "rate-l128": (RATE, 128.0),
    "rate-l128-gdn": ({**RATE, "norm": "gdn"}, 128.0),
    "rate-l8-gdn-mixed": ({**RATE, "norm": "gdn", "train_rounding": "mixed"}, 8.0),
}


def split() -> tuple[list[Path], list[Path]]:
    """(training images, held-out images): a fixed random choice of HELD_OUT images."""
    images = list_images([DATA])
    held = set(np.random.default_rng(1234).choice(len(images), HELD_OUT, replace=False).tolist())
    return [p for i, p in enumerate(images) if i not in held], [images[i] for i in sorted(held)]


def crop_pool(train: list[Path], seed: int = 0) -> torch.Tensor:
    """(N, 3, CROP, CROP) float crops in [0, 1] from POOL_IMAGES random training images."""
    rng = np.random.default_rng(seed)
    crops = []
    for i in rng.choice(len(train), POOL_IMAGES, replace=False):
        img = load_rgb(train[i])
        h, w = img.shape[:2]
        for _ in range(CROPS_PER_IMAGE):
            top, left = rng.integers(0, h - CROP + 1), rng.integers(0, w - CROP + 1)
            crops.append(img[top : top + CROP, left : left + CROP])
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255


def held_out(images: list[Path]) -> list[np.ndarray]:
    """The central EVAL_SIDE square (or the largest multiple of 8 that fits) of each image."""
    out = []
    for path in images:
        img = load_rgb(path)
        h, w = img.shape[:2]
        sh, sw = min(EVAL_SIDE, h // 8 * 8), min(EVAL_SIDE, w // 8 * 8)
        top, left = (h - sh) // 2, (w - sw) // 2
        out.append(np.ascontiguousarray(img[top : top + sh, left : left + sw]))
    return out


def train(cfg: TrainConfig, pool: torch.Tensor) -> CAE:
    """Train `cfg` through the project's one training loop on random batches of `pool` (the
    same batches for every variant); returns the final model in eval mode."""
    order = torch.Generator().manual_seed(cfg.seed)
    batches = (pool[torch.randint(len(pool), (cfg.batch_size,), generator=order)]
               for _ in range(cfg.total_steps()))
    with tempfile.TemporaryDirectory() as tmp:
        final = Path(tmp) / "final.pt"

        def report(step: int, metrics: dict, save) -> None:
            if step == cfg.total_steps() and save is not None:
                save(final)

        train_loop.train(cfg, batches, device=torch.device("cpu"), val=None, report=report,
                         log_path=None, log=lambda line: None)
        return load_model(final)


@torch.no_grad()
def evaluate(model: CAE, images: list[np.ndarray]) -> dict[str, float]:
    """Real bpp, estimated / real bits, PSNR and MS-SSIM (means over the images), and the
    per-channel order-0 entropy of the symbols over real bits."""
    bpps, psnrs, msssims = [], [], []
    real_bits = est_bits = 0.0
    symbols_by_channel: list[list[np.ndarray]] = [[] for _ in range(model.config.latent_channels)]
    for img in images:
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        symbols = model.encode(x)
        n_bytes = len(coding.encode(symbols.numpy().ravel()))
        decoded = to_uint8(model.decode(symbols))[0]
        bpps.append(8 * n_bytes / (img.shape[0] * img.shape[1]))
        psnrs.append(psnr(img, decoded))
        msssims.append(ms_ssim(img, decoded))
        real_bits += 8 * n_bytes
        if model.config.entropy_model != "none":
            est_bits += float(model(x, rate=True)[2].sum())
        for c, values in enumerate(symbols[0].numpy()):
            symbols_by_channel[c].append(values.ravel())
    entropy = 0.0
    for parts in symbols_by_channel:
        _, counts = np.unique(np.concatenate(parts), return_counts=True)
        entropy -= float((counts * np.log2(counts / counts.sum())).sum())
    return {
        "bpp": float(np.mean(bpps)),
        "est/real": est_bits / real_bits if est_bits else float("nan"),
        "H_pc/real": entropy / real_bits,
        "psnr": float(np.mean(psnrs)),
        "ms_ssim": float(np.mean(msssims)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_images, held_images = split()
    pool, images = crop_pool(train_images), held_out(held_images)
    print(f"{len(pool)} training crops of {CROP} px from {POOL_IMAGES} images; "
          f"{len(images)} held-out images; {args.steps} steps of batch {args.batch}")
    print("| variant | rate_lambda | bpp (real) | est/real | H_pc/real | PSNR | MS-SSIM "
          "| train s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.variants.split(","):
        overrides, rate_lambda = VARIANTS[name]
        cfg = TrainConfig.from_dict({
            "model": {**BASE, **overrides}, "rate_lambda": rate_lambda,
            "batch_size": args.batch, "pruning_ratio": 0.0, "warmup_steps": 0,
            "admm_steps": 0, "finetune_steps": args.steps, "lr_final_scale": 1.0,
            "checkpoint_every": 0, "log_every": args.steps, "threads": 1,
        })
        start = time.perf_counter()
        model = train(cfg, pool)
        seconds = time.perf_counter() - start
        r = evaluate(model, images)
        print(f"| {name} | {rate_lambda:g} | {r['bpp']:.3f} | {r['est/real']:.3f} | "
              f"{r['H_pc/real']:.3f} | {r['psnr']:.2f} | {r['ms_ssim']:.4f} | {seconds:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
