"""Train several runs at once on one GPU within a wall-clock budget, through the
single-process trainer (`caeadmm train`, no Ray): for a lent GPU machine that has torch but
not Ray, where device time is counted in minutes.

    python scripts/gpu_train.py --images DIR -o OUT --budget 660 --batch-size 64 \\
        k6=configs/gpu_small.yaml:pruning_ratio=0.8125 \\
        r64=configs/rate_continue.yaml:init_from=small-k12:rate_lambda=64

Each run is NAME=CONFIG[:key=value[:key=value...]]; any config works (init_from of a
registered model name continues the shipped weights, rate-aware configs train the rate
term). Every run trains with `data_on_device=true`: its images decoded once and kept on the
GPU, each step's crops and flips cut there (caeadmm.train_local.DeviceBatches), and the
loop reads its metrics from the device once per log step. --batch-size, --crop and
--precision override every run's batch_size, model.patch_size and precision. Steps:
1. probe: all runs train a few steps together (warm-up, then ADMM), and each one's
   patches/s under the shared load is read from its log.csv (`shared_rate`); `--steps N`
   skips it and trains every run N steps (tests, profiling on the CPU);
2. the real runs start together, each with rate * time left * `--safety` steps, split over
   warm-up / ADMM / fine-tune in the proportions of its config's step counts;
3. each run's model.pt, log.csv, summary.json and console log are packed into
   OUT/NAME.tar (weights stored as float16 when the file would exceed --max-file-mb; the
   codec needs float32, see `unpack_model`);
4. patches/s of each run and of the card as a whole (their sum), with the card's name,
   are printed and written to OUT/throughput.json.
A run still going at the deadline is stopped; its latest checkpoint is packed instead.
Without CUDA the runs train on the CPU (tests, profiling with a tiny budget).

The run directories go under OUT/work (--work). Before anything starts, each run's memory is
estimated (its batch's activations, weights and optimizer state, the images it keeps on the
device) against the memory free on the device (the GPU's, else the machine's): more runs than
fit are refused with the figures (--no-memory-check starts them anyway). Exit code 0 when
every run packed a model, 1 when any failed (killed, an error, no model to pack: each named,
with its console log's last lines), 2 for bad arguments or runs that do not fit.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from caeadmm.checkpoint import export_model  # noqa: E402
from caeadmm.cli import flags  # noqa: E402
from caeadmm.config import PRECISIONS, ConfigError, TrainConfig, load_config  # noqa: E402
from caeadmm.images import list_images  # noqa: E402


def parse_run(spec: str) -> tuple[str, str, list[str]]:
    name, _, rest = spec.partition("=")
    config, *overrides = rest.split(":")
    if not name or not config:
        raise SystemExit(f"bad run spec {spec!r}: expected NAME=CONFIG[:key=value...]")
    return name, config, overrides


def launch(
    name: str, config: str, overrides: list[str], images: str, out: Path
) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "caeadmm", "train", "--config", config, "--images", images,
           "-o", str(out), "--force", *overrides]
    log = (out / "console.log").open("w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def logged_rates(run_dir: Path) -> list[float]:
    with (run_dir / "log.csv").open() as fh:
        return [float(row["patches_per_s"]) for row in csv.DictReader(fh)]


def run_rate(run_dir: Path) -> float | None:
    """A finished run's patches/s: the median of its logged windows after the first (which
    holds the start-up); None without a logged window (the run died first)."""
    if not (run_dir / "log.csv").exists():
        return None
    rates = [r for r in logged_rates(run_dir) if math.isfinite(r)]
    return statistics.median(rates[1:] or rates) if rates else None


# Memory a run needs, per patch of the batch: a multiple of the tensors autograd keeps for the
# backward pass of the network alone (the loss terms and the backward's temporaries make up
# the rest). On the CPU measured: a small-preset `caeadmm train` at 128 px peaked at 1.3 and
# 3.3 GB RSS at batch 4 and 16. On a GPU, whose caching allocator reuses the backward's
# temporaries, less: the six runs of the first H100 call (scripts/train_shipped.sh: five
# small, one paper, batch 32) fit its 80 GB, which a factor of 1.82 or more would refuse.
# Per process: the interpreter, torch and its CUDA context.
ACTIVATION_FACTOR = {"cpu": 2.0, "cuda": 1.5}
PROCESS_BYTES = 700 * 2**20


def saved_bytes_per_patch(cfg: TrainConfig) -> int:
    """Bytes autograd saves for one training patch's backward pass through the network:
    measured on torch's meta device (shapes only, no memory, no compute)."""
    from caeadmm.model import CAE

    with torch.device("meta"):
        model = CAE(cfg.model)
    model.train()
    size = cfg.model.patch_size
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.empty(1, 3, size, size, device="meta"))
    return total


def image_bytes(folder: str) -> int:
    """The decoded size of the training images (uint8 RGB), as each run keeps them."""
    from PIL import Image

    total = 0
    for path in list_images([folder]):
        try:
            with Image.open(path) as image:
                total += image.width * image.height * 3
        except OSError:
            continue  # the trainer skips it too
    return total


def run_memory(cfg: TrainConfig, images: int, cuda: bool) -> int:
    """Estimated peak memory of one run on its device: activations of a batch, weights with
    their gradients and Adam's two moments, the images (kept on the device; on the CPU also
    the decoded copy they are made from) and the process itself."""
    from caeadmm.model import CAE

    with torch.device("meta"):
        params = sum(p.numel() for p in CAE(cfg.model).parameters())
    factor = ACTIVATION_FACTOR["cuda" if cuda else "cpu"]
    activations = factor * cfg.batch_size * saved_bytes_per_patch(cfg)
    return int(activations + 16 * params + images * (1 if cuda else 2) + PROCESS_BYTES)


def free_memory(cuda: bool) -> int:
    """Bytes free for the runs: the GPU's free memory, else the machine's available memory."""
    if cuda:
        return torch.cuda.mem_get_info()[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(needs: dict[str, int], free: int, card: str) -> None:
    """Refuse (SystemExit 2) runs that together need more than 90 % of the free memory."""
    total = sum(needs.values())
    if total <= 0.9 * free:
        return
    gib = 2**30
    each = ", ".join(f"{name} {need / gib:.1f}" for name, need in needs.items())
    raise SystemExit(
        f"gpu_train: these {len(needs)} runs need about {total / gib:.1f} GiB ({each}), and "
        f"{free / gib:.1f} GiB is free on {card}: started together some would be killed for "
        "memory. Run fewer at once, or lower --batch-size or --crop (--no-memory-check starts "
        "them anyway)"
    )


def device_name() -> str:
    """The card every figure is measured on."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (no CUDA)"


def shared_rate(run_dir: Path) -> float:
    """The slowest logged window after the first (which holds the start-up): the rate while
    every run shares the GPU. (The last window overstates it for a run that outlasts the
    others: on an H100 the paper preset's probe read 275 patches/s, its real share was 65.)"""
    rates = logged_rates(run_dir)
    return min(rates[1:] or rates)


def phase_steps(cfg: TrainConfig, total: int) -> list[str]:
    """warmup/admm/finetune step overrides summing to `total`, in the config's proportions."""
    parts = [cfg.warmup_steps, cfg.admm_steps, cfg.finetune_steps]
    scale = total / sum(parts)
    warmup, admm = round(parts[0] * scale), round(parts[1] * scale)
    finetune = total - warmup - admm
    every = max(1, min(cfg.admm_every, admm // 10 or 1))
    return [
        f"log_every={max(10, total // 100)}", f"warmup_steps={warmup}", f"admm_steps={admm}",
        f"finetune_steps={finetune}", f"admm_every={every}",
        f"checkpoint_every={max(100, total // 10)}",
    ]


def wait_all(procs: dict[str, subprocess.Popen], deadline: float) -> dict[str, int | None]:
    while time.time() < deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(2)
    codes = {}
    for name, p in procs.items():
        if p.poll() is None:
            print(f"{name}: still running at the deadline, stopping it", flush=True)
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
            codes[name] = None
        else:
            codes[name] = p.returncode
    return codes


def pack(name: str, run_dir: Path, dest: Path, max_bytes: int) -> Path:
    """OUT/NAME.tar with the model (float16 weights if too big), logs and summary."""
    model = run_dir / "model.pt"
    if not model.exists() and (run_dir / "checkpoint.pt").exists():
        export_model(run_dir / "checkpoint.pt", model)  # a run stopped at the deadline
    tar_path = dest / f"{name}.tar"
    with tarfile.open(tar_path, "w") as tar:
        for extra in ("log.csv", "summary.json", "console.log"):
            if (run_dir / extra).exists():
                tar.add(run_dir / extra, arcname=f"{name}/{extra}")
        if model.exists():
            if model.stat().st_size > max_bytes:
                buf = io.BytesIO()
                torch.save(_cast_weights(model, torch.float16), buf)
                info = tarfile.TarInfo(f"{name}/model_fp16.pt")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
            else:
                tar.add(model, arcname=f"{name}/model.pt")
    return tar_path


def unpack_model(fp16_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Turn a packed model_fp16.pt back into a float32 model file the codec loads."""
    torch.save(_cast_weights(fp16_path, torch.float32), out_path)


def _cast_weights(path: str | os.PathLike, dtype: torch.dtype) -> dict:
    """A model file's payload with its floating-point weights cast to `dtype`."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload["model"] = {
        k: v.to(dtype) if v.is_floating_point() else v for k, v in payload["model"].items()
    }
    return payload


def probe_totals(
    runs: list[tuple[str, str, list[str]]], args: argparse.Namespace, work: Path,
    deadline: float,
) -> dict[str, int]:
    """Each run's total steps: all runs train --probe-steps together, and each gets its shared
    patches/s * the training time left * --safety."""
    start = time.time()
    warm = args.probe_steps // 4
    probe = [f"warmup_steps={warm}", f"admm_steps={args.probe_steps - warm}", "finetune_steps=0",
             f"admm_every={warm}", f"log_every={warm}", "checkpoint_every=0"]
    procs = {n: launch(n, c, [*o, *probe], args.images, work / "probe" / n) for n, c, o in runs}
    codes = wait_all(procs, start + args.budget / 3)
    rates = {}
    for name, code in codes.items():
        if code != 0:
            print((work / "probe" / name / "console.log").read_text()[-3000:])
            raise SystemExit(f"gpu_train: the probe of {name} failed ({describe_exit(code)})")
        rates[name] = shared_rate(work / "probe" / name)
    left = deadline - time.time() - 45  # start-up, final evaluation, export and packing
    print(f"probe took {time.time() - start:.0f} s; {left:.0f} s left for training", flush=True)
    totals = {}
    for name, config, overrides in runs:
        batch_size = load_config(config, overrides).batch_size
        totals[name] = max(30, int(rates[name] * left * args.safety / batch_size))
        print(f"{name}: {rates[name]:.0f} patches/s shared", flush=True)
    return totals


def describe_exit(code: int | None) -> str:
    """A run's exit status in words."""
    if code is None:
        return "stopped at the deadline"
    if code < 0:
        name = {9: "SIGKILL: out of memory?", 15: "SIGTERM"}.get(-code, f"signal {-code}")
        return f"killed ({name})"
    return f"exit {code}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=CONFIG[:key=value...]")
    parser.add_argument("--images", required=True)
    flags.add_output(parser, "where the packed runs and throughput.json go", required=True,
                     old="--out")  # fmt: skip
    parser.add_argument("--work", help="run directories (default: OUT/work)")
    parser.add_argument("--no-memory-check", action="store_true",
                        help="start the runs even when they seem not to fit in memory")
    parser.add_argument("--budget", type=float, default=480, help="seconds for everything")
    parser.add_argument("--batch-size", type=int, help="every run's batch_size")
    parser.add_argument("--crop", type=int, help="every run's crop size (model.patch_size)")
    parser.add_argument("--precision", choices=list(PRECISIONS), help="every run's precision")
    parser.add_argument("--probe-steps", type=int, default=60)
    parser.add_argument("--steps", type=int,
                        help="every run's total steps, without the probe (tests, profiling)")
    parser.add_argument("--safety", type=float, default=0.85)
    parser.add_argument("--max-file-mb", type=float, default=15)
    args = parser.parse_args()
    start = time.time()
    deadline = start + args.budget
    common = ["data_on_device=true"]
    for value, key in ((args.batch_size, "batch_size"), (args.crop, "model.patch_size"),
                       (args.precision, "precision")):  # fmt: skip
        if value is not None:
            common.append(f"{key}={value}")
    runs = [(n, c, [*o, *common]) for n, c, o in map(parse_run, args.runs)]
    names = [n for n, _, _ in runs]
    if len(set(names)) < len(names):
        raise SystemExit(f"gpu_train: run names repeat: {', '.join(names)}")
    try:
        configs = {n: load_config(c, o) for n, c, o in runs}
    except (ConfigError, OSError) as exc:
        raise SystemExit(f"gpu_train: bad run: {exc}") from None
    dest = Path(args.output)
    work = Path(args.work) if args.work else dest / "work"
    if dest.exists() and not dest.is_dir():
        raise SystemExit(f"gpu_train: -o {dest} is a file; it needs a folder")
    card = device_name()
    cuda = torch.cuda.is_available()
    needs = {}
    if not args.no_memory_check:
        images = image_bytes(args.images)
        needs = {name: run_memory(cfg, images, cuda) for name, cfg in configs.items()}
        check_memory(needs, free_memory(cuda), card)
    dest.mkdir(parents=True, exist_ok=True)
    print(f"device: {card}; runs: {', '.join(names)}; run directories in {work}", flush=True)
    if needs:
        print("memory: about " + ", ".join(f"{n} {b / 2**30:.1f} GiB" for n, b in needs.items())
              + f" of {free_memory(cuda) / 2**30:.1f} GiB free", flush=True)

    totals = {name: args.steps for name, _, _ in runs}
    if args.steps is None:
        totals = probe_totals(runs, args, work, deadline)
    procs = {}
    for name, config, overrides in runs:
        plan = phase_steps(load_config(config, overrides), totals[name])
        print(f"{name}: {totals[name]} steps {plan}", flush=True)
        procs[name] = launch(name, config, [*overrides, *plan], args.images, work / name)
    codes = wait_all(procs, deadline - 20)
    throughput = {"device": card, "runs": {}}
    failed = {}
    for name, code in codes.items():
        tail = (work / name / "console.log").read_text().splitlines()[-3:]
        print(f"{name}: {describe_exit(code)}; " + " | ".join(tail), flush=True)
        tar = pack(name, work / name, dest, int(args.max_file_mb * 2**20))
        with tarfile.open(tar) as packed:
            has_model = any(m.name.endswith(("/model.pt", "/model_fp16.pt"))
                            for m in packed.getmembers())
        print(f"  packed {tar}" + ("" if has_model else " (no model: the run left none)"))
        if code not in (0, None) or not has_model:
            failed[name] = describe_exit(code) + ("" if has_model else ", no model")
        throughput["runs"][name] = run_rate(work / name)
    rates = [r for r in throughput["runs"].values() if r is not None]
    throughput["card"] = sum(rates) if rates else None
    (dest / "throughput.json").write_text(json.dumps(throughput, indent=2, allow_nan=False))
    for name, rate in throughput["runs"].items():
        print(f"{name}: " + (f"{rate:.0f} patches/s" if rate is not None else "no rate logged")
              + f" on {card}")
    if rates:
        print(f"card as a whole: {throughput['card']:.0f} patches/s on {card} "
              f"({len(runs)} runs at once)")
    print(f"all done in {time.time() - start:.0f} s", flush=True)
    if failed:
        print(f"gpu_train: {len(failed)} of {len(runs)} runs failed: "
              + "; ".join(f"{n} ({why}; log: {work / n / 'console.log'})"
                          for n, why in failed.items()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
