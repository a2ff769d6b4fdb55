"""The `caeadmm compress | decompress | info | models` commands, run in-process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import test_image, tiny_model
from PIL import Image

from caeadmm import image_codec
from caeadmm.checkpoint import save_checkpoint
from caeadmm.cli import main
from caeadmm.cli.common import cached_model
from caeadmm.config import TrainConfig


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch, tmp_path):
    """No registry unless a test makes one; no model cached from another test."""
    empty = tmp_path / "empty-registry.json"
    empty.write_text('{"default": null, "models": []}')
    monkeypatch.setenv("CAEADMM_REGISTRY", str(empty))
    cached_model.cache_clear()


def save_model(path: Path, seed: int) -> Path:
    model = tiny_model(seed=seed)
    save_checkpoint(path, model=model, admm=None, optimizer=None, step=0,
                    config=TrainConfig(model=model.config))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("model") / "tiny.pt", seed=0)


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
    assert cae.read_bytes() == image_codec.compress(image_codec.load_image(src), model)
    assert main(["decompress", str(cae), "-o", str(png), "--model", str(checkpoint)]) == 0
    decoded = np.asarray(Image.open(png))
    np.testing.assert_array_equal(decoded, image_codec.decompress(cae.read_bytes(), model))
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
    assert "exists (use --force to overwrite)" in capsys.readouterr().err
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
    other = save_model(tmp_path / "other.pt", seed=9)
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
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny-test" in out and fingerprint[:32] in out and "random weights" in out
    cae = tmp_path / "a.cae"
    assert main(["compress", str(corpus / "a.png"), "-o", str(cae)]) == 0  # the default
    assert main(["decompress", str(cae), "-o", str(tmp_path / "a.png")]) == 0  # by fingerprint
    assert main(["info", str(cae)]) == 0
    assert "(registered model tiny-test)" in capsys.readouterr().out


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
