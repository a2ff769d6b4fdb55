"""Fixed-budget ablation of the model variants (docs/rate.md, "Ablation").

    nice -n 5 .venv/bin/python bench/ablation.py [--steps 400] [--crop 64] [--families paper,rate]
    python bench/ablation.py --families paper,rate --json a.json &  # in parallel, then
    python bench/ablation.py --families rate-gdn --json b.json
    python bench/ablation.py --report a.json b.json
    python bench/ablation.py --device cuda --net small --crop 192 --steps 3000 --batch 16

Every family is a set of operating points (channel counts or rate_lambda values); every point
trains from the same seed on the same batches of random crops of the training corpus (minus
the held-out split) for the same number of steps, through the project's one training loop
(caeadmm.train_loop, as `caeadmm train` runs it): a warm-up fifth (MSE only), then, for the
families with ADMM, half the steps with the ADMM penalty and the hard prune, the rest masked
fine-tuning (without ADMM: fine-tuning from the warm-up on).

Evaluation: the central EVAL_SIDE square of HELD_OUT training-corpus images never trained
on (never Kodak), coded into real .cae streams by caeadmm.codec (the shipped coder:
per-channel-group Huffman tables): real bpp, PSNR, MS-SSIM; for a rate-aware model its
estimate over the real payload bits. The table ends with each family's BD-rate against the
paper's family (PSNR and MS-SSIM in dB), the figure that decides whether a change stays.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

# Run as a script, this file's folder comes first on sys.path: the repository root goes there
# instead, so that this checkout's packages (`coding`, `caeadmm`, `bench`) are the ones imported.
sys.path[0] = str(Path(__file__).resolve().parent.parent)
from bench.rate_estimate import estimated_bits  # noqa: E402
from caeadmm import bitstream, codec, train_loop  # noqa: E402
from caeadmm.checkpoint import load_model  # noqa: E402
from caeadmm.config import TrainConfig  # noqa: E402
from caeadmm.images import list_images, load_rgb  # noqa: E402
from caeadmm.metrics import bpp as bits_per_pixel  # noqa: E402
from caeadmm.metrics import quality_metrics  # noqa: E402
from caeadmm.model import CAE  # noqa: E402
from caeadmm.rd import Curve, bd_matrix, markdown_table  # noqa: E402

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "train"
HELD_OUT = 16
EVAL_SIDE = 256
POOL_IMAGES = 160
CROPS_PER_IMAGE = 16
NETS = {  # --net: the network every variant shares (C = 16 latent channels)
    "narrow": {"preset": "custom", "width": 32, "n_blocks": 1, "latent_channels": 16},
    "small": {"preset": "small", "latent_channels": 16},
}
RATE = {"latent_norm": "none", "entropy_model": "factorized", "train_rounding": "mixed"}
MSSSIM_LOSS = {"w_msssim": 1000.0, "w_ssim": 0.0, "w_mse": 0.0, "w_psnr": 0.0}
LAMBDAS = (512.0, 2048.0, 8192.0)
KEEP = (2, 4, 8)  # channel counts of the lambda = 0 families

# family: points, each (label, model overrides, train overrides). The first is the anchor.
FAMILIES: dict[str, list[tuple[str, dict, dict]]] = {
    "paper": [(f"k{k}", {}, {"pruning_ratio": 1 - k / 16}) for k in KEEP],
    "paper-no-admm": [(f"c{k}", {"latent_channels": k}, {}) for k in KEEP],
    "rate": [(f"l{lam:g}", RATE, {"rate_lambda": lam}) for lam in LAMBDAS],
    "rate-admm": [(f"l{lam:g}", RATE, {"rate_lambda": lam, "pruning_ratio": 0.5})
                  for lam in LAMBDAS],
    "rate-gdn": [(f"l{lam:g}", {**RATE, "norm": "gdn"}, {"rate_lambda": lam}) for lam in LAMBDAS],
    "rate-gdn-msssim": [(f"l{lam:g}", {**RATE, "norm": "gdn"}, {"rate_lambda": lam / 4,
                                                                **MSSSIM_LOSS})
                        for lam in LAMBDAS],
    "rate-adaptive": [(f"l{lam:g}", {**RATE, "rate_estimate": "adaptive"}, {"rate_lambda": lam})
                      for lam in LAMBDAS],
    "rate-adaptive-admm": [(f"l{lam:g}", {**RATE, "rate_estimate": "adaptive"},
                            {"rate_lambda": lam, "pruning_ratio": 0.5}) for lam in LAMBDAS],
    "rate-adaptive-runs-admm": [(f"l{lam:g}", {**RATE, "rate_estimate": "adaptive-runs"},
                                 {"rate_lambda": lam, "pruning_ratio": 0.5}) for lam in LAMBDAS],
    "rate-laplacian": [(f"l{lam:g}", {**RATE, "entropy_model": "laplacian"},
                        {"rate_lambda": lam}) for lam in LAMBDAS],
}


def split(data: Path, n_held: int = HELD_OUT) -> tuple[list[Path], list[Path]]:
    """(training images, held-out images): a fixed random choice of `n_held` images."""
    images = list_images([data])
    held = set(np.random.default_rng(1234).choice(len(images), n_held, replace=False).tolist())
    return [p for i, p in enumerate(images) if i not in held], [images[i] for i in sorted(held)]


def crop_pool(train: list[Path], crop: int, seed: int = 0) -> torch.Tensor:
    """(N, 3, crop, crop) uint8 crops from POOL_IMAGES random training images at least `crop`
    on each side."""
    rng = np.random.default_rng(seed)
    crops = []
    for i in rng.permutation(len(train)):
        img = load_rgb(train[i])
        h, w = img.shape[:2]
        if min(h, w) < crop:
            continue
        for _ in range(CROPS_PER_IMAGE):
            top, left = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
            crops.append(img[top : top + crop, left : left + crop])
        if len(crops) == POOL_IMAGES * CROPS_PER_IMAGE:
            break
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def held_out(images: list[Path], side: int = EVAL_SIDE) -> list[np.ndarray]:
    """The central `side` square (or the largest that fits) of each image, uint8 RGB."""
    out = []
    for path in images:
        img = load_rgb(path)
        h, w = img.shape[:2]
        sh, sw = min(side, h), min(side, w)
        top, left = (h - sh) // 2, (w - sw) // 2
        out.append(np.ascontiguousarray(img[top : top + sh, left : left + sw]))
    return out


def config(net: dict, crop: int, model: dict, train: dict, steps: int, batch: int) -> TrainConfig:
    """One point's TrainConfig: the shared schedule (warm-up fifth, ADMM half when pruning)."""
    warmup = steps // 5
    admm = steps // 2 if train.get("pruning_ratio", 0) > 0 else 0
    return TrainConfig.from_dict({
        "model": {**net, "patch_size": crop, **model}, "batch_size": batch,
        "pruning_ratio": 0.0, "warmup_steps": warmup, "admm_steps": admm,
        "finetune_steps": steps - warmup - admm, "admm_every": max(1, admm // 20),
        "checkpoint_every": 0, "log_every": steps, "threads": 0, **train,
    })


def train(cfg: TrainConfig, pool: torch.Tensor, device: torch.device,
          keep: Path | None = None) -> CAE:
    """Train `cfg` through the project's one training loop on random batches of `pool` (the
    same batches for every point); returns the final model on the CPU, in eval mode, and
    keeps its checkpoint at `keep` if given (e.g. to evaluate it on Kodak afterwards)."""
    order = torch.Generator().manual_seed(cfg.seed)
    pool = pool.to(device)

    def batches():
        for _ in range(cfg.total_steps()):
            index = torch.randint(len(pool), (cfg.batch_size,), generator=order).to(device)
            yield pool[index].float() / 255

    with tempfile.TemporaryDirectory() as tmp:
        final = Path(tmp) / "final.pt"

        def report(step: int, metrics: dict, save) -> None:
            if step == cfg.total_steps() and save is not None:
                save(final)

        train_loop.train(cfg, batches(), device=device, val=None, report=report,
                         log_path=None, log=lambda line: None)
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(final, keep)
        return load_model(final).eval()


def stream_estimate(model: CAE, header: bitstream.CaeHeader, payload: bytes) -> float:
    """The model's rate estimate (fixed, per-image adaptive or that with the zero context, as
    it was trained) of exactly the symbols a version 2 payload holds."""
    kept = model.kept_channels()
    symbols = bitstream.decode_payload(header, payload).reshape(len(kept), *header.latent_size)
    fixed, adaptive, runs = estimated_bits(model, kept, symbols)
    return {"adaptive": adaptive, "adaptive-runs": runs}.get(model.config.rate_estimate, fixed)


@torch.no_grad()
def evaluate(model: CAE, images: list[np.ndarray]) -> dict[str, float]:
    """Means over the images of real bpp, PSNR and MS-SSIM of real .cae streams, and (for a
    rate-aware model) the summed rate estimate over the summed real payload bits."""
    rows, payload_bits, estimate = [], 0, 0.0
    for img in images:
        data = codec.compress(img, model)
        decoded = codec.decompress(data, model)
        rows.append({"bpp": bits_per_pixel(len(data), *img.shape[:2]),
                     **quality_metrics(img, decoded)})
        header, payload = bitstream.parse(data)
        payload_bits += 8 * len(payload)
        if model.config.entropy_model != "none":
            estimate += stream_estimate(model, header, payload)
    means = {key: float(np.mean([r[key] for r in rows])) for key in ("bpp", "psnr", "ms_ssim")}
    return {**means, "est/real": estimate / payload_bits if estimate else math.nan}


def bd_table(results: dict[str, list[dict]]) -> str:
    """Each family's BD-rate (%) against the paper's family (PSNR, MS-SSIM in dB), as
    markdown; n/a where the curves do not overlap."""
    curves = [Curve(family, family, [p["bpp"] for p in points],
                    psnr=[p["psnr"] for p in points], ms_ssim=[p["ms_ssim"] for p in points])
              for family, points in results.items()]
    anchor = next((c for c in curves if c.name == "paper"), None)
    if anchor is None:
        return "(no BD-rates: the paper family, their anchor, was not run)"
    frame = pd.DataFrame({
        f"BD-rate {label} vs paper (%)": bd_matrix(curves, [anchor], metric).iloc[:, 0]
        for label, metric in (("PSNR", "psnr"), ("MS-SSIM", "ms_ssim_db"))
    })
    frame.index.name = "family"
    return markdown_table(frame, floatfmt="+.1f").rstrip("\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=64, help="training crop side (px)")
    parser.add_argument("--net", choices=sorted(NETS), default="narrow")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--data", type=Path, default=DATA, help="training-corpus folder")
    parser.add_argument("--held-out", type=int, default=HELD_OUT, help="evaluation images")
    parser.add_argument("--json", type=Path, help="also write every point's figures here")
    parser.add_argument("--save", type=Path, metavar="DIR",
                        help="keep each point's final checkpoint as DIR/FAMILY-POINT.pt")
    parser.add_argument("--report", type=Path, nargs="+", metavar="JSON",
                        help="train nothing: print the BD-rate table of these --json files "
                             "(runs of different families, e.g. in parallel processes)")
    args = parser.parse_args(argv)
    if args.report:
        merged: dict[str, list[dict]] = {}
        for path in args.report:
            merged.update(json.loads(path.read_text())["families"])
        print(bd_table(merged))
        return
    unknown = set(args.families.split(",")) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train_images, held_images = split(args.data, args.held_out)
    pool, images = crop_pool(train_images, args.crop), held_out(held_images)
    setup = (f"{len(pool)} training crops of {args.crop} px; {len(images)} held-out images; "
             f"{args.steps} steps of batch {args.batch}; net {args.net}; device "
             f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    print(setup)
    print("| family | point | bpp (real) | PSNR | MS-SSIM | est/real | train s |")
    print("|---|---|---|---|---|---|---|")
    results: dict[str, list[dict]] = {}
    for family in args.families.split(","):
        results[family] = []
        for label, model, overrides in FAMILIES[family]:
            cfg = config(NETS[args.net], args.crop, model, overrides, args.steps, args.batch)
            start = time.perf_counter()
            keep = args.save / f"{family}-{label}.pt" if args.save else None
            r = evaluate(train(cfg, pool, device, keep), images)
            r.update(point=label, seconds=time.perf_counter() - start)
            results[family].append(r)
            print(f"| {family} | {label} | {r['bpp']:.3f} | {r['psnr']:.2f} | "
                  f"{r['ms_ssim']:.4f} | {r['est/real']:.3f} | {r['seconds']:.0f} |", flush=True)
            if args.json:
                args.json.write_text(json.dumps({"setup": setup, "families": results}, indent=1))
    print()
    print(bd_table(results))


if __name__ == "__main__":
    main()
