"""Shared test helpers (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import numpy as np
import torch

from caeadmm.config import ModelConfig
from caeadmm.model import CAE


def load_script(path: Path):
    """Import a script (jobs/*.py, scripts/*.py) as a module, to call its functions."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model(seed: int = 0, keep: float = 0.5, patch_size: int = 32) -> CAE:
    """A random tiny model whose latents are spread like a trained one's (BatchNorm
    statistics calibrated on noise, a few symbols of each sign), with a random mask."""
    torch.manual_seed(seed)
    model = CAE(ModelConfig(preset="tiny", width=16, n_blocks=1, latent_channels=8,
                            patch_size=patch_size))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: statistics of all batches seen
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 3, patch_size, patch_size))
    model.encoder[-1][-1].weight.data.fill_(4.0)
    model.set_mask(torch.rand(model.config.latent_shape()) < keep)
    return model.eval()


def test_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: content with both structure and detail."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width, 1), yy * 255 / max(height, 1), (xx + yy) % 97], -1)
    noise = np.random.default_rng(seed).normal(0, 12, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


test_image.__test__ = False  # a helper, not a test


def write_images(root, count: int, height: int, width: int) -> None:
    """`count` PNG test images im00.png, im01.png, ... in a new folder `root`."""
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(test_image(height, width, seed=i)).save(root / f"im{i:02d}.png")


def session_processes(session: int) -> list[str]:
    """Live processes (not zombies) of a session, as "PID NAME"; read from /proc (Linux)."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == session and fields[0] not in "ZX":
            found.append(f"{entry} {name}")
    return found


def wait_until_gone(session: int, seconds: float) -> list[str]:
    """Poll until no process of `session` is alive or `seconds` pass; returns the survivors."""
    import time

    deadline = time.monotonic() + seconds
    while (alive := session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def default_sigint() -> None:
    """preexec_fn for a process that stands for a terminal's foreground job: Ctrl-C reaches
    it even when the test runner itself was started with SIGINT ignored (as a shell's
    background job is), which the child would otherwise inherit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
