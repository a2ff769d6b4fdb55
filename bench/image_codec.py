"""Codec speed, memory and quality on Kodak: CAE version 2 (whole image, "predicted"
layout) next to version 1's layout (independent 128 px tiles), each split into network and
entropy coding, with Pillow JPEG and WebP timed on the same images in the same run.

    .venv/bin/python bench/image_codec.py [--kodak DIR] [--threads 2] [--repeats 3] [--model M]
    .venv/bin/python bench/image_codec.py --large [--layout tiles]   # one 8000 x 6000 image
    .venv/bin/python bench/image_codec.py --payload --model small-k3 --model small-k6 --limit 6

Without --model the small preset runs with random weights: the time of a network does not
depend on its weights, but the entropy coder's does on the symbols, so the random model's
BatchNorm statistics are calibrated on noise images (never on Kodak) and its latent scaled so
that symbols spread over about -10..10, with a random channel mask keeping 1 - pruning_ratio
of the channels. With a trained --model the table also gives bpp, PSNR and MS-SSIM of both
layouts (caeadmm.metrics). Times start from decoded pixels in memory and end with bytes (and
back): file I/O and PNG decoding are not included. Per image the median of --repeats runs;
the table gives the median over the images (and the slowest image), in wall-clock seconds
and in CPU seconds of this process (all threads: on a machine shared with other work, the
CPU time is the steadier measure of the work done). --large reports the process's peak RSS
for one layout (run it once per layout: the peak of a process only grows). --payload compares,
per --model, the bpp of the same symbols coded with one table (coding.encode), a table per
group of channels (the "channels" layout) and as predicted planes (the default "predicted"
layout), no timing.
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

# Run as a script, this file's folder comes first on sys.path: the repository root goes there
# instead, so that this checkout's packages (`coding`, `caeadmm`, `bench`) are the ones imported.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import coding  # noqa: E402
from caeadmm import image_codec  # noqa: E402
from caeadmm.bitstream import parse  # noqa: E402
from caeadmm.config import ModelConfig  # noqa: E402
from caeadmm.images import list_images, load_rgb  # noqa: E402
from caeadmm.metrics import quality_metrics  # noqa: E402
from caeadmm.model import CAE  # noqa: E402
from caeadmm.zoo import load  # noqa: E402

# The Kodak set next to the repository (a checkout of this project's workspace).
KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"


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
    keep = torch.rand(model.config.latent_channels) >= pruning_ratio
    model.set_mask(keep[:, None, None].expand(model.config.latent_shape()).clone())
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


LAYOUTS = {"v2": None, "v1": "tiles"}  # row prefix -> compress(layout=...)
# row prefix -> (entropy encoder, entropy decoder) of that layout's payload
ENTROPY = {"v2": (coding.encode_planes, coding.decode_planes),
           "v1": (coding.encode, coding.decode)}


def measure_image(image: np.ndarray, model: CAE, repeats: int) -> dict[str, tuple]:
    pixels = image.shape[0] * image.shape[1]
    row = {}
    for name, layout in LAYOUTS.items():
        t_enc, data = timed(lambda layout=layout: image_codec.compress(image, model,
                                                                      layout=layout), repeats)
        t_dec, decoded = timed(lambda data=data: image_codec.decompress(data, model), repeats)
        _, payload = parse(data)
        encode, decode = ENTROPY[name]
        symbols = decode(payload)
        t_ent_enc, _ = timed(lambda symbols=symbols, encode=encode: encode(symbols),
                             repeats)
        t_ent_dec, _ = timed(lambda payload=payload, decode=decode: decode(payload),
                             repeats)
        row.update({
            f"{name}_bpp": 8 * len(data) / pixels,
            f"{name}_enc": t_enc, f"{name}_enc_net": minus(t_enc, t_ent_enc),
            f"{name}_enc_ent": t_ent_enc,
            f"{name}_dec": t_dec, f"{name}_dec_net": minus(t_dec, t_ent_dec),
            f"{name}_dec_ent": t_ent_dec,
            **{f"{name}_{k}": v for k, v in quality_metrics(image, decoded).items()},
        })
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


def payload_table(paths: list[Path], names: list[str]) -> str:
    """Per model: mean bpp of whole-image streams whose payload codes the same symbols with
    one Huffman table, with a table per group of channels ("channels" layout) and as the
    residuals of the prediction ("predicted", the default), and the changes between them."""
    lines = ["| model | images | bpp, one table | bpp, per channel group | bpp, predicted | "
             "group against one table | predicted against group |",
             "|---|---|---|---|---|---|---|"]
    images = [load_rgb(path) for path in paths]
    for name in names:
        model = load(name)
        single, grouped, predicted = [], [], []
        for image in images:
            data = image_codec.compress(image, model, layout="channels")
            header, payload = parse(data)
            head = len(data) - len(payload)
            symbols = coding.decode_channels(payload)
            pixels = header.width * header.height
            single.append(8 * (head + len(coding.encode(symbols.ravel()))) / pixels)
            grouped.append(8 * len(data) / pixels)
            planes = symbols.reshape(len(symbols), *header.latent_size)
            predicted.append(8 * (head + len(coding.encode_planes(planes))) / pixels)
        lines.append(f"| {name} | {len(images)} | {statistics.mean(single):.4f} | "
                     f"{statistics.mean(grouped):.4f} | {statistics.mean(predicted):.4f} | "
                     f"{100 * (sum(grouped) / sum(single) - 1):+.1f} % | "
                     f"{100 * (sum(predicted) / sum(grouped) - 1):+.1f} % |")
    return "\n".join(lines)


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
    ]
    for name, what in (("v2", "CAE v2 (whole image)"), ("v1", "CAE v1 layout (tiles)")):
        lines += [
            f"| {what} | encode total | {stat(f'{name}_enc')} |",
            f"| | - network | {stat(f'{name}_enc_net')} |",
            f"| | - entropy coding | {stat(f'{name}_enc_ent')} |",
            f"| | decode total | {stat(f'{name}_dec')} |",
            f"| | - network | {stat(f'{name}_dec_net')} |",
            f"| | - entropy decoding | {stat(f'{name}_dec_ent')} |",
        ]
    lines += [
        f"| Pillow JPEG q75 | encode | {stat('jpeg_enc')} |",
        f"| | decode | {stat('jpeg_dec')} |",
        f"| Pillow WebP q75 | encode | {stat('webp_enc')} |",
        f"| | decode | {stat('webp_dec')} |",
        "",
    ]
    if random_weights:
        bpp = {k: statistics.mean(r[f"{k}_bpp"] for r in rows) for k in ("v2", "v1", "jpeg")}
        lines.append("mean bpp (not a rate comparison: the CAE weights are random): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in bpp.items()))
        return "\n".join(lines)
    lines += ["| layout | mean bpp | mean PSNR dB | mean MS-SSIM |", "|---|---|---|---|"]
    for name in LAYOUTS:
        mean = {k: statistics.mean(r[f"{name}_{k}"] for r in rows)
                for k in ("bpp", "psnr", "ms_ssim")}
        lines.append(f"| {name} | {mean['bpp']:.4f} | {mean['psnr']:.2f} | "
                     f"{mean['ms_ssim']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kodak", default=str(KODAK), help="Kodak folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", action="append",
                        help="checkpoint or registered name (default: random small); "
                             "--payload takes several")
    parser.add_argument("--pruning-ratio", type=float, default=0.5)
    parser.add_argument("--limit", type=int, help="only the first N images (a quick check)")
    parser.add_argument("--large", action="store_true", help="one 8000 x 6000 image instead")
    parser.add_argument("--layout", choices=["predicted", "channels", "tiles"],
                        default="predicted",
                        help="--large: the layout to measure (default: predicted)")
    parser.add_argument("--payload", action="store_true",
                        help="sizes only: one table, per channel group, predicted planes")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.payload:
        if not args.model:
            sys.exit("--payload needs trained models (--model NAME, repeatable)")
        paths = list_images([args.kodak])[: args.limit]
        if not paths:
            sys.exit(f"no images in {args.kodak}")
        print(f"{len(paths)} images from {args.kodak}\n")
        print(payload_table(paths, args.model))
        return
    if args.model and len(args.model) > 1:
        sys.exit("one --model at a time, except with --payload")
    name = args.model[0] if args.model else None
    model = load(name) if name else random_model(args.pruning_ratio)
    kept = "all" if model.mask is None else int(model.mask[:, 0, 0].sum())
    print(f"model: {name or 'small preset, random weights'}; config {model.config}; "
          f"kept channels {kept}; torch threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.large:
        image = synthetic_image(6000, 8000)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        (t_enc, _), data = timed(
            lambda: image_codec.compress(image, model, layout=args.layout), 1)
        after_encode = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        (t_dec, _), _ = timed(lambda: image_codec.decompress(data, model), 1)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"8000 x 6000, layout {args.layout}: encode {t_enc:.1f} s (peak RSS "
              f"{after_encode:.0f} MB), decode {t_dec:.1f} s, "
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
        print(f"  {path.name}: encode {rows[-1]['v2_enc'][0]:.3f} s, "
              f"decode {rows[-1]['v2_dec'][0]:.3f} s", file=sys.stderr)
    print(f"{len(rows)} images from {args.kodak}, median of {args.repeats} runs each\n")
    print(table(rows, random_weights=not args.model))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of the whole benchmark process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
