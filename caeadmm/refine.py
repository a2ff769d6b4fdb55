"""Encoder-side latent refinement: more encode time for a better image from the same decoder.

The encoder gives one amortized guess of the latent for any image. For this one image, with
the network fixed, refinement changes the latent so as to lower the loss the model was
trained on (distortion + rate_lambda * bpp): the decoder sees the rounded latent (the
gradient passed straight through the rounding), and the rate term is the entropy model's
estimate of the noisy latent, as in training. This is "content-adaptive optimization"
(Campos et al., 2019) of the latent only: the stream format and the decoder do not change,
so any decoder reads a refined stream. docs/refine.md measures what it buys on Kodak.

Two searches, each costing one decoder pass forward and backward per gradient:

- "flip" (the effort levels `--refine fast|best`): a greedy search over the rounding itself.
  Since the decoder only sees rounded symbols, refinement can only move symbols to their
  other neighbour. A round takes the gradient at the current rounding and scores each
  symbol's move across its rounding boundary by the gradient along it (per channel
  normalized) over the symbol's distance to the boundary plus BOUNDARY_SOFTNESS; it flips the
  best-scoring share of the symbols not yet moved ("flip" rounds), or moves back the worst of
  those moved ("revert" rounds: after a round of simultaneous flips the new gradient says
  which of them did not help together). ROUNDS gives the shares (MSE_SHARE of them for an
  MSE-only loss). Two rounds ("fast") buy as much as 15 Adam steps did, in under a tenth of
  their time (bench/refine.py --kodak, docs/speed.md).
- "adam" (`--refine STEPS`, the method before the effort levels): Adam steps on the latent,
  learning rate decayed linearly to 0.

`refine_window` runs on one network window of the codec (caeadmm.windows): the latent of
the window's core is optimized with the latent around it fixed, the distortion measured on
the core's pixels, so that memory stays bounded for any image size. An image of up to
windows.ONE_WINDOW_PIXELS is one window: the whole image at once.

The gradient runs on a copy of the decoder made for it (`fast_gradient`): BatchNorm folded
into the convolutions, single-slope PReLU as leaky ReLU, channels-last tensors, and bfloat16
where the CPU (or GPU) computes it natively: about 3 times faster than the model's own
float32 decoder on a CPU core (docs/speed.md), for gradients that agree to 0.9997
(correlation). The rate
term's noise comes from a generator seeded per window, so a refined stream is the same on
every run on one machine; it still depends on the float rounding of the backward pass (CPU,
thread count, bfloat16 or not), so another machine may give slightly different bytes.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from caeadmm import zoo
from caeadmm.config import DISTORTION_WEIGHTS, rate_weight
from caeadmm.losses import distortion
from caeadmm.model import CAE, LATENT_MAX, LATENT_STRIDE, round_straight_through

STEPS = 15  # Adam steps of `--refine STEPS` alone before effort levels (docs/refine.md)
LEARNING_RATE = 0.02  # Adam, in symbol units, decayed linearly to 0 over the steps
METHODS = ("flip", "adam")
# The flip search's rounds, one gradient each: (kind, share of the core's kept symbols).
# Chosen on held-out training-corpus crops (bench/refine.py --images --rounds), never Kodak.
ROUNDS = (("flip", 0.10), ("revert", 0.03), ("flip", 0.03), ("revert", 0.01),
          ("flip", 0.02), ("revert", 0.01))
# An MSE-only loss (the PSNR family) gains most from half those shares: flipped symbols
# interfere more there, and 10 % at once overshoots (bench/refine.py --images).
MSE_SHARE = 0.5
BOUNDARY_SOFTNESS = 0.05  # symbol units added to the distance to the boundary in the score
EFFORTS = {"fast": 2, "best": 12}  # rounds of the flip search
DEFAULT_EFFORT = "fast"  # `--refine` alone (the table of docs/speed.md supports it)
NOISE_SEED = 0


@dataclass(frozen=True)
class Refinement:
    """How to refine: the search (`method` "flip" or "adam") and its gradient count `steps`
    (flip rounds, or Adam steps at learning rate `lr`), and the loss the model was trained
    with: the rate term's weight (its registry entry's `rate_lambda`; 0 for distortion alone)
    and the distortion's weights (its entry's `distortion`, keyword arguments of
    losses.distortion; empty for the default mix, MS-SSIM and SSIM first). fast_gradient:
    the gradient on the decoder copy of `_gradient_decoder` (False: the model's own decoder
    in float32, as before the effort levels; slower, for comparisons)."""

    steps: int = STEPS
    lr: float = LEARNING_RATE
    rate_lambda: float = 0.0
    distortion: dict[str, float] = field(default_factory=dict)
    # A variable-rate model's rate weight at quality 0 (rate_lambda is its top quality's):
    # a quality q is refined with the weight it was trained with, config.rate_weight.
    rate_lambda_max: float = 0.0
    method: str = "adam"
    fast_gradient: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"refinement steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"refinement learning rate must be > 0, got {self.lr}")
        if self.rate_lambda < 0:
            raise ValueError(f"rate_lambda must be >= 0, got {self.rate_lambda}")
        if self.method not in METHODS:
            raise ValueError(f"refinement method must be one of {', '.join(METHODS)}, "
                             f"got {self.method!r}")
        for name, weight in self.distortion.items():
            if name not in DISTORTION_WEIGHTS or not weight >= 0:
                raise ValueError(f"distortion weights are {', '.join(DISTORTION_WEIGHTS)}, "
                                 f"each >= 0; got {name}={weight}")


def refinement_for(model: str | None, level: int | str | None = None) -> Refinement | None:
    """What `--refine [fast|best|STEPS]` asks of `model` (a registered name, None for the
    default, or a checkpoint path): None for 0; DEFAULT_EFFORT when level is None; "fast" or
    "best": that many rounds of the flip search (EFFORTS); a number: that many Adam steps.
    The loss is the one the model's registry entry records (rate_lambda and distortion
    weights; for a checkpoint path, whose file does not record them, the default distortion
    alone)."""
    if level == 0:
        return None
    level = DEFAULT_EFFORT if level is None else level
    if isinstance(level, str):
        if level not in EFFORTS:
            raise ValueError(f"refinement effort must be one of {', '.join(EFFORTS)} or a "
                             f"number of steps, got {level!r}")
        how = {"method": "flip", "steps": EFFORTS[level]}
    else:
        how = {"method": "adam", "steps": level}
    return Refinement(
        **how,
        rate_lambda=zoo.rate_lambda(model),
        distortion=zoo.distortion_weights(model),
        rate_lambda_max=zoo.rate_lambda_max(model),
    )


def rounds(count: int, distortion: dict[str, float] | None = None) -> list[tuple[str, float]]:
    """The first `count` rounds of the flip search for a loss of these distortion weights:
    ROUNDS, then its last two again; the shares times MSE_SHARE for an MSE-only loss (no
    MS-SSIM or SSIM term)."""
    extra = [ROUNDS[len(ROUNDS) - 2 + i % 2] for i in range(max(0, count - len(ROUNDS)))]
    weights = distortion or {}
    scale = MSE_SHARE if weights.get("w_msssim") == 0 and weights.get("w_ssim") == 0 else 1
    return [(kind, scale * share) for kind, share in [*ROUNDS[:count], *extra]]


def refine_window(
    model: CAE,
    pixels: torch.Tensor,
    latent: torch.Tensor,
    kept: torch.Tensor,
    core: tuple[int, int, int, int],
    visible: tuple[int, int],
    settings: Refinement,
    quality: float | None = None,
) -> torch.Tensor:
    """The window's kept-channel latent (K, h, w), float, with its core refined.

    pixels: the window's image (1, 3, 8 h, 8 w) in [0, 1]; latent: the encoder's unrounded
    output for the window's kept channels (K, h, w); core: (row start, row end, column start,
    column end) in latent positions within the window, the part that is optimized;
    visible: (rows, columns) of the core's pixels that lie inside the image (the rest is the
    codec's padding, which no one sees); quality: a variable-rate model's quality. The
    model's parameters are not changed.
    """
    if settings.rate_lambda > 0 and model.config.entropy_model == "none":
        raise ValueError("a rate term (rate_lambda > 0) needs a model with an entropy model")
    objective = _Objective(model, pixels, latent, kept, core, visible, settings, quality)
    r0, r1, c0, c1 = core
    inner = latent[:, r0:r1, c0:c1].detach().clone()
    if settings.method == "flip":
        inner = _flip_search(objective, inner, settings.steps)
    else:
        inner = _adam(objective, inner, settings)
    out = latent.clone()
    out[:, r0:r1, c0:c1] = inner
    return out


class _Objective:
    """The refinement loss of one window's core as a function of the core's latent, and its
    gradient."""

    def __init__(self, model: CAE, pixels: torch.Tensor, latent: torch.Tensor,
                 kept: torch.Tensor, core: tuple[int, int, int, int], visible: tuple[int, int],
                 settings: Refinement, quality: float | None):
        self.model, self.latent, self.kept, self.core = model, latent, kept, core
        self.visible, self.settings, self.quality = visible, settings, quality
        self.rate_lambda = settings.rate_lambda
        if quality is not None and settings.rate_lambda_max > 0:
            self.rate_lambda = rate_weight(quality, model.config.quality_levels,
                                           settings.rate_lambda, settings.rate_lambda_max)
        r0, _, c0, _ = core
        self.y0, self.x0 = LATENT_STRIDE * r0, LATENT_STRIDE * c0
        self.target = pixels[..., self.y0 : self.y0 + visible[0], self.x0 : self.x0 + visible[1]]
        self.mse_only = min(visible) <= 32  # MS-SSIM needs more than 32 px
        channels = torch.zeros(model.config.latent_channels, dtype=torch.bool,
                               device=latent.device)
        channels[kept] = True
        self.channels = channels[:, None, None]
        self.decoder, self.half = (_gradient_decoder(model.decoder, latent.device)
                                   if settings.fast_gradient else (model.decoder, None))
        self.noise = torch.Generator(device=latent.device).manual_seed(NOISE_SEED)

    def gradient(self, inner: torch.Tensor) -> torch.Tensor:
        """d loss / d inner at `inner` (the core's kept-channel latent, (K, rows, cols))."""
        r0, r1, c0, c1 = self.core
        inner = inner.detach().requires_grad_(True)
        window = self.latent.detach().clone()
        window[:, r0:r1, c0:c1] = inner
        full = window.new_zeros((1, self.model.config.latent_channels, *window.shape[-2:]))
        full[0, self.kept] = window
        features = self.model._ungain(round_straight_through(full), self.quality)
        if self.decoder is self.model.decoder:
            decoded = self.decoder(features)
        else:
            features = features.contiguous(memory_format=torch.channels_last)
            half = (torch.autocast(features.device.type, dtype=self.half) if self.half
                    else contextlib.nullcontext())
            with half:
                decoded = self.decoder(features)
        decoded = (torch.tanh(decoded.float()) + 1) / 2
        decoded = decoded[..., self.y0 : self.y0 + self.visible[0],
                          self.x0 : self.x0 + self.visible[1]]
        loss, _ = distortion(decoded, self.target, mse_only=self.mse_only,
                             **self.settings.distortion)
        if self.rate_lambda > 0:
            noise = torch.rand(full.shape, generator=self.noise, device=full.device) - 0.5
            noisy = (full.clamp(-LATENT_MAX, LATENT_MAX) + noise) * self.channels
            bits = self.model.rate_bits(noisy, self.channels)
            loss = loss + self.rate_lambda * bits.sum() / (self.visible[0] * self.visible[1])
        (grad,) = torch.autograd.grad(loss, [inner])
        return grad


def _adam(objective: _Objective, inner: torch.Tensor, settings: Refinement) -> torch.Tensor:
    """`settings.steps` Adam steps from `inner`, the learning rate decayed linearly to 0."""
    inner = inner.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([inner], lr=settings.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / settings.steps)
    for _ in range(settings.steps):
        inner.grad = objective.gradient(inner)
        optimizer.step()
        schedule.step()
    return inner.detach()


def _flip_search(objective: _Objective, inner: torch.Tensor, count: int) -> torch.Tensor:
    """`count` rounds of the flip search from `inner` (see the module docstring). A moved
    symbol's value is mirrored across its rounding boundary, so that it rounds to the other
    neighbour and keeps its distance to the boundary (a later round may move it back)."""
    y = inner.clone()
    moved = torch.zeros_like(y, dtype=torch.bool)
    for kind, share in rounds(count, objective.settings.distortion):
        k = round(share * y.numel())
        if k == 0:
            continue
        grad = objective.gradient(y)
        nearest = torch.round(y)
        toward = torch.where(y >= nearest, 1.0, -1.0)  # toward the other neighbour
        distance = 0.5 - (y - nearest).abs()  # to the rounding boundary
        scale = grad.square().mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-30)
        score = -toward * grad / scale / (distance + BOUNDARY_SOFTNESS)
        allowed = moved if kind == "revert" else ~moved
        allowed &= (nearest + toward).abs() <= LATENT_MAX
        score = torch.where(allowed, score, torch.full_like(score, -torch.inf))
        threshold = torch.topk(score.flatten(), min(k, score.numel())).values[-1]
        move = (score >= threshold) & (score > 0)
        y = torch.where(move, y + 2 * toward * (distance + 1e-3), y)
        moved ^= move
    return y


def _gradient_decoder(
    decoder: nn.Module, device: torch.device
) -> tuple[nn.Module, torch.dtype | None]:
    """(a copy of `decoder` for gradients only, the autocast dtype to run it in: bfloat16
    where `device` computes it natively, else None for float32). The copy has every
    BatchNorm that follows a convolution folded into it (inference statistics), single-slope
    PReLUs as leaky ReLU (whose backward is far cheaper), channels-last weights and no
    parameter gradients."""
    copied = copy.deepcopy(decoder).eval()
    _fold(copied)
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    copied = copied.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        half = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    else:
        half = torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    return copied, half


class _LeakyReLU(nn.Module):
    def __init__(self, slope: float):
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.slope)


def _fold(module: nn.Module) -> None:
    """In place: Conv2d + BatchNorm2d pairs (consecutive children) into one Conv2d, PReLUs
    of one slope into leaky ReLU."""
    names = list(module._modules)
    for i, name in enumerate(names):
        child = module._modules[name]
        after = module._modules[names[i + 1]] if i + 1 < len(names) else None
        if isinstance(child, nn.PReLU) and child.weight.numel() == 1:
            module._modules[name] = _LeakyReLU(child.weight.detach().item())
        elif isinstance(child, nn.Conv2d) and isinstance(after, nn.BatchNorm2d):
            module._modules[name] = fuse_conv_bn_eval(child.eval(), after.eval())
            module._modules[names[i + 1]] = nn.Identity()
        elif child is not None:
            _fold(child)
