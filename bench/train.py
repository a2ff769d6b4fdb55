"""Training throughput: Ray Train + Ray Data (1 and 2 workers) against a plain single-process
PyTorch loop, on the same model, batch size and patches, in the same run.

    python bench/train.py                          # small preset at 64 px, batch 8
    python bench/train.py --patch-size 128 --steps 60 --repeats 3

The patches are cut from --images (default: the sample photos shipped in caeadmm/samples)
into Parquet shards once. Contenders, interleaved run by run so that a change in machine
load hits them all alike:
- single process: `train_loop.train_step` (and the ADMM update) on batches drawn from the
  training patches held in memory as one tensor: no data loading at all, the best case;
- Ray Train with N workers: `caeadmm.distributed.train.fit` on an embedded local Ray, the batches
  streamed by Ray Data from the shards, DDP between the workers.
All run the ADMM phase (full distortion + penalty, an update every 10 steps) with --threads
torch threads per worker (default 1). The single-process loop runs inside one Ray task, so
that it shares the Ray Train workers' process environment: Ray starts its worker processes
at nice 15 with OMP_NUM_THREADS set, and on a busy machine a loop at nice 0 in the driver
would be measured at another priority. Throughput is global patches per second of training
(data wait included, validation and checkpoints excluded), the median over windows of
--log-every steps, the first window (start-up) left out; the table gives the median over
--repeats runs.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from caeadmm.admm import admm_update
from caeadmm.config import TrainConfig, load_config
from caeadmm.distributed.prepare import prepare_patches
from caeadmm.distributed.session import connect, local_cpus, quiet_data
from caeadmm.distributed.shards import iter_patch_batches, read_patches
from caeadmm.distributed.train import LOG_FILE, fit
from caeadmm.model import CAE
from caeadmm.patches import PatchSpec
from caeadmm.train_loop import Schedule, make_optimizer, new_admm, train_step

SAMPLES = Path(__file__).resolve().parents[1] / "caeadmm" / "samples"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(SAMPLES), help="training images (not Kodak)")
    parser.add_argument("--preset", default="small", help="model preset (default small)")
    parser.add_argument("--patch-size", type=int, default=64, help="patch side (default 64)")
    parser.add_argument("--batch-size", type=int, default=8, help="patches per step per worker")
    parser.add_argument("--steps", type=int, default=40, help="training steps per run")
    parser.add_argument("--log-every", type=int, default=5, help="steps per timing window")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each contender")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    return parser


@ray.remote(num_cpus=1)
def local_rate(cfg: TrainConfig, patches: torch.Tensor, threads: int, seed: int) -> float:
    """Median patches/s over windows of the single-process loop (first window left out)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model, admm, schedule = CAE(cfg.model), new_admm(cfg), Schedule(cfg)
    optimizer = make_optimizer(model, cfg)
    order = torch.randperm(len(patches), generator=torch.Generator().manual_seed(seed))
    rates, t_window = [], time.perf_counter()
    for step in range(schedule.total):
        picks = order[torch.arange(step * cfg.batch_size, (step + 1) * cfg.batch_size) % len(order)]
        train_step(model, admm, optimizer, patches[picks], step, cfg, schedule)
        if schedule.update_due(step):
            admm_update(admm)
        if (step + 1) % cfg.log_every == 0:
            now = time.perf_counter()
            rates.append(cfg.log_every * cfg.batch_size / (now - t_window))
            t_window = now
    return statistics.median(rates[1:])


def ray_rate(cfg: TrainConfig, workers: int, threads: int, run_name: str) -> float:
    """Median of the patches/s that the Ray run logged per window (first window left out)."""
    cfg = dataclasses.replace(cfg, num_workers=workers, threads=threads, run_name=run_name)
    fit(cfg, log=None, keep_checkpoints=1)
    with (Path(cfg.storage_path) / run_name / LOG_FILE).open(newline="") as fh:
        rates = [float(row["patches_per_s"]) for row in csv.DictReader(fh)]
    return statistics.median(rates[1:])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cores = os.cpu_count() or 1
    connect(num_cpus=local_cpus())
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    shards = work / "shards"
    prepare_patches([args.images], str(shards), PatchSpec(patch_size=args.patch_size, crops=64),
                    rows_per_shard=64, progress=False)  # fmt: skip
    cfg = load_config(None, [
        f"model.preset={args.preset}", f"model.patch_size={args.patch_size}",
        f"batch_size={args.batch_size}", "warmup_steps=0", f"admm_steps={args.steps}",
        "finetune_steps=0", "admm_every=10", "pruning_ratio=0.5", f"log_every={args.log_every}",
        "checkpoint_every=0", "eval_patches=0", "cpus_per_worker=1",
        f"w_msssim={0 if args.patch_size <= 32 else 1000}",
        f"shards={shards}", f"storage_path={work / 'runs'}",
    ])  # fmt: skip
    with quiet_data():
        train_ds, _ = read_patches(str(shards))
        patches = torch.cat(list(iter_patch_batches(train_ds, 256, device="cpu")))

    print(
        f"# {args.preset} preset at {args.patch_size} px, batch {args.batch_size} per worker, "
        f"{args.steps} steps per run, {args.threads} torch thread(s) per worker, "
        f"{len(patches)} training patches, {cores} cores, torch {torch.__version__}",
        flush=True,
    )
    results: dict[str, list[float]] = {"single process": []}
    results |= {f"Ray Train, {w} worker{'s' * (w > 1)}": [] for w in args.workers}
    for rep in range(args.repeats):
        rate = ray.get(local_rate.remote(cfg, patches, args.threads, seed=rep))
        results["single process"].append(rate)
        for w in args.workers:
            rate = ray_rate(cfg, w, args.threads, run_name=f"w{w}-r{rep}")
            results[f"Ray Train, {w} worker{'s' * (w > 1)}"].append(rate)
        print(f"# run {rep + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()),
              flush=True)  # fmt: skip

    base = statistics.median(results["single process"])
    print("\n| loop | patches/s (median) | runs | vs single process |")
    print("|---|---|---|---|")
    for name, rates in results.items():
        rate = statistics.median(rates)
        runs = " ".join(f"{r:.1f}" for r in rates)
        print(f"| {name} | {rate:.1f} | {runs} | {100 * (rate / base - 1):+.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
