"""scripts/gpu_train.py end to end on the CPU with the tiny preset: probe, plan, concurrent
runs, packing (float16 when over the size limit) and unpacking to a loadable model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from caeadmm.checkpoint import load_model

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_train.py"
TINY = ("model.preset=tiny:model.patch_size=48:model.latent_channels=8:batch_size=4:"
        "loader_workers=0:eval_patches=4:threads=1")


def test_two_runs_train_pack_and_unpack(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(SCRIPT), "--images", str(images), "--out", str(out),
        "--work", str(tmp_path / "work"), "--budget", "90", "--probe-steps", "8",
        "--max-file-mb", "0.1",  # the tiny model (0.7 MB) goes through the float16 path
        f"a=configs/gpu_small.yaml:{TINY}:pruning_ratio=0.75",
        f"b=configs/gpu_small.yaml:{TINY}:pruning_ratio=0.5:rho=0",
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "a: exit 0" in result.stdout and "b: exit 0" in result.stdout

    for name in ("a", "b"):
        with tarfile.open(out / f"{name}.tar") as tar:
            assert {m.name for m in tar.getmembers()} >= {
                f"{name}/log.csv", f"{name}/summary.json", f"{name}/model_fp16.pt"
            }
            tar.extractall(tmp_path / "unpacked", filter="data")
    spec = importlib.util.spec_from_file_location("gpu_train", SCRIPT)
    gpu_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_train)
    restored = tmp_path / "a.pt"
    gpu_train.unpack_model(tmp_path / "unpacked" / "a" / "model_fp16.pt", restored)
    model = load_model(restored)
    assert int(model.mask.sum()) == 2 * 6 * 6  # 2 of 8 channels (ratio 0.75), 6 x 6 latent
    x = torch.rand(1, 3, 48, 48)
    assert model(x)[0].shape == x.shape
