"""Codec speed, memory and quality on Kodak: CAE version 2 (whole image, "predicted"
layout) next to version 1's layout (independent 128 px tiles), each split into network and
entropy coding, with Pillow JPEG and WebP timed on the same images in the same run.

    .venv/bin/python bench/image_codec.py [--kodak DIR] [--threads 2] [--repeats 3] [--model M]
    .venv/bin/python bench/image_codec.py --large [--layout tiles]   # one 8000 x 6000 image
    .venv/bin/python bench/image_codec.py --payload --model small-k3 --model small-k6 --limit 6
    .venv/bin/python bench/image_codec.py --bound [--limit 6] [--threads 2] [--model M ...]
    .venv/bin/python bench/image_codec.py --throughput DIR [--workers 2] [--limit 6]

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

--bound: how far the codec is from what its network costs. Per model (default: the
registry's default and every registered variable-rate model): the multiply-adds of the
encoder and the decoder per megapixel, counted with forward hooks on every Conv2d over a
Kodak-sized input; the time of a plain stack of the same convolutions (the same shapes, run
one after another on random inputs in inference mode, --threads threads), hence the conv
throughput torch reaches on this CPU and the compute-bound time per Kodak image; and the
measured encode and decode (codec.compress / decompress, entropy coding included,
medians of --repeats per image, median over the images) as a ratio to it. Beside them, in
the same run and on the same images: Pillow WebP (method 6, and Pillow's default method 4)
and AVIF (speed 4 and 8, --threads encoder threads) encode and decode at quality 75.

--throughput DIR: images per second over the first --limit images of DIR, the way a user
runs it: `caeadmm compress DIR --workers N` (plain, and with --refine fast) and
`caeadmm decompress`, end to end (process start, model loading and file I/O included), and
Pillow AVIF speed 4 (quality 75) over the same files with N worker processes, each given
cores / N encoder threads as caeadmm's workers are given torch threads.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import math
import multiprocessing
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Run as a script, this file's folder comes first on sys.path: the repository root goes there
# instead, so that this checkout's packages (`coding`, `caeadmm`, `bench`) are the ones imported.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import coding  # noqa: E402
from caeadmm import bitstream, codec, legacy  # noqa: E402
from caeadmm.bitstream import parse  # noqa: E402
from caeadmm.config import ModelConfig  # noqa: E402
from caeadmm.images import list_images, load_rgb  # noqa: E402
from caeadmm.metrics import quality_metrics  # noqa: E402
from caeadmm.model import CAE, padded_side  # noqa: E402
from caeadmm.zoo import default_quality, list_models, load  # noqa: E402

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


# row prefix -> the stream of that layout: v2 the codec's, v1 version 1's tiles (caeadmm.legacy)
LAYOUTS = {"v2": codec.compress, "v1": legacy.tiles_stream}
WRITE = {"predicted": codec.compress, "tiles": legacy.tiles_stream}  # --large --layout
# row prefix -> (entropy encoder, entropy decoder) of that layout's payload
ENTROPY = {"v2": (coding.encode_planes, coding.decode_planes),
           "v1": (coding.encode, coding.decode)}


def measure_image(image: np.ndarray, model: CAE, repeats: int) -> dict[str, tuple]:
    pixels = image.shape[0] * image.shape[1]
    row = {}
    for name, write in LAYOUTS.items():
        t_enc, data = timed(lambda write=write: write(image, model), repeats)
        t_dec, decoded = timed(lambda data=data: codec.decompress(data, model), repeats)
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
        quality = default_quality(name, model)  # None: a fixed-rate model
        single, grouped, predicted = [], [], []
        for image in images:
            data = codec.compress(image, model, quality=quality)
            header, payload = parse(data)
            head = len(data) - len(payload)
            symbols = bitstream.decode_payload(header, payload)  # (kept channels, positions)
            pixels = header.width * header.height
            single.append(8 * (head + len(coding.encode(symbols.ravel()))) / pixels)
            grouped.append(8 * (head + len(coding.encode_channels(symbols))) / pixels)
            predicted.append(8 * len(data) / pixels)
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


# -- --bound: multiply-adds, the conv stack, and the codec against it ------------------------


Records = list[tuple[torch.nn.Conv2d, tuple, tuple]]


def conv_records(network: torch.nn.Module, x: torch.Tensor) -> Records:
    """(convolution, its input shape, its output shape) of every Conv2d that `network(x)`
    runs, in order (forward hooks)."""
    records: Records = []

    def hook(conv: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        records.append((conv, tuple(inputs[0].shape), tuple(output.shape)))

    hooks = [m.register_forward_hook(hook) for m in network.modules()
             if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            network(x)
    finally:
        for hook in hooks:
            hook.remove()
    return records


def conv_macs(records: Records) -> int:
    """Multiply-adds of the recorded convolutions (batch 1): per output value, one per input
    channel of its group and kernel tap."""
    total = 0
    for conv, _, out in records:
        kh, kw = conv.kernel_size
        total += math.prod(out[1:]) * (conv.in_channels // conv.groups) * kh * kw
    return total


def conv_stack_seconds(records: Records, repeats: int) -> float:
    """Median wall time of running every recorded convolution once on a random input of its
    shape: the network's convolutions alone, at the throughput torch reaches on them."""
    inputs = [(conv, torch.rand(shape)) for conv, shape, _ in records]
    with torch.inference_mode():
        for conv, x in inputs:  # warm-up: oneDNN picks and caches its kernels
            conv(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for conv, x in inputs:
                conv(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def pillow_rows(images: list[np.ndarray], repeats: int, threads: int) -> list[tuple]:
    """(codec, median encode s, median decode s, mean bpp) of Pillow WebP and AVIF."""
    settings = [
        ("WebP q75, method 6", "WEBP", {"quality": 75, "method": 6}),
        ("WebP q75, default (method 4)", "WEBP", {"quality": 75}),
        ("AVIF q75, speed 4", "AVIF", {"quality": 75, "speed": 4, "max_threads": threads}),
        ("AVIF q75, speed 8", "AVIF", {"quality": 75, "speed": 8, "max_threads": threads}),
    ]
    rows = []
    for label, fmt, options in settings:
        encode, decode, bpp = [], [], []
        for image in images:
            pil = Image.fromarray(image)

            def save(pil=pil, fmt=fmt, options=options) -> bytes:
                buffer = io.BytesIO()
                pil.save(buffer, format=fmt, **options)
                return buffer.getvalue()

            (wall, _), data = timed(save, repeats)
            encode.append(wall)
            (wall, _), _ = timed(lambda data=data: np.asarray(Image.open(io.BytesIO(data))
                                                              .convert("RGB")), repeats)
            decode.append(wall)
            bpp.append(8 * len(data) / (image.shape[0] * image.shape[1]))
        rows.append((label, statistics.median(encode), statistics.median(decode),
                     statistics.mean(bpp)))
    return rows


def bound_models(names: list[str] | None) -> list[str | None]:
    """--model, else the registry's default and every other registered variable-rate model."""
    if names:
        return list(names)
    variable = [m.name for m in list_models() if m.default_quality is not None
                and not m.superseded and not m.default]
    return [None, *variable]


def bound(args: argparse.Namespace) -> None:
    paths = list_images([args.kodak])[: args.limit]
    if not paths:
        sys.exit(f"no images in {args.kodak}")
    images = [load_rgb(p) for p in paths]
    print(f"{len(images)} Kodak images ({', '.join(p.stem for p in paths)}), medians of "
          f"{args.repeats} runs each; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    lines = ["| model | part | G multiply-adds per Mpx | G per Kodak image | conv stack s "
             "(the bound) | conv throughput GMAC/s | measured s | measured / bound |",
             "|---|---|---|---|---|---|---|---|"]
    for name in bound_models(args.model):
        model = load(name).eval()
        quality = default_quality(name, model)
        codec.compress(images[0][:64, :64], model, quality=quality)  # numba, oneDNN
        # Per image, the codec and the conv stack of that image's shapes one after the
        # other, so that both see the same load; the ratio is the median of the per-image
        # ratios.
        rows: dict[str, list[tuple[int, float, float]]] = {"encoder": [], "decoder": []}
        for image in images:
            height, width = (padded_side(n) for n in image.shape[:2])
            latent = torch.rand(1, model.config.latent_channels, height // 8, width // 8)
            records = {"encoder": conv_records(model.encoder, torch.rand(1, 3, height, width)),
                       "decoder": conv_records(model.decoder, latent)}
            (encode, _), data = timed(partial(codec.compress, image, model,
                                              quality=quality), args.repeats)
            (decode, _), _ = timed(partial(codec.decompress, data, model), args.repeats)
            for part, measured in (("encoder", encode), ("decoder", decode)):
                stack = conv_stack_seconds(records[part], args.repeats)
                rows[part].append((conv_macs(records[part]), stack, measured))
        pixels = statistics.median(math.prod(im.shape[:2]) for im in images)
        for part, per_image in rows.items():
            macs = statistics.median(r[0] for r in per_image)
            stack = statistics.median(r[1] for r in per_image)
            measured = statistics.median(r[2] for r in per_image)
            ratio = statistics.median(r[2] / r[1] for r in per_image)
            what = "encode" if part == "encoder" else "decode"
            label = name or f"default ({next(m.name for m in list_models() if m.default)})"
            label += "" if quality is None else f", quality {quality:g}"
            lines.append(f"| {label} | {part} ({what}) | "
                         f"{macs / pixels / 1e3:.1f} | {macs / 1e9:.1f} | {stack:.3f} | "
                         f"{macs / 1e9 / stack:.1f} | {measured:.3f} | {ratio:.2f} |")
    print("\n".join(lines))
    print("\n| codec | encode s | decode s | mean bpp |\n|---|---|---|---|")
    for label, enc, dec, bpp in pillow_rows(images, args.repeats, args.threads):
        print(f"| Pillow {label} | {enc:.3f} | {dec:.3f} | {bpp:.3f} |")


# -- --throughput: images/s on a folder, against AVIF speed 4 on the same cores ---------------


def _avif_file(src: str, dst: str, threads: int) -> int:
    """Encode one image file as AVIF speed 4, quality 75 (a worker's job); its pixel count."""
    rgb = load_rgb(src)
    Image.fromarray(rgb).save(dst, format="AVIF", quality=75, speed=4, max_threads=threads)
    return rgb.shape[0] * rgb.shape[1]


def _avif_decode(path: str) -> int:
    with Image.open(path) as img:
        return int(np.asarray(img.convert("RGB")).shape[0])


def _pool_seconds(fn, jobs: list[tuple], workers: int) -> float:
    """Wall time of running fn(*job) for every job over `workers` spawned processes (their
    start included, as caeadmm's workers' is)."""
    start = time.perf_counter()
    if workers == 1:
        for job in jobs:
            fn(*job)
    else:
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(fn, *zip(*jobs, strict=True)))
    return time.perf_counter() - start


def _cli_seconds(args: list[str]) -> tuple[float, str]:
    """Wall time of `python -m caeadmm ARGS` and the throughput line it ends with."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "caeadmm", *args], capture_output=True,
                            text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"caeadmm {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    found = re.findall(r"^caeadmm \w+: (\d+ images in .*)$", result.stderr, re.MULTILINE)
    return seconds, found[-1] if found else ""


def throughput(args: argparse.Namespace) -> None:
    paths = list_images([args.throughput])[: args.limit]
    if not paths:
        sys.exit(f"no images in {args.throughput}")
    cores = os.cpu_count() or 1
    threads = max(1, cores // args.workers)
    pixels = sum(math.prod(load_rgb(p).shape[:2]) for p in paths)
    print(f"{len(paths)} images from {args.throughput} ({pixels / 1e6:.1f} Mpx), "
          f"--workers {args.workers} on {cores} CPUs ({threads} threads each); load "
          f"average {os.getloadavg()[0]:.1f}\n")
    print("| what | wall s | images/s | MB/s of pixels | against AVIF speed 4 encode |")
    print("|---|---|---|---|---|")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "in"
        folder.mkdir()
        for path in paths:
            shutil.copy(path, folder / path.name)
        model = ["--model", args.model[0]] if args.model else []
        common = ["--workers", str(args.workers), "--force"]
        jobs = [(str(p), str(Path(tmp) / f"{p.stem}.avif"), threads) for p in paths]
        avif = _pool_seconds(_avif_file, jobs, args.workers)
        rows.append(("Pillow AVIF speed 4, quality 75: encode", avif))
        seconds, line = _cli_seconds(["compress", str(folder), "-o", f"{tmp}/cae", *model,
                                      *common])
        rows.append((f"caeadmm compress --workers {args.workers}", seconds))
        seconds, _ = _cli_seconds(["compress", str(folder), "-o", f"{tmp}/fast", *model,
                                   *common, "--refine", "fast"])
        rows.append((f"caeadmm compress --workers {args.workers} --refine fast", seconds))
        seconds, _ = _cli_seconds(["decompress", f"{tmp}/cae", "-o", f"{tmp}/png", *model,
                                   *common])
        rows.append((f"caeadmm decompress --workers {args.workers}", seconds))
        decode = _pool_seconds(_avif_decode, [(j[1],) for j in jobs], args.workers)
        rows.append(("Pillow AVIF: decode", decode))
    for what, seconds in rows:
        print(f"| {what} | {seconds:.1f} | {len(paths) / seconds:.2f} | "
              f"{3 * pixels / 1e6 / seconds:.2f} | {avif / seconds:.2f} x |")
    if line:
        print(f"\ncaeadmm compress's own last line (its run alone, from its first file): {line}")


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
    parser.add_argument("--layout", choices=list(WRITE), default="predicted",
                        help="--large: the layout to measure (default: predicted; tiles: "
                        "version 1's, caeadmm.legacy)")
    parser.add_argument("--payload", action="store_true",
                        help="sizes only: one table, per channel group, predicted planes")
    parser.add_argument("--bound", action="store_true",
                        help="multiply-adds, conv throughput, encode/decode against the "
                        "compute bound, Pillow WebP and AVIF beside")
    parser.add_argument("--throughput", type=Path, metavar="DIR",
                        help="images/s of caeadmm compress/decompress on DIR against Pillow "
                        "AVIF speed 4")
    parser.add_argument("--workers", type=int, default=2, help="--throughput: processes")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.throughput:
        throughput(args)
        return
    if args.bound:
        bound(args)
        return
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
            lambda: WRITE[args.layout](image, model), 1)
        after_encode = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        (t_dec, _), _ = timed(lambda: codec.decompress(data, model), 1)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"8000 x 6000, layout {args.layout}: encode {t_enc:.1f} s (peak RSS "
              f"{after_encode:.0f} MB), decode {t_dec:.1f} s, "
              f"{8 * len(data) / 48e6:.3f} bpp; peak RSS {peak:.0f} MB "
              f"(before the codec ran, with the image in memory: {rss_before:.0f} MB)")
        return
    paths = list_images([args.kodak])[: args.limit]
    if not paths:
        sys.exit(f"no images in {args.kodak}")
    codec.compress(load_rgb(paths[0])[:128, :128], model)  # warm-up: numba compilation
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
