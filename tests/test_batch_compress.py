"""Corpus compression on Ray: interrupted, rerun, bad files listed, nothing done twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import (
    default_sigint,
    load_script,
    save_tiny_model,
    test_image,
    write_images,
)
from PIL import Image

from caeadmm import codec
from caeadmm.checkpoint import load_model
from caeadmm.distributed.batch_compress import Interrupted, compress_corpus
from caeadmm.files import is_temp_file, temp_path

ROOT = Path(__file__).resolve().parents[1]


def load_job():
    return load_script(ROOT / "jobs" / "compress.py")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


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


@pytest.mark.slow  # two corpus jobs on Ray: about 20 s on 2 busy cores
def test_interrupted_run_and_rerun(ray_local, checkpoint, corpus, tmp_path, capsys):
    root, good = corpus
    out = tmp_path / "out"
    rows = []

    def interrupt_after_two(row: dict) -> None:
        rows.append(row)
        if len(rows) == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as stopped:
        compress_corpus([root], out, str(checkpoint), on_row=interrupt_after_two)
    partial = pq.read_table(out / "manifest.parquet").to_pylist()
    # The manifest lists what was done: the two rows seen, and any output finished meanwhile.
    ok = [r for r in partial if r["status"] == "ok"]
    assert len(partial) >= 2 and all(Path(r["output"]).is_file() for r in ok)
    assert (stopped.value.done, stopped.value.total) == (len(ok), len(good) + 1)
    time.sleep(2)  # the fixture's Ray goes on: let its actors finish what they hold
    written = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*.cae")}
    # What a run killed in the middle of a write leaves behind:
    temp_path(out / "a" / "img2.cae").write_bytes(b"partial")
    users_own = out / "a" / ".notes.abcdef12.part"  # not ours: it must stay
    users_own.write_bytes(b"notes")
    # An output cut short by something else: counted done by its header alone, before.
    cut = sorted(written)[0]
    cut.write_bytes(cut.read_bytes()[:60])
    del written[cut]

    job = load_job()
    capsys.readouterr()
    assert job.main([str(root), "-o", str(out), "--model", str(checkpoint)]) == 1  # broken.png
    done = len(written)
    captured = capsys.readouterr()
    assert (f"compressed {len(good) - done}, 1 of them damaged ones made again, already done "
            f"{done}, failed 1") in captured.out
    assert f"{cut} is damaged (truncated: header says" in captured.err

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
        image = codec.decompress(dst.read_bytes(), model)
        assert image.shape == codec.load_image(src).shape
        assert row["bpp"] == pytest.approx(8 * row["bytes"] / (image.shape[0] * image.shape[1]))
    # Done files were not compressed again; no partial file of ours is left.
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in written} == written
    assert not [p for p in out.rglob("*") if is_temp_file(p.name)]
    assert users_own.read_bytes() == b"notes"
    assert len(list(out.rglob("*.cae"))) == len(good)


def _start_job(args: list[str]) -> subprocess.Popen:
    """jobs/compress.py in a session of its own, as a terminal would run it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / "compress.py"), *args],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=default_sigint)


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def _alive(pids: set[int]) -> list[str]:
    alive = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in "ZX":
            alive.append(stat[: stat.index(")") + 1])
    return alive


@pytest.fixture
def many(tmp_path) -> Path:
    write_images(tmp_path / "many", 96, 120, 160)
    return tmp_path / "many"


def _wait_for_first_output(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 300
    while not list(out.glob("*.cae")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.slow  # a job of many images, killed: about 30 s on 2 busy cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_driver_leaves_no_process_and_no_partial_file(checkpoint, many, tmp_path):
    out = tmp_path / "out"
    proc = _start_job([str(many), "-o", str(out), "--model", str(checkpoint), "--num-cpus", "2"])
    _wait_for_first_output(proc, out)
    run = _descendants(proc.pid)  # Ray's GCS, raylet, agents, actors
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    deadline = time.monotonic() + 10
    while _alive(run) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive(run) == []
    assert not [p.name for p in out.iterdir() if is_temp_file(p.name)]


@pytest.mark.slow  # a job of many images, interrupted: about 30 s on 2 busy cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_writes_the_manifest_of_what_finished(checkpoint, many, tmp_path):
    out = tmp_path / "out"
    proc = _start_job([str(many), "-o", str(out), "--model", str(checkpoint), "--num-cpus", "2"])
    _wait_for_first_output(proc, out)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in stderr and " E " not in stderr  # nor Ray's core_worker errors
    done = sorted(p.name for p in out.glob("*.cae"))
    assert stderr.strip().splitlines()[-1] == (
        f"compress: interrupted; {len(done)} of 96 done; manifest: {out / 'manifest.parquet'}")
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sorted(Path(r["output"]).name for r in rows) == done
    assert not [p.name for p in out.iterdir() if is_temp_file(p.name)]


def test_old_flag_spellings_still_work_with_a_note(capsys):
    job = load_job()
    args = job.build_parser().parse_args(["in", "-o", "/out", "--no-progress"])
    assert args.quiet is True
    assert "--no-progress is deprecated and goes in the next release; use --quiet" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit) as exit_info:
        job.build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0


def test_a_failed_file_fails_the_job_and_a_file_as_output_is_refused(ray_local, checkpoint,
                                                                     tmp_path, capsys):
    """Like `caeadmm compress`: exit 1 when any input failed (here a missing one), and -o
    naming an existing file is a usage error in one line, not a FileExistsError."""
    job = load_job()
    image = tmp_path / "photo.png"
    Image.fromarray(test_image(24, 32, seed=1)).save(image)
    out = tmp_path / "out"
    args = ["-o", str(out), "--model", str(checkpoint), "--quiet"]
    assert job.main([str(tmp_path / "missing.png"), str(image), *args]) == 1
    captured = capsys.readouterr()
    assert "compressed 1, already done 0, failed 1" in captured.out
    assert "1 files failed" in captured.err
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert sorted(r["status"] for r in rows) == ["failed", "ok"]

    assert job.main([str(image), "-o", str(image), "--model", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert f"-o {image} is a file; the outputs need a folder" in err
    assert "Traceback" not in err
