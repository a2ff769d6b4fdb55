"""Named models: the registry of trained models shipped inside the package.

`caeadmm/models/registry.json` lists each model's name, checkpoint file (beside the
registry), the file's sha256, the model fingerprint (hex sha256 of `CAE.fingerprint()`),
its operating point in words and, where measured, its Kodak figures (`kodak`: mean bpp of
the real files, PSNR in dB, MS-SSIM, from `caeadmm eval`; a list of such points for a model
with several operating points), `superseded: true` for a model that stays registered only so
that its streams decode (`caeadmm models` lists it with --all), for a rate-aware model the
`rate_lambda` it was trained with (what latent refinement weighs the rate by), for a model
trained with other distortion weights than the default mix its `distortion` weights (what
latent refinement minimizes; the PSNR family's MSE), plus which model is the default.
The environment variable CAEADMM_REGISTRY may point at another registry.json (a site's own
collection of models).

Everywhere a model is asked for (`--model`), a registry name or a checkpoint path works.
The registry may be empty (no trained model ships yet); then a checkpoint path is needed and
the error says so.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from caeadmm.checkpoint import CheckpointError, load_model
from caeadmm.config import DISTORTION_WEIGHTS
from caeadmm.model import CAE

PACKAGED_REGISTRY = Path(__file__).parent / "models" / "registry.json"


class ModelLoadError(ValueError):
    """A model name or path names no usable model; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    file: Path
    sha256: str
    fingerprint: str  # hex sha256 of CAE.fingerprint()
    operating_point: str
    default: bool
    kodak: dict[str, float] | list[dict[str, float]] | None = None  # {"bpp", "psnr",
    # "ms_ssim"} on Kodak if measured; a list of them for a model with several rates
    rate_lambda: float = 0.0  # the rate term's weight in training (0: none)
    distortion: dict[str, float] | None = None  # its distortion weights, if not the default
    superseded: bool = False  # kept so that its streams decode; `caeadmm models --all`
    # Variable-rate models: the metric the network was trained for ("ms-ssim" or "mse", what
    # `--metric` picks), the quality `compress` uses when given none, and the rate weight of
    # quality 0 (rate_lambda is that of the top quality).
    metric: str | None = None
    default_quality: float | None = None
    rate_lambda_max: float = 0.0

    def kodak_line(self) -> str:
        """Rate and quality on Kodak in one cell ("" if the registry has none)."""
        if not self.kodak:
            return ""
        if isinstance(self.kodak, list):
            low, high = self.kodak[0], self.kodak[-1]
            return f"{low['bpp']:.3f}-{high['bpp']:.3f} bpp ({len(self.kodak)} points)"
        k = self.kodak
        return f"{k['bpp']:.3f} bpp, {k['psnr']:.2f} dB, MS-SSIM {k['ms_ssim']:.4f}"

    @property
    def trained_for(self) -> str:
        """"MSE" for a model trained on MSE (and PSNR) alone, the PSNR family; "MS-SSIM" for
        the default mix, in which MS-SSIM and SSIM dominate."""
        weights = self.distortion or {}
        mse_alone = weights.get("w_msssim") == 0 and weights.get("w_ssim") == 0
        return "MSE" if mse_alone else "MS-SSIM"

    @property
    def size(self) -> int | None:
        """Checkpoint size in bytes, None if the file is missing."""
        return self.file.stat().st_size if self.file.is_file() else None


def _kodak(value: object) -> dict[str, float] | list[dict[str, float]] | None:
    """A registry entry's `kodak` figures as floats (a non-empty list of them: sorted by bpp);
    a malformed one raises ValueError (the caller reports the registry as unreadable)."""
    if value is None:
        return None
    if isinstance(value, list) and value:  # points may hold more, e.g. the quality setting
        if not all(isinstance(p, dict) and {"bpp", "psnr", "ms_ssim"} <= set(p) for p in value):
            raise ValueError(f"each point of 'kodak' needs bpp, psnr and ms_ssim, got {value!r}")
        return sorted(({key: float(v) for key, v in p.items()} for p in value),
                      key=lambda point: point["bpp"])
    if not isinstance(value, dict) or set(value) != {"bpp", "psnr", "ms_ssim"}:
        raise ValueError(f"'kodak' must hold exactly bpp, psnr and ms_ssim, got {value!r}")
    return {key: float(v) for key, v in value.items()}


def _distortion(value: object) -> dict[str, float] | None:
    """A registry entry's `distortion` weights as floats (config.DISTORTION_WEIGHTS, each
    >= 0); a malformed one raises ValueError."""
    if value is None:
        return None
    if not isinstance(value, dict) or not set(value) <= set(DISTORTION_WEIGHTS):
        raise ValueError(f"'distortion' holds only {', '.join(DISTORTION_WEIGHTS)}, got {value!r}")
    weights = {key: float(v) for key, v in value.items()}
    if not all(w >= 0 for w in weights.values()):
        raise ValueError(f"'distortion' weights must be >= 0, got {value!r}")
    return weights


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)


def registry_path() -> Path:
    return Path(os.environ.get("CAEADMM_REGISTRY") or PACKAGED_REGISTRY)


def list_models() -> list[ModelInfo]:
    """The models in the registry, in the order it lists them."""
    path = registry_path()
    try:
        registry = json.loads(path.read_text())
        default = registry.get("default")
        return [
            ModelInfo(
                name=entry["name"],
                file=path.parent / entry["file"],
                sha256=entry["sha256"].lower(),
                fingerprint=entry["fingerprint"].lower(),
                operating_point=entry.get("operating_point", ""),
                default=entry["name"] == default,
                kodak=_kodak(entry.get("kodak")),
                rate_lambda=float(entry.get("rate_lambda", 0.0)),
                distortion=_distortion(entry.get("distortion")),
                superseded=bool(entry.get("superseded", False)),
                metric=entry.get("metric"),
                default_quality=_optional_float(entry.get("default_quality")),
                rate_lambda_max=float(entry.get("rate_lambda_max", 0.0)),
            )
            for entry in registry["models"]
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"model registry {path} is unreadable: {exc}") from exc


def find_by_fingerprint(prefix: bytes) -> ModelInfo | None:
    """The registered model whose fingerprint starts with `prefix` (as a stream stores it)."""
    return next((m for m in list_models() if m.fingerprint.startswith(prefix.hex())), None)


def rate_lambda(name_or_path: str | os.PathLike | None = None) -> float:
    """The rate_lambda a registered model (None: the default) was trained with (a
    variable-rate model: that of its top quality); 0 for a model without one and for a
    checkpoint path (the model file does not record it)."""
    info = _registered(name_or_path)
    return info.rate_lambda if info else 0.0


def rate_lambda_max(name_or_path: str | os.PathLike | None = None) -> float:
    """A registered variable-rate model's rate weight at quality 0; 0 otherwise."""
    info = _registered(name_or_path)
    return info.rate_lambda_max if info else 0.0


METRICS = ("ms-ssim", "mse")


def for_metric(metric: str) -> str:
    """The name of the registered variable-rate model for `metric` (METRICS); the default
    model when it is one for that metric."""
    if metric not in METRICS:
        raise ModelLoadError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    found = [m for m in list_models() if m.metric == metric and not m.superseded]
    if not found:
        raise ModelLoadError(f"no variable-rate model for {metric} is registered")
    return next((m for m in found if m.default), found[0]).name


def default_quality(name_or_path: str | os.PathLike | None, model: CAE) -> float | None:
    """The quality `compress` uses for `model` when given none: its registry entry's
    `default_quality`, the middle of the range for a variable-rate checkpoint path, None for
    a fixed-rate model."""
    levels = model.config.quality_levels
    if not levels:
        return None
    info = _registered(name_or_path)
    if info is not None and info.default_quality is not None:
        return info.default_quality
    return (levels - 1) / 2


def distortion_weights(name_or_path: str | os.PathLike | None = None) -> dict[str, float]:
    """The distortion weights a registered model (None: the default) was trained with, as
    keyword arguments of losses.distortion; empty (the default mix) for a model whose entry
    records none and for a checkpoint path."""
    info = _registered(name_or_path)
    return dict(info.distortion or {}) if info else {}


def _registered(name_or_path: str | os.PathLike | None) -> ModelInfo | None:
    """The registry entry of a model name (None: the default); None for a path."""
    return next((info for info in list_models()
                 if info.name == name_or_path or (name_or_path is None and info.default)), None)


def load(name_or_path: str | os.PathLike | None = None) -> CAE:
    """Load a registered model by name (None: the default) or a checkpoint by path, in eval mode."""
    models = {m.name: m for m in list_models()}
    if name_or_path is None:
        default = next((m for m in models.values() if m.default), None)
        if default is None and not models:
            raise ModelLoadError(
                "no model ships with this installation yet: pass --model PATH to a checkpoint"
            )
        if default is None:
            raise ModelLoadError(
                f"no default model is registered: pass --model with one of {', '.join(models)} "
                "or a checkpoint path"
            )
        return _load_registered(default)
    if str(name_or_path) in models:
        return _load_registered(models[str(name_or_path)])
    path = Path(name_or_path)
    if not path.is_file():
        known = ", ".join(models) or "none ship yet"
        raise ModelLoadError(
            f"no model named {str(name_or_path)!r} (registered models: {known}) "
            "and no checkpoint file at that path"
        )
    return _load_checkpoint(path)


def _load_registered(info: ModelInfo) -> CAE:
    try:
        digest = hashlib.sha256(info.file.read_bytes()).hexdigest()
    except OSError as exc:
        raise ModelLoadError(f"model {info.name!r}: cannot read {info.file}: {exc}") from exc
    if digest != info.sha256:
        raise ModelLoadError(
            f"model {info.name!r}: {info.file} has sha256 {digest}, the registry says "
            f"{info.sha256} (damaged or replaced file)"
        )
    return _load_checkpoint(info.file)


def _load_checkpoint(path: Path) -> CAE:
    try:
        model = load_model(path)
    except CheckpointError as exc:
        raise ModelLoadError(str(exc)) from exc
    return model.eval()
