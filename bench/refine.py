"""Latent refinement's settings (steps, learning rate) on training-corpus images, never Kodak:
what each buys against the plain encode of the same model in the same run, and what it costs.

    .venv/bin/python bench/refine.py --images TRAIN_DIR [--model NAME] [--count 4] [--side 256]
        [--steps 5,10,15,25] [--lr 0.01,0.02,0.05] [--repeats 1]

Images: the held-out split of bench/ablation.py (a fixed random choice of 16 images from the
folder; all of them in a folder of fewer), the central --side square of the first --count.
For every (steps, lr) the table gives the change against the plain stream, averaged over the
images: real bytes (bpp, %), PSNR (dB), MS-SSIM, and the encode time as a multiple of the
plain encode's (medians of --repeats runs). The rate is weighed by the model's registered
rate_lambda, as `caeadmm compress --refine` does. docs/refine.md reads the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation import HELD_OUT, held_out, split  # noqa: E402

from caeadmm import image_codec, metrics, zoo  # noqa: E402
from caeadmm.images import list_images  # noqa: E402
from caeadmm.refine import Refinement  # noqa: E402


def measure(image: np.ndarray, model, refine: Refinement | None, repeats: int) -> dict:
    """bpp, PSNR, MS-SSIM of one stream and the median encode time over `repeats`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        data = image_codec.compress(image, model, refine=refine)
        times.append(time.perf_counter() - start)
    decoded = image_codec.decompress(data, model)
    h, w = image.shape[:2]
    return {"bpp": metrics.bpp(len(data), h, w), "psnr": metrics.psnr(image, decoded),
            "ms_ssim": metrics.ms_ssim(image, decoded), "time": statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="training corpus (not Kodak)")
    parser.add_argument("--model", help="registered name or checkpoint (default: the default)")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--steps", default="5,10,15,25")
    parser.add_argument("--lr", default="0.01,0.02,0.05")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = zoo.load(args.model)
    rate_lambda = zoo.rate_lambda(args.model)
    found = list_images([args.images])
    if not found:
        raise SystemExit(f"bench/refine.py: no image files under {args.images}")
    # ablation's held-out split when the folder has room for it, else every image there
    held = split(args.images, min(HELD_OUT, len(found)))[1]
    if len(held) < args.count:
        print(f"{args.images} holds {len(found)} images: measuring {len(held)} of the "
              f"{args.count} asked for", flush=True)
    images = held_out(held[: args.count], args.side)
    image_codec.compress(images[0], model)  # Numba compiles the coder before any timing
    plain = [measure(im, model, None, args.repeats) for im in images]
    print(f"model {args.model or 'default'} (rate_lambda {rate_lambda:g}), {len(images)} "
          f"held-out training-corpus images, central {args.side} px, {args.threads} thread(s); "
          f"plain: {np.mean([p['bpp'] for p in plain]):.4f} bpp, "
          f"{np.mean([p['psnr'] for p in plain]):.2f} dB, "
          f"MS-SSIM {np.mean([p['ms_ssim'] for p in plain]):.4f}, "
          f"encode {np.median([p['time'] for p in plain]):.3f} s", flush=True)
    print("| steps | lr | bpp | PSNR | MS-SSIM | encode time |")
    print("|---|---|---|---|---|---|")
    for steps in (int(s) for s in args.steps.split(",")):
        for lr in (float(v) for v in args.lr.split(",")):
            refine = Refinement(steps=steps, lr=lr, rate_lambda=rate_lambda)
            rows = [measure(im, model, refine, args.repeats) for im in images]
            d = {k: np.mean([r[k] - p[k] for r, p in zip(rows, plain, strict=True)])
                 for k in ("psnr", "ms_ssim")}
            rate = np.mean([r["bpp"] / p["bpp"] - 1 for r, p in zip(rows, plain, strict=True)])
            slower = np.median([r["time"] / p["time"] for r, p in zip(rows, plain, strict=True)])
            print(f"| {steps} | {lr:g} | {100 * rate:+.2f} % | {d['psnr']:+.3f} dB | "
                  f"{d['ms_ssim']:+.4f} | x{slower:.0f} |", flush=True)


if __name__ == "__main__":
    main()
