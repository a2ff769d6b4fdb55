"""A training run's CSV log (`RunLog`, LOG_COLUMNS) and the lines it prints as it goes.

Every `log_every` steps the loop (caeadmm.train_loop) appends a row: the means of the
training metrics over the steps since the last row (TRAIN_COLUMNS), the diagnostics of the
latest ADMM update (ADMM_COLUMNS), the validation measured at that step (VAL_COLUMNS,
caeadmm.validation) and the speed; `progress_line` is the same row as one line. The other
lines report the events between rows: an ADMM update, the hard prune, the final fit of the
entropy model.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

# The phases of a run, in order; the log writes a step's phase as its index here.
PHASES = ("warmup", "admm", "finetune")
# "bpp" is the entropy model's estimate (NaN in the log without a rate term); "val_bpp" is
# real bytes.
TRAIN_COLUMNS = [
    "loss", "distortion", "penalty", "mse", "psnr", "ssim", "msssim", "bpp", "lr", "grad_norm",
]
ADMM_COLUMNS = ["admm_residual", "energy_outside_top_k", "support_churn"]
VAL_COLUMNS = ["val_psnr", "val_msssim", "val_bpp", "latent_zero_fraction", "mask_density"]
LOG_COLUMNS = [
    "step", "phase", *TRAIN_COLUMNS, *ADMM_COLUMNS, *VAL_COLUMNS, "patches_per_s", "elapsed_s",
]


class RunLog:
    """The run's CSV log: LOG_COLUMNS, a row per log step. Resuming at step s drops the rows
    past s (a crashed attempt wrote them after its last checkpoint); a fresh run starts an
    empty log. path None: no log (ranks other than 0)."""

    def __init__(self, path: Path | None, start: int):
        self.path = path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if start > 0 and path.exists():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(float(r["step"])) <= start]
        path.unlink(missing_ok=True)
        for r in rows:
            self.append(r)

    def append(self, row: dict) -> None:
        if self.path is None:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


# The progress line's fields in three groups (training | validation | speed): (key in the
# log row, its template, scale); a field that is NaN or absent in the row is left out.
PROGRESS_FIELDS = (
    (
        ("loss", "loss {:.2f}", 1), ("mse", "mse {:.5f}", 1), ("psnr", "psnr {:.2f}", 1),
        ("bpp", "est-bpp {:.3f}", 1), ("penalty", "penalty {:.3f}", 1),
        ("energy_outside_top_k", "outside-top-k {:.3f}", 1), ("lr", "lr {:.2e}", 1),
    ),
    (
        ("val_psnr", "val psnr {:.2f}", 1), ("val_msssim", "ms-ssim {:.4f}", 1),
        ("val_bpp", "bpp {:.3f}", 1), ("latent_zero_fraction", "zeros {:.1f}%", 100),
        ("mask_density", "mask {:.1f}%", 100),
    ),
    (("patches_per_s", "{:.1f} patches/s", 1),),
)


def progress_line(row: dict[str, float], total: int) -> str:
    """The log row as one line; fields without a value (NaN: no rate term, no ADMM, no
    validation at this step) are left out."""
    phase = PHASES[int(round(row["phase"]))]
    groups = []
    for fields in PROGRESS_FIELDS:
        values = [(template, row.get(key, math.nan) * scale) for key, template, scale in fields]
        parts = [template.format(value) for template, value in values if not math.isnan(value)]
        if parts:
            groups.append(" ".join(parts))
    return f"step {int(row['step'])}/{total} [{phase}] " + " | ".join(groups)


def admm_line(updates: int, k: int, step: int, stats: dict[str, float]) -> str:
    """The line of ADMM update number `updates` (support of k slots) after `step`."""
    return (
        f"ADMM update {updates} after step {step}: support of {k} slots, latent "
        f"energy outside it {stats['energy_outside_top_k']:.3f}, churn "
        f"{stats['support_churn']:.3f}"
    )


def prune_line(stats: dict[str, float], k: int) -> str:
    """The line of the hard prune (`admm.hard_prune`'s measurements) to k slots."""
    if math.isnan(stats["eval_mse_before"]):
        return f"hard prune: kept {k} slots"
    return (
        f"hard prune: kept {k} slots; validation MSE {stats['eval_mse_before']:.5f} -> "
        f"{stats['eval_mse_after']:.5f} (PSNR {stats['eval_psnr_before']:.2f} -> "
        f"{stats['eval_psnr_after']:.2f} dB)"
    )


def entropy_fit_line(stats: dict[str, float], steps: int) -> str:
    """The line of the final entropy-model fit (`entropy_fit.fit_entropy_model`'s stats)."""
    if not stats["symbols"]:
        return "entropy model fit: no kept symbols"
    return (
        f"entropy model fitted alone for {steps} steps on {int(stats['symbols'])} kept symbols "
        f"of the last training batches: {stats['bits_before']:.4f} -> "
        f"{stats['bits_after']:.4f} bits per symbol (order-0 entropy "
        f"{stats['entropy_bits']:.4f})"
    )
