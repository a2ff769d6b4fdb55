"""scripts/ship_model.py: Kodak figures read from a `caeadmm eval` folder, and a new registry
entry placed in Kodak bpp order (so that `caeadmm models` lists the curve from low to high)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

SHIP = Path(__file__).resolve().parent.parent / "scripts" / "ship_model.py"


@pytest.fixture(scope="module")
def ship():
    spec = importlib.util.spec_from_file_location("ship_model", SHIP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
