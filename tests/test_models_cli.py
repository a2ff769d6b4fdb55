"""`caeadmm models`: a table that fits 100 columns, one model in full, --all, --json, and a
reader that goes away (`caeadmm models | head -2`)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caeadmm import zoo
from caeadmm.cli import main

ROOT = Path(__file__).resolve().parents[1]


def entry(name: str, **extra: object) -> dict:
    return {"name": name, "file": f"{name}.pt", "fingerprint": "ab" * 32,
            "sha256": "cd" * 32, **extra}


def kodak(bpp: float, psnr: float, ms_ssim: float) -> dict:
    return {"bpp": bpp, "psnr": psnr, "ms_ssim": ms_ssim}


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A registry of our own: write(models, default) makes CAEADMM_REGISTRY point at it."""

    def write(models: list[dict], default: str | None = None) -> Path:
        path = tmp_path / "registry.json"
        path.write_text(json.dumps({"default": default, "models": models}))
        monkeypatch.setenv("CAEADMM_REGISTRY", str(path))
        return path

    return write


def test_the_shipped_models_fit_100_columns_with_the_default_marked(monkeypatch, capsys):
    monkeypatch.delenv("CAEADMM_REGISTRY", raising=False)
    for args in (["models"], ["models", "--all"]):
        assert main(args) == 0
        lines = capsys.readouterr().out.splitlines()
        assert max(map(len, lines)) <= 100
        assert lines[0].split() == ["NAME", "METRIC", "KODAK", "BPP", "PSNR", "(dB)",
                                    "MS-SSIM", "SIZE"]
        default = next(m.name for m in zoo.list_models() if m.default)
        assert [line.split()[1] for line in lines if line.startswith("*")] == [default]
    current = [m for m in zoo.list_models() if not m.superseded]
    assert len(lines) > len(current) + 2 or len(current) == len(zoo.list_models())


def test_superseded_models_only_with_all(registry, capsys):
    registry([entry("old", superseded=True, kodak=kodak(0.3, 25, 0.93)),
              entry("new", kodak=kodak(0.25, 25.5, 0.94))], default="new")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "new" in out and "\n   old" not in out and "1 superseded models not shown (--all)" in out
    assert main(["models", "--all"]) == 0
    out = capsys.readouterr().out
    assert "old" in out and "not shown" not in out
    # the rows are sorted by rate within a metric: new (0.25) before old (0.30)
    assert out.index("new") < out.index("old")


def test_no_model_marked_superseded_shows_them_all(registry, capsys):
    registry([entry("a"), entry("b")])
    assert main(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:3]] == ["a", "b"]
    assert all(line.split()[2:4] == ["not", "measured"] for line in out[1:3])


def test_a_model_with_several_kodak_points_shows_their_range(registry, capsys):
    registry([entry("vr", metric="ms-ssim", quality_range=[1, 8],
                    kodak=[kodak(0.72, 28.8, 0.973), kodak(0.08, 22.9, 0.853)])])
    assert main(["models"]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[:5] == ["vr", "MS-SSIM", "0.080-0.720", "22.90-28.80", "0.8530-0.9730"]
    assert main(["models", "vr"]) == 0
    out = capsys.readouterr().out
    assert "0.080 bpp, PSNR 22.90 dB" in out and "0.720 bpp" in out
    assert "quality_range  [1, 8]" in out


def test_one_model_in_full(registry, capsys):
    long = "trained " + "for a long time " * 20
    registry([entry("m", kodak=kodak(0.245, 25.02, 0.9263), rate_lambda=768,
                    operating_point=long, superseded=True)])
    assert main(["models", "m"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("m  (superseded)")
    assert "rate_lambda  768" in out and "ab" * 32 in out and "for a long time" in out
    assert max(map(len, out.splitlines())) <= 100
    assert main(["models", "mm"]) == 2
    assert "no model named 'mm'; did you mean m?" in capsys.readouterr().err


def test_json_for_scripts(registry, capsys):
    registry([entry("old", superseded=True), entry("new", kodak=kodak(0.25, 25.5, 0.94),
                                                   metric="psnr")], default="new")
    assert main(["models", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in models] == ["new"]
    assert models[0]["default"] is True and models[0]["metric"] == "PSNR"
    assert models[0]["kodak"] == kodak(0.25, 25.5, 0.94) and models[0]["size_bytes"] is None
    assert main(["models", "--all", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["models", "old", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["superseded"] is True


class _ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_reader_that_goes_away_is_not_an_error(registry, monkeypatch):
    registry([entry("a")])
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["models"]) == 141  # as a shell reports a command that SIGPIPE stopped


def test_models_piped_into_head_prints_no_traceback():
    """The real pipe: the reader has closed it before the command writes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CAEADMM_REGISTRY", None)
    process = subprocess.Popen([sys.executable, "-m", "caeadmm", "models", "--all", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    process.stdout.close()  # as `head` does once it has its lines
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141, err.decode()
    assert b"BrokenPipeError" not in err and b"Traceback" not in err


def test_variable_rate_models_come_first_with_their_quality_range(registry, capsys):
    points = [{**kodak(0.05 * (q + 1), 24 + q, 0.9 + q / 100), "quality": q} for q in range(9)]
    photos = [{**p, "bpp": p["bpp"] * 1.1} for p in points]
    registry([entry("fixed", metric="ms-ssim", kodak=kodak(0.1, 24, 0.9)),
              entry("fixed-mse", metric="mse", kodak=kodak(0.1, 25, 0.8)),
              entry("vr-mse", metric="mse", kodak=points, default_quality=4),
              entry("vr", metric="ms-ssim", kodak=points, photos=photos, default_quality=4,
                    rate_lambda=32, rate_lambda_max=8192)], default="fixed")
    assert main(["models"]) == 0
    names = [row.lstrip("* ").split()[0] for row in capsys.readouterr().out.splitlines()[1:5]]
    assert names == ["vr", "vr-mse", "fixed", "fixed-mse"]
    registry([entry("fixed", metric="ms-ssim", kodak=kodak(0.1, 24, 0.9)),
              entry("vr", metric="ms-ssim", kodak=points, photos=photos, default_quality=4,
                    rate_lambda=32, rate_lambda_max=8192)], default="vr")
    assert main(["models"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:3]
    assert rows[0].split()[:4] == ["*", "vr", "MS-SSIM,", "q"] and "0-8" in rows[0]
    assert "0.050-0.450" in rows[0] and rows[1].split()[0] == "fixed"
    assert main(["models", "vr"]) == 0
    text = capsys.readouterr().out
    assert "DebPhotos37" in text and "default 4" in text and text.count("quality") >= 18
