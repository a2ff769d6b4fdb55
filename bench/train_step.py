"""Training and network speed on CPU: patches/s of a full training step, and the time to run
the network alone over a Kodak-size image.

    .venv/bin/python bench/train_step.py [--threads 2] [--repeats 5] [--presets small,paper]

Rows:
- train step, batch 8 of 128 px patches: forward, the paper's distortion, backward and Adam,
  in the ADMM phase (penalty on) and, as the peer in the same run, the warm-up phase (MSE
  only: the gap is the cost of the MS-SSIM and SSIM terms);
- encode / decode of a 768 x 512 image as 24 tiles of 128 px in one batch (what the codec
  does), network only (no entropy coding).
Each figure is the median of --repeats timed runs after one untimed warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from caeadmm.config import load_config
from caeadmm.model import CAE
from caeadmm.train_loop import Schedule, admm_update, make_optimizer, new_admm, train_step


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", default="small,paper")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
