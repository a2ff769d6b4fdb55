"""Which existing outputs a resumed run keeps: whole streams made with the model (and
quality) it asks for; damaged ones and those of another model are made again."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import test_image, tiny_model
from PIL import Image

from caeadmm import codec, zoo
from caeadmm.checkpoint import save_checkpoint
from caeadmm.config import TrainConfig
from caeadmm.outputs import Wanted, check_stream

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    """Two checkpoints of the tiny model (seeds 0 and 1): two fingerprints."""
    paths = []
    for seed in (0, 1):
        model = tiny_model(seed=seed)
        path = tmp_path_factory.mktemp("model") / f"tiny{seed}.pt"
        save_checkpoint(path, model=model, admm=None, optimizer=None, step=0,
                        config=TrainConfig(model=model.config))
        paths.append(path)
    return paths


def test_a_stream_of_another_model_is_stale(tmp_path):
    model, other = tiny_model(seed=0), tiny_model(seed=1)
    path = tmp_path / "a.cae"
    path.write_bytes(codec.compress(test_image(24, 40), model))
    assert check_stream(path).state == "ok"  # nothing asked: any whole stream
    assert check_stream(path, Wanted(model.fingerprint(), "tiny")).state == "ok"
    found = check_stream(path, Wanted(other.fingerprint(), "other"))
    assert found.state == "stale"
    assert found.reason == (f"made with another model (fingerprint {model.fingerprint()[:4].hex()}"
                            f"), not other (fingerprint {other.fingerprint()[:4].hex()})")
    assert found.header is not None


def test_the_corpus_job_redoes_outputs_of_another_model(models, tmp_path, monkeypatch, capsys):
    """jobs/compress.py's rerun rule (compress_corpus): outputs of another model are queued
    again, to be replaced, with a line each; those of the model asked for are kept."""
    from caeadmm.distributed import batch_compress

    first, second = models
    root = tmp_path / "corpus"
    root.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    model = zoo.load(first)
    for i in range(3):
        Image.fromarray(test_image(24, 32, seed=i)).save(root / f"im{i}.png")
        codec.compress_file(root / f"im{i}.png", out / f"im{i}.cae", model)
    queued: list[dict] = []

    def no_ray(todo, *args):
        queued.extend(todo)
        return iter(())

    monkeypatch.setattr(batch_compress, "_run_actors", no_ray)
    summary = batch_compress.compress_corpus([root], out, str(first))
    assert (summary.skipped, summary.redone, queued) == (3, 0, [])
    summary = batch_compress.compress_corpus([root], out, str(second))
    assert (summary.skipped, summary.redone) == (0, 3)
    assert [item["replace"] for item in queued] == [True] * 3
    err = capsys.readouterr().err
    assert err.count("was made with another model (fingerprint ") == 3
    assert f"not {second} (fingerprint" in err
