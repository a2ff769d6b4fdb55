"""Encoder-side latent refinement: more encode time for a better image from the same decoder.

The encoder gives one amortized guess of the latent for any image. A few gradient steps on
that latent itself, for this one image and with the network fixed, lower the loss the model
was trained on (distortion + rate_lambda * bpp): the decoder sees the rounded latent (the
gradient passed straight through the rounding) and the rate term the entropy model's
estimate of the noisy latent, as in training. This is "content-adaptive optimization"
(Campos et al., 2019) of the latent only: the stream format and the decoder do not change,
so any decoder reads a refined stream. docs/refine.md measures what it buys on Kodak.

`refine_window` runs on one network window of the codec (caeadmm.image_codec): the latent of
the window's core is optimized with the latent around it fixed, the distortion measured on
the core's pixels, so that memory stays bounded for any image size. An image of up to
image_codec.ONE_WINDOW_PIXELS is one window: the whole image at once.

Unlike a plain encode, a refined stream depends on the float rounding of the backward pass
(thread count, CPU), so the same image may give slightly different bytes on another machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from caeadmm import zoo
from caeadmm.bitstream import LATENT_STRIDE
from caeadmm.config import DISTORTION_WEIGHTS, rate_weight
from caeadmm.losses import distortion
from caeadmm.model import CAE, add_uniform_noise, round_straight_through

STEPS = 15  # Adam steps: most of what 25 give (bench/refine.py, docs/refine.md)
LEARNING_RATE = 0.02  # in symbol units, decayed linearly to 0 over the steps


@dataclass(frozen=True)
class Refinement:
    """How to refine: Adam steps and learning rate, and the loss the model was trained with:
    the rate term's weight (its registry entry's `rate_lambda`; 0 for distortion alone) and
    the distortion's weights (its entry's `distortion`, keyword arguments of
    losses.distortion; empty for the default mix, MS-SSIM and SSIM first)."""

    steps: int = STEPS
    lr: float = LEARNING_RATE
    rate_lambda: float = 0.0
    distortion: dict[str, float] = field(default_factory=dict)
    # A variable-rate model's rate weight at quality 0 (rate_lambda is its top quality's):
    # a quality q is refined with the weight it was trained with, config.rate_weight.
    rate_lambda_max: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"refinement steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"refinement learning rate must be > 0, got {self.lr}")
        if self.rate_lambda < 0:
            raise ValueError(f"rate_lambda must be >= 0, got {self.rate_lambda}")
        for name, weight in self.distortion.items():
            if name not in DISTORTION_WEIGHTS or not weight >= 0:
                raise ValueError(f"distortion weights are {', '.join(DISTORTION_WEIGHTS)}, "
                                 f"each >= 0; got {name}={weight}")


def refinement_for(model: str | None, steps: int | None = None) -> Refinement | None:
    """What `--refine [STEPS]` asks of `model` (a registered name, None for the default, or a
    checkpoint path): None for 0 steps; STEPS when steps is None; the loss the model's registry
    entry records (rate_lambda and distortion weights; for a checkpoint path, whose file does
    not record them, the default distortion alone)."""
    if steps == 0:
        return None
    return Refinement(
        steps=STEPS if steps is None else steps,
        rate_lambda=zoo.rate_lambda(model),
        distortion=zoo.distortion_weights(model),
        rate_lambda_max=zoo.rate_lambda_max(model),
    )


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
    rate_lambda = settings.rate_lambda
    if quality is not None and settings.rate_lambda_max > 0:
        rate_lambda = rate_weight(quality, model.config.quality_levels, settings.rate_lambda,
                                  settings.rate_lambda_max)  # fmt: skip
    r0, r1, c0, c1 = core
    y0, x0 = LATENT_STRIDE * r0, LATENT_STRIDE * c0
    target = pixels[..., y0 : y0 + visible[0], x0 : x0 + visible[1]]
    mse_only = min(visible) <= 32  # MS-SSIM needs more than 32 px (losses.ms_ssim_window)
    channels = torch.zeros(model.config.latent_channels, dtype=torch.bool, device=latent.device)
    channels[kept] = True
    inner = latent[:, r0:r1, c0:c1].clone().requires_grad_(True)
    optimizer = torch.optim.Adam([inner], lr=settings.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / settings.steps)
    for _ in range(settings.steps):
        window = latent.clone()
        window[:, r0:r1, c0:c1] = inner
        full = _full_latent(model, window, kept)
        decoded = model.synthesis(round_straight_through(full), quality)
        decoded = decoded[..., y0 : y0 + visible[0], x0 : x0 + visible[1]]
        loss, _ = distortion(decoded, target, mse_only=mse_only, **settings.distortion)
        if rate_lambda > 0:
            noisy = add_uniform_noise(full) * channels[:, None, None]
            bits = model.rate_bits(noisy, channels[:, None, None])
            loss = loss + rate_lambda * bits.sum() / (visible[0] * visible[1])
        (grad,) = torch.autograd.grad(loss, [inner])
        inner.grad = grad
        optimizer.step()
        schedule.step()
    out = latent.clone()
    out[:, r0:r1, c0:c1] = inner.detach()
    return out


def _full_latent(model: CAE, kept_latent: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """(1, C, h, w): the kept channels in place, zeros elsewhere (what the decoder reads)."""
    full = kept_latent.new_zeros((1, model.config.latent_channels, *kept_latent.shape[-2:]))
    full[0, kept] = kept_latent
    return full
