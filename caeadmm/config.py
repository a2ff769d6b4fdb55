"""Model and training configuration: dataclasses, presets and YAML loading with overrides.

A run is described by one `TrainConfig` (which holds its `ModelConfig`). Configs live in
`configs/*.yaml`; any field can be overridden on the command line as `key=value` or
`model.key=value`, the value parsed by `yaml.safe_load` (so `rho=0.5`, `use_gpu=true`,
`init_from=null` all work). Unknown keys and wrong types are errors, so a typo never
silently trains the wrong thing. Checkpoints store `to_dict()` so a model always carries
its own full configuration.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import torch


class ConfigError(ValueError):
    """A configuration file or override is malformed, unknown or out of range."""


# The network sizes each preset fixes (a config may not contradict them), and the per-model
# sizes it suggests (latent channels and patch size stay free). "custom" fixes nothing: it
# names a network of other sizes, so that no preset name labels a network it does not build.
PRESETS: dict[str, dict[str, int]] = {
    # Sized to train on a 2-core CPU (see docs/training.md for the measured throughput).
    "small": {"width": 64, "n_blocks": 3},
    # The paper's network, for GPUs.
    "paper": {"width": 128, "n_blocks": 15},
    # For tests and smoke runs only: too small to compress well.
    "tiny": {"width": 16, "n_blocks": 1},
    # Any width and depth, given explicitly.
    "custom": {},
}
PRESET_SUGGESTS: dict[str, dict[str, int]] = {"tiny": {"latent_channels": 8, "patch_size": 48}}
SIZE_DEFAULTS = {"latent_channels": 32, "patch_size": 128}


# The choices of ModelConfig's string fields (docs/rate.md describes each).
MODEL_CHOICES: dict[str, tuple[str, ...]] = {
    "norm": ("batchnorm", "gdn"),
    "latent_norm": ("batchnorm", "none"),
    "entropy_model": ("none", "factorized", "laplacian"),
    "train_rounding": ("stochastic", "mixed"),
    "rate_estimate": ("fixed", "adaptive", "adaptive-runs"),
}


# TrainConfig.precision: the autocast dtype of each choice (None: no autocast).
PRECISIONS: dict[str, str | None] = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


# ModelConfig's fields up to patch_size existed when the first models shipped.
_FIRST_SHIPPED_FIELDS = 5


@dataclass
class ModelConfig:
    """Shape of the network. The latent of a P x P patch is latent_channels x P/8 x P/8.

    The fields after patch_size shape the quantizer and the rate (docs/rate.md); their
    defaults build the network the first models shipped with, and `to_dict` leaves them out
    while they hold their default, so those models keep their fingerprints.
    """

    preset: str = "small"
    # None: the preset's value (width, n_blocks) or its suggestion / SIZE_DEFAULTS.
    width: int | None = None
    n_blocks: int | None = None
    latent_channels: int | None = None
    patch_size: int | None = None
    # "batchnorm": BatchNorm + PReLU after the convolutions; "gdn": GDN in the encoder and
    # IGDN in the decoder in their place.
    norm: str = "batchnorm"
    # What sits between the last encoder convolution and the rounding: "batchnorm" fixes each
    # channel's spread; "none" (a biased convolution) lets the rate term shape it.
    latent_norm: str = "batchnorm"
    # A learned per-channel gain: the latent is multiplied by it before rounding and divided
    # by it before the decoder.
    latent_gain: bool = False
    # The per-channel probability model of the rate term ("none": no rate term possible).
    entropy_model: str = "none"
    # Training-time rounding: "stochastic" (unbiased random rounding, straight-through
    # gradient, for the decoder and the rate alike) or "mixed" (the rate term sees the latent
    # plus uniform noise, the decoder the rounded latent with a straight-through gradient).
    train_rounding: str = "stochastic"
    # What the rate term charges: "fixed" (each channel's one density), "adaptive" (the
    # density moved to each image's channel mean and stretched, as the codec's per-image
    # tables adapt; EntropyModel.adaptive_bits) or "adaptive-runs" (the same, adapted apart
    # after a zero and after a non-zero symbol: what the coder's zero-run tokens save).
    rate_estimate: str = "fixed"
    # A variable-rate model (docs/variable-rate.md): this many learned gain vectors on the
    # latent (and as many inverse gains before the decoder), one per rate weight of training;
    # a continuous quality q in [0, quality_levels - 1] interpolates them. 0: one fixed rate.
    quality_levels: int = 0
    # Nested channel supports for a variable-rate model: quality 0 uses only this many of the
    # kept channels (the most important, `CAE.channel_rank`), and the count grows
    # geometrically to every kept channel at the top quality, as the fixed-rate families
    # keep fewer channels at lower rates. 0: every kept channel at every quality.
    lowest_quality_channels: int = 0
    # The downsampling at which the residual blocks run: 2 (the paper's network, half
    # resolution) or 4 (a quarter: about 46 % of the encoder's multiply-adds and 31 % of the
    # decoder's; docs/speed.md measures what it costs in rate-distortion).
    block_scale: int = 2

    def __post_init__(self) -> None:
        self._apply_preset()
        _check_types(self)
        if self.quality_levels == 1 or self.quality_levels < 0:
            raise ConfigError(
                f"model.quality_levels must be 0 (fixed rate) or at least 2, got "
                f"{self.quality_levels}"
            )
        if self.block_scale not in (2, 4):
            raise ConfigError(f"model.block_scale must be 2 or 4, got {self.block_scale}")
        if self.lowest_quality_channels and not self.quality_levels:
            raise ConfigError("model.lowest_quality_channels is for variable-rate models: set "
                              "model.quality_levels too")
        if not 0 <= self.lowest_quality_channels <= (self.latent_channels or 0):
            raise ConfigError(
                f"model.lowest_quality_channels must be in [0, latent_channels], got "
                f"{self.lowest_quality_channels}"
            )
        if self.quality_levels and self.latent_gain:
            raise ConfigError("model.quality_levels has its own gains: set latent_gain: false")
        if self.width < 1 or self.n_blocks < 0 or self.latent_channels < 1:
            raise ConfigError(f"model sizes must be positive: {self}")
        if self.patch_size < 16 or self.patch_size % 8:
            raise ConfigError(
                f"model.patch_size must be a multiple of 8 and at least 16, got {self.patch_size}"
            )
        for name, choices in MODEL_CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"model.{name} must be one of {list(choices)}, got {getattr(self, name)!r}"
                )

    def _apply_preset(self) -> None:
        """Fill the sizes left None from the preset; refuse sizes that contradict it."""
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown model preset {self.preset!r}; known: {sorted(PRESETS)}")
        fixed = PRESETS[self.preset]
        sizes = {**SIZE_DEFAULTS, **PRESET_SUGGESTS.get(self.preset, {}), **fixed}
        for name in ("width", "n_blocks", "latent_channels", "patch_size"):
            value = getattr(self, name)
            if value is None and name not in sizes:
                raise ConfigError(f"model preset 'custom' needs model.{name}")
            if value is None:
                setattr(self, name, sizes[name])
            elif name in fixed and value != fixed[name]:
                raise ConfigError(
                    f"model.{name} = {value} contradicts preset {self.preset!r} ({name} "
                    f"{fixed[name]}); for other sizes use model.preset: custom"
                )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """The preset's network with `overrides` (latent channels, patch size, options)."""
        return cls.from_dict({**overrides, "preset": name})

    def latent_shape(self) -> tuple[int, int, int]:
        """(C, P/8, P/8): the shape of one patch's latent, and of the ADMM tensors and mask."""
        side = self.patch_size // 8
        return (self.latent_channels, side, side)

    def to_dict(self) -> dict[str, Any]:
        """The fields, less those added after the first shipped models that hold their
        default (the canonical form the fingerprint hashes)."""
        data = dataclasses.asdict(self)
        for f in dataclasses.fields(self)[_FIRST_SHIPPED_FIELDS:]:
            if data[f.name] == f.default:
                del data[f.name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        _reject_unknown(cls, data, "model.")
        return cls(**data)


# The distortion's weights, by their names in TrainConfig and losses.distortion.
DISTORTION_WEIGHTS = ("w_msssim", "w_ssim", "w_mse", "w_psnr")


@dataclass
class TrainConfig:
    """Everything a training run needs, for the local trainer and the Ray Train loop alike.

    Schedule (steps are optimizer steps, numbered from 0): `warmup_steps` of MSE-only
    training, then `admm_steps` with the full distortion plus the ADMM penalty, then the hard
    prune and `finetune_steps` of masked training without the penalty. See train_loop.Schedule.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    # Data: a folder of images (local trainer) or a directory of Parquet patch shards (Ray).
    images: str | None = None
    shards: str | None = None
    batch_size: int = 8
    # Optimizer (Adam) and learning rate: constant `lr`, then a cosine decay to
    # lr * lr_final_scale over the fine-tune phase.
    lr: float = 1e-3
    lr_final_scale: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm; 0 turns clipping off
    # Schedule.
    warmup_steps: int = 500
    admm_steps: int = 1500
    finetune_steps: int = 1000
    admm_every: int = 50
    # ADMM: rho multiplies the PER-SLOT mean squared residual (see admm.py).
    rho: float = 100.0
    pruning_ratio: float = 0.9
    # What the projection keeps: whole "channel"s (default) or any "slot"s (the method's
    # literal rule, which does not settle on a real network; see admm.py).
    prune_structure: str = "channel"
    # Distortion weights (the paper's), and the PSNR reference of the (psnr_ref - PSNR) term.
    w_msssim: float = 1000.0
    w_ssim: float = 1000.0
    w_mse: float = 1e4
    w_psnr: float = 1.0
    psnr_ref: float = 45.0
    # Weight of the estimated rate in bits per pixel (loss = distortion + rate_lambda * bpp);
    # 0 trains on the distortion alone (the paper's loss). Needs model.entropy_model.
    rate_lambda: float = 0.0
    # Variable-rate models (model.quality_levels > 0): the rate weight at quality 0 (the
    # lowest rate); quality q's weight is geometric between it and rate_lambda (at the top
    # quality), and every image of a batch is trained at a quality drawn uniformly.
    rate_lambda_max: float = 0.0
    # Variable-rate models: each image's loss D + lambda(q) R is scaled by
    # (rate_lambda / lambda(q)) ** quality_balance, so that the low qualities' larger
    # distortion does not steer the shared network alone (0: no scaling; 1: every quality's
    # distortion counts as at the top quality's rate weight). docs/variable-rate.md.
    quality_balance: float = 0.0
    # Final phase: Adam steps of a fit of the entropy model alone (the network frozen) to the
    # symbols of the run's last training batches, so that the estimate matches what the coder
    # writes (entropy_fit.fit_entropy_model, docs/rate.md); 0: no fit. Needs an entropy model.
    entropy_fit_steps: int = 0
    # Logging and checkpoints (every N steps; 0 turns periodic checkpoints off).
    log_every: int = 20
    checkpoint_every: int = 200
    eval_patches: int = 32  # fixed held patches for the before/after-prune measurement
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    loader_workers: int = 0  # DataLoader worker processes of the local trainer
    # The local trainer's data on the training device: the images decoded once and kept there,
    # each step's crops and flips cut on the device (a GPU run: no loader, no copies).
    data_on_device: bool = False
    # The network's arithmetic in training: "fp32"; "bf16" or "fp16" autocast (the loss and
    # the ADMM penalty stay float32; fp16 with a gradient scaler). docs/training.md, Speed.
    precision: str = "fp32"
    # torch.compile the network (Module.compile: the weights' names do not change). On 2 CPU
    # cores a step ran 1.2-1.4x as fast, after minutes of compiling (docs/training.md).
    compile: bool = False
    # The network's weights and each batch in channels_last memory format (CPU: 1.2-1.3x per
    # step at 128-176 px, docs/training.md).
    channels_last: bool = False
    # BatchNorm layers use and keep their running statistics while training (their scale and
    # shift still learn): a continuation at a smaller batch than the model was trained with
    # does not swing its statistics (docs/training.md, Continuing).
    freeze_batchnorm: bool = False
    # Ray Train.
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    run_name: str = "caeadmm"
    storage_path: str = "runs"
    # Injected failure (fault-tolerance tests): raise once this step is reached.
    fail_at_step: int | None = None
    # A checkpoint or exported model whose weights (and mask) start this run.
    init_from: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        _check_types(self)
        positive = ("batch_size", "admm_every", "log_every", "num_workers")
        non_negative = (
            "warmup_steps", "admm_steps", "finetune_steps", "checkpoint_every", "eval_patches",
            "threads", "loader_workers", "lr_final_scale", "weight_decay", "grad_clip", "rho",
            "w_msssim", "w_ssim", "w_mse", "w_psnr", "rate_lambda", "rate_lambda_max",
            "quality_balance", "entropy_fit_steps",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.pruning_ratio < 1.0:
            raise ConfigError(f"pruning_ratio must be in [0, 1), got {self.pruning_ratio}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}"
            )
        if self.prune_structure not in ("channel", "slot"):
            raise ConfigError(
                f"prune_structure must be 'channel' or 'slot', got {self.prune_structure!r}"
            )
        if self.rate_lambda > 0 and self.model.entropy_model == "none":
            raise ConfigError("rate_lambda > 0 needs a model.entropy_model (factorized, laplacian)")
        if self.rate_lambda == 0 and self.model.entropy_model != "none":
            # Its parameters would get no gradient (and DDP refuses unused parameters).
            raise ConfigError(
                f"model.entropy_model {self.model.entropy_model!r} is trained by the rate term: "
                "set rate_lambda > 0, or entropy_model: none for the paper's loss"
            )
        if self.model.quality_levels and not self.rate_lambda_max >= self.rate_lambda > 0:
            raise ConfigError(
                "a variable-rate model (model.quality_levels) needs rate_lambda_max >= "
                f"rate_lambda > 0, got {self.rate_lambda_max} and {self.rate_lambda}"
            )
        if self.model.quality_levels and self.entropy_fit_steps:
            raise ConfigError("entropy_fit_steps is for fixed-rate models: set it to 0")
        if self.entropy_fit_steps > 0 and self.model.entropy_model == "none":
            raise ConfigError("entropy_fit_steps > 0 needs a model.entropy_model")
        if self.entropy_fit_steps > 0 and self.model.rate_estimate != "fixed":
            # The final fit matches the density to the pooled histogram (the fixed estimate's
            # objective); the adaptive estimate centres and scales it per image, so that fit
            # would move the density away from what the rate term trained it for.
            raise ConfigError(
                "entropy_fit_steps fits the fixed estimate; with model.rate_estimate: "
                f"{self.model.rate_estimate} set entropy_fit_steps: 0"
            )
        if self.total_steps() <= 0:
            raise ConfigError("warmup_steps + admm_steps + finetune_steps must be positive")
        if self.pruning_ratio > 0 and self.finetune_steps > 0 and (
            self.warmup_steps + self.admm_steps == 0
        ):
            raise ConfigError("the hard prune needs at least one warm-up or ADMM step before it")

    def total_steps(self) -> int:
        return self.warmup_steps + self.admm_steps + self.finetune_steps

    def lambda_at(self, quality: float | torch.Tensor) -> float | torch.Tensor:
        """The rate weight a variable-rate model trains quality q at (rate_weight)."""
        return rate_weight(quality, self.model.quality_levels, self.rate_lambda,
                           self.rate_lambda_max)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        _reject_unknown(cls, data, "")
        model = data.pop("model", {})
        if not isinstance(model, (dict, ModelConfig)):
            raise ConfigError(f"model must be a mapping, got {model!r}")
        if isinstance(model, dict):
            model = dict(model)
            model = ModelConfig.from_preset(model.pop("preset", "small"), **model)
        return cls(model=model, **data)


def rate_weight(
    quality: float | torch.Tensor, levels: int, rate_lambda: float, rate_lambda_max: float
) -> float | torch.Tensor:
    """A variable-rate model's rate weight at quality q: rate_lambda_max at q = 0 (the lowest
    rate), rate_lambda at the top quality levels - 1, geometric between."""
    return rate_lambda_max * (rate_lambda / rate_lambda_max) ** (quality / (levels - 1))


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (None: all defaults) and apply `key=value` / `a.b=value` overrides.

    The model section names a preset, which fixes the network's width and depth (preset
    `custom` takes them from the config), and the per-model sizes and options.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
        data = loaded or {}
    data = {**data, "model": dict(data.get("model") or {})}
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse the value: {exc}") from exc
        parts = key.strip().split(".")
        if len(parts) == 1:
            data[parts[0]] = value
        elif len(parts) == 2 and parts[0] == "model":
            data["model"][parts[1]] = value
        else:
            raise ConfigError(f"override {item!r}: keys are `name` or `model.name`")
    return TrainConfig.from_dict(data)


def _reject_unknown(cls: type, data: dict[str, Any], prefix: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping for {cls.__name__}, got {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config keys: {[prefix + k for k in unknown]}")


def _check_types(obj: Any) -> None:
    """Check each field against its annotation; ints and numeric strings become floats where
    a float is expected."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        allowed = typing.get_args(hints[f.name]) or (hints[f.name],)
        if value is None and type(None) in allowed:
            continue
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            setattr(obj, f.name, float(value))
            continue
        if float in allowed and isinstance(value, str):
            # YAML 1.1 reads "3e-4" (no dot) as a string; accept it as the float it means.
            try:
                setattr(obj, f.name, float(value))
                continue
            except ValueError:
                pass
        # bool is an int subclass: refuse it where an int is expected, and vice versa.
        ok = any(
            isinstance(value, t) and (t is bool) == isinstance(value, bool)
            for t in allowed
            if isinstance(t, type)
        )
        if not ok:
            names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
            raise ConfigError(f"{f.name} must be {names}, got {value!r}")
