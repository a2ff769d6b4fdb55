"""A quick look at a variable-rate training checkpoint against shipped models, on a few photos.

    python scripts/probe_checkpoint.py runs/vr-msssim/checkpoint.pt PHOTOS_DIR \
        --models small-rate-k2,small-rate-k6-r2 --every 9 --qualities 0,2,4,6,8

Compresses every Nth image of PHOTOS_DIR (real bytes) with the checkpoint at each quality and
with each shipped model, and prints the means of bpp, PSNR and MS-SSIM: what docs/
variable-rate.md's status table shows. For decisions, use `caeadmm eval` on whole sets.
"""

from __future__ import annotations

import argparse

import numpy as np

from caeadmm import codec, zoo
from caeadmm.images import list_images, load_rgb
from caeadmm.metrics import quality_metrics


def mean_point(images: list[np.ndarray], model, quality: float | None = None) -> np.ndarray:
    """Mean (bpp, PSNR, MS-SSIM) of the images through the codec at `quality`."""
    points = []
    for image in images:
        data = codec.compress(image, model, quality=quality)
        metrics = quality_metrics(image, codec.decompress(data, model))
        points.append((8 * len(data) / image[..., 0].size, metrics["psnr"], metrics["ms_ssim"]))
    return np.mean(points, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("photos")
    parser.add_argument("--models", default="", help="shipped models to compare, comma list")
    parser.add_argument("--every", type=int, default=9, help="every Nth image (default 9)")
    parser.add_argument("--qualities", default="0,2,4,6,8")
    args = parser.parse_args()
    model = zoo.load(args.checkpoint)
    images = [load_rgb(p) for p in list_images([args.photos])[:: args.every]]
    print(f"{len(images)} images; gains per level:",
          " ".join(f"{g:.3f}" for g in model.level_log_gain.exp().mean(dim=(1, 2, 3)).tolist()))
    for quality in map(float, args.qualities.split(",")):
        print(f"quality {quality:g}: %.4f bpp, %.2f dB, MS-SSIM %.4f"
              % tuple(mean_point(images, model, quality)))
    for name in filter(None, args.models.split(",")):
        point = tuple(mean_point(images, zoo.load(name)))
        print(f"{name}: %.4f bpp, %.2f dB, MS-SSIM %.4f" % point)


if __name__ == "__main__":
    main()
