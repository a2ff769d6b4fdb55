"""Validation during training: fixed patches measured with the network as it stands.

`validate` is the inference-mode MSE and PSNR (the hard prune's before/after and a run's
final figure); `validation_row` the run log's VAL_COLUMNS (caeadmm.run_log): 8-bit quality
and the real coded size of the symbols, as the codec would write them. A variable-rate model
is measured at `validation_quality`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

import coding
from caeadmm.images import to_uint8
from caeadmm.losses import per_image_mse, psnr_of_mse
from caeadmm.metrics import PSNR_CAP_DB, quality_metrics
from caeadmm.model import CAE, eval_mode, unwrap
from caeadmm.run_log import VAL_COLUMNS


@torch.no_grad()
def validate(model: nn.Module, patches: torch.Tensor | None, batch_size: int = 16) -> dict:
    """Inference-mode MSE and mean PSNR (dB) of the model on fixed patches (N, 3, P, P) in
    [0, 1]; NaN without patches."""
    if patches is None or len(patches) == 0:
        return {"mse": math.nan, "psnr": math.nan}
    net = unwrap(model)
    device = next(net.parameters()).device
    errors = []
    quality = validation_quality(net)
    with eval_mode(net):
        for start in range(0, len(patches), batch_size):
            x = patches[start : start + batch_size].to(device)
            output = net(x, quality=quality) if quality is not None else net(x)
            errors.append(per_image_mse(output[0], x))
    mse = torch.cat(errors)
    return {"mse": float(mse.sum()) / len(patches), "psnr": float(psnr_of_mse(mse).mean())}


@torch.no_grad()
def validation_row(net: CAE, val: torch.Tensor | None) -> dict[str, float]:
    """The log's validation columns: PSNR and MS-SSIM of the 8-bit decoded patches, the
    real coded bpp of the kept symbols (coded as the codec codes one image's tiles), the zero
    fraction of the rounded (masked) latent and the mask density."""
    density = 1.0 if net.mask is None else float(net.mask.float().mean())
    if val is None or len(val) == 0:
        return dict.fromkeys(VAL_COLUMNS, math.nan) | {"mask_density": density}
    device = next(net.parameters()).device
    quality = validation_quality(net)
    symbols = net.encode(val.to(device), quality).cpu()
    decoded = net.decode(symbols.to(device), quality).cpu()
    kept = net.mask.cpu() if net.mask is not None else torch.ones(symbols.shape[1:], dtype=bool)
    bits = coding.encoded_bits(symbols[:, kept].numpy().ravel())
    reference, output = to_uint8(val), to_uint8(decoded)
    quality = [quality_metrics(r, o) for r, o in zip(reference, output, strict=True)]
    n, _, h, w = val.shape
    return {
        "val_psnr": float(np.mean([min(q["psnr"], PSNR_CAP_DB) for q in quality])),
        "val_msssim": float(np.mean([q["ms_ssim"] for q in quality])),
        "val_bpp": bits / (n * h * w),
        "latent_zero_fraction": float((symbols == 0).float().mean()),
        "mask_density": density,
    }


def validation_quality(net: CAE) -> float | None:
    """The quality a variable-rate model is validated at in the log (the middle of its
    range); None for a fixed-rate model."""
    levels = net.config.quality_levels
    return (levels - 1) / 2 if levels else None
