"""Shared test helpers (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import dataclasses
import importlib.util
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from hypothesis import strategies as st

import coding
from caeadmm.config import ModelConfig, TrainConfig
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


def save_tiny_model(path: Path, seed: int = 0) -> Path:
    """tiny_model(seed) saved as a training checkpoint at `path`: a model file for the CLI
    and the jobs (`--model PATH`)."""
    from caeadmm.checkpoint import save_checkpoint

    model = tiny_model(seed=seed)
    save_checkpoint(path, model=model, admm=None, optimizer=None, step=0,
                    config=TrainConfig(model=model.config))  # fmt: skip
    return path


def channels_stream(data: bytes) -> bytes:
    """A stream of the read-only "channels" layout with the symbols of a "predicted" one: the
    payload a Huffman table per group of channels (coding.encode_channels), as it was written
    before "predicted" existed."""
    from caeadmm import bitstream

    header, payload = bitstream.parse(data)
    payload = coding.encode_channels(bitstream.decode_payload(header, payload))
    header = dataclasses.replace(header, layout="channels", payload_length=len(payload))
    return bitstream.pack(header, payload)


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


# -- the entropy coder's streams (tests/test_coding*.py) --------------------------------------


def round_trip(encode: Callable, decode: Callable, x) -> bytes:
    """`encode(x)`, checked to decode to exactly x's values as int32 of x's shape."""
    data = encode(x)
    y = decode(data)
    expected = np.asarray(x, dtype=np.int64)
    assert y.dtype == np.int32 and y.shape == expected.shape
    np.testing.assert_array_equal(y, expected)
    return data


def decodes_or_refuses(decode: Callable, data: bytes, ndim: int) -> np.ndarray | None:
    """`decode(data)`: int32 symbols of `ndim` dimensions, or None when it refuses the stream
    as corrupt (CorruptStreamError); any other error fails the test."""
    try:
        y = decode(data)
    except coding.CorruptStreamError:
        return None
    assert y.dtype == np.int32 and y.ndim == ndim
    return y


def mutate(stream: bytes, data: st.DataObject) -> bytes:
    """The stream with one mutation drawn by hypothesis: a bit flipped, a byte overwritten,
    inserted or deleted, or the tail cut off."""
    out = bytearray(stream)
    kind = data.draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete"]))
    at = data.draw(st.integers(0, len(out)))
    if kind == "flip" and at < len(out):
        out[at] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "byte" and at < len(out):
        out[at] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        del out[at:]
    elif kind == "insert":
        out[at:at] = bytes([data.draw(st.integers(0, 255))])
    elif kind == "delete":
        del out[at : at + 1]
    return bytes(out)


def bit_flips(stream: bytes) -> Iterator[bytes]:
    """The stream with each of its bits flipped in turn."""
    for bit in range(8 * len(stream)):
        flipped = bytearray(stream)
        flipped[bit // 8] ^= 0x80 >> (bit % 8)
        yield bytes(flipped)


def random_streams(version: int, count: int = 300) -> Iterator[bytes]:
    """Random byte strings of 0 to 299 bytes, each on its own and after `version`."""
    rng = np.random.default_rng(0)
    for _ in range(count):
        data = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        yield bytes([version]) + data
        yield data


def corruptions(stream: bytes, rng: np.random.Generator, count: int = 5) -> list[bytes]:
    """`count` copies of the stream, each with one bit flipped and cut at a random length of
    at least half."""
    out = []
    for _ in range(count):
        bad = bytearray(stream)
        bad[int(rng.integers(0, len(bad)))] ^= 1 << int(rng.integers(0, 8))
        out.append(bytes(bad[: int(rng.integers(len(bad) // 2, len(bad) + 1))]))
    return out


def assert_same_verdict(fast: np.ndarray | None, slow: np.ndarray | None) -> None:
    """Both backends refused (None), or both decoded the same symbols."""
    assert (fast is None) == (slow is None)
    if fast is not None:
        np.testing.assert_array_equal(fast, slow)


# -- processes ----------------------------------------------------------------------------------


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
