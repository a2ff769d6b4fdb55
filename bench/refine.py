"""Latent refinement: its settings on training-corpus images (never Kodak), and the effort
levels' cost and gain on Kodak against the plain encoder, each in one run.

    .venv/bin/python bench/refine.py --images TRAIN_DIR [--model NAME] [--count 4] [--side 256]
        [--steps 5,10,15,25] [--lr 0.01,0.02,0.05] [--rounds 1,2,4,8,12] [--repeats 1]
    .venv/bin/python bench/refine.py --kodak KODAK_DIR [--limit 4] [--models A,B,...]
        [--levels today,fast,best] [--threads 1]

--images (choosing the settings): the held-out split of bench/ablation.py (a fixed random
choice of 16 images from the folder; all of them in a folder of fewer), the central --side
square of the first --count. For every Adam (steps, lr) and every flip-search round count
the table gives the change against the plain stream, averaged over the images: real bytes
(bpp, %), PSNR (dB), MS-SSIM, and the encode time as a multiple of the plain encode's
(medians of --repeats runs). The rate is weighed by the model's registered rate_lambda, as
`caeadmm compress --refine` does.

--kodak (what the levels buy): the first --limit Kodak images coded by every model of
--models (default: the registered MS-SSIM curve) plainly and at each level of --levels:
"today" is 15 Adam steps on the model's own float32 decoder (the refinement before effort
levels), "adam" the same 15 steps on the faster gradient path, "fast" and "best" the effort
levels of `--refine fast|best`. Each image is coded at every level one after the other, so
that all see about the same load. Per level: gradient evaluations per image, the median
encode time per image over all (model, image) pairs in CPU seconds of this process (the
steadier measure on a shared machine) and wall seconds, its ratio to today's (median of the
per-pair CPU-time ratios), and the BD-rate against the plain encoder over the models' curve
(MS-SSIM in dB, and PSNR), also as a share of today's gain. docs/refine.md and
docs/speed.md read the tables.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation import HELD_OUT, held_out, split  # noqa: E402

from caeadmm import codec, metrics, zoo  # noqa: E402
from caeadmm.images import list_images, load_rgb  # noqa: E402
from caeadmm.rd import Curve, bd_rate  # noqa: E402
from caeadmm.refine import EFFORTS, STEPS, Refinement, refinement_for  # noqa: E402

KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"
MS_SSIM_CURVE = "small-rate-k2,small-rate-k3,small-rate-k6-r2,small-rate-k12-r2,small-rate-k20-r2"
LEVELS = ("today", "adam", "fast", "best")


def measure(image: np.ndarray, model, refine: Refinement | None, repeats: int,
            quality: float | None = None) -> dict:  # fmt: skip
    """bpp, PSNR, MS-SSIM of one stream (at `quality`, for a variable-rate model) and the
    median encode time over `repeats`: wall clock ("time") and CPU time of this process, all
    threads ("cpu")."""
    times, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        data = codec.compress(image, model, refine=refine, quality=quality)
        times.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    decoded = codec.decompress(data, model)
    h, w = image.shape[:2]
    return {"bpp": metrics.bpp(len(data), h, w), "psnr": metrics.psnr(image, decoded),
            "ms_ssim": metrics.ms_ssim(image, decoded), "time": statistics.median(times),
            "cpu": statistics.median(cpus)}


def level_refinement(model: str, level: str) -> Refinement:
    """The Refinement of a --levels entry for a registered model."""
    if level == "today":
        return replace(refinement_for(model, STEPS), fast_gradient=False)
    if level == "adam":
        return refinement_for(model, STEPS)
    return refinement_for(model, level)


def gradients(refine: Refinement | None) -> int:
    return 0 if refine is None else refine.steps


def settings_table(args: argparse.Namespace) -> None:
    """The --images mode: Adam (steps, lr) and flip-search round counts on training crops."""
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
    quality = zoo.default_quality(args.model, model)  # None: a fixed-rate model
    codec.compress(images[0], model, quality=quality)  # Numba compiles the coder first
    plain = [measure(im, model, None, args.repeats, quality) for im in images]
    print(f"model {args.model or 'default'} (rate_lambda {rate_lambda:g}), {len(images)} "
          f"held-out training-corpus images, central {args.side} px, {args.threads} thread(s); "
          f"plain: {np.mean([p['bpp'] for p in plain]):.4f} bpp, "
          f"{np.mean([p['psnr'] for p in plain]):.2f} dB, "
          f"MS-SSIM {np.mean([p['ms_ssim'] for p in plain]):.4f}, "
          f"encode {np.median([p['time'] for p in plain]):.3f} s", flush=True)
    print("| search | steps | lr | bpp | PSNR | MS-SSIM | encode time |")
    print("|---|---|---|---|---|---|---|")
    base = Refinement(rate_lambda=rate_lambda, distortion=zoo.distortion_weights(args.model),
                      rate_lambda_max=zoo.rate_lambda_max(args.model))
    settings = [("adam", int(s), float(lr)) for s in args.steps.split(",") if s
                for lr in args.lr.split(",")]
    settings += [("flip", int(r), None) for r in args.rounds.split(",") if r]
    for method, steps, lr in settings:
        refine = replace(base, method=method, steps=steps, lr=lr or base.lr)
        rows = [measure(im, model, refine, args.repeats, quality) for im in images]
        d = {k: np.mean([r[k] - p[k] for r, p in zip(rows, plain, strict=True)])
             for k in ("psnr", "ms_ssim")}
        rate = np.mean([r["bpp"] / p["bpp"] - 1 for r, p in zip(rows, plain, strict=True)])
        slower = np.median([r["time"] / p["time"] for r, p in zip(rows, plain, strict=True)])
        print(f"| {method} | {steps} | {'' if lr is None else f'{lr:g}'} | "
              f"{100 * rate:+.2f} % | {d['psnr']:+.3f} dB | {d['ms_ssim']:+.4f} | "
              f"x{slower:.1f} |", flush=True)


def curve(name: str, rows: list[list[dict]]) -> Curve:
    """The curve of per-model lists of per-image results (means over the images)."""
    return Curve(name=name, description=name,
                 bpp=[statistics.mean(r["bpp"] for r in per) for per in rows],
                 psnr=[statistics.mean(r["psnr"] for r in per) for per in rows],
                 ms_ssim=[statistics.mean(r["ms_ssim"] for r in per) for per in rows])


def kodak_table(args: argparse.Namespace) -> None:
    """The --kodak mode: plain and every level on the models' curve, BD-rate and time."""
    paths = list_images([args.kodak])[: args.limit]
    if not paths:
        raise SystemExit(f"bench/refine.py: no images in {args.kodak}")
    names = [n for n in args.models.split(",") if n]
    levels = [lv for lv in args.levels.split(",") if lv]
    unknown = set(levels) - set(LEVELS)
    if unknown:
        raise SystemExit(f"bench/refine.py: --levels takes {', '.join(LEVELS)}")
    images = [load_rgb(p) for p in paths]
    print(f"{len(images)} Kodak images ({', '.join(p.stem for p in paths)}), models "
          f"{', '.join(names)}; {torch.get_num_threads()} torch thread(s); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    results: dict[str, list[list[dict]]] = {lv: [] for lv in ("plain", *levels)}
    steps = {"plain": 0}
    for name in names:
        model = zoo.load(name)
        quality = zoo.default_quality(name, model)  # None: a fixed-rate model
        codec.compress(images[0][:64, :64], model, quality=quality)  # Numba compiles the coder
        refines = {lv: None if lv == "plain" else level_refinement(name, lv)
                   for lv in ("plain", *levels)}
        steps.update({lv: gradients(r) for lv, r in refines.items()})
        for level in refines:
            results[level].append([])
        for image in images:
            for level, refine in refines.items():
                results[level][-1].append(measure(image, model, refine, 1, quality))
            print(f"  {name}: " + ", ".join(f"{lv} {results[lv][-1][-1]['cpu']:.2f}"
                                            for lv in refines) + " CPU s",
                  file=sys.stderr, flush=True)
    plain = curve("plain", results["plain"])
    bd = {lv: (bd_rate(plain, curve(lv, results[lv]), "ms_ssim_db"),
               bd_rate(plain, curve(lv, results[lv]), "psnr")) for lv in levels}

    def flat(level: str, key: str = "cpu") -> list[float]:
        return [r[key] for per in results[level] for r in per]

    print("\n| refinement | gradients per image | encode CPU s per image | wall s | "
          "time / today's | BD-rate MS-SSIM | BD-rate PSNR | share of today's MS-SSIM gain |")
    print("|---|---|---|---|---|---|---|---|")
    for level in ("plain", *levels):
        t = statistics.median(flat(level))
        wall = statistics.median(flat(level, "time"))
        ratio = "n/a"
        if "today" in levels:
            pairs = zip(flat(level), flat("today"), strict=True)
            ratio = f"{statistics.median(a / b for a, b in pairs):.3f}"
        ms, ps = bd.get(level, (0.0, 0.0))
        share = ("n/a" if "today" not in levels or level == "plain" or not bd["today"][0]
                 else f"{100 * ms / bd['today'][0]:.0f} %")
        label = {"today": f"today: {STEPS} Adam steps, float32 decoder",
                 "adam": f"{STEPS} Adam steps (`--refine {STEPS}`)",
                 "fast": f"`--refine fast` ({EFFORTS['fast']} flip rounds)",
                 "best": f"`--refine best` ({EFFORTS['best']} flip rounds)"}.get(level, level)
        print(f"| {label} | {steps[level]} | {t:.2f} | {wall:.2f} | {ratio} | "
              f"{'' if level == 'plain' else f'{ms:+.2f} %'} | "
              f"{'' if level == 'plain' else f'{ps:+.2f} %'} | {share} |")
    print("\nper model (mean over the images): bpp, PSNR dB, MS-SSIM")
    for i, name in enumerate(names):
        cells = []
        for level in ("plain", *levels):
            per = results[level][i]
            cells.append(f"{level} {statistics.mean(r['bpp'] for r in per):.4f}, "
                         f"{statistics.mean(r['psnr'] for r in per):.2f}, "
                         f"{statistics.mean(r['ms_ssim'] for r in per):.4f}")
        print(f"  {name}: " + "; ".join(cells))
    if any(math.isnan(v) for pair in bd.values() for v in pair):
        print("(n/a: the curves overlap too little for a BD-rate)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--images", type=Path, help="training corpus (not Kodak): settings")
    mode.add_argument("--kodak", type=Path, nargs="?", const=KODAK,
                      help=f"Kodak folder: the effort levels (default {KODAK})")
    parser.add_argument("--model", help="--images: registered name or checkpoint (default: "
                        "the default)")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--steps", default="5,10,15,25", help="Adam steps (empty: none)")
    parser.add_argument("--lr", default="0.01,0.02,0.05")
    parser.add_argument("--rounds", default="", help="flip-search round counts, e.g. 1,2,4,8")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, default=4, help="--kodak: the first N images")
    parser.add_argument("--models", default=MS_SSIM_CURVE, help="--kodak: the curve's models")
    parser.add_argument("--levels", default="today,fast,best",
                        help=f"--kodak: of {', '.join(LEVELS)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.images is not None:
        settings_table(args)
    else:
        kodak_table(args)


if __name__ == "__main__":
    main()
