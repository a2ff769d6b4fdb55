"""Cutting one decoded image into training patches, and the Parquet rows that hold them.

Pure functions (numpy + pyarrow, no Ray, no torch) so that the Ray job in
`caeadmm/distributed/prepare.py`, the tests and the benchmark all cut exactly the same
patches. Rules:
- Random mode draws `crops` distinct crop positions per image from a generator seeded by
  (seed, source path) only, so the crops never depend on which worker cut them or when.
  An image with fewer distinct positions than `crops` gives one patch per position.
- Grid mode tiles the image every `stride` pixels (default: the patch size, no overlap)
  from the top-left corner; a border narrower than the patch is left out.
- An image smaller than the patch in either dimension is reflect-padded at the bottom and
  right up to the patch size (`small="pad"`), so crop positions stay source coordinates,
  or is refused with `ImageTooSmallError` (`small="skip"`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# One row per patch; the column contract of docs/architecture.md ("Parquet patch shards").
PATCH_SCHEMA = pa.schema(
    [
        pa.field("patch", pa.binary(), nullable=False),  # P*P*3 bytes, uint8 HWC RGB
        pa.field("height", pa.int32(), nullable=False),  # P
        pa.field("width", pa.int32(), nullable=False),  # P
        pa.field("source", pa.string(), nullable=False),  # the file the patch was cut from
        pa.field("x", pa.int32(), nullable=False),  # crop's left column
        pa.field("y", pa.int32(), nullable=False),  # crop's top row
    ]
)

MODES = ("random", "grid")
SMALL_POLICIES = ("pad", "skip")


class ImageTooSmallError(ValueError):
    """An image is smaller than the patch size and the policy says to skip it."""


@dataclass(frozen=True)
class PatchSpec:
    """How to cut patches: size, random crops or grid, what to do with small images, seed."""

    patch_size: int = 128
    mode: str = "random"
    crops: int = 16  # random mode: crops per image
    stride: int | None = None  # grid mode: step between tiles; None means patch_size
    small: str = "pad"  # images smaller than the patch: "pad" (reflect) or "skip"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.crops < 1:
            raise ValueError(f"crops must be >= 1, got {self.crops}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.small not in SMALL_POLICIES:
            raise ValueError(f"small must be one of {SMALL_POLICIES}, got {self.small!r}")

    @property
    def patch_bytes(self) -> int:
        return self.patch_size * self.patch_size * 3


def crop_rng(seed: int, source: str) -> np.random.Generator:
    """The generator for one image's crops: a function of (seed, source) and nothing else."""
    digest = hashlib.sha256(f"{seed}\0{source}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def pad_to_patch(image: np.ndarray, patch_size: int) -> np.ndarray:
    """Reflect-pad an (H, W, 3) image at the bottom and right to at least patch_size each way.

    Returns the image itself when it is already large enough.
    """
    pad_h = max(0, patch_size - image.shape[0])
    pad_w = max(0, patch_size - image.shape[1])
    if pad_h == 0 and pad_w == 0:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")


def crop_positions(height: int, width: int, spec: PatchSpec, source: str) -> np.ndarray:
    """Top-left corners (y, x) of the patches of an image at least patch_size in each dimension.

    Returned as an int64 array of shape (n, 2) in row-major order.
    """
    p = spec.patch_size
    if height < p or width < p:
        raise ValueError(f"image {width}x{height} is smaller than the patch size {p}; pad it first")
    rows, cols = height - p + 1, width - p + 1  # number of possible corners each way
    if spec.mode == "grid":
        step = spec.stride or p
        ys, xs = np.meshgrid(np.arange(0, rows, step), np.arange(0, cols, step), indexing="ij")
        return np.stack([ys.ravel(), xs.ravel()], axis=1)
    count = min(spec.crops, rows * cols)
    flat = np.sort(crop_rng(spec.seed, source).choice(rows * cols, size=count, replace=False))
    return np.stack([flat // cols, flat % cols], axis=1)


def cut_patches(image: np.ndarray, source: str, spec: PatchSpec) -> pa.Table:
    """Cut one decoded uint8 (H, W, 3) image into a table of patch rows (PATCH_SCHEMA)."""
    p = spec.patch_size
    height, width = image.shape[:2]
    if height < p or width < p:
        if spec.small == "skip":
            raise ImageTooSmallError(f"smaller than the patch size: {width}x{height} < {p}x{p}")
        image = pad_to_patch(image, p)
    corners = crop_positions(image.shape[0], image.shape[1], spec, source)
    patches = [image[y : y + p, x : x + p].tobytes() for y, x in corners]
    n = len(patches)
    return pa.table(
        {
            "patch": pa.array(patches, pa.binary()),
            "height": pa.array(np.full(n, p, np.int32)),
            "width": pa.array(np.full(n, p, np.int32)),
            "source": pa.array([source] * n, pa.string()),
            "x": pa.array(corners[:, 1].astype(np.int32)),
            "y": pa.array(corners[:, 0].astype(np.int32)),
        },
        schema=PATCH_SCHEMA,
    )


def patch_array(column: pa.Array | pa.ChunkedArray, patch_size: int) -> np.ndarray:
    """View a `patch` column as a uint8 array (N, P, P, 3) without copying the pixels.

    Raises ValueError if a value is null or not exactly P*P*3 bytes long.
    """
    nbytes = patch_size * patch_size * 3
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if n == 0:
        return np.empty((0, patch_size, patch_size, 3), np.uint8)
    if column.null_count:
        raise ValueError(f"{column.null_count} null patches")
    lengths = pc.binary_length(column)
    if pc.min(lengths).as_py() != nbytes or pc.max(lengths).as_py() != nbytes:
        raise ValueError(f"patches are not all {nbytes} bytes (P={patch_size}, uint8 RGB)")
    # Equal lengths and no nulls: the values sit back to back in the data buffer.
    offsets = np.frombuffer(
        column.buffers()[1], np.int64 if pa.types.is_large_binary(column.type) else np.int32
    )
    first = int(offsets[column.offset])
    data = np.frombuffer(column.buffers()[2], np.uint8, count=n * nbytes, offset=first)
    return data.reshape(n, patch_size, patch_size, 3)


def random_flips(images: np.ndarray, flips: str, rng: np.random.Generator) -> np.ndarray:
    """Flip each (N, H, W, C) image left-right ("h" in flips) and/or upside down ("v"), each
    with probability 1/2, independently. Returns a new array, written in one pass."""
    n = len(images)
    step_x = np.where(rng.random(n) < 0.5, -1, 1) if "h" in flips else np.ones(n, np.int64)
    step_y = np.where(rng.random(n) < 0.5, -1, 1) if "v" in flips else np.ones(n, np.int64)
    out = np.empty_like(images)
    for i in range(n):
        out[i] = images[i, :: step_y[i], :: step_x[i]]
    return out


def split_sources(
    sources: Iterable[str], val_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Split source images into (train, val) by a seeded hash: deterministic, disjoint.

    The val part is the round(val_fraction * n) sources with the smallest hash, so its size is
    exact; with two or more sources and val_fraction > 0 each part gets at least one.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    unique = sorted(set(sources))
    ranked = sorted(unique, key=lambda s: hashlib.sha256(f"{seed}\0{s}".encode()).digest())
    n_val = round(val_fraction * len(unique))
    if val_fraction > 0 and len(unique) >= 2:
        n_val = min(max(1, n_val), len(unique) - 1)
    val = set(ranked[:n_val])
    return [s for s in unique if s not in val], sorted(val)
