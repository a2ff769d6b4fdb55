"""scripts/ship_model.py: Kodak figures read from a `caeadmm eval` folder, and a new registry
entry placed in Kodak bpp order (so that `caeadmm models` lists the curve from low to high)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import load_script, tiny_model

from caeadmm.checkpoint import export_model, save_checkpoint
from caeadmm.config import TrainConfig
from caeadmm.model import CAE

SHIP = Path(__file__).resolve().parent.parent / "scripts" / "ship_model.py"


@pytest.fixture(scope="module")
def ship():
    return load_script(SHIP)


def write_eval(folder: Path, bpp: list[float]) -> Path:
    folder.mkdir()
    results = {"bpp": bpp, "psnr-rgb": [24.123456] * len(bpp), "ms-ssim-rgb": [0.91234] * len(bpp)}
    (folder / "cae.json").write_text(json.dumps({"name": "CAE-ADMM", "results": results}))
    return folder


def test_kodak_figures_come_from_an_eval_folder_of_one_point_or_as_numbers(ship, tmp_path):
    one = write_eval(tmp_path / "one", [0.298467])
    assert ship._kodak(str(one)) == {"bpp": 0.2985, "psnr": 24.12, "ms_ssim": 0.9123}
    assert ship._kodak("0.1,22.5,0.85") == {"bpp": 0.1, "psnr": 22.5, "ms_ssim": 0.85}
    two = write_eval(tmp_path / "two", [0.1, 0.2])
    with pytest.raises(argparse.ArgumentTypeError, match="2 CAE points; evaluate the model alone"):
        ship._kodak(str(two))
    with pytest.raises(argparse.ArgumentTypeError, match="output folder or BPP,PSNR,MS_SSIM"):
        ship._kodak(str(tmp_path / "missing"))


def test_a_new_entry_goes_in_bpp_order_and_a_shipped_name_is_replaced_in_place(ship):
    def entry(name, bpp):
        return {"name": name, "kodak": {"bpp": bpp, "psnr": 0.0, "ms_ssim": 0.0}}

    models = [entry("k2", 0.1), entry("k6", 0.3), {"name": "site-model"}, entry("k20", 0.9)]
    names = [m["name"] for m in ship._register(models, entry("k3", 0.15))]
    assert names == ["k2", "k3", "k6", "site-model", "k20"]
    assert [m["name"] for m in ship._register(models, entry("k40", 1.5))][-1] == "k40"
    replaced = ship._register(models, entry("k6", 0.28))
    assert [m["name"] for m in replaced] == ["k2", "k6", "site-model", "k20"]
    assert replaced[1]["kodak"]["bpp"] == 0.28


def test_the_training_loss_comes_from_the_training_checkpoint(ship, tmp_path):
    """rate_lambda and the distortion weights are read from the checkpoint given, or from the
    run's checkpoint.pt beside an exported model.pt; nothing when neither records them (an
    export alone). Only weights other than the default mix are recorded."""
    model = CAE(replace(tiny_model().config, entropy_model="factorized"))
    run = tmp_path / "run"
    run.mkdir()
    config = TrainConfig(model=model.config, rate_lambda=96.0, w_msssim=0.0, w_ssim=0.0,
                         w_mse=1e5)
    checkpoint = save_checkpoint(run / "checkpoint.pt", model=model, admm=None, optimizer=None,
                                 step=0, config=config)
    export_model(checkpoint, run / "model.pt")
    export_model(checkpoint, tmp_path / "alone.pt")
    for path in (checkpoint, run / "model.pt"):
        config = ship._training_config(path)
        assert config["rate_lambda"] == 96.0
        assert ship._distortion(config) == {"w_msssim": 0.0, "w_ssim": 0.0, "w_mse": 1e5,
                                            "w_psnr": 1.0}
    assert ship._training_config(tmp_path / "alone.pt") == {}
    assert ship._distortion({}) is None
    assert ship._distortion({"rate_lambda": 5.0, "w_mse": 1e4}) is None
