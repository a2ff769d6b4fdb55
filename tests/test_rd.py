"""Averaging, CompressAI-schema JSON, Bjontegaard deltas and plots."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pandas as pd
import pytest

from caeadmm import rd
from caeadmm.metrics import PSNR_CAP_DB

RATES = [0.1, 0.25, 0.5, 1.0, 2.0]


def _curve(name="A", rates=RATES, psnr=(24.0, 27.0, 30.0, 33.5, 37.0),
           ms_ssim=(0.85, 0.92, 0.955, 0.975, 0.988), published=False) -> rd.Curve:
    return rd.Curve(name, f"{name} codec", list(rates), psnr and list(psnr), list(ms_ssim),
                    published=published)


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# -- BD-rate ------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["psnr", "ms_ssim_db"])
def test_bd_against_itself_is_zero(metric):
    c = _curve()
    assert rd.bd_rate(c, c, metric) == pytest.approx(0.0, abs=1e-9)
    assert rd.bd_metric(c, c, metric) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("metric", ["psnr", "ms_ssim_db"])
def test_bd_rate_of_the_same_curve_at_half_the_rate_is_minus_50(metric):
    anchor = _curve()
    half = _curve("B", rates=[r / 2 for r in RATES])
    assert rd.bd_rate(anchor, half, metric) == pytest.approx(-50.0, abs=1e-9)
    assert rd.bd_rate(half, anchor, metric) == pytest.approx(100.0, abs=1e-9)
    assert rd.bd_metric(anchor, half, metric) > 0  # better quality at equal rate


def test_bd_metric_of_a_constant_quality_shift():
    anchor = _curve()
    better = _curve("B", psnr=[p + 1.5 for p in anchor.psnr])
    assert rd.bd_metric(anchor, better, "psnr") == pytest.approx(1.5, abs=1e-9)


def test_bd_accepts_different_point_counts_and_unsorted_non_monotone_points():
    anchor = rd.Curve("A", "", [0.1, 0.25, 0.5, 1.0], [24.0, 27.0, 30.0, 33.5])
    # The same points shuffled, plus a point worse than a cheaper one and a repeated rate with
    # lower quality: both must be dropped, leaving the anchor's curve.
    test = rd.Curve("B", "", [1.0, 0.1, 0.5, 0.6, 0.25, 0.5], [33.5, 24.0, 30.0, 29.0, 27.0, 29.5])
    assert rd.bd_rate(anchor, test, "psnr") == pytest.approx(0.0, abs=1e-9)


def test_bd_is_nan_without_enough_overlap_or_points():
    anchor = _curve()
    far = _curve("B", psnr=[p + 30 for p in anchor.psnr])
    assert math.isnan(rd.bd_rate(anchor, far, "psnr"))
    single = rd.Curve("C", "", [0.5], [30.0], [0.95])
    assert math.isnan(rd.bd_rate(anchor, single, "psnr"))
    no_psnr = rd.Curve("D", "", RATES, None, list(anchor.ms_ssim))
    assert math.isnan(rd.bd_rate(anchor, no_psnr, "psnr"))
    assert rd.bd_rate(anchor, no_psnr, "ms_ssim_db") == pytest.approx(0.0, abs=1e-9)


def test_bd_matrix_layout():
    a, b = _curve("A"), _curve("B", rates=[r / 2 for r in RATES])
    frame = rd.bd_matrix([a, b], [a, b], "psnr")
    assert list(frame.index) == ["A", "B"] and list(frame.columns) == ["A", "B"]
    assert frame.loc["B", "A"] == pytest.approx(-50.0)
    assert frame.loc["A", "B"] == pytest.approx(100.0)


def test_ms_ssim_db():
    assert rd.ms_ssim_db(0.9) == pytest.approx(10.0)
    assert rd.ms_ssim_db(0.99) == pytest.approx(20.0)
    assert rd.ms_ssim_db(1.0) == PSNR_CAP_DB


# -- averaging ----------------------------------------------------------------------------------


def _rows() -> pd.DataFrame:
    rows = []
    for codec, settings in (("jpeg", ["10", "50"]), ("webp", ["20"])):
        for setting in settings:
            for image, (bpp, psnr) in {"a": (0.2, 30.0), "b": (0.6, math.inf)}.items():
                rows.append({
                    "image": image, "codec": codec, "setting": setting, "bytes": 10, "bpp": bpp,
                    "psnr": psnr, "ms_ssim": 0.9, "ssim": 0.8, "encode_s": 0.01, "decode_s": 0.02,
                    "height": 8, "width": 8,
                })
    return pd.DataFrame(rows)


def test_summary_averages_per_image_values_and_caps_infinite_psnr():
    summary = rd.summarize(_rows())
    assert list(summary["codec"]) == ["jpeg", "jpeg", "webp"]
    first = summary.iloc[0]
    assert first["images"] == 2
    assert first["bpp"] == pytest.approx(0.4)
    assert first["psnr"] == pytest.approx((30.0 + PSNR_CAP_DB) / 2)
    assert first["ms_ssim_db"] == pytest.approx(10.0)


# -- JSON ---------------------------------------------------------------------------------------


def test_json_round_trip_in_compressai_schema(tmp_path):
    curve = _curve()
    curve.encoding_time = [0.1] * 5
    curve.decoding_time = [0.2] * 5
    path = tmp_path / "a.json"
    rd.write_json(curve, path)
    doc = json.loads(path.read_text())
    assert set(doc) == {"name", "description", "results"}
    assert set(doc["results"]) == {"bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time",
                                   "decoding_time"}
    back = rd.read_json(path)
    assert back == curve


def test_read_json_accepts_older_keys_and_partial_metrics(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"name": "WebP", "results": {"bpp": [0.2, 0.4],
                                                            "ms-ssim": [0.9, 0.95]}}))
    curve = rd.read_json(path, published=True)
    assert curve.ms_ssim == [0.9, 0.95] and curve.psnr is None and curve.published


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[1, 2]",
        json.dumps({"results": {"psnr-rgb": [30]}}),
        json.dumps({"results": {"bpp": [0.1, 0.2], "psnr-rgb": [30]}}),
        json.dumps({"results": {"bpp": [0.1]}}),
        json.dumps({"results": {"bpp": ["x"], "psnr-rgb": [30]}}),
    ],
)
def test_read_json_rejects_malformed_files(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(rd.ResultsFormatError):
        rd.read_json(path)


def test_shipped_references_load():
    refs = rd.published_references()
    names = {r.name for r in refs}
    assert {"JPEG, CompressAI", "WebP, CompressAI", "CAE-ADMM, paper"} <= names
    for ref in refs:
        assert ref.published and ref.ms_ssim is not None and len(ref.bpp) >= 3
        assert np.all(np.diff(ref.bpp) > 0) and np.all(np.diff(ref.ms_ssim) > 0)


# -- tables and plots ---------------------------------------------------------------------------


def test_markdown_table_prints_nan_as_na():
    frame = pd.DataFrame([[1.0, float("nan")]], index=["x"], columns=["a", "b"])
    assert rd.markdown_table(frame, ".1f").splitlines() == ["|  | a | b |", "|---|---|---|",
                                                            "| x | 1.0 | n/a |"]


@pytest.mark.parametrize("metric", ["psnr", "ms_ssim", "ms_ssim_db"])
def test_plot_is_a_png_of_the_documented_size(tmp_path, metric):
    path = tmp_path / "plot.png"
    curves = [_curve("A"), _curve("B", published=True, psnr=None)]
    rd.plot_rd(curves, metric, path)
    width, height = rd.PLOT_SIZE_IN[0] * rd.PLOT_DPI, rd.PLOT_SIZE_IN[1] * rd.PLOT_DPI
    assert _png_size(path) == (width, height)
    assert path.stat().st_size > 5000  # axes, two curves and a legend, not a blank canvas


def test_plot_returns_the_points_above_max_bpp():
    curve = _curve("A", rates=(0.2, 0.5, 1.0, 2.5, 3.0))
    dropped = rd.plot_rd([curve], "psnr", "/dev/null", max_bpp=2.0, title="Kodak: 24 images")
    assert dropped == [("A", 2.5), ("A", 3.0)]


def test_one_point_curve_says_why_it_has_no_bd_rate():
    one = rd.Curve("CAE", "one model", [0.4], [28.0], [0.95])
    report = rd.bd_report([_curve("JPEG"), one], [])
    assert "No BD-rate for CAE: one rate point each" in report
    assert "No BD-rate for JPEG" not in report


def test_report_titles_plots_and_lists_dropped_points(tmp_path):
    rows = _rows()
    rows.loc[rows["codec"] == rows["codec"].iloc[0], "bpp"] *= 100  # far above max_bpp
    paths = rd.write_report(rows, tmp_path, max_bpp=2.0, image_set="Kodak")
    summary = paths["summary_md"].read_text()
    n = rows["image"].nunique()
    assert f"Kodak: {n} images" in summary
    assert "Not plotted (above 2 bpp" in summary
