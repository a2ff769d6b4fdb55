"""Codec speed on Kodak: CAE encode/decode split into network and entropy coding, with
Pillow JPEG and WebP timed on the same images in the same run (DESIGN.md section 4 target:
under 1 s each way on 2 CPU cores, small preset, peak memory under 2 GB).

    .venv/bin/python bench/image_codec.py [--kodak DIR] [--threads 2] [--repeats 3] [--model PATH]
    .venv/bin/python bench/image_codec.py --large        # one synthetic 8000 x 6000 image instead

Without --model the small preset runs with random weights: the time of a network does not
depend on its weights, but the entropy coder's does on the symbols, so the random model's
BatchNorm statistics are calibrated on noise images (never on Kodak) and its latent scaled so
that symbols spread over about -10..10, with a random mask keeping 1 - pruning_ratio of the
slots. Times start from decoded pixels in memory and end with bytes (and back): file I/O and
PNG decoding are not included. Per image the median of --repeats runs; the table gives the
median over the images (and the slowest image), in wall-clock seconds and in CPU seconds of
this process (all threads: on a machine shared with other work, the CPU time is the steadier
measure of the work done; wall time is at best CPU time / threads).
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Run as a script, this folder comes first on sys.path, where bench/coding.py would shadow the
# `coding` package: look in the repository root instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import coding  # noqa: E402
from caeadmm import image_codec  # noqa: E402
from caeadmm.bitstream import parse  # noqa: E402
from caeadmm.config import ModelConfig  # noqa: E402
from caeadmm.images import list_images, load_rgb  # noqa: E402
from caeadmm.model import CAE  # noqa: E402
from caeadmm.zoo import load  # noqa: E402


def random_model(pruning_ratio: float, seed: int = 0) -> CAE:
    torch.manual_seed(seed)
    model = CAE(ModelConfig.from_preset("small"))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        for _ in range(4):
            model(torch.rand(8, 3, 128, 128))
    model.encoder[-1][-1].weight.data.fill_(4.0)
    model.set_mask(torch.rand(model.config.latent_shape()) >= pruning_ratio)
    return model.eval()


def timed(fn, repeats: int) -> tuple[tuple[float, float], object]:
    """((median wall s, median CPU s of this process, all threads), the last result)."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return (statistics.median(walls), statistics.median(cpus)), result


def minus(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return a[0] - b[0], a[1] - b[1]


def measure_image(image: np.ndarray, model: CAE, repeats: int) -> dict[str, tuple]:
    pixels = image.shape[0] * image.shape[1]
    t_enc, data = timed(lambda: image_codec.compress(image, model), repeats)
    t_dec, _ = timed(lambda: image_codec.decompress(data, model), repeats)
    _, payload = parse(data)
    symbols = coding.decode(payload)
    t_ent_enc, _ = timed(lambda: coding.encode(symbols), repeats)
    t_ent_dec, _ = timed(lambda: coding.decode(payload), repeats)
    t_enc8, _ = timed(lambda: image_codec.compress(image, model, batch_tiles=8), repeats)
    row = {
        "cae_bpp": 8 * len(data) / pixels,
        "cae_enc": t_enc, "cae_enc_net": minus(t_enc, t_ent_enc), "cae_enc_ent": t_ent_enc,
        "cae_dec": t_dec, "cae_dec_net": minus(t_dec, t_ent_dec), "cae_dec_ent": t_ent_dec,
        "cae_enc_b8": t_enc8,
    }
    pil = Image.fromarray(image)
    for name, fmt in (("jpeg", "JPEG"), ("webp", "WEBP")):
        def save(fmt=fmt) -> bytes:
            buffer = io.BytesIO()
            pil.save(buffer, format=fmt, quality=75)
            return buffer.getvalue()

        row[f"{name}_enc"], encoded = timed(save, repeats)
        row[f"{name}_dec"], _ = timed(lambda encoded=encoded: np.asarray(Image.open(
            io.BytesIO(encoded)).convert("RGB")), repeats)
        row[f"{name}_bpp"] = 8 * len(encoded) / pixels
    return row


def synthetic_image(height: int, width: int) -> np.ndarray:
    """Gradients plus noise, made a strip at a time so that making it costs little memory."""
    rng = np.random.default_rng(0)
    image = np.empty((height, width, 3), np.uint8)
    xx = np.arange(width, dtype=np.float32)[None, :]
    for top in range(0, height, 256):
        yy = np.arange(top, min(top + 256, height), dtype=np.float32)[:, None]
        strip = np.stack(np.broadcast_arrays(xx / 32, yy / 24, (xx + yy) / 56), -1) % 256
        noise = rng.normal(0, 8, strip.shape).astype(np.float32)
        image[top : top + len(yy)] = np.clip(strip + noise, 0, 255)
    return image


def table(rows: list[dict[str, tuple]], random_weights: bool) -> str:
    def stat(key: str) -> str:
        walls, cpus = [r[key][0] for r in rows], [r[key][1] for r in rows]
        return f"{statistics.median(walls):.3f} | {max(walls):.3f} | {statistics.median(cpus):.3f}"

    lines = [
        "| codec | step | median wall s | slowest wall s | median CPU s |",
        "|---|---|---|---|---|",
        f"| CAE (small) | encode total | {stat('cae_enc')} |",
        f"| | - network (tiling, encoder, gather) | {stat('cae_enc_net')} |",
        f"| | - entropy coding | {stat('cae_enc_ent')} |",
        f"| | decode total | {stat('cae_dec')} |",
        f"| | - network (scatter, decoder, crop) | {stat('cae_dec_net')} |",
        f"| | - entropy decoding | {stat('cae_dec_ent')} |",
        f"| | encode, batch_tiles=8 (for comparison) | {stat('cae_enc_b8')} |",
        f"| Pillow JPEG q75 | encode | {stat('jpeg_enc')} |",
        f"| | decode | {stat('jpeg_dec')} |",
        f"| Pillow WebP q75 | encode | {stat('webp_enc')} |",
        f"| | decode | {stat('webp_dec')} |",
    ]
    bpp = {k: statistics.mean(r[f"{k}_bpp"] for r in rows) for k in ("cae", "jpeg", "webp")}
    lines.append("")
    note = "the CAE weights are random" if random_weights else "different qualities"
    lines.append(f"mean bpp (not a rate comparison: {note}): "
                 + ", ".join(f"{k} {v:.3f}" for k, v in bpp.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kodak", default="/work/shared/data/kodak")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", help="checkpoint or registered name (default: random small)")
    parser.add_argument("--pruning-ratio", type=float, default=0.5)
    parser.add_argument("--limit", type=int, help="only the first N images (a quick check)")
    parser.add_argument("--large", action="store_true", help="one 8000 x 6000 image instead")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = load(args.model) if args.model else random_model(args.pruning_ratio)
    kept = "all" if model.mask is None else int(model.mask.sum())
    print(f"model: {args.model or 'small preset, random weights'}; config {model.config}; "
          f"kept slots per tile {kept}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.large:
        image = synthetic_image(6000, 8000)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        (t_enc, _), data = timed(lambda: image_codec.compress(image, model), 1)
        (t_dec, _), _ = timed(lambda: image_codec.decompress(data, model), 1)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"8000 x 6000: encode {t_enc:.1f} s, decode {t_dec:.1f} s, "
              f"{8 * len(data) / 48e6:.3f} bpp; peak RSS {peak:.0f} MB "
              f"(before the codec ran, with the image in memory: {rss_before:.0f} MB)")
        return
    paths = list_images([args.kodak])[: args.limit]
    if not paths:
        sys.exit(f"no images in {args.kodak}")
    image_codec.compress(load_rgb(paths[0])[:128, :128], model)  # warm-up: numba compilation
    rows = []
    for path in paths:
        rows.append(measure_image(load_rgb(path), model, args.repeats))
        print(f"  {path.name}: encode {rows[-1]['cae_enc'][0]:.3f} s, "
              f"decode {rows[-1]['cae_dec'][0]:.3f} s", file=sys.stderr)
    print(f"{len(rows)} images from {args.kodak}, median of {args.repeats} runs each\n")
    print(table(rows, random_weights=not args.model))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of the whole benchmark process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
