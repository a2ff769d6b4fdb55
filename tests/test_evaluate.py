"""End to end on a local Ray cluster: small generated images, two codecs, every artifact."""

from __future__ import annotations

import json
import struct

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from caeadmm import rd
from caeadmm.cli import main as cli_main
from caeadmm.distributed import evaluate

CODECS = {"jpeg": [10, 50, 90], "webp": [10, 50, 90]}
SHAPES = [(40, 56), (33, 47), (64, 64)]


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SHAPES):
        y, x = np.mgrid[0:h, 0:w]
        pixels = np.stack([x * 4 + i * 30, y * 5, (x + y) * 3], -1) + rng.integers(0, 25, (h, w, 3))
        folder = root / "sub" if i == 2 else root
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"im{i}.png")
    return root


def test_end_to_end_writes_every_artifact(ray_local, dataset, tmp_path):
    out = tmp_path / "out"
    outcome = evaluate.run([dataset], CODECS, out, references=rd.published_references(),
                           progress=False)

    n_points = len(SHAPES) * sum(len(s) for s in CODECS.values())
    assert len(outcome.rows) == n_points and outcome.failures.empty
    expected = {"per_image.csv", "per_image.parquet", "summary.csv", "summary.md", "bd_rate.md",
                "jpeg.json", "webp.json", "rd_psnr.png", "rd_ms_ssim.png", "rd_ms_ssim_db.png",
                "index.html", "page"}  # the report page and its images (tests/test_report.py)
    assert {p.name for p in out.iterdir()} == expected

    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == n_points
    assert set(per_image["image"]) == {"im0.png", "im1.png", "sub/im2.png"}
    assert list(per_image.columns) == [
        "image", "codec", "setting", "bytes", "bpp", "psnr", "ms_ssim", "ssim", "encode_s",
        "decode_s", "height", "width",
    ]
    np.testing.assert_allclose(
        per_image["bpp"], 8 * per_image["bytes"] / (per_image["height"] * per_image["width"])
    )
    assert pd.read_parquet(out / "per_image.parquet").shape == per_image.shape

    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 6 and (summary["images"] == 3).all()
    jpeg_bpp = per_image[per_image["codec"] == "jpeg"].groupby("setting")["bpp"].mean()
    doc = json.loads((out / "jpeg.json").read_text())
    assert doc["name"] == "JPEG"
    assert doc["results"]["bpp"] == pytest.approx(sorted(jpeg_bpp))
    assert len(doc["results"]["psnr-rgb"]) == 3 and len(doc["results"]["ms-ssim-rgb"]) == 3

    for metric in rd.METRIC_LABELS:
        path = out / f"rd_{metric}.png"
        assert _png_size(path) == (rd.PLOT_SIZE_IN[0] * rd.PLOT_DPI,
                                   rd.PLOT_SIZE_IN[1] * rd.PLOT_DPI)
        assert path.stat().st_size > 5000
    bd = (out / "bd_rate.md").read_text()
    assert "| JPEG | +0.00 |" in bd and "WebP" in bd and "JPEG, CompressAI" in bd


def test_failed_points_are_reported_not_fatal(ray_local, dataset, tmp_path):
    (dataset / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    outcome = evaluate.run([dataset], {"jpeg": [50]}, tmp_path / "out", progress=False)
    assert len(outcome.rows) == 3
    assert list(outcome.failures["image"]) == ["broken.png"]
    assert "ImageLoadError" in outcome.failures["error"].iloc[0]
    assert (tmp_path / "out" / "failures.csv").exists()


def test_cli_eval(ray_local, dataset, tmp_path, capsys):
    code = cli_main(["eval", str(dataset), "--codecs", "jpeg:20+80", "--out",
                     str(tmp_path / "cli"), "--no-published", "--quiet"])
    assert code == 0
    assert "6 points measured" in capsys.readouterr().out
    assert (tmp_path / "cli" / "rd_psnr.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--codecs", "gif"], "unknown codec"),
        (["--codecs", "cae"], "needs settings"),
    ],
)
def test_cli_eval_rejects_bad_arguments(dataset, tmp_path, capsys, args, message):
    code = cli_main(["eval", str(dataset), "--out", str(tmp_path / "x"), *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_eval_with_no_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = cli_main(["eval", str(tmp_path / "empty"), "--out", str(tmp_path / "x")])
    assert code == 2
    assert "no image files" in capsys.readouterr().err


def test_cli_eval_refuses_a_non_empty_output_without_force(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "avif.json").write_text("{}")  # an earlier run's codec, not in this one
    (out / "notes.txt").write_text("mine")
    args = ["eval", str(dataset), "--codecs", "jpeg:50", "-o", str(out), "--quiet"]
    assert cli_main(args) == 2
    assert "is not empty; pass --force" in capsys.readouterr().err
    assert (out / "avif.json").exists()


def test_cli_eval_force_replaces_an_earlier_run(ray_local, dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "avif.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    assert cli_main(["eval", str(dataset), "--codecs", "jpeg:50", "--out", str(out),
                     "--no-published", "--quiet", "--force"]) == 0
    err = capsys.readouterr().err
    assert "--out is deprecated and goes in the next release; use -o/--output" in err
    assert "removed 1 result files of an earlier run" in err
    assert not (out / "avif.json").exists() and (out / "notes.txt").read_text() == "mine"
    assert (out / "jpeg.json").exists()


def test_cli_eval_interrupted_writes_what_was_measured(ray_local, dataset, tmp_path, capsys,
                                                       monkeypatch):
    real_wait = evaluate.ray.wait
    calls = []

    def wait_then_interrupt(refs, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_wait(refs, num_returns=1)

    monkeypatch.setattr(evaluate.ray, "wait", wait_then_interrupt)
    out = tmp_path / "out"
    code = cli_main(["eval", str(dataset), "--codecs", "jpeg:20+50+80", "-o", str(out),
                     "--no-published", "--quiet"])
    assert code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"caeadmm eval: interrupted; 1 of 9 points done; partial results in {out}/"
    assert len(pd.read_csv(out / "per_image.csv")) == 1


def test_cli_eval_resume_measures_only_what_is_missing(ray_local, dataset, tmp_path, capsys):
    """A finished run gets a setting and a codec added: its rows are kept as they were (the
    timings too, which a second measurement would not repeat) and only the rest is measured."""
    out = tmp_path / "out"
    base = ["eval", str(dataset), "-o", str(out), "--no-published", "--quiet"]
    assert cli_main([*base, "--codecs", "jpeg:20+50"]) == 0
    before = pd.read_parquet(out / "per_image.parquet")
    assert cli_main([*base, "--codecs", "jpeg:20+50+80,webp:50", "--resume"]) == 0
    assert "--resume: 6 points of an earlier run found" in capsys.readouterr().err
    after = pd.read_parquet(out / "per_image.parquet")
    assert len(after) == 12 and not (out / evaluate.PARTIAL).exists()
    kept = after[after["setting"].isin(["20", "50"]) & (after["codec"] == "jpeg")]
    pd.testing.assert_frame_equal(kept.reset_index(drop=True), before)
    assert json.loads((out / "webp.json").read_text())["results"]["bpp"]


def test_a_killed_run_resumes_from_its_partial_rows(ray_local, dataset, tmp_path, capsys,
                                                    monkeypatch):
    """The run dies (an error, as a kill would) after some points: the rows saved so far are
    in the partial file, and --resume measures only the others."""
    real_wait = evaluate.ray.wait
    calls = []

    def wait_then_die(refs, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("killed")
        return real_wait(refs, num_returns=1)

    monkeypatch.setattr(evaluate, "SAVE_EVERY_S", 0.0)
    monkeypatch.setattr(evaluate.ray, "wait", wait_then_die)
    out = tmp_path / "out"
    args = ["eval", str(dataset), "--codecs", "jpeg:20+50+80", "-o", str(out),
            "--no-published", "--quiet"]
    with pytest.raises(RuntimeError, match="killed"):
        cli_main(args)
    saved = pd.read_parquet(out / evaluate.PARTIAL)
    assert len(saved) == 2 and not (out / "per_image.parquet").exists()
    monkeypatch.setattr(evaluate.ray, "wait", real_wait)
    assert cli_main([*args, "--resume"]) == 0
    rows = pd.read_parquet(out / "per_image.parquet")
    assert len(rows) == 9 and not (out / evaluate.PARTIAL).exists()
    merged = saved.merge(rows, on=list(saved.columns))
    assert len(merged) == 2  # the saved rows are in the result unchanged


def test_cli_eval_resume_refusals(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    args = ["eval", str(dataset), "--codecs", "jpeg:50", "-o", str(out), "--quiet"]
    assert cli_main([*args, "--resume", "--force"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    (out / evaluate.PARTIAL).write_bytes(b"PAR1 not really parquet")
    assert cli_main([*args, "--resume"]) == 2
    assert "cannot resume from" in capsys.readouterr().err
    assert (out / evaluate.PARTIAL).exists()  # nothing removed


def test_cli_eval_resume_with_other_codecs_keeps_every_earlier_point(ray_local, dataset,
                                                                      tmp_path, capsys):
    """Resumed with fewer codecs than the earlier run (the README's second eval line after its
    first): the points of the codecs and settings not asked for stay, in the tables, the
    JSON files and the partial rows, and only the missing points are measured."""
    out = tmp_path / "out"
    base = ["eval", str(dataset), "-o", str(out), "--no-published", "--quiet"]
    assert cli_main([*base, "--codecs", "jpeg:20+50,webp:50"]) == 0
    before = pd.read_parquet(out / "per_image.parquet")
    assert cli_main([*base, "--codecs", "jpeg:20+80", "--resume"]) == 0
    assert "all are kept" in capsys.readouterr().err
    after = pd.read_parquet(out / "per_image.parquet")
    assert len(after) == 12  # 3 images x (jpeg 20, 50, 80 and webp 50)
    merged = before.merge(after, on=list(before.columns))
    assert len(merged) == len(before)  # every earlier row, unchanged
    assert json.loads((out / "webp.json").read_text())["results"]["bpp"]
    assert list(after["codec"].unique()) == ["jpeg", "webp"]  # asked codecs first


def test_cli_eval_resume_refuses_other_images_and_removes_nothing(ray_local, dataset,
                                                                   tmp_path, capsys):
    out = tmp_path / "out"
    base = ["-o", str(out), "--no-published", "--quiet", "--codecs", "jpeg:50"]
    assert cli_main(["eval", str(dataset), *base]) == 0
    files = sorted(p.name for p in out.iterdir())
    images = [str(dataset / "im0.png"), str(dataset / "im1.png")]
    assert cli_main(["eval", *images, *base, "--resume"]) == 2
    assert "images that this run does not have (sub/im2.png)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == files
