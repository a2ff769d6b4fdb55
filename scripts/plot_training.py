"""Plot the committed training logs (docs/training-logs/gpu-*.csv) into
docs/img/training_curves.png: training PSNR, MS-SSIM and the latent energy outside the
ADMM support against the step, phases marked.

    .venv/bin/python scripts/plot_training.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "docs" / "training-logs"
RUNS = ["small-k3", "small-k6", "small-k12", "small-k20", "small-k12-rho0"]


def main() -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name in RUNS:
        log = pd.read_csv(LOGS / f"gpu-{name}.csv")
        style = "--" if name.endswith("rho0") else "-"
        axes[0].plot(log["step"], log["psnr"], style, label=name)
        axes[1].plot(log["step"], log["msssim"], style, label=name)
        admm = log[log["phase"] >= 1]
        axes[2].plot(admm["step"], admm["energy_outside_top_k"], style, label=name)
    axes[0].set(title="training PSNR (dB)", xlabel="step (batch 32)")
    axes[1].set(title="training MS-SSIM", xlabel="step (batch 32)", ylim=(0.6, 1.0))
    axes[2].set(title="latent energy outside the support", xlabel="step (ADMM + fine-tune)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("small preset, C = 32, H100 (scripts/gpu_train.py); k = channels kept")
    fig.tight_layout()
    out = ROOT / "docs" / "img" / "training_curves.png"
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
