"""scripts/gpu_train.py end to end on the CPU (its fallback without CUDA): probe, plan,
concurrent runs with their data on the device, a continuation of a registered model with the
rate term, packing (float16 when over the size limit), unpacking to a loadable model and the
throughput report; and DeviceBatches, the data source those runs train from."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_script
from PIL import Image

from caeadmm.checkpoint import load_model
from caeadmm.config import load_config
from caeadmm.train_local import DeviceBatches

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_train.py"
TINY = "model.preset=tiny:model.latent_channels=8:eval_patches=4:threads=1"


def write_images(folder: Path, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = []
    for i, (h, w) in enumerate(sizes):
        images.append(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        Image.fromarray(images[-1]).save(folder / f"{i}.png")
    return images


@pytest.mark.slow  # two training runs in subprocesses: about 35 s on 2 busy cores
def test_runs_train_on_device_data_pack_unpack_and_report_throughput(tmp_path):
    images = tmp_path / "images"
    write_images(images, [(64, 80), (72, 64), (96, 56)])
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(SCRIPT), "--images", str(images), "-o", str(out),
        "--work", str(tmp_path / "work"), "--budget", "600", "--steps", "12",
        "--batch-size", "2", "--crop", "48",
        "--max-file-mb", "0.1",  # the tiny model (0.7 MB) goes through the float16 path
        f"a=configs/gpu_small.yaml:{TINY}:pruning_ratio=0.75",
        "r=configs/rate_continue.yaml:init_from=small-k12:eval_patches=4",
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a: exit 0" in result.stdout and "r: exit 0" in result.stdout
    assert "initialised weights from small-k12" in (
        tmp_path / "work" / "r" / "console.log"
    ).read_text()

    # The throughput file: the card, each run's patches/s (the median of its logged windows
    # after the first: here the last of two), and the card's total.
    report = json.loads((out / "throughput.json").read_text())
    assert set(report) == {"device", "runs", "card"}
    gpu_train = load_script(SCRIPT)
    assert report["device"] == gpu_train.device_name()
    assert f"device: {report['device']}; runs: a, r" in result.stdout
    assert set(report["runs"]) == {"a", "r"}
    assert report["card"] == pytest.approx(sum(report["runs"].values()))
    assert f"card as a whole: {report['card']:.0f} patches/s" in result.stdout
    for name in ("a", "r"):
        with (tmp_path / "work" / name / "log.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [int(row["step"]) for row in rows] == [10, 12]  # log_every 10 of 12 steps
        assert report["runs"][name] == float(rows[-1]["patches_per_s"]) > 0
        # Training moved the loss: finite, and not the same in the two windows.
        losses = [float(row["loss"]) for row in rows]
        assert all(math.isfinite(v) for v in losses) and losses[0] != losses[1], losses

    with tarfile.open(out / "a.tar") as tar:
        assert {m.name for m in tar.getmembers()} >= {"a/log.csv", "a/summary.json",
                                                      "a/model_fp16.pt"}
        tar.extractall(tmp_path / "unpacked", filter="data")
    restored = tmp_path / "a.pt"
    gpu_train.unpack_model(tmp_path / "unpacked" / "a" / "model_fp16.pt", restored)
    model = load_model(restored)
    assert model.config.patch_size == 48  # --crop reached the run
    assert int(model.mask.sum()) == 2 * 6 * 6  # 2 of 8 channels (ratio 0.75), 6 x 6 latent
    x = torch.rand(1, 3, 48, 48)
    assert model(x)[0].shape == x.shape

    rate_model = load_model(tmp_path / "work" / "r" / "model.pt")
    assert rate_model.config.entropy_model == "factorized"  # the rate-aware config trained


@pytest.mark.slow  # a training run in a subprocess: about 30 s on 2 busy cores
def test_a_failed_run_fails_the_script_and_work_goes_under_output(tmp_path):
    """One run dies (its init_from does not exist), the other trains: the script packs what
    it can, names the failed run and exits 1; throughput.json stays valid JSON (no NaN); the
    run directories are under -o (no shared /tmp folder)."""
    images = tmp_path / "images"
    write_images(images, [(64, 80), (72, 64)])
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(SCRIPT), "--images", str(images), "-o", str(out),
        "--budget", "600", "--steps", "6", "--batch-size", "2", "--crop", "48",
        f"a=configs/gpu_small.yaml:{TINY}:pruning_ratio=0.75",
        f"bad=configs/gpu_small.yaml:{TINY}:init_from={tmp_path / 'missing.pt'}",
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 of 2 runs failed: bad (exit" in result.stderr
    assert (out / "work" / "a" / "model.pt").is_file()
    assert (out / "work" / "bad" / "console.log").is_file()
    with tarfile.open(out / "a.tar") as tar:
        assert "a/model.pt" in tar.getnames()
    report = json.loads((out / "throughput.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"{c} in throughput.json"))
    assert report["runs"]["bad"] is None and report["runs"]["a"] > 0
    assert report["card"] == report["runs"]["a"]


def test_runs_that_do_not_fit_in_memory_are_refused_before_any_starts(tmp_path):
    images = tmp_path / "images"
    write_images(images, [(64, 80)])
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--images", str(images), "-o", str(out), "--steps", "6",
         "--batch-size", "200000", "a=configs/gpu_small.yaml", "b=configs/gpu_small.yaml"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "these 2 runs need about" in result.stderr and "Run fewer at once" in result.stderr
    assert not out.exists()  # nothing started


def test_memory_estimate_is_near_a_measured_run():
    """The estimate against the peak RSS measured for a small-preset run at 128 px on the CPU
    (1.3 GB at batch 4, 3.3 GB at batch 16; see ACTIVATION_FACTOR): within -10 % and +30 %;
    and the six runs that shared an 80 GB H100 (scripts/train_shipped.sh) fit."""
    spec = importlib.util.spec_from_file_location("gpu_train", SCRIPT)
    gpu_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_train)
    images = gpu_train.image_bytes(str(REPO / "caeadmm" / "samples"))  # what that run read
    for batch, measured in ((4, 1.3e9), (16, 3.3e9)):
        cfg = load_config(str(REPO / "configs" / "gpu_small.yaml"), [f"batch_size={batch}"])
        estimate = gpu_train.run_memory(cfg, images, cuda=False)
        assert 0.9 * measured < estimate < 1.3 * measured, (batch, estimate)
    small = load_config(str(REPO / "configs" / "gpu_small.yaml"), [])
    paper = load_config(str(REPO / "configs" / "gpu_paper.yaml"), [])
    gpu_data = 580 * 481 * 321 * 3  # BSDS500-sized training images
    shipped = 5 * gpu_train.run_memory(small, gpu_data, cuda=True) + gpu_train.run_memory(
        paper, gpu_data, cuda=True)
    gpu_train.check_memory({"six runs": shipped}, free=79 * 2**30, card="H100")


def test_old_out_flag_still_works_with_a_note(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--images", str(tmp_path), "--out", str(tmp_path / "o"),
         "--budget", "1", "bad-spec"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert "--out is deprecated" in result.stderr and "-o/--output" in result.stderr


def test_device_batches_are_flipped_crops_a_function_of_the_step(tmp_path):
    images = write_images(tmp_path / "images", [(40, 50), (33, 64)])
    cfg = load_config(None, ["model.preset=tiny", "model.patch_size=32", "batch_size=64",
                             "warmup_steps=5", "admm_steps=0", "finetune_steps=0"])
    source = DeviceBatches(images, cfg, torch.device("cpu"))
    batches = list(source)
    assert len(batches) == 5
    crops = (batches[2] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    flips = 0
    for crop in crops:  # each crop is a window of one image, flipped left-right or not
        found = [f for image in images for f in (False, True)
                 if _contains(image[:, ::-1] if f else image, crop)]
        assert found
        flips += found[0]
    assert 0 < flips < len(crops)
    # A resumed run (start 3) sees the batches the uninterrupted one did.
    resumed = DeviceBatches(images, cfg, torch.device("cpu"), start=3)
    assert torch.equal(next(iter(resumed)), batches[3])
    assert not torch.equal(batches[3], batches[4])
    assert batches[0].shape == (64, 3, 32, 32) and batches[0].dtype == torch.float32


def _contains(image: np.ndarray, crop: np.ndarray) -> bool:
    p = crop.shape[0]
    windows = np.lib.stride_tricks.sliding_window_view(image, (p, p, 3))[:, :, 0]
    return bool((windows == crop).all(axis=(2, 3, 4)).any())
