"""`--device cpu|cuda` of compress, decompress and the corpus job (the CPU path, and the
refusal where no GPU is; the GPU path itself where one is), and the images/s and MB/s line
they end with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_script, save_tiny_model, test_image
from PIL import Image

from caeadmm import bitstream, codec, devices, zoo
from caeadmm.cli import main
from caeadmm.cli.common import cached_model
from caeadmm.distributed.batch_compress import Summary, compress_corpus

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = not torch.cuda.is_available()

pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_registry")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for i in range(3):
        Image.fromarray(test_image(40 + 8 * i, 48, seed=i)).save(root / f"{i}.png")
    return root


def test_device_cpu_is_the_default_and_ends_with_throughput(checkpoint, folder, tmp_path,
                                                           capsys):
    """--device cpu gives the bytes of no --device; a folder run ends with one line of
    images/s and MB/s on stderr (compress and decompress), --quiet leaves it out."""
    plain, cpu = tmp_path / "plain", tmp_path / "cpu"
    assert main(["compress", str(folder), "-o", str(plain), "--model", str(checkpoint)]) == 0
    err = capsys.readouterr().err
    assert "caeadmm compress: 3 images in " in err and " images/s, " in err
    assert " MB/s of pixels (0.0 Mpx, " in err
    assert main(["compress", str(folder), "-o", str(cpu), "--model", str(checkpoint),
                 "--device", "cpu", "--quiet"]) == 0
    assert "images/s" not in capsys.readouterr().err
    for name in ("0", "1", "2"):
        assert (cpu / f"{name}.cae").read_bytes() == (plain / f"{name}.cae").read_bytes()
    assert main(["decompress", str(cpu), "-o", str(tmp_path / "png"), "--model",
                 str(checkpoint), "--device", "cpu"]) == 0
    assert "caeadmm decompress: 3 images in " in capsys.readouterr().err


def test_skipped_files_are_not_counted(checkpoint, folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compress", str(folder), "-o", str(out), "--model", str(checkpoint)]) == 0
    capsys.readouterr()
    assert main(["compress", str(folder), "-o", str(out), "--model", str(checkpoint),
                 "--skip-existing"]) == 0
    assert "images/s" not in capsys.readouterr().err


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_device_cuda_is_refused_without_a_gpu(checkpoint, folder, tmp_path, capsys):
    """compress, decompress and the job: exit code 2 and one line saying why, nothing
    written."""
    out = tmp_path / "out"
    assert main(["compress", str(folder), "-o", str(out), "--model", str(checkpoint),
                 "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "caeadmm compress: error: --device cuda: " in err and "--device cpu" in err
    assert not out.exists()
    assert main(["decompress", str(folder), "-o", str(out), "--device", "cuda"]) == 2
    assert "caeadmm decompress: error: --device cuda: " in capsys.readouterr().err
    with pytest.raises(devices.DeviceError, match="--device cuda: "):
        devices.resolve("cuda")


def test_device_messages(monkeypatch):
    """Why cuda cannot work: a CPU-only build of PyTorch, or no GPU visible."""
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "built without CUDA" in devices.cuda_missing()
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA GPU is visible" in devices.cuda_missing()
    assert devices.resolve(None) == devices.resolve("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="cpu or cuda"):
        devices.resolve("tpu")


def test_job_device_options(checkpoint, folder, tmp_path, capsys):
    """jobs/compress.py: --gpus-per-actor without --device cuda is a usage error (2);
    compress_corpus refuses it too, and an unknown device."""
    job = load_script(ROOT / "jobs" / "compress.py")
    assert job.build_parser().parse_args(["x", "-o", "y"]).device == "cpu"
    assert job.main([str(folder), "-o", str(tmp_path / "out"), "--model", str(checkpoint),
                     "--gpus-per-actor", "1"]) == 2
    assert "--gpus-per-actor needs --device cuda" in capsys.readouterr().err
    with pytest.raises(ValueError, match="need device cuda"):
        compress_corpus([folder], tmp_path / "out", str(checkpoint), num_gpus=1)
    with pytest.raises(ValueError, match="cpu or cuda"):
        compress_corpus([folder], tmp_path / "out", str(checkpoint), device="gpu")


def test_summary_throughput():
    summary = Summary(compressed=4, skipped=0, failed=0, manifest=Path("m.parquet"),
                      seconds=2.0, pixels=2_000_000, stream_bytes=250_000)
    assert summary.throughput() == ("4 images in 2.0 s: 2.00 images/s, 3.00 MB/s of pixels "
                                    "(2.0 Mpx, 0.25 MB of streams)")


@pytest.mark.skipif(NO_GPU, reason="needs a CUDA GPU")
def test_cuda_streams_match_the_cpu(checkpoint, folder, tmp_path):
    """On a GPU (TF32 off): the stream's symbols as on the CPU but for a few rounded the
    other way, and the CPU's stream decodes to the CPU's pixels but for a few one level
    off; either device reads the other's streams."""
    from caeadmm.bitstream import parse

    model = cached_model(str(checkpoint))
    image = test_image(64, 96, seed=7)
    cpu = codec.compress(image, model)
    gpu_model = zoo.load(str(checkpoint)).to(devices.resolve("cuda"))
    gpu = codec.compress(image, gpu_model)
    symbols = [bitstream.decode_payload(*parse(data)) for data in (cpu, gpu)]
    assert np.mean(symbols[0] != symbols[1]) <= 0.01
    assert np.abs(symbols[0].astype(int) - symbols[1]).max() <= 1
    decoded = [codec.decompress(cpu, m) for m in (model, gpu_model)]
    assert np.abs(decoded[0].astype(int) - decoded[1]).max() <= 1
    assert np.mean(decoded[0] != decoded[1]) <= 0.01
    assert codec.decompress(gpu, model).shape == image.shape


def test_job_ends_with_throughput_and_refuses_cuda_without_gpus(ray_local, checkpoint,
                                                                 folder, tmp_path, capsys):
    """The corpus job prints images/s and MB/s after its summary; on a cluster without GPUs
    --device cuda is exit code 2 with one line saying so."""
    job = load_script(ROOT / "jobs" / "compress.py")
    args = ["-o", str(tmp_path / "out"), "--model", str(checkpoint), "--quiet"]
    assert job.main([str(folder), *args]) == 0
    out = capsys.readouterr().out
    assert "compressed 3, already done 0, failed 0" in out
    assert "compress: 3 images in " in out and " images/s, " in out and " MB/s " in out
    if NO_GPU:
        assert job.main([str(folder), *args, "--device", "cuda", "--force"]) == 2
        err = capsys.readouterr().err
        assert "--device cuda: the Ray cluster has no GPUs" in err and "Traceback" not in err
