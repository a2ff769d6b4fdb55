"""bench/ablation.py end to end on a tiny corpus: every family's points train through the
one training loop and are measured on real .cae streams (so that a GPU session's prepared
call does not fail on arrival)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from caeadmm.checkpoint import load_model

ABLATION = Path(__file__).resolve().parent.parent / "bench" / "ablation.py"


def _load():
    spec = importlib.util.spec_from_file_location("ablation", ABLATION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_trains_measures_and_compares_families(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).save(tmp_path / f"{i}.png")
    ablation = _load()
    ablation.main(["--steps", "3", "--batch", "2", "--crop", "40", "--held-out", "2",
                   "--data", str(tmp_path), "--families", "paper,rate-admm",
                   "--json", str(tmp_path / "run.json"), "--save", str(tmp_path / "models")])
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| paper |")
            or line.startswith("| rate-admm |")]
    assert [r[1].strip() for r in rows[:6]] == ["k2", "k4", "k8", "l512", "l2048", "l8192"]
    bpp = [float(r[2]) for r in rows[:6]]
    assert all(b > 0 for b in bpp)
    assert bpp[0] < bpp[2]  # 2 of 16 channels cost fewer bytes than 8
    assert all(float(r[5]) > 0 for r in rows[3:6])  # a rate estimate for the rate-aware points
    assert "BD-rate PSNR vs paper" in out
    kept = load_model(tmp_path / "models" / "rate-admm-l2048.pt")  # a point's model is kept
    assert kept.config.entropy_model == "factorized" and kept.mask is not None

    # The saved points give the same BD table again without training (runs in parallel).
    capsys.readouterr()
    ablation.main(["--report", str(tmp_path / "run.json")])
    assert capsys.readouterr().out.strip() == out[out.index("| family | BD-rate"):].strip()
