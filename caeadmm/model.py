"""The compressive autoencoder of CAE-ADMM (DESIGN.md section 2): network, quantizer, mask.

The encoder maps an RGB image in [0, 1] of size H x W (multiples of 8, at least 16) to a
latent of C x H/8 x W/8; the quantizer rounds it to integers in [-LATENT_MAX, LATENT_MAX];
the decoder maps the integers back to an image in [0, 1]. After the hard prune a frozen
boolean mask over one P x P tile's latent zeroes the pruned slots in both directions, so a
masked model only takes P x P inputs (the codec tiles whole images itself).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator

import torch
from torch import nn

from caeadmm.config import ModelConfig

# Symbols are clamped to [-LATENT_MAX, LATENT_MAX]: they fit int8, so the entropy coder's
# alphabet stays small, and trained latents sit far inside it (BatchNorm keeps them O(1-10)).
LATENT_MAX = 127


class InputShapeError(ValueError):
    """An input or latent has a shape the model cannot take (see the message)."""


def conv_same(cin: int, cout: int) -> nn.Sequential:
    """Reflection pad 1, 3x3 conv (stride 1, no bias), BatchNorm."""
    return nn.Sequential(
        nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3, bias=False), nn.BatchNorm2d(cout)
    )


def conv_down(cin: int, cout: int) -> nn.Sequential:
    """Reflection pad 2, 5x5 conv with stride 2 (halves H and W), BatchNorm."""
    return nn.Sequential(
        nn.ReflectionPad2d(2), nn.Conv2d(cin, cout, 5, stride=2, bias=False), nn.BatchNorm2d(cout)
    )


def subpixel(cin: int, cout: int, r: int) -> nn.Sequential:
    """1x1 conv to r^2 * cout channels, BatchNorm, PixelShuffle(r) (multiplies H, W by r)."""
    channels = r * r * cout
    return nn.Sequential(
        nn.Conv2d(cin, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.PixelShuffle(r)
    )


class ResidualBlock(nn.Module):
    """Bottleneck block: 1x1, 3x3, 1x1 convs at width W with BatchNorm and PReLU between,
    PReLU after the skip sum."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3, bias=False),
            nn.BatchNorm2d(width), nn.PReLU(),
            nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width),
        )
        self.out = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.body(x))


def quantize(y: torch.Tensor, stochastic: bool) -> torch.Tensor:
    """Clamp to the symbol range and round to integers (still a float tensor).

    Stochastic: floor(y) + Bernoulli(frac(y)), unbiased, with the gradient passed straight
    through (identity inside the clamp range). Deterministic: round half to even, no gradient
    needed (inference).
    """
    y = y.clamp(-LATENT_MAX, LATENT_MAX)
    if not stochastic:
        return torch.round(y)
    floor = torch.floor(y)
    rounded = floor + (torch.rand_like(y) < (y - floor)).to(y.dtype)
    return y + (rounded - y).detach()


class CAE(nn.Module):
    """Encoder, quantizer and decoder; `forward` is the training path (returns the latent for
    the ADMM penalty), `encode`/`decode` the inference path the codec calls."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        w, c = config.width, config.latent_channels
        act = nn.PReLU
        self.encoder = nn.Sequential(
            conv_same(3, 32), act(),
            conv_down(32, 64), act(),
            conv_same(64, w), act(),
            *[ResidualBlock(w) for _ in range(config.n_blocks)],
            conv_down(w, 64),
            conv_down(64, 32),
            conv_same(32, c),
        )
        self.decoder = nn.Sequential(
            subpixel(c, 32, 1),
            subpixel(32, 64, 2),
            subpixel(64, w, 2), act(),
            *[ResidualBlock(w) for _ in range(config.n_blocks)],
            subpixel(w, 64, 1), act(),
            subpixel(64, 32, 2), act(),
            subpixel(32, 3, 1),
        )
        self.register_buffer("mask", None)

    # -- mask -------------------------------------------------------------------------------

    def set_mask(self, mask: torch.Tensor | None) -> None:
        """Freeze a boolean mask of shape (C, P/8, P/8) (True = slot kept), or remove it.

        Stored as a buffer, so it is part of state_dict and of the fingerprint.
        """
        if mask is None:
            self.mask = None
            return
        expected = self.config.latent_shape()
        if tuple(mask.shape) != expected or mask.dtype != torch.bool:
            raise InputShapeError(
                f"mask must be a bool tensor of shape {expected}, got {mask.dtype} "
                f"{tuple(mask.shape)}"
            )
        device = next(self.parameters()).device
        self.mask = mask.detach().to(device=device).clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """A "mask" entry in a state dict (or its absence) sets (or clears) the mask first,
        so that loading works whether or not this module had a mask before."""
        self.set_mask(state_dict.get(prefix + "mask"))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- training path -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction in [0, 1], quantized and masked latent).

        Training mode rounds stochastically with a straight-through gradient; eval mode
        rounds deterministically, exactly as `encode` does.
        """
        self._check_image(x)
        latent = quantize(self.encoder(x), stochastic=self.training)
        latent = self._apply_mask(latent)
        return self._decode_float(latent), latent

    # -- inference path ------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> int32 symbols (B, C, H/8, W/8), masked.

        Always inference behaviour (BatchNorm running statistics, deterministic rounding),
        whatever mode the module is in.
        """
        self._check_image(x)
        with eval_mode(self):
            latent = quantize(self.encoder(x), stochastic=False)
        return self._apply_mask(latent).to(torch.int32)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Integer symbols (B, C, h, w) -> images (B, 3, 8h, 8w) in [0, 1] (inference mode)."""
        if latent.dim() != 4 or latent.shape[1] != self.config.latent_channels:
            raise InputShapeError(
                f"latent must be (B, {self.config.latent_channels}, h, w), "
                f"got {tuple(latent.shape)}"
            )
        if min(latent.shape[-2:]) < 2:
            raise InputShapeError("latent must be at least 2 x 2 (images of at least 16 px)")
        dtype = next(self.parameters()).dtype
        latent = latent.to(dtype).clamp(-LATENT_MAX, LATENT_MAX)
        with eval_mode(self):
            return self._decode_float(self._apply_mask(latent))

    def fingerprint(self) -> bytes:
        """sha256 over the canonical config JSON and every state_dict tensor (mask included).

        Tensors are hashed in sorted key order as name, dtype, shape and raw little-endian
        float32/int bytes, so the same weights give the same fingerprint on any device.
        """
        h = hashlib.sha256()
        h.update(json.dumps(self.config.to_dict(), sort_keys=True, separators=(",", ":")).encode())
        state = self.state_dict()
        for name in sorted(state):
            tensor = state[name].detach().to("cpu").contiguous()
            h.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.digest()

    # -- helpers -----------------------------------------------------------------------------

    def _decode_float(self, latent: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.decoder(latent)) + 1) / 2

    def _apply_mask(self, latent: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return latent
        if tuple(latent.shape[1:]) != tuple(self.mask.shape):
            p = self.config.patch_size
            raise InputShapeError(
                f"this model has a pruning mask for {p} x {p} tiles (latent "
                f"{tuple(self.mask.shape)}), got latent {tuple(latent.shape[1:])}; "
                f"encode {p} x {p} tiles (the codec tiles whole images)"
            )
        return latent * self.mask

    def _check_image(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputShapeError(f"images must be (B, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % 8 or w % 8 or min(h, w) < 16:
            raise InputShapeError(f"H and W must be multiples of 8 and at least 16, got {h} x {w}")
        p = self.config.patch_size
        if self.mask is not None and (h, w) != (p, p):
            raise InputShapeError(
                f"this model has a pruning mask for {p} x {p} tiles and cannot take {h} x {w} "
                f"images; encode {p} x {p} tiles (the codec tiles whole images)"
            )


def unwrap(model: nn.Module) -> CAE:
    """The CAE inside a DistributedDataParallel (or any `.module`) wrapper, or `model`."""
    while not isinstance(model, CAE) and hasattr(model, "module"):
        model = model.module
    if not isinstance(model, CAE):
        raise TypeError(f"expected a CAE or a wrapper of one, got {type(model).__name__}")
    return model


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put `module` in eval mode for the block; its previous mode comes back after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
