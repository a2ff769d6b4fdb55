"""The `caeadmm compress | decompress | info | models` commands, run in-process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    default_sigint,
    save_tiny_model,
    test_image,
    wait_until_gone,
    write_images,
)
from PIL import Image

import caeadmm
from caeadmm import codec
from caeadmm.bitstream import read_header
from caeadmm.cli import flags, main
from caeadmm.cli.common import cached_model

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_registry")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt", seed=0)


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Two RGB images (one nested), a grayscale one and a broken one."""
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(test_image(40, 50)).save(root / "a.png")
    Image.fromarray(test_image(33, 20, seed=1)).save(root / "sub" / "b.jpg", quality=95)
    Image.fromarray(test_image(17, 70, seed=2)[..., 0]).save(root / "gray.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def no_partial_files(root: Path) -> bool:
    return not any(p.name.endswith(".part") for p in root.rglob("*"))


def test_compress_decompress_info_one_file(checkpoint, corpus, tmp_path, capsys):
    src, cae, png = corpus / "a.png", tmp_path / "a.cae", tmp_path / "a-out.png"
    assert main(["compress", str(src), "-o", str(cae), "--model", str(checkpoint)]) == 0
    model = cached_model(str(checkpoint))
    assert cae.read_bytes() == codec.compress(codec.load_image(src), model)
    assert main(["decompress", str(cae), "-o", str(png), "--model", str(checkpoint)]) == 0
    decoded = np.asarray(Image.open(png))
    np.testing.assert_array_equal(decoded, codec.decompress(cae.read_bytes(), model))
    capsys.readouterr()
    assert main(["info", str(cae)]) == 0
    out = capsys.readouterr().out
    assert "image:              50x40 RGB" in out
    assert f"bpp:                {8 * cae.stat().st_size / 2000:.4f}" in out
    assert model.fingerprint()[:16].hex() in out


def test_directories_recurse_and_a_bad_file_fails_alone(checkpoint, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["compress", str(corpus), "-o", str(out), "--model", str(checkpoint)])
    assert code == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.cae")) == [
        "a.cae", "gray.cae", "sub/b.cae",
    ]
    err = capsys.readouterr().err
    failures = [line for line in err.splitlines() if "broken.png" in line]
    assert len(failures) == 1 and failures[0].startswith("caeadmm compress: ")
    assert "1 of 4 files failed" in err
    assert no_partial_files(out)

    back = tmp_path / "back"
    assert main(["decompress", str(out), "-o", str(back), "--model", str(checkpoint)]) == 0
    assert sorted(p.relative_to(back).as_posix() for p in back.rglob("*.png")) == [
        "a.png", "gray.png", "sub/b.png",
    ]
    assert Image.open(back / "gray.png").mode == "L"
    assert Image.open(back / "gray.png").size == (70, 17)
    assert Image.open(back / "sub" / "b.png").mode == "RGB"


def test_outputs_go_beside_inputs_without_o(checkpoint, corpus):
    assert main(["compress", str(corpus / "a.png"), "--model", str(checkpoint)]) == 0
    assert (corpus / "a.cae").is_file()
    # Decompressing beside it would replace the original a.png: refused without --force.
    assert main(["decompress", str(corpus / "a.cae"), "--model", str(checkpoint)]) == 1


def test_no_overwrite_without_force(checkpoint, corpus, tmp_path, capsys):
    dst = tmp_path / "a.cae"
    dst.write_bytes(b"precious")
    args = ["compress", str(corpus / "a.png"), "-o", str(dst), "--model", str(checkpoint)]
    assert main(args) == 1
    assert dst.read_bytes() == b"precious"
    err = capsys.readouterr().err
    assert "exists (use --force to overwrite, --skip-existing to keep it)" in err
    assert main([*args, "--skip-existing"]) == 1  # not a .cae stream: not ours to replace
    assert "is not an output of ours" in capsys.readouterr().err
    assert dst.read_bytes() == b"precious"
    assert main([*args, "--force"]) == 0
    assert dst.read_bytes()[:4] == b"\x89CAE"


def test_corrupt_stream_is_a_one_line_error(checkpoint, corpus, tmp_path, capsys):
    good = tmp_path / "good.cae"
    main(["compress", str(corpus / "a.png"), "-o", str(good), "--model", str(checkpoint)])
    bad = tmp_path / "bad.cae"
    bad.write_bytes(good.read_bytes()[:-3])
    capsys.readouterr()
    code = main(["decompress", str(bad), str(good), "-o", str(tmp_path / "out"),
                 "--model", str(checkpoint)])
    assert code == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"caeadmm decompress: {bad}: truncated: header says "
                      f"{len(good.read_bytes())} bytes, the stream has {len(bad.read_bytes())}")
    assert (tmp_path / "out" / "good.png").is_file()
    assert main(["info", str(bad)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["decompress", str(good), "-o", str(tmp_path / "small.png"),
                 "--model", str(checkpoint), "--max-pixels", "100"]) == 1
    assert "exceeds the limit of 100" in capsys.readouterr().err
    assert main(["decompress", str(good), "-o", str(tmp_path / "x.nope"),
                 "--model", str(checkpoint)]) == 1
    assert "unknown image file extension" in capsys.readouterr().err


def test_wrong_model_is_refused_with_the_fingerprint(checkpoint, corpus, tmp_path, capsys):
    other = save_tiny_model(tmp_path / "other.pt", seed=9)
    cae = tmp_path / "a.cae"
    main(["compress", str(corpus / "a.png"), "-o", str(cae), "--model", str(checkpoint)])
    capsys.readouterr()
    assert main(["decompress", str(cae), "-o", str(tmp_path / "a.png"),
                 "--model", str(other)]) == 1
    err = capsys.readouterr().err
    needed = cached_model(str(checkpoint)).fingerprint()[:16].hex()
    assert f"stream needs the model with fingerprint {needed}" in err
    assert not (tmp_path / "a.png").exists()


def test_without_a_model_the_error_says_what_to_pass(corpus, tmp_path, capsys):
    assert main(["compress", str(corpus / "a.png"), "-o", str(tmp_path / "a.cae")]) == 2
    assert "pass --model PATH" in capsys.readouterr().err
    assert main(["compress", str(corpus / "a.png"), "--model", "no-such-model"]) == 2
    assert "no model named 'no-such-model'" in capsys.readouterr().err
    assert main(["models"]) == 0
    assert "No models are registered" in capsys.readouterr().err


def test_registered_models_are_found_by_name_and_fingerprint(
    checkpoint, corpus, tmp_path, monkeypatch, capsys
):
    fingerprint = cached_model(str(checkpoint)).fingerprint().hex()
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({
        "default": "tiny-test",
        "models": [{
            "name": "tiny-test", "file": str(checkpoint), "fingerprint": fingerprint,
            "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
            "operating_point": "random weights, for tests",
        }],
    }))
    monkeypatch.setenv("CAEADMM_REGISTRY", str(registry))
    assert main(["models", "tiny-test"]) == 0  # the full description (tests/test_models_cli.py)
    out = capsys.readouterr().out
    assert "tiny-test" in out and fingerprint in out and "random weights" in out
    assert "not measured" in out  # no Kodak figures in this entry
    assert "MS-SSIM " in out  # no distortion weights: the default mix
    cae = tmp_path / "a.cae"
    assert main(["compress", str(corpus / "a.png"), "-o", str(cae)]) == 0  # the default
    assert main(["decompress", str(cae), "-o", str(tmp_path / "a.png")]) == 0  # by fingerprint
    assert main(["info", str(cae)]) == 0
    assert "(registered model tiny-test)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kodak, shown",
    [
        ({"bpp": 0.2986, "psnr": 24.991, "ms_ssim": 0.92634},
         "0.299 bpp, PSNR 24.99 dB, MS-SSIM 0.9263"),
        ({"bpp": 0.3, "psnr": 25.0}, "model registry"),  # ms_ssim missing: unreadable
        ("0.3 bpp", "model registry"),
    ],
)
def test_models_shows_the_kodak_figures_or_refuses_malformed_ones(
    checkpoint, tmp_path, monkeypatch, capsys, kodak, shown
):
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"default": None, "models": [{
        "name": "m", "file": str(checkpoint), "fingerprint": "00", "sha256": "ab" * 32,
        "kodak": kodak,
    }]}))
    monkeypatch.setenv("CAEADMM_REGISTRY", str(registry))
    rc = main(["models", "m"])
    out = capsys.readouterr()
    if shown == "model registry":
        assert rc == 2 and "is unreadable" in out.err and "'kodak'" in out.err
    else:
        assert rc == 0 and shown in out.out


def test_models_names_the_distortion_each_model_was_trained_for(
    checkpoint, tmp_path, monkeypatch, capsys
):
    def entry(name: str, **extra: object) -> dict:
        return {"name": name, "file": str(checkpoint), "fingerprint": "00", "sha256": "ab" * 32,
                **extra}

    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"default": None, "models": [
        entry("mix"), entry("mse", distortion={"w_msssim": 0, "w_ssim": 0, "w_mse": 1e5}),
        entry("ssim", distortion={"w_msssim": 0, "w_mse": 1e5}),
    ]}))
    monkeypatch.setenv("CAEADMM_REGISTRY", str(registry))
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert " METRIC " in lines[0]
    assert {line.split()[0]: line.split()[1] for line in lines[1:4]} == {
        "mix": "MS-SSIM", "mse": "MSE", "ssim": "MS-SSIM"}


def test_damaged_registered_model_is_refused(checkpoint, corpus, tmp_path, monkeypatch, capsys):
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"default": "m", "models": [{
        "name": "m", "file": str(checkpoint), "fingerprint": "00", "sha256": "ab" * 32,
    }]}))
    monkeypatch.setenv("CAEADMM_REGISTRY", str(registry))
    assert main(["compress", str(corpus / "a.png"), "-o", str(tmp_path / "x.cae")]) == 2
    assert "damaged or replaced" in capsys.readouterr().err


def test_workers_give_the_same_bytes(checkpoint, corpus, tmp_path):
    (corpus / "broken.png").unlink()
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["compress", str(corpus), "-o", str(one), "--model", str(checkpoint)]) == 0
    assert main(["compress", str(corpus), "-o", str(two), "--model", str(checkpoint),
                 "--workers", "2"]) == 0
    for path in one.rglob("*.cae"):
        assert (two / path.relative_to(one)).read_bytes() == path.read_bytes()


def test_usage_errors(checkpoint, corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compress"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", str(corpus), "--workers", "0"])
    assert exit_info.value.code == 2
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["compress", str(corpus), "-o", str(a_file), "--model", str(checkpoint)]) == 2
    assert "outputs need a directory" in capsys.readouterr().err


def test_colliding_outputs_are_refused(checkpoint, corpus, tmp_path, capsys):
    Image.fromarray(test_image(8, 8)).save(corpus / "a.bmp")  # a.png and a.bmp -> a.cae
    out = tmp_path / "out"
    assert main(["compress", str(corpus / "a.png"), str(corpus / "a.bmp"), "-o", str(out),
                 "--model", str(checkpoint)]) == 1
    assert "is also the output of" in capsys.readouterr().err
    assert (out / "a.cae").is_file()


def test_skip_existing_keeps_good_outputs_and_redoes_damaged_ones(
    checkpoint, corpus, tmp_path, capsys
):
    (corpus / "broken.png").unlink()
    out = tmp_path / "out"
    args = ["compress", str(corpus), "-o", str(out), "--model", str(checkpoint)]
    assert main(args) == 0
    good = {p: p.read_bytes() for p in out.rglob("*.cae")}
    kept = out / "a.cae"
    stamp = kept.stat().st_mtime_ns
    cut = out / "gray.cae"
    cut.write_bytes(good[cut][:60])  # header whole, payload cut short
    flipped = out / "sub" / "b.cae"
    flipped.write_bytes(good[flipped][:-1] + bytes([good[flipped][-1] ^ 1]))  # checksum fails
    capsys.readouterr()
    assert main([*args, "--skip-existing"]) == 0
    captured = capsys.readouterr()
    assert f"{kept}: already done (checked), skipped" in captured.out
    assert "replaced a damaged output: truncated" in captured.out
    assert "replaced a damaged output: checksum mismatch" in captured.out
    assert "1 already done, 2 damaged and made again" in captured.err
    assert kept.stat().st_mtime_ns == stamp  # not written again
    assert {p: p.read_bytes() for p in out.rglob("*.cae")} == good
    with pytest.raises(SystemExit):  # one or the other
        main([*args, "--skip-existing", "--force"])

    back = tmp_path / "back"
    dargs = ["decompress", str(out), "-o", str(back), "--model", str(checkpoint)]
    assert main(dargs) == 0
    (back / "a.png").write_bytes((back / "a.png").read_bytes()[:100])
    capsys.readouterr()
    assert main([*dargs, "--skip-existing"]) == 0
    captured = capsys.readouterr()
    assert "2 already done, 1 damaged and made again" in captured.err
    assert Image.open(back / "a.png").size == (50, 40)


def test_skip_existing_redoes_outputs_of_another_model(checkpoint, corpus, tmp_path, capsys):
    """Outputs of another model are whole streams, but not this run's: each is made again,
    with a line that says why; a rerun with the same model then keeps them all."""
    (corpus / "broken.png").unlink()
    other = save_tiny_model(tmp_path / "other.pt", seed=1)
    out = tmp_path / "out"
    assert main(["compress", str(corpus), "-o", str(out), "--model", str(checkpoint)]) == 0
    args = ["compress", str(corpus), "-o", str(out), "--model", str(other), "--skip-existing"]
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.count("(replaced an output made with another model (fingerprint ") == 3
    assert f"not {other} (fingerprint " in captured.out
    assert "0 already done, 0 damaged and made again, 3 made with another model or quality " \
        "and made again" in captured.err
    fingerprint = cached_model(str(other)).fingerprint()[:16]
    assert all(read_header(p.read_bytes()).fingerprint == fingerprint for p in out.rglob("*.cae"))
    assert main(args) == 0
    assert "3 already done, 0 damaged and made again" in capsys.readouterr().err


def test_skip_existing_judges_an_output_another_run_wrote_meanwhile(
    checkpoint, corpus, tmp_path, monkeypatch, capsys
):
    """Two runs with --skip-existing into one folder: an output that the other run writes
    between this run's check and its write is kept when it checks out (not "exists")."""
    image = corpus / "a.png"
    out = tmp_path / "out"
    assert main(["compress", str(image), "-o", str(out) + "/", "--model", str(checkpoint)]) == 0
    made = (out / "a.cae").read_bytes()
    (out / "a.cae").unlink()
    load = codec.load_image

    def the_other_run_finishes_first(path):
        (out / "a.cae").write_bytes(made)
        return load(path)

    monkeypatch.setattr(codec, "load_image", the_other_run_finishes_first)
    capsys.readouterr()
    assert main(["compress", str(image), "-o", str(out) + "/", "--model", str(checkpoint),
                 "--skip-existing"]) == 0
    captured = capsys.readouterr()
    assert "made meanwhile by another run (checked), skipped" in captured.out
    assert "exists" not in captured.err


def test_an_alpha_channel_and_a_looping_link_are_told_in_one_line(
    checkpoint, tmp_path, capsys
):
    """A palette PNG with transparency: one note at the end of its line, not Python's
    UserWarning with a file and source line; a symbolic link that loops is said to be one."""
    palette = Image.fromarray(np.arange(400, dtype=np.uint8).reshape(20, 20) % 4, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette.save(tmp_path / "palette.png", transparency=bytes([0, 128, 255, 255]))
    (tmp_path / "loop.png").symlink_to("loop.png")
    (tmp_path / "dangling.png").symlink_to("nowhere.png")
    out = tmp_path / "out"
    assert main(["compress", str(tmp_path / "palette.png"), str(tmp_path / "loop.png"),
                 str(tmp_path / "dangling.png"), "-o", str(out), "--model",
                 str(checkpoint)]) == 1
    captured = capsys.readouterr()
    (line,) = [s for s in captured.out.splitlines() if "palette.png" in s]
    assert line.endswith("bpp; note: alpha channel dropped (composited over white)")
    assert "Warning" not in captured.err
    assert f"loop.png: is a symbolic link that loops ({tmp_path / 'loop.png'} -> loop.png)" \
        in captured.err
    assert "dangling.png: is a broken symbolic link" in captured.err


def test_decompress_pixel_limit_from_the_flag_or_the_environment(
    checkpoint, corpus, tmp_path, monkeypatch, capsys
):
    """--max-pixels N, else $CAEADMM_MAX_PIXELS, else Pillow's limit; "none" lifts it."""
    cae = tmp_path / "a.cae"
    assert main(["compress", str(corpus / "a.png"), "-o", str(cae), "--model",
                 str(checkpoint)]) == 0  # 50 x 40 = 2,000 pixels
    args = ["decompress", str(cae), "-o", str(tmp_path / "a.png"), "--model", str(checkpoint),
            "--force"]
    monkeypatch.setenv("CAEADMM_MAX_PIXELS", "1999")
    capsys.readouterr()
    assert main(args) == 1
    assert "50x40 = 2000 pixels exceeds the limit of 1999" in capsys.readouterr().err
    assert main([*args, "--max-pixels", "2000"]) == 0  # the flag before the variable
    assert main([*args, "--max-pixels", "1,999"]) == 1
    monkeypatch.setenv("CAEADMM_MAX_PIXELS", "2_000")
    assert main(args) == 0
    monkeypatch.setenv("CAEADMM_MAX_PIXELS", "lots")
    capsys.readouterr()
    assert main(args) == 2
    assert "$CAEADMM_MAX_PIXELS=lots is not a positive number" in capsys.readouterr().err
    assert main([*args, "--max-pixels", "none"]) == 0


def _run_cli_in_session(args: list[str], tmp_path: Path) -> subprocess.Popen:
    """The CLI in a process of its own session (as a terminal's job), Python's output unbuffered."""
    registry = tmp_path / "empty-registry.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "PYTHONUNBUFFERED": "1", "CAEADMM_REGISTRY": str(registry)}
    return subprocess.Popen([sys.executable, "-m", "caeadmm", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=default_sigint)


@pytest.fixture
def big_corpus(tmp_path) -> Path:
    """Enough work that a run with two workers is still busy when the test stops it."""
    write_images(tmp_path / "many", 96, 160, 200)
    return tmp_path / "many"


def _first_output_line(proc: subprocess.Popen) -> str:
    for line in proc.stdout:
        if " -> " in line:
            return line
    pytest.fail(f"the run ended before writing anything: {proc.stderr.read()}")


@pytest.mark.slow  # a worker pool on many images, killed: about 15 s on 2 busy cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_parent(checkpoint, big_corpus, tmp_path):
    out = tmp_path / "out"
    proc = _run_cli_in_session(["compress", str(big_corpus), "-o", str(out), "--model",
                                str(checkpoint), "--workers", "2"], tmp_path)
    _first_output_line(proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_until_gone(proc.pid, 10) == []  # workers and multiprocessing's tracker
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no partial file
    assert len(list(out.glob("*.cae"))) < 96


@pytest.mark.slow  # a run on many images, interrupted: about 10 s each on 2 busy cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_prints_one_line_and_exits_130(checkpoint, big_corpus, tmp_path, workers):
    out = tmp_path / "out"
    proc = _run_cli_in_session(["compress", str(big_corpus), "-o", str(out), "--model",
                                str(checkpoint), "--workers", workers], tmp_path)
    _first_output_line(proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("caeadmm compress: interrupted; ") and last.endswith(" of 96 done")
    assert wait_until_gone(proc.pid, 10) == []
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    done = int(last.split("; ")[1].split()[0])
    # N counts the files reported done; a worker may finish one as the interruption lands.
    assert done <= len(list(out.glob("*.cae"))) <= done + int(workers) - 1 < 96


def test_one_flag_style(checkpoint, corpus, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"caeadmm {caeadmm.__version__}"
    # -o x.cae with two inputs: refused, and no directory named x.cae
    target = tmp_path / "x.cae"
    assert main(["compress", str(corpus / "a.png"), str(corpus / "gray.png"), "-o", str(target),
                 "--model", str(checkpoint)]) == 2
    assert "looks like a file name" in capsys.readouterr().err
    assert not target.exists()
    assert main(["compress", str(corpus / "a.png"), str(corpus / "gray.png"), "-o",
                 f"{target}/", "--model", str(checkpoint), "--quiet"]) == 0
    assert (target / "a.cae").is_file()  # asked for with a trailing /


def test_outputs_of_submitted_jobs_must_be_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(flags.SUBMITTED_JOB_ENV, raising=False)
    assert flags.resolve_output("runs/x") == str(tmp_path / "runs" / "x")
    assert flags.resolve_output("s3://bucket/x") == "s3://bucket/x"
    monkeypatch.setenv(flags.SUBMITTED_JOB_ENV, "{}")  # what `ray job submit` sets
    assert flags.resolve_output("/abs/x") == "/abs/x"
    with pytest.raises(ValueError, match=r"pass an absolute path, e.g. `--output \$PWD/runs/x`"):
        flags.resolve_output("runs/x")
    with pytest.raises(ValueError, match=r"`storage_path=\$PWD/runs`"):
        flags.resolve_output("runs", "storage_path=")


@pytest.mark.parametrize("layout, shown", [("predicted", "whole image (latent 7x5), predicted"),
                                           ("channels", "whole image (latent 7x5), not predicted")])
def test_info_names_the_whole_image_payload_kind(layout, shown):
    from caeadmm.bitstream import CaeHeader
    from caeadmm.cli.info import describe

    header = CaeHeader(width=50, height=40, mode="RGB", layout=layout, latent_channels=8, kept=4,
                    fingerprint=bytes(16), payload_length=10)
    assert ("layout", shown) in describe("a.cae", header, 62)
