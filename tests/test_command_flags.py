"""What the README promises of every command and job (issue 31, items 9 to 11): the flags
(`--version` everywhere, `-o/--force` where files are written, `--quiet` where progress is
shown), the trainers' `-o/--force/--quiet`, and one line instead of a traceback for the
mistakes a user makes: an output named as the other format, a file where a folder goes, a
missing file to `info`, a closed pipe, a relative input of a submitted job, an unknown model
to `eval`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_script, write_images

from caeadmm import __version__
from caeadmm.cli import build_parser
from caeadmm.cli import main as cli_main
from caeadmm.cli.flags import SUBMITTED_JOB_ENV

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted(p.name for p in (ROOT / "jobs").glob("*.py"))
ONLY_PRINT = {"info", "models"}  # they write no files
PROGRESS = {"compress", "decompress", "train", "eval", *JOBS}  # those that show progress
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _job_help(name: str, capsys) -> str:
    job = load_script(ROOT / "jobs" / name)
    with pytest.raises(SystemExit) as done:
        job.main(["--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def _check_promise(name: str, help_text: str) -> None:
    assert "--version" in help_text, name
    if name not in ONLY_PRINT:
        assert "-o " in help_text and "--output" in help_text, name
        assert "--force" in help_text, name
    if name in PROGRESS:
        assert "--quiet" in help_text, name


def test_the_readme_promise_holds_for_every_command(capsys):
    commands = _subcommands()
    assert {"compress", "decompress", "info", "models", "train", "eval"} <= set(commands)
    for name, parser in commands.items():
        _check_promise(name, parser.format_help())


@pytest.mark.parametrize("job", JOBS)
def test_the_readme_promise_holds_for_every_job(job, capsys):
    _check_promise(job, _job_help(job, capsys))


def test_the_readme_states_the_promise_as_it_holds():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "Every command and job takes `--version` (`caeadmm compress --version` too)" in readme
    assert "all but `caeadmm info` and `caeadmm models` (which only print)" in readme


@pytest.mark.parametrize("command", ["compress", "decompress", "info", "models", "train", "eval"])
def test_version_on_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli_main([command, "--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"caeadmm {__version__}"


# --- caeadmm train: --force, --quiet, -o a file, use_gpu without a GPU ----------------------

@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    write_images(folder, 3, 64, 72)
    return folder


def test_train_force_starts_afresh_and_quiet_prints_the_last_line_only(images, tmp_path,
                                                                        capsys):
    out = tmp_path / "run"
    args = ["train", "--config", SMOKE, "--images", str(images), "-o", str(out)]
    assert cli_main([*args, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines() == [f"done: model in {out / 'model.pt'}"]
    assert (out / "checkpoint.pt").is_file() and (out / "log.csv").is_file()
    (out / "notes.txt").write_text("mine")
    # Again: the finished run is resumed (nothing trained) unless --force.
    assert cli_main(args) == 0
    assert "resumed from" in capsys.readouterr().out
    assert cli_main([*args, "--force"]) == 0
    lines = capsys.readouterr().out
    assert "--force: removed the earlier run's checkpoint.pt, model.pt, log.csv" in lines
    assert "resumed from" not in lines and "done: final eval PSNR" in lines
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files go
    assert cli_main([*args, "--no-resume", "--quiet"]) == 0  # the old spelling
    assert "--no-resume is deprecated" in capsys.readouterr().err


def test_train_refuses_a_file_as_output_and_says_when_it_uses_the_cpu(images, tmp_path,
                                                                      capsys, monkeypatch):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"a photo")
    args = ["train", "--config", SMOKE, "--images", str(images)]
    assert cli_main([*args, "-o", str(photo)]) == 2
    assert f"-o {photo} is a file; the run needs a folder" in capsys.readouterr().out
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli_main([*args, "-o", str(tmp_path / "gpu"), "use_gpu=true", "--quiet"]) == 0
    assert "asks for a GPU (use_gpu: true), but torch finds no CUDA device here: training " \
           "on the CPU" in capsys.readouterr().err


# --- jobs/train.py: -o, --force, --quiet, relative shards in a submitted job -----------------

@pytest.fixture(scope="module")
def train_job():
    return load_script(ROOT / "jobs" / "train.py")


def _configure(job, argv: list[str]):
    return job.configure(job.build_parser().parse_intermixed_args(argv))


def test_train_job_output_names_the_run_folder(train_job, tmp_path):
    cfg = _configure(train_job, ["--config", SMOKE, "-o", str(tmp_path / "runs" / "r75")])
    assert (cfg.storage_path, cfg.run_name) == (str(tmp_path / "runs"), "r75")
    cfg = _configure(train_job, ["-o", "s3://bucket/runs/r9/", "--config", SMOKE])
    assert (cfg.storage_path, cfg.run_name) == ("s3://bucket/runs", "r9")
    with pytest.raises(train_job.ConfigError, match="drop storage_path="):
        _configure(train_job, ["-o", str(tmp_path / "r"), f"storage_path={tmp_path}"])
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"x")
    with pytest.raises(train_job.ConfigError, match="is a file"):
        _configure(train_job, ["-o", str(photo)])


def test_train_job_force_removes_the_run_folder(train_job, tmp_path):
    run = tmp_path / "runs" / "r1"
    (run / "checkpoint_0000008").mkdir(parents=True)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    cfg = _configure(train_job, ["-o", str(run)])
    assert train_job.remove_run(cfg) == str(run)
    assert not run.exists() and run.parent.is_dir()
    assert train_job.remove_run(cfg) is None


def test_submitted_train_job_refuses_relative_shards_with_advice(train_job, tmp_path,
                                                                 monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(SUBMITTED_JOB_ENV, "{}")
    argv = ["--config", SMOKE, f"storage_path={tmp_path}", "shards=runs/shards_p32"]
    assert train_job.main(argv) == 2  # before any Ray is started
    err = capsys.readouterr().err
    assert "shards=runs/shards_p32 is relative" in err
    assert "e.g. `shards=$PWD/runs/shards_p32` in the submitting shell" in err
    assert "_manifest.json" not in err
    (tmp_path / "runs" / "shards_p32").mkdir(parents=True)  # uploaded with the code: fine
    _configure(train_job, argv)
    with pytest.raises(ValueError, match="-o runs/r1 is relative"):
        _configure(train_job, ["-o", "runs/r1"])


# --- one line instead of a traceback ---------------------------------------------------------

def test_compress_refuses_an_image_name_for_its_stream(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    write_images(tmp_path / "in", 1, 32, 32)
    (source,) = (tmp_path / "in").iterdir()
    assert cli_main(["compress", str(source), "-o", str(photo)]) == 2
    assert f"-o {photo} names a PNG image, but the output is a .cae stream; name it " \
           f"{tmp_path / 'photo.cae'}" in capsys.readouterr().err
    assert not photo.exists()
    stream = tmp_path / "s.cae"
    stream.write_bytes(b"CAE")
    assert cli_main(["decompress", str(stream), "-o", str(tmp_path / "back.cae")]) == 2
    assert "names a .cae stream, but the output is an image" in capsys.readouterr().err


def test_info_on_a_missing_file_or_a_folder(tmp_path, capsys):
    assert cli_main(["info", str(tmp_path / "missing.cae"), str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"caeadmm info: {tmp_path / 'missing.cae'}: no such file\n" in err
    assert f"caeadmm info: {tmp_path}: is a folder; give its .cae files" in err
    assert "Errno" not in err


def test_a_closed_pipe_ends_the_command_quietly():
    """`caeadmm models | head -2`: the reader is gone before the listing is written."""
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "caeadmm", "models"], stdout=write,
                            stderr=subprocess.PIPE, text=True, env=env, timeout=120)
    os.close(write)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert result.returncode == 141


def test_eval_checks_model_names_before_starting_ray(tmp_path, capsys):
    write_images(tmp_path / "in", 1, 32, 32)
    out = tmp_path / "out"
    assert cli_main(["eval", str(tmp_path / "in"), "--codecs", "cae:no-such-model,jpeg",
                     "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cae:no-such-model: no model named 'no-such-model'" in err
    assert "[ray]" not in err and not out.exists()
