"""Training and network speed on CPU: patches/s of a full training step, and the time to run
the network alone over a Kodak-size image; or (--settings) the step under each CPU setting.

    .venv/bin/python bench/train_step.py [--threads 2] [--repeats 5] [--presets small,paper]
    .venv/bin/python bench/train_step.py --settings [--crops 128,176] [--repeats 7]

--settings: the small preset's ADMM-phase step at batch 8 of P px crops under each of
fp32 eager at --threads (the peer), 1 thread, channels_last, torch.compile (default mode; its
compile time apart, a row saying so if it fails), bfloat16 autocast. The settings take turns
step by step, so a load that comes and goes hits them alike; each figure is the median of
--repeats steps, its ratio against the peer of the same crop size. For bfloat16 also: whether
every loss and gradient norm stayed finite, and the relative difference of one step's loss
from float32's (the shipped small-k6 weights, crops of the sample photos, the same noise).

Rows (without --settings):
- train step, batch 8 of 128 px patches: forward, the paper's distortion, backward and Adam,
  in the ADMM phase (penalty on) and, as the peer in the same run, the warm-up phase (MSE
  only: the gap is the cost of the MS-SSIM and SSIM terms);
- encode / decode of a 768 x 512 image as 24 tiles of 128 px in one batch (what the codec
  does), network only (no entropy coding).
Each figure is the median of --repeats timed runs after one untimed warm-up run.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Run as a script, this file's folder comes first on sys.path: the repository root goes there
# instead, so that this checkout's packages (`coding`, `caeadmm`, `bench`) are the ones imported.
REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)
from caeadmm.admm import admm_update  # noqa: E402
from caeadmm.checkpoint import init_weights, load_into  # noqa: E402
from caeadmm.config import load_config  # noqa: E402
from caeadmm.images import load_rgb  # noqa: E402
from caeadmm.losses import compute_loss  # noqa: E402
from caeadmm.model import CAE  # noqa: E402
from caeadmm.train_local import random_patches  # noqa: E402
from caeadmm.train_loop import Schedule, make_optimizer, new_admm, train_step  # noqa: E402


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_training(preset: str, phase: str, repeats: int) -> float:
    """Patches/s of train_step in `phase` ("warmup" or "admm") at batch 8, 128 px."""
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.preset={preset}", "batch_size=8", "warmup_steps=1000",
                             "admm_steps=1000", "finetune_steps=0"])
    model, admm = CAE(cfg.model), new_admm(cfg)
    optimizer, schedule = make_optimizer(model, cfg), Schedule(cfg)
    batch = torch.rand(8, 3, 128, 128)
    step = 0 if phase == "warmup" else cfg.warmup_steps
    if phase == "admm":  # give the penalty a Z and U, as in a real ADMM phase
        admm.accumulate(model(batch)[1].detach())
        admm_update(admm)
    seconds = median_time(lambda: train_step(model, admm, optimizer, batch, step, cfg, schedule),
                          repeats)
    return 8 / seconds


def bench_codec_network(preset: str, repeats: int) -> tuple[float, float]:
    """Seconds to encode and to decode a 768 x 512 image as 24 tiles of 128 px."""
    torch.manual_seed(0)
    model = CAE(load_config(None, [f"model.preset={preset}"]).model).eval()
    tiles = torch.rand(24, 3, 128, 128)
    symbols = model.encode(tiles)
    return (
        median_time(lambda: model.encode(tiles), repeats),
        median_time(lambda: model.decode(symbols), repeats),
    )


SETTINGS = ("fp32 eager", "1 thread", "channels_last", "torch.compile", "bf16 autocast")


def settings_step(setting: str, crop: int, threads: int) -> tuple[Callable[[], None], dict]:
    """A closure running one ADMM-phase train_step of the small preset (batch 8, crop px)
    under `setting`, and the facts measured while building it (compile time)."""
    torch.manual_seed(0)
    precision = "bf16" if setting == "bf16 autocast" else "fp32"
    cfg = load_config(None, ["model.preset=small", f"model.patch_size={crop}", "batch_size=8",
                             "warmup_steps=1000", "admm_steps=1000", "finetune_steps=0",
                             f"precision={precision}"])  # fmt: skip
    model, admm = CAE(cfg.model), new_admm(cfg)
    optimizer, schedule = make_optimizer(model, cfg), Schedule(cfg)
    batch = torch.rand(8, 3, crop, crop)
    admm.accumulate(model(batch)[1].detach())
    admm_update(admm)
    if setting == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        batch = batch.contiguous(memory_format=torch.channels_last)
    net = torch.compile(model) if setting == "torch.compile" else model
    step_threads = 1 if setting == "1 thread" else threads
    metrics: list[dict] = []

    def step() -> None:
        torch.set_num_threads(step_threads)
        try:
            metrics.append(train_step(net, admm, optimizer, batch, cfg.warmup_steps, cfg,
                                      schedule))  # fmt: skip
        finally:
            torch.set_num_threads(threads)

    start = time.perf_counter()
    step()  # the warm-up step (compiles under torch.compile)
    facts = {"first_step_s": time.perf_counter() - start, "metrics": metrics}
    return step, facts


def bf16_loss_difference(crop: int) -> float:
    """|loss(bf16) - loss(fp32)| / loss(fp32) of one training-mode forward of the shipped
    small-k6 weights on 8 crops of the sample photos: full distortion, the same rounding
    noise (the latent is float32 under autocast too, so the same seed draws the same noise)."""
    cfg = load_config(None, ["model.preset=small", f"model.patch_size={crop}",
                             "init_from=small-k6"])  # fmt: skip
    model = CAE(cfg.model)
    load_into(model, init_weights(cfg))
    samples = sorted((REPO / "caeadmm" / "samples").glob("*.png"))
    images = [load_rgb(path) for path in samples]
    batch = random_patches(images, 8, crop, [0])
    losses = []
    for enabled in (False, True):
        torch.manual_seed(1)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            x_hat = model.train()(batch)[0]
        losses.append(float(compute_loss(x_hat.float(), batch, cfg)[0]))
    return abs(losses[1] - losses[0]) / abs(losses[0])


def bench_settings(crops: list[int], threads: int, repeats: int) -> None:
    print(f"torch {torch.__version__}, small preset, ADMM-phase train_step at batch 8, "
          f"median of {repeats} steps (settings interleaved)\n")
    print(f"{'crop':>5} {'setting':16} {'patches/s':>10} {'vs fp32 eager':>14}  notes")
    for crop in crops:
        steps, facts = {}, {}
        for setting in SETTINGS:
            try:
                steps[setting], facts[setting] = settings_step(setting, crop, threads)
            except Exception as exc:  # torch.compile without a working compiler, say
                facts[setting] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
        times: dict[str, list[float]] = {s: [] for s in steps}
        for _ in range(repeats):
            for setting, step in steps.items():
                start = time.perf_counter()
                step()
                times[setting].append(time.perf_counter() - start)
        peer = 8 / statistics.median(times["fp32 eager"])
        for setting in SETTINGS:
            if "error" in facts[setting]:
                print(f"{crop:5} {setting:16} {'-':>10} {'-':>14}  failed: "
                      f"{facts[setting]['error'][:90]}")
                continue
            rate = 8 / statistics.median(times[setting])
            notes = {"fp32 eager": f"{threads} threads (the peer)",
                     "1 thread": "torch.set_num_threads(1)"}.get(setting, "")
            if setting == "torch.compile":
                notes = f"compile (first step) {facts[setting]['first_step_s']:.1f} s"
            if setting == "bf16 autocast":
                values = [float(m[k]) for m in facts[setting]["metrics"]
                          for k in ("loss", "grad_norm")]  # fmt: skip
                finite = all(math.isfinite(v) for v in values)
                notes = (f"loss/grad finite: {finite}; one-step loss vs fp32: "
                         f"{100 * bf16_loss_difference(crop):.2g} %")
            print(f"{crop:5} {setting:16} {rate:10.2f} {rate / peer:14.2f}  {notes}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", default="small,paper")
    parser.add_argument("--settings", action="store_true", help="compare CPU settings")
    parser.add_argument("--crops", default="128,176", help="crop sizes of --settings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.settings:
        bench_settings([int(c) for c in args.crops.split(",")], args.threads, args.repeats)
        return
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} runs\n")
    print(f"{'preset':8} {'train ADMM':>12} {'train warm-up':>14} {'encode 768x512':>15} "
          f"{'decode 768x512':>15}")
    print(f"{'':8} {'patches/s':>12} {'patches/s':>14} {'s':>15} {'s':>15}")
    for preset in args.presets.split(","):
        admm_rate = bench_training(preset, "admm", args.repeats)
        warm_rate = bench_training(preset, "warmup", args.repeats)
        enc, dec = bench_codec_network(preset, args.repeats)
        print(f"{preset:8} {admm_rate:12.2f} {warm_rate:14.2f} {enc:15.3f} {dec:15.3f}",
              flush=True)


if __name__ == "__main__":
    main()
