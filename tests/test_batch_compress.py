"""Corpus compression on Ray: interrupted, rerun, bad files listed, nothing done twice."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import test_image, tiny_model
from PIL import Image

from caeadmm import image_codec
from caeadmm.checkpoint import load_model, save_checkpoint
from caeadmm.config import TrainConfig
from caeadmm.distributed.batch_compress import compress_corpus
from caeadmm.files import is_temp_file, temp_path

ROOT = Path(__file__).resolve().parents[1]


def load_job():
    spec = importlib.util.spec_from_file_location("jobs_compress", ROOT / "jobs" / "compress.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = tiny_model()
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, model=model, admm=None, optimizer=None, step=0,
                    config=TrainConfig(model=model.config))
    return path


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, list[Path]]:
    """Six good images in two folders and one broken file."""
    root = tmp_path / "corpus"
    good = []
    for i in range(6):
        path = root / ("ab"[i % 2]) / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test_image(30 + 7 * i, 41, seed=i)).save(path)
        good.append(path)
    (root / "a" / "broken.png").write_bytes(b"not an image")
    return root, good


def test_interrupted_run_and_rerun(ray_local, checkpoint, corpus, tmp_path, capsys):
    root, good = corpus
    out = tmp_path / "out"
    rows = []

    def interrupt_after_two(row: dict) -> None:
        rows.append(row)
        if len(rows) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compress_corpus([root], out, str(checkpoint), on_row=interrupt_after_two)
    partial = pq.read_table(out / "manifest.parquet").to_pylist()
    assert len(partial) == 2  # the manifest lists what was done before the interruption
    written = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.cae")}
    assert written, "the first run wrote nothing before it was interrupted"
    # What a run killed in the middle of a write leaves behind:
    temp_path(out / "a" / "img2.cae").write_bytes(b"partial")
    users_own = out / "a" / ".notes.abcdef12.part"  # not ours: it must stay
    users_own.write_bytes(b"notes")

    job = load_job()
    capsys.readouterr()
    assert job.main([str(root), "-o", str(out), "--model", str(checkpoint)]) == 0
    done = len(written)
    summary = f"compressed {len(good) - done}, already done {done}, failed 1"
    assert summary in capsys.readouterr().out

    manifest = {Path(r["source"]).name: r for r in pq.read_table(out / "manifest.parquet")
                .to_pylist()}
    assert sorted(manifest) == sorted(["broken.png", *(p.name for p in good)])
    assert manifest["broken.png"]["status"] == "failed"
    assert manifest["broken.png"]["output"] == ""
    assert "ImageLoadError" in manifest["broken.png"]["error"]
    model = load_model(checkpoint)
    for src in good:
        row = manifest[src.name]
        dst = out / src.parent.name / (src.stem + ".cae")
        assert (row["status"], row["output"], row["error"]) == ("ok", str(dst), None)
        assert row["bytes"] == dst.stat().st_size
        image = image_codec.decompress(dst.read_bytes(), model)
        assert image.shape == image_codec.load_image(src).shape
        assert row["bpp"] == pytest.approx(8 * row["bytes"] / (image.shape[0] * image.shape[1]))
    # Done files were not compressed again; no partial file of ours is left.
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in written} == written
    assert not [p for p in out.rglob("*") if is_temp_file(p.name)]
    assert users_own.read_bytes() == b"notes"
    assert len(list(out.rglob("*.cae"))) == len(good)
