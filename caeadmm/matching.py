"""Setting each codec to meet a file size: what `caeadmm compare` shows side by side.

Every codec gets its largest setting whose file fits the size (`fit_codec`), found by
bisection over its settings in increasing order of rate, encoding only the image at hand:

- a codec with a quality setting (JPEG, WebP, AVIF): quality 0-100;
- JPEG 2000 (its setting is a target rate): targets from 0.01 to 24 bpp, 2 % apart
  (OpenJPEG lands a little below a target, so the target that fits is often above the size);
- the CAE (`cae_at_size`): a variable-rate model's qualities, 1/CAE_QUALITY_STEPS apart (the
  registry's current model for the default metric), or a list of fixed-rate models sorted by
  rate (`--models`); the same bisection, so that `cae-refined` (whose rate the refinement
  moves) is searched like `cae`.

File size grows with each of these settings, apart from small steps back; bisection may then
miss the very largest fitting setting, but what it returns always fits. When even the
smallest setting does not fit, that one is returned, marked as over the size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from caeadmm.baselines import Setting, cae_quality_levels, get_codec

QUALITIES = tuple(range(0, 101))
CAE_QUALITY_STEPS = 16  # a variable-rate model is searched at qualities this far apart
JPEG2000_TARGETS = tuple(round(0.01 * 1.02**k, 6) for k in range(int(math.log(2400, 1.02)) + 1))
EXTENSIONS = {"jpeg": ".jpg", "jpeg-default": ".jpg", "webp": ".webp", "webp-default": ".webp",
              "jpeg2000": ".j2k", "avif": ".avif", "cae": ".cae", "cae-refined": ".cae"}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmM]i?[bB]|[bB])?\s*$")
_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}


@dataclass
class Fit:
    """One codec set to meet a size: its setting, file bytes and decoded image."""

    codec: str
    setting: Setting
    data: bytes
    decoded: np.ndarray
    fits: bool  # False: even the smallest setting is over the size


def parse_size(text: str) -> int:
    """A file size in bytes: "20KB" (1000 bytes each), "20KiB" (1024), "1.5MB", "5000"."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; e.g. 20KB, 20KiB, 1.5MB or 5000 (bytes)")
    number, unit = float(match.group(1)), (match.group(2) or "b").lower()
    size = int(number * _UNITS[unit])
    if size < 1:
        raise ValueError(f"size {text!r} is under one byte")
    return size


def bytes_for_bpp(bpp: float, height: int, width: int) -> int:
    """The most bytes a file of an image this size may have to stay within `bpp`."""
    return int(bpp * height * width / 8)


def largest_fitting(candidates: Sequence[Setting], size_of: Callable[[Setting], int],
                    max_bytes: int) -> tuple[int, bool]:
    """(index, fits) of the largest candidate (sorted by increasing rate) whose size fits,
    by bisection; (0, False) when none does."""
    low, high = -1, len(candidates)  # candidates[low] fits (or low = -1), [high] does not
    while high - low > 1:
        mid = (low + high) // 2
        if size_of(candidates[mid]) <= max_bytes:
            low = mid
        else:
            high = mid
    return (low, True) if low >= 0 else (0, False)


def fit_codec(codec_name: str, rgb: np.ndarray, max_bytes: int,
              models: Sequence[str] | None = None) -> Fit:
    """`codec_name` at its largest setting whose file of `rgb` has at most `max_bytes`
    (`models`: the CAE's candidates, see `cae_at_size`)."""
    if codec_name.startswith("cae"):
        return cae_at_size(rgb, max_bytes, models or candidate_models(), codec_name)
    candidates = JPEG2000_TARGETS if codec_name == "jpeg2000" else QUALITIES
    return _search(codec_name, rgb, max_bytes, candidates)


def cae_at_size(rgb: np.ndarray, max_bytes: int, models: Sequence[str],
                codec_name: str = "cae") -> Fit:
    """The CAE set to meet a size: the setting among `models` (registered names, metrics or
    checkpoint paths, sorted by rate) whose file fits best, a variable-rate model standing for
    its qualities 1/CAE_QUALITY_STEPS apart ("NAME@Q" settings)."""
    if not models:
        raise ValueError("no CAE model to choose from: pass --models")
    return _search(codec_name, rgb, max_bytes, [s for m in models for s in cae_settings(m)])


def cae_settings(model: str) -> list[str]:
    """The CAE settings of one model in increasing order of rate: itself for a fixed-rate
    model, "MODEL@Q" for Q from 0 to its top quality in steps of 1/CAE_QUALITY_STEPS."""
    levels = cae_quality_levels(model)
    if not levels:
        return [model]
    return [f"{model}@{k / CAE_QUALITY_STEPS:g}"
            for k in range((levels - 1) * CAE_QUALITY_STEPS + 1)]


def _search(codec_name: str, rgb: np.ndarray, max_bytes: int,
            candidates: Sequence[Setting]) -> Fit:
    codec = get_codec(codec_name)
    files: dict[Setting, bytes] = {}

    def size_of(setting: Setting) -> int:
        if setting not in files:
            if codec.prepare is not None:
                codec.prepare(setting)
            files[setting] = codec.encode(rgb, setting)
        return len(files[setting])

    index, fits = largest_fitting(candidates, size_of, max_bytes)
    setting = candidates[index]
    size_of(setting)
    return Fit(codec_name, setting, files[setting], codec.decode(files[setting], setting), fits)


def candidate_models(metric: str | None = None) -> list[str]:
    """The registered models the CAE chooses from: those not superseded that were trained for
    `metric` ("MS-SSIM" or "MSE"; None: the default model's); that metric's variable-rate
    model alone when there is one, else the fixed-rate ones sorted by their Kodak rate (those
    without a single Kodak figure left out unless no model has one)."""
    from caeadmm import zoo

    models = [m for m in zoo.list_models() if not m.superseded]
    if metric is None:
        default = next((m for m in models if m.default), models[0] if models else None)
        metric = default.trained_for if default else None
    family = [m for m in models if m.trained_for == metric]
    variable = [m for m in family if m.default_quality is not None]
    if variable:
        return [next((m for m in variable if m.default), variable[0]).name]
    rated = [m for m in family if isinstance(m.kodak, dict)]
    if not rated:
        return [m.name for m in family]
    return [m.name for m in sorted(rated, key=lambda m: m.kodak["bpp"])]
