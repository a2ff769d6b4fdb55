"""Checkpoints: everything to resume a run exactly, and the inference-only export.

A training checkpoint (`save_checkpoint`) is one torch file holding the TrainConfig, the
model config and float32 weights with the mask, the ADMM state (Z, U, support, pending
sums), the optimizer state, the next step to run and the torch, numpy and Python RNG
states. It is written to a temporary file and renamed, so a crash never leaves a torn file.

An exported model (`export_model`) keeps only the model config, weights and mask: the file
the codec and the model zoo ship (small preset about 2.3 MB). `load_model` reads either
kind and returns a CAE in eval mode; neither Ray nor the optimizer is needed.

A run with `init_from` starts from another model's weights (`init_weights`: a file or a
registered model's name, of the same network shape; `load_into`: every tensor that fits).

Files are read with `torch.load(weights_only=True)`: they hold only tensors and plain
Python values, so loading a file from elsewhere cannot run code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from caeadmm.admm import ADMM
from caeadmm.config import ConfigError, ModelConfig, TrainConfig
from caeadmm.files import write_atomic
from caeadmm.model import CAE, channel_support, unwrap

CHECKPOINT_FORMAT = "caeadmm-checkpoint"
MODEL_FORMAT = "caeadmm-model"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, of another format or inconsistent."""


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    admm: ADMM | None,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    config: TrainConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a full training checkpoint atomically; `step` is the next step to run."""
    net = unwrap(model)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "model_config": net.config.to_dict(),
        "model": _float32_state(net),
        "admm": admm.state_dict() if admm is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "rng": _rng_state(),
        "extra": extra or {},
    }
    return write_atomic(path, lambda fh: torch.save(payload, fh), overwrite=True)


def export_model(
    checkpoint_path: str | os.PathLike, out_path: str | os.PathLike
) -> Path:
    """Write the inference-only file (model config, weights, mask) of a checkpoint."""
    ckpt = load_checkpoint(checkpoint_path)
    return _write_model(out_path, ckpt["model_config"], ckpt["model"])


def save_model(net: CAE, out_path: str | os.PathLike) -> Path:
    """Write the inference-only file of a network built in memory (e.g. a run's init_from)."""
    return _write_model(out_path, net.config.to_dict(), _float32_state(net))


def _write_model(out_path: str | os.PathLike, config: dict, state: dict) -> Path:
    payload = {"format": MODEL_FORMAT, "version": CHECKPOINT_VERSION, "model_config": config,
               "model": state}  # fmt: skip
    return write_atomic(out_path, lambda fh: torch.save(payload, fh), overwrite=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint or exported model into a dict (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        # torch's own message runs to several lines and advises weights_only=False, which
        # would let a foreign file run code: say what the file is not, in one line.
        raise CheckpointError(f"{path} is not a caeadmm model or checkpoint") from exc
    if not isinstance(data, dict) or data.get("format") not in (CHECKPOINT_FORMAT, MODEL_FORMAT):
        raise CheckpointError(f"{path} is not a caeadmm checkpoint or model file")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has format version {data.get('version')}; this code reads {CHECKPOINT_VERSION}"
        )
    return data


def newest_complete_checkpoint(
    run_dir: str | os.PathLike, name: str = "checkpoint.pt"
) -> dict | None:
    """The loaded checkpoint of the highest step among `run_dir/*/name`, skipping files that
    do not load (a run stopped while writing one); None if there is none.

    A resumed run looks here as well as in what its scheduler recorded, which can lag behind
    the checkpoints on disk when a job is stopped between writing one and reporting it.
    """
    found = []
    for path in Path(run_dir).glob(f"*/{name}"):
        try:
            found.append(load_checkpoint(path))
        except CheckpointError:
            continue
    return max(found, key=lambda c: c["step"], default=None)


def model_from_checkpoint(ckpt: dict) -> CAE:
    """A CAE built from a loaded checkpoint's config, with its weights and mask, in eval mode."""
    try:
        config = ModelConfig.from_dict(ckpt["model_config"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"the checkpoint's model config is invalid: {exc}") from exc
    model = CAE(config)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's weights do not fit its config: {exc}") from exc
    return model.eval()


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> CAE:
    """The model of a checkpoint or exported file, in eval mode with its mask set."""
    return model_from_checkpoint(load_checkpoint(path, map_location)).to(map_location)


def restore_training_state(
    ckpt: dict,
    *,
    model: nn.Module,
    admm: ADMM | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> int:
    """Load weights, mask, ADMM, optimizer and RNG states of a checkpoint; returns its step.

    `model` may be wrapped (DDP). The model's config must equal the checkpoint's.
    """
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError("an exported model file has no training state to resume from")
    net = unwrap(model)
    if net.config.to_dict() != ckpt["model_config"]:
        raise CheckpointError(
            f"model config {net.config.to_dict()} differs from the checkpoint's "
            f"{ckpt['model_config']}"
        )
    device = next(net.parameters()).device
    net.load_state_dict({k: v.to(device) for k, v in ckpt["model"].items()})
    if admm is not None:
        if ckpt["admm"] is None:
            raise CheckpointError("the checkpoint holds no ADMM state")
        admm.load_state_dict(ckpt["admm"])
    if optimizer is not None and ckpt["optimizer"] is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if restore_rng:
        _set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


# The model-config fields that set the network's tensor shapes: init_from must match them.
# patch_size only sets the mask's shape: a channel mask (the same in every position) is
# re-tiled to the run's patch size, so training may continue on larger crops.
SHAPE_FIELDS = ("preset", "width", "n_blocks", "latent_channels", "patch_size", "norm",
                "block_scale")


def init_weights(cfg: TrainConfig, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The weights (and mask) of `cfg.init_from`: a checkpoint, an exported model, or the name
    of a registered model (so training continues from the shipped weights).

    Raises ConfigError when its network's shape (SHAPE_FIELDS) is not this run's. Its other
    model fields (quantizer and rate options) may differ: `load_into` then keeps what fits.
    """
    from caeadmm import zoo  # the registry reads its models with this module

    path = Path(cfg.init_from)
    if not path.exists():
        registered = {m.name: m for m in zoo.list_models()}
        if cfg.init_from not in registered:
            raise ConfigError(
                f"init_from={cfg.init_from} is neither a file nor a registered model "
                f"({', '.join(registered) or 'none registered'})"
            )
        path = registered[cfg.init_from].file
    init = load_checkpoint(path, map_location=device)
    theirs, ours = ModelConfig.from_dict(init["model_config"]), cfg.model
    differ = [f for f in SHAPE_FIELDS if getattr(theirs, f) != getattr(ours, f)]
    mask = init["model"].get("mask")
    if differ == ["patch_size"] and (mask is None or channel_support(mask) is not None):
        differ = []
    if differ:
        raise ConfigError(
            f"init_from={cfg.init_from} holds a model of config {init['model_config']}, but "
            f"this run trains {cfg.model.to_dict()} ({', '.join(differ)} differ)"
        )
    return init["model"]


def load_into(net: CAE, weights: dict[str, torch.Tensor]) -> list[str]:
    """Load every tensor of `weights` whose name and shape fit `net` (the mask included);
    returns the names of `net`'s tensors that start fresh (e.g. a new entropy model)."""
    own = net.state_dict()
    weights = net.fold_latent_batchnorm(weights)
    fitting = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if "mask" in weights:
        fitting["mask"] = mask = weights["mask"]
        side = net.config.latent_shape()[1]
        if mask.shape[1] != side and (channels := channel_support(mask)) is not None:
            fitting["mask"] = channels[:, None, None].expand(-1, side, side).clone()
    net.load_state_dict(fitting, strict=False)
    return sorted(k for k in own if k not in fitting)


def _float32_state(net: CAE) -> dict[str, torch.Tensor]:
    return {
        k: (v.float() if v.is_floating_point() else v).detach().to("cpu").clone()
        for k, v in net.state_dict().items()
    }


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
