"""The compressive autoencoder of CAE-ADMM (docs/method.md): network, quantizer, mask, and
the optional entropy model of the rate term (docs/rate.md).

The encoder maps an RGB image in [0, 1] of size H x W (multiples of LATENT_STRIDE = 8, at
least MIN_SIDE = 16) to a latent of C x H/8 x W/8; the quantizer rounds it to integers in
[-LATENT_MAX, LATENT_MAX]; the decoder maps the integers back to an image in [0, 1]. After
the hard prune a frozen boolean mask over one P x P tile's latent zeroes the pruned slots in
both directions, so a slot-masked model only takes P x P inputs (the codec tiles whole images
for it, caeadmm.legacy).

The model also exposes what the codec needs of it: its geometry (`stride`, `min_side`,
`padded_side`, and the receptive reach of each half, derived from the layers) and, in
CompressAI's shape, `compress` and `decompress`: a whole uint8 image to the symbols of its
kept latent channels and back (run in windows of bounded memory by caeadmm.windows). The
.cae container around the symbols is caeadmm.bitstream's; caeadmm.codec joins the two.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Iterator
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from caeadmm import entropy_model
from caeadmm.config import ConfigError, ModelConfig
from caeadmm.layers import GDN

if TYPE_CHECKING:
    from caeadmm.refine import Refinement

# Symbols are clamped to [-LATENT_MAX, LATENT_MAX]: they fit int8, so the entropy coder's
# alphabet stays small, and trained latents sit far inside it (O(1-10) with BatchNorm before
# the rounding; the rate term keeps them small without it).
LATENT_MAX = 127
BN_EPS = 1e-5  # nn.BatchNorm2d's default eps, used when folding a BatchNorm into a convolution
# A variable-rate model's gains at the lowest and the top quality level, before training.
GAIN_RANGE = (0.08, 1.5)
LATENT_STRIDE = 8  # image pixels per latent position, each way
MIN_SIDE = 16  # the network's smallest input side


def padded_side(n: int) -> int:
    """The side the network sees for an image side of n pixels (a whole image): the next
    multiple of LATENT_STRIDE, at least MIN_SIDE (the image is replicate-padded at the
    bottom/right)."""
    return max(MIN_SIDE, -(-n // LATENT_STRIDE) * LATENT_STRIDE)



def channel_support(mask: torch.Tensor) -> torch.Tensor | None:
    """The (C,) bool channel support of a (C, S, S) mask that keeps or drops whole channels,
    or None for a mask that differs between positions (a slot mask)."""
    flat = mask.detach().reshape(mask.shape[0], -1).bool()
    return flat[:, 0] if bool((flat == flat[:, :1]).all()) else None

# A variable-rate model's quality: one number, one per image of a batch (B,), or None for a
# fixed-rate model.
Quality = float | torch.Tensor | None


class InputShapeError(ValueError):
    """An input or latent has a shape the model cannot take (see the message)."""


def normalization(channels: int, norm: str) -> list[nn.Module]:
    """The layer after a convolution: "batchnorm", "gdn", "igdn" or "none" (nothing)."""
    if norm == "batchnorm":
        return [nn.BatchNorm2d(channels)]
    if norm in ("gdn", "igdn"):
        return [GDN(channels, inverse=norm == "igdn")]
    return []


def conv_same(cin: int, cout: int, norm: str = "batchnorm") -> nn.Sequential:
    """Reflection pad 1, 3x3 conv (stride 1; biased unless BatchNorm follows), the norm."""
    return nn.Sequential(
        nn.ReflectionPad2d(1), nn.Conv2d(cin, cout, 3, bias=norm != "batchnorm"),
        *normalization(cout, norm),
    )


def conv_down(cin: int, cout: int, norm: str = "batchnorm") -> nn.Sequential:
    """Reflection pad 2, 5x5 conv with stride 2 (halves H and W), the norm."""
    return nn.Sequential(
        nn.ReflectionPad2d(2), nn.Conv2d(cin, cout, 5, stride=2, bias=norm != "batchnorm"),
        *normalization(cout, norm),
    )


def subpixel(cin: int, cout: int, r: int, norm: str = "batchnorm") -> nn.Sequential:
    """1x1 conv to r^2 * cout channels and PixelShuffle(r) (multiplies H, W by r); BatchNorm
    goes before the shuffle (over the r^2 * cout channels), any other norm after it."""
    channels = r * r * cout
    conv = nn.Conv2d(cin, channels, 1, bias=norm != "batchnorm")
    if norm == "batchnorm":
        return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.PixelShuffle(r))
    return nn.Sequential(conv, nn.PixelShuffle(r), *normalization(cout, norm))


class ResidualBlock(nn.Module):
    """Bottleneck block: 1x1, 3x3, 1x1 convs at width W with BatchNorm and PReLU between,
    PReLU after the skip sum. With norm "gdn"/"igdn" that norm replaces each BatchNorm +
    PReLU pair, and the last conv is biased instead of normalised."""

    def __init__(self, width: int, norm: str = "batchnorm"):
        super().__init__()
        if norm == "batchnorm":
            self.body = nn.Sequential(
                nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(),
                nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3, bias=False),
                nn.BatchNorm2d(width), nn.PReLU(),
                nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width),
            )
        else:
            self.body = nn.Sequential(
                nn.Conv2d(width, width, 1), *normalization(width, norm),
                nn.ReflectionPad2d(1), nn.Conv2d(width, width, 3), *normalization(width, norm),
                nn.Conv2d(width, width, 1),
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


def round_straight_through(y: torch.Tensor) -> torch.Tensor:
    """Clamp and round half to even, with the gradient passed straight through."""
    y = y.clamp(-LATENT_MAX, LATENT_MAX)
    return y + (torch.round(y) - y).detach()


def add_uniform_noise(y: torch.Tensor) -> torch.Tensor:
    """Clamp and add noise uniform on [-1/2, 1/2): rounding's training proxy for the rate."""
    return y.clamp(-LATENT_MAX, LATENT_MAX) + torch.rand_like(y) - 0.5


class CAE(nn.Module):
    """Encoder, quantizer and decoder; `forward` is the training path (returns the latent for
    the ADMM penalty), `encode`/`decode` the inference path the codec calls."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        w, c = config.width, config.latent_channels
        if config.norm == "batchnorm":
            enc = dec = "batchnorm"
            act: list[type[nn.Module]] = [nn.PReLU]
        else:  # GDN/IGDN after every conv but the last of each side, and no PReLU
            enc, dec, act = "gdn", "igdn", []
        last = "none" if config.norm == "gdn" else "batchnorm"
        # block_scale 2 (the paper's): the residual blocks at half resolution; 4: at a quarter,
        # one stride-2 convolution (and one pixel shuffle) moved in front of them.
        half = config.block_scale == 2
        self.encoder = nn.Sequential(
            conv_same(3, 32, enc), *[a() for a in act],
            conv_down(32, 64, enc), *[a() for a in act],
            (conv_same if half else conv_down)(64, w, enc), *[a() for a in act],
            *[ResidualBlock(w, enc) for _ in range(config.n_blocks)],
            *([conv_down(w, 64, enc), conv_down(64, 32, enc)] if half
              else [conv_down(w, 32, enc)]),
            conv_same(32, c, config.latent_norm),
        )
        self.decoder = nn.Sequential(
            subpixel(c, 32, 1, dec),
            *([subpixel(32, 64, 2, dec), subpixel(64, w, 2, dec)] if half
              else [subpixel(32, w, 2, dec)]), *[a() for a in act],
            *[ResidualBlock(w, dec) for _ in range(config.n_blocks)],
            subpixel(w, 64, 1 if half else 2, dec), *[a() for a in act],
            subpixel(64, 32, 2, dec), *[a() for a in act],
            subpixel(32, 3, 1, last),
        )
        if config.latent_gain:
            # log of the per-channel gain, so that the gain stays positive
            self.log_gain = nn.Parameter(torch.zeros(c, 1, 1))
        if config.quality_levels:
            # Gain units (Cui et al. 2021): per quality level, a log gain per channel before
            # the rounding and a log inverse gain after it, started from gains spread from
            # GAIN_RANGE[0] (quality 0, the lowest rate) to GAIN_RANGE[1] (the top quality).
            levels = torch.linspace(*map(math.log, GAIN_RANGE), config.quality_levels)
            if config.lowest_quality_channels:
                # Nested supports set the rate by the channel count first: every level starts
                # at the fixed-rate model's gain of 1, as each member of a family does.
                levels = torch.zeros_like(levels)
            start = levels.view(-1, 1, 1, 1).expand(-1, c, 1, 1).clone()
            self.level_log_gain = nn.Parameter(start)
            self.level_log_inverse_gain = nn.Parameter(-start)
        if config.lowest_quality_channels:
            # Each channel's place in the nested supports: rank 0 is kept at every quality.
            # Set from the data when training starts (caeadmm/channel_rank.py).
            self.register_buffer("channel_rank", torch.arange(c))
        if config.entropy_model != "none":
            self.entropy = entropy_model.build(config.entropy_model, c)
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

    def fold_latent_batchnorm(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weights of a model with `latent_norm: batchnorm`, made to fit this one with
        `latent_norm: none`: the last encoder BatchNorm (eval statistics) folded into the
        biased convolution that replaces it, so the encoder computes the same latent.

        Lets a rate-aware model start from a shipped model's exact function. Returns
        `weights` unchanged when there is nothing to fold.
        """
        last = f"encoder.{len(self.encoder) - 1}"
        bn = f"{last}.2"
        if self.config.latent_norm != "none" or f"{bn}.running_var" not in weights:
            return weights
        scale = weights[f"{bn}.weight"] / torch.sqrt(weights[f"{bn}.running_var"] + BN_EPS)
        folded = {k: v for k, v in weights.items() if not k.startswith(f"{bn}.")}
        folded[f"{last}.1.weight"] = weights[f"{last}.1.weight"] * scale.view(-1, 1, 1, 1)
        folded[f"{last}.1.bias"] = weights[f"{bn}.bias"] - weights[f"{bn}.running_mean"] * scale
        return folded

    # -- training path -------------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, rate: bool = False, quality: Quality = None
    ) -> tuple[torch.Tensor, ...]:
        """(reconstruction in [0, 1], quantized and masked latent), and with `rate` also the
        estimated bits of each image's kept symbols (B,) (needs an entropy model).

        Training mode rounds as `config.train_rounding` says (the returned latent is always
        the rounded one the decoder saw); eval mode rounds deterministically, exactly as
        `encode` does, and the bits are those of the symbols `encode` gives.
        """
        self._check_image(x)
        if rate and self.config.entropy_model == "none":
            raise ConfigError("rate=True needs a model with an entropy_model")
        # Float32 from here to the rounding and in the entropy model, also under autocast
        # (TrainConfig.precision): bfloat16's 8-bit mantissa cannot hold a latent's fraction.
        y = self.analysis(x, quality).float()
        if not self.training:
            latent = quantize(y, stochastic=False)
            rate_input = latent
        elif self.config.train_rounding == "mixed":
            latent = round_straight_through(y)
            rate_input = add_uniform_noise(y) if rate else None
        else:
            latent = rate_input = quantize(y, stochastic=True)
        latent = self._apply_mask(latent)
        x_hat = self.synthesis(latent, quality)
        if not rate:
            return x_hat, latent
        support = self.quality_support(quality)
        return x_hat, latent, self.rate_bits(rate_input, self.mask, support)

    def rate_bits(
        self, latent: torch.Tensor, mask: torch.Tensor | None, counted: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The rate term's estimate of each image's bits (B,) for a float latent (B, C, h, w),
        counting the slots where `mask` (broadcastable to (C, h, w); None: all) is True and,
        with `counted` ((B or 1, C, 1, 1), a nested model's `quality_support`), only the
        channels the stream holds, as `config.rate_estimate` says. Float32 also under
        autocast."""
        with torch.autocast(latent.device.type, enabled=False):
            if self.config.rate_estimate == "fixed":
                bits_mask = mask if counted is None else (
                    counted if mask is None else counted * mask.to(counted.dtype))
                return self.entropy.bits(latent, bits_mask)
            return self.entropy.adaptive_bits(
                latent, LATENT_MAX, mask,
                zero_context=self.config.rate_estimate == "adaptive-runs", counted=counted,
            )

    # -- inference path ------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor, quality: Quality = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> int32 symbols (B, C, H/8, W/8), masked.

        Always inference behaviour (BatchNorm running statistics, deterministic rounding),
        whatever mode the module is in.
        """
        self._check_image(x)
        with eval_mode(self):
            latent = quantize(self.analysis(x, quality), stochastic=False)
        return self._apply_mask(latent).to(torch.int32)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, quality: Quality = None) -> torch.Tensor:
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
            return self.synthesis(self._apply_mask(latent), quality)

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

    # -- the two halves, unrounded and unmasked (the codec's windows and latent refinement) ---

    def analysis(self, x: torch.Tensor, quality: Quality = None) -> torch.Tensor:
        """The encoder's output scaled by the gain (at `quality`, for a variable-rate model):
        the values that get rounded."""
        y = self.encoder(x)
        gain = self.gain(quality)
        return y if gain is None else y * gain

    def gain(self, quality: Quality = None) -> torch.Tensor | None:
        """The per-channel factor `analysis` applies to the encoder's output: (B or 1, C, 1, 1)
        at `quality` for a variable-rate model, (C, 1, 1) with `latent_gain`, else None."""
        if self.config.quality_levels:
            gain = self._level_gain(self.level_log_gain, quality).exp()
            support = self.quality_support(quality)
            return gain if support is None else gain * support
        self._no_quality(quality)
        return self.log_gain.exp() if self.config.latent_gain else None

    def synthesis(self, latent: torch.Tensor, quality: Quality = None) -> torch.Tensor:
        """A float latent (B, C, h, w) -> images in [0, 1], the gain undone first."""
        return (torch.tanh(self.decoder(self._ungain(latent, quality))) + 1) / 2

    def _ungain(self, latent: torch.Tensor, quality: Quality) -> torch.Tensor:
        """The latent with the gain undone: the decoder's input."""
        if self.config.quality_levels:
            return latent * self._level_gain(self.level_log_inverse_gain, quality).exp()
        self._no_quality(quality)
        return latent * torch.exp(-self.log_gain) if self.config.latent_gain else latent

    def _level_gain(self, levels: torch.Tensor, quality: Quality) -> torch.Tensor:
        """The log gains (B or 1, C, 1, 1) at `quality` (a number, or one per image (B,)):
        linear between the two levels around it, clamped to [0, quality_levels - 1]."""
        if quality is None:
            raise ValueError(
                f"a variable-rate model needs a quality in [0, {self.config.quality_levels - 1}]"
            )
        q = torch.as_tensor(quality, dtype=levels.dtype, device=levels.device).reshape(-1)
        q = q.clamp(0, self.config.quality_levels - 1)
        low = q.floor().clamp(max=self.config.quality_levels - 2)
        t = (q - low).view(-1, 1, 1, 1)
        low = low.long()
        return levels[low] * (1 - t) + levels[low + 1] * t

    def quality_support(self, quality: Quality) -> torch.Tensor | None:
        """(B or 1, C, 1, 1), 1 for the channels a nested model uses at `quality` and 0 for the
        rest (their symbols are all zero), or None for a model without nested supports.

        The count is lowest_quality_channels at quality 0 and every kept channel at the top,
        geometric between, rounded; the channels are the kept ones of lowest `channel_rank`."""
        low = self.config.lowest_quality_channels
        if not low:
            return None
        rank = self.channel_rank
        by_rank = torch.argsort(rank)
        if self.mask is not None:  # the kept channels only (ADMM may prune during a run)
            by_rank = by_rank[self.mask.flatten(1).any(1)[by_rank]]
        place = torch.full_like(rank, len(rank))  # each kept channel's place in the order
        place[by_rank] = torch.arange(len(by_rank), device=rank.device)
        top = self.config.quality_levels - 1
        q = torch.as_tensor(quality, dtype=torch.float32, device=rank.device)
        q = q.reshape(-1).clamp(0, top)
        count = torch.floor(low * (max(len(by_rank), low) / low) ** (q / top) + 0.5)
        support = place.view(1, -1) < count.view(-1, 1)
        return support.to(self.level_log_gain.dtype).view(len(q), -1, 1, 1)

    def _no_quality(self, quality: Quality) -> None:
        if quality is not None:
            raise ValueError("a quality is for variable-rate models; this model has one rate")

    @torch.no_grad()
    def synthesis_uint8(self, latent: torch.Tensor, quality: Quality = None) -> np.ndarray:
        """The 8-bit image (B, H, W, 3) of a float latent: `synthesis` rounded to 255 levels,
        with the same bits on every thread count (the codec's decoder; docs/bitstream.md).

        Every layer but the last gives the same float32 bits on any thread count (oneDNN);
        the last, a 1x1 convolution down to 3 channels, does not (its reduction order follows
        the threads), and the rounding to 8 bits turns its last-bit differences into pixels
        one level off. So it runs here in float64 as a sum over input channels in a fixed
        order (elementwise multiplies and adds, exact per element), and tanh and the rounding
        run in numpy on one thread.
        """
        with eval_mode(self):
            features = self.decoder[:-1](self._ungain(latent, quality))
        weight, bias = _folded_output_layer(self.decoder[-1])
        if features.device.type == "cpu" and features.dtype == torch.float32:
            # The same sum in one pass over the float32 features (caeadmm/output_layer.py)
            from caeadmm.output_layer import output_layer_sum

            out = output_layer_sum(features.detach().contiguous().numpy(), weight.numpy(),
                                   bias.numpy())
        else:
            features = features.double()
            out = bias.to(features.device).view(1, -1, 1, 1).expand(
                features.shape[0], -1, *features.shape[2:]
            ).clone()
            for c in range(features.shape[1]):
                out += features[:, c : c + 1] * weight[:, c].to(features.device).view(
                    1, -1, 1, 1)
            out = out.cpu().numpy()
        y = out.transpose(0, 2, 3, 1)
        return np.rint((np.tanh(y) + 1) * 127.5).clip(0, 255).astype(np.uint8)

    # -- geometry: what the codec's windows and the .cae format rely on ---------------------

    stride = LATENT_STRIDE  # image pixels per latent position, each way
    min_side = MIN_SIDE  # the smallest input side
    padded_side = staticmethod(padded_side)

    def encoder_reach(self) -> int:
        """Pixels each way an encoder output reads: latent position j (per axis) depends on
        input pixels 8 j - reach .. 8 j + reach and no others. Derived from the layers: every
        convolution (centred by its padding) adds its half kernel times the stride so far."""
        reach, stride = 0, 1
        for layer in _centred_convs(self.encoder):
            reach += (layer.kernel_size[0] - 1) // 2 * layer.dilation[0] * stride
            stride *= layer.stride[0]
        if stride != self.stride:
            raise ValueError(f"encoder stride {stride}, the model declares {self.stride}")
        return reach

    def decoder_reach(self) -> int:
        """Latent positions each way a decoded pixel reads beyond its own: the pixels of latent
        position j depend on latent positions j - reach .. j + reach only. Each convolution
        adds its half kernel in latent units (divided by the pixel-shuffle factor so far),
        rounded up."""
        reach, scale = Fraction(0), 1
        for layer in self.decoder.modules():
            if isinstance(layer, nn.Conv2d):
                if layer.stride != (1, 1):
                    raise ValueError("a strided convolution in the decoder: derive its reach "
                                     "by hand")
                reach += Fraction((layer.kernel_size[0] - 1) // 2 * layer.dilation[0], scale)
            elif isinstance(layer, nn.PixelShuffle):
                scale *= layer.upscale_factor
        if scale != self.stride:
            raise ValueError(f"decoder upscales by {scale}, the model declares {self.stride}")
        return math.ceil(reach)

    def kept_channels(self) -> torch.Tensor | None:
        """Indices of the kept latent channels (all for an unpruned model), or None when the
        mask is not channel-structured (not the same at every latent position)."""
        if self.mask is None:
            return torch.arange(self.config.latent_channels)
        support = channel_support(self.mask.cpu())
        return None if support is None else torch.nonzero(support).flatten()

    # -- whole images to symbols and back (the codec's network side) -------------------------

    def compress(
        self,
        image: np.ndarray,
        quality: float | None = None,
        *,
        tile: int | str | None = "auto",
        refine: Refinement | None = None,
        latent: torch.Tensor | None = None,
    ) -> np.ndarray:
        """A whole uint8 image, (H, W, 3) or (H, W) -> the symbols of the kept latent channels
        the stream holds (`stream_channels`), int8 (K, h, w) for the image replicate-padded to
        `padded_side` each way: the encoder's output times the gain at `quality`, optionally
        refined for this image (`refine`, a caeadmm.refine.Refinement), rounded half to even
        and clamped to +-LATENT_MAX. `latent`: this image's `image_latent`, when the caller
        has it already. `tile` bounds memory (caeadmm.windows) and does not change the result."""
        from caeadmm import windows

        kept = self._channel_kept()
        if latent is None:
            latent = self.image_latent(image, tile)
        held = self.stream_channels(quality)
        latent = self.gained(latent, quality)[held]
        if refine is not None and refine.steps > 0:
            latent = windows.refined(image, self, kept[held], latent, tile, refine, quality)
        return quantize(latent, stochastic=False).to(torch.int8).numpy()

    def stream_channels(self, quality: float | None) -> torch.Tensor:
        """Which of the kept channels (positions 0 .. K-1) a stream at `quality` holds: all,
        or a nested model's support at that quality (the others are all zero and left out)."""
        kept = self._channel_kept()
        support = self.quality_support(quality)
        if support is None:
            return torch.arange(len(kept))
        return torch.nonzero(support.reshape(-1).cpu()[kept] > 0).flatten()

    def image_latent(self, image: np.ndarray, tile: int | str | None = "auto") -> torch.Tensor:
        """The kept channels of the encoder's output for a whole uint8 image (H, W, 3), before
        the gain and the rounding: float (K, h, w) on the CPU, computed window by window."""
        from caeadmm import windows

        return windows.encoder_output(image, self, self._channel_kept(), tile)

    def gained(self, latent: torch.Tensor, quality: float | None) -> torch.Tensor:
        """The kept channels' encoder output (K, h, w) times their gain at `quality` (`gain`;
        elementwise, so the same bits as `analysis`): the values that get rounded."""
        gain = self.gain(quality)
        if gain is None:
            return latent
        kept = self._channel_kept().to(gain.device)
        return latent * gain.detach().reshape(-1)[kept].cpu()[:, None, None]

    def decompress(
        self,
        symbols: np.ndarray,
        out: np.ndarray,
        quality: float | None = None,
        *,
        tile: int | str | None = "auto",
    ) -> np.ndarray:
        """Symbols of the channels a stream holds (K, h, w; `stream_channels`) -> the image,
        written into `out`: uint8 (H, W, 3), or (H, W) for a grayscale image (the rounded mean
        of the three decoded channels); the padding `compress` added is cropped. Returns
        `out`."""
        from caeadmm import windows

        kept = self._channel_kept()
        held = self.stream_channels(quality)
        if len(held) != len(kept):  # a nested model: the channels left out are zero
            every = np.zeros((len(kept), *symbols.shape[1:]), symbols.dtype)
            every[held.numpy()] = symbols
            symbols = every
        windows.decode(symbols, self, kept, tile, out, quality)
        return out

    def _channel_kept(self) -> torch.Tensor:
        kept = self.kept_channels()
        if kept is None:
            raise ValueError("whole images need a mask that is the same at every latent "
                             "position (prune_structure: channel)")
        return kept

    # -- helpers -----------------------------------------------------------------------------

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
        if h % self.stride or w % self.stride or min(h, w) < self.min_side:
            raise InputShapeError(f"H and W must be multiples of {self.stride} and at least "
                                  f"{self.min_side}, got {h} x {w}")
        p = self.config.patch_size
        if self.mask is not None and (h, w) != (p, p):
            raise InputShapeError(
                f"this model has a pruning mask for {p} x {p} tiles and cannot take {h} x {w} "
                f"images; encode {p} x {p} tiles (the codec tiles whole images)"
            )


def _centred_convs(network: nn.Module) -> Iterator[nn.Conv2d]:
    """The convolutions in execution order, checked to be square and centred (reflection pad
    plus own padding = half the kernel), the form the reach formulas assume."""
    pad = 0
    for layer in network.modules():
        if isinstance(layer, nn.ReflectionPad2d):
            pad = layer.padding[0]
        elif isinstance(layer, nn.Conv2d):
            k, d = layer.kernel_size[0], layer.dilation[0]
            total = pad + layer.padding[0]
            if layer.kernel_size[1] != k or k % 2 == 0 or total != (k - 1) // 2 * d:
                raise ValueError(f"{layer} is not square and centred: derive its reach by hand")
            pad = 0
            yield layer


def _folded_output_layer(layer: nn.Sequential) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (3, C), bias (3,)) in float64 of the decoder's last layer, a 1x1 convolution
    with its BatchNorm (eval statistics) folded in and a pixel shuffle of factor 1."""
    conv = next(m for m in layer if isinstance(m, nn.Conv2d))
    if conv.kernel_size != (1, 1) or any(
        isinstance(m, nn.PixelShuffle) and m.upscale_factor != 1 for m in layer
    ):
        raise ValueError(f"the decoder's last layer is not a 1x1 convolution: {layer}")
    if any(not isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.PixelShuffle) for m in layer):
        raise ValueError(f"the decoder's last layer is more than a conv and BatchNorm: {layer}")
    weight = conv.weight.detach().double()[:, :, 0, 0]
    bias = conv.bias.detach().double() if conv.bias is not None else weight.new_zeros(len(weight))
    for norm in (m for m in layer if isinstance(m, nn.BatchNorm2d)):
        scale = norm.weight.detach().double() / torch.sqrt(
            norm.running_var.detach().double() + norm.eps
        )
        weight = weight * scale[:, None]
        bias = (bias - norm.running_mean.detach().double()) * scale + norm.bias.detach().double()
    return weight.cpu(), bias.cpu()


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
