"""Encoder-side latent refinement (caeadmm.refine through codec.compress): the refined
stream is an ordinary stream, better for the objective, for any image size and window."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_script, test_image, tiny_model
from PIL import Image

from caeadmm import baselines, codec, zoo
from caeadmm.checkpoint import save_checkpoint
from caeadmm.cli import main
from caeadmm.config import DISTORTION_WEIGHTS, TrainConfig
from caeadmm.losses import distortion
from caeadmm.model import CAE
from caeadmm.refine import Refinement, refinement_for

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "caeadmm" / "samples"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def channel_model(seed: int = 0) -> CAE:
    """The tiny test model with channels 0, 2, 3 and 6 kept everywhere ("channels" layout)."""
    model = tiny_model(seed=seed)
    mask = torch.zeros(model.config.latent_shape(), dtype=torch.bool)
    mask[[0, 2, 3, 6]] = True
    model.set_mask(mask)
    return model


@pytest.fixture(scope="module")
def model() -> CAE:
    return channel_model()


@pytest.fixture
def checkpoint_path(model, tmp_path) -> Path:
    return save_checkpoint(tmp_path / "m.pt", model=model, admm=None, optimizer=None, step=0,
                           config=TrainConfig(model=model.config))


def load_job():
    return load_script(ROOT / "jobs" / "compress.py")


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def test_shipped_model_refined_is_better_at_about_the_same_rate():
    """The default model on a photo crop: the training objective's distortion falls and the
    real bytes stay within 3 %; the plain decoder reads the refined stream."""
    name = next(m.name for m in zoo.list_models() if m.default)
    model = zoo.load(name)
    image = np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB"))[96:224, 160:320]
    quality = zoo.default_quality(name, model)
    plain = codec.compress(image, model, quality=quality)
    refined = codec.compress(image, model, quality=quality, refine=Refinement(
        steps=10, rate_lambda=zoo.rate_lambda(name), rate_lambda_max=zoo.rate_lambda_max(name)))
    assert refined != plain
    assert len(refined) <= 1.03 * len(plain)

    def loss(data: bytes) -> float:
        decoded = codec.decompress(data, model)
        as_tensor = [torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255
                     for a in (decoded, image)]
        return float(distortion(*as_tensor)[0])

    assert loss(refined) < loss(plain) - 1.0


def test_zero_steps_is_the_plain_stream(model):
    image = test_image(40, 56)
    assert codec.compress(image, model, refine=Refinement(steps=0)) == \
        codec.compress(image, model)


@pytest.mark.parametrize("size, tile", [((75, 101), 32), ((75, 101), None), ((200, 96), 64)])
def test_every_window_is_refined(model, size, tile):
    """Windowed or not, the refined stream decodes to an image closer to the input."""
    image = test_image(*size, seed=3)
    plain = codec.decompress(codec.compress(image, model, tile=tile), model)
    data = codec.compress(image, model, tile=tile, refine=Refinement(steps=10, lr=0.3))
    refined = codec.decompress(data, model)
    assert refined.shape == image.shape
    assert mse(refined, image) < 0.97 * mse(plain, image)


@pytest.mark.parametrize("shape", [(1, 1), (1, 45), (45, 1), (9, 9, 3), (20, 30)])
def test_tiny_odd_and_grayscale_images(model, shape):
    image = test_image(*shape[:2], seed=1)
    if len(shape) == 2:
        image = image[..., 0]
    data = codec.compress(image, model, refine=Refinement(steps=2, lr=0.3))
    assert codec.decompress(data, model).shape == image.shape


def test_the_model_is_left_as_it_was(model):
    before = model.fingerprint()
    model.train()
    codec.compress(test_image(32, 48), model, refine=Refinement(steps=2))
    assert model.training and model.fingerprint() == before
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_refusals(model):
    image = test_image(32, 32)
    with pytest.raises(ValueError, match="whole-image layout"):
        codec.compress(image, tiny_model(), refine=Refinement(steps=1))  # a slot mask: tiles
    with pytest.raises(ValueError, match="entropy model"):  # the tiny model has none
        codec.compress(image, model, refine=Refinement(steps=1, rate_lambda=10))
    for bad in ({"steps": -1}, {"lr": 0.0}, {"rate_lambda": -1.0},
                {"distortion": {"w_lpips": 1.0}}, {"distortion": {"w_mse": -1.0}}):
        with pytest.raises(ValueError):
            Refinement(**bad)


def test_the_distortion_weights_are_the_ones_minimized(model):
    """All weights 0: nothing to minimize, the plain stream; MSE alone (a PSNR-family model's
    loss): the refined image is closer in MSE than with the default mix."""
    image = test_image(48, 64, seed=5)
    plain = codec.compress(image, model)
    nothing = Refinement(steps=3, lr=0.3, distortion=dict.fromkeys(DISTORTION_WEIGHTS, 0.0))
    assert codec.compress(image, model, refine=nothing) == plain
    mse_only = {"w_msssim": 0.0, "w_ssim": 0.0, "w_mse": 1e4, "w_psnr": 0.0}

    def refined_mse(weights: dict[str, float]) -> float:
        data = codec.compress(image, model, refine=Refinement(10, 0.3, distortion=weights))
        return mse(codec.decompress(data, model), image)

    assert refined_mse(mse_only) < refined_mse({})


def test_registered_distortion_weights(checkpoint_path, tmp_path, monkeypatch):
    """An entry's `distortion` reaches refinement_for; a malformed one makes the registry
    unreadable; entries without one and checkpoint paths give the default mix (empty)."""
    def registry(distortion: object) -> None:
        entry = {"name": "m", "file": str(checkpoint_path), "fingerprint": "00",
                 "sha256": "ab" * 32, "distortion": distortion}
        path = tmp_path / "registry.json"
        path.write_text(json.dumps({"default": "m", "models": [entry]}))
        monkeypatch.setenv("CAEADMM_REGISTRY", str(path))

    registry({"w_msssim": 0, "w_ssim": 0, "w_mse": 1e5})
    weights = {"w_msssim": 0.0, "w_ssim": 0.0, "w_mse": 1e5}
    assert zoo.distortion_weights("m") == zoo.distortion_weights(None) == weights
    assert refinement_for("m").distortion == weights
    assert zoo.distortion_weights(str(checkpoint_path)) == {}
    registry(None)
    assert zoo.distortion_weights("m") == {}
    for bad in ({"w_lpips": 1.0}, {"w_mse": -1}, "mse"):
        registry(bad)
        with pytest.raises(zoo.ModelLoadError, match="'distortion'"):
            zoo.distortion_weights("m")


def test_registered_rate_lambda():
    """Rate-aware models record their rate_lambda; others and checkpoint paths give 0."""
    models = zoo.list_models()
    assert any(m.rate_lambda > 0 for m in models)
    for info in models:
        assert zoo.rate_lambda(info.name) == info.rate_lambda
        assert (info.rate_lambda > 0) == (zoo.load(info.name).config.entropy_model != "none")
    assert zoo.rate_lambda("no/such/model.pt") == 0.0


def test_cli_compress_refine(model, tmp_path, capsys):
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, model=model, admm=None, optimizer=None, step=0,
                    config=TrainConfig(model=model.config))
    src = tmp_path / "a.png"
    Image.fromarray(test_image(40, 50)).save(src)
    plain, refined = tmp_path / "plain.cae", tmp_path / "refined.cae"
    assert main(["compress", str(src), "-o", str(plain), "--model", str(checkpoint)]) == 0
    assert main(["compress", str(src), "-o", str(refined), "--model", str(checkpoint),
                 "--refine", "3"]) == 0
    assert refined.read_bytes() != plain.read_bytes()
    decoded = codec.decompress(refined.read_bytes(), model)
    assert decoded.shape == (40, 50, 3)
    with pytest.raises(SystemExit):
        main(["compress", str(src), "--refine", "-1"])
    assert "steps must be >= 0" in capsys.readouterr().err


def test_eval_codec_cae_refined():
    assert baselines.parse_codecs("cae:a+b,cae-refined:a") == {"cae": ["a", "b"],
                                                               "cae-refined": ["a"]}
    codec = baselines.get_codec("cae-refined")
    assert codec.label != baselines.get_codec("cae").label


def test_corpus_job_refines_as_compress_does(ray_local, model, tmp_path):
    """jobs/compress.py's actors (Ray Data) write the refined stream compress() gives."""
    from caeadmm.distributed.batch_compress import compress_corpus

    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, model=model, admm=None, optimizer=None, step=0,
                    config=TrainConfig(model=model.config))
    root = tmp_path / "corpus"
    root.mkdir()
    image = test_image(40, 56, seed=4)
    Image.fromarray(image).save(root / "a.png")
    refine = Refinement(steps=3, lr=0.3)
    summary = compress_corpus([root], tmp_path / "out", str(checkpoint), refine=refine,
                              concurrency=1)
    assert summary.compressed == 1
    written = (tmp_path / "out" / "a.cae").read_bytes()
    assert written == codec.compress(image, model, refine=refine)
    assert written != codec.compress(image, model)

    job = load_job()
    assert job.build_parser().parse_args(["x", "-o", "y", "--refine"]).refine is None
    assert job.build_parser().parse_args(["x", "-o", "y", "--refine", "4"]).refine == 4
    assert job.build_parser().parse_args(["x", "-o", "y"]).refine == 0


# -- effort levels: the flip search and the gradient decoder ----------------------------------


def test_effort_levels_parse_and_build():
    """`--refine fast|best|STEPS`: fast and best are flip searches of EFFORTS rounds, a number
    is Adam steps (as before the levels), alone is DEFAULT_EFFORT, 0 nothing."""
    from caeadmm.cli.flags import effort
    from caeadmm.refine import DEFAULT_EFFORT, EFFORTS

    assert effort("fast") == "fast" and effort("best") == "best" and effort("7") == 7
    for bad in ("-1", "quick", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            effort(bad)
    for level, rounds in EFFORTS.items():
        refine = refinement_for(None, level)
        assert (refine.method, refine.steps) == ("flip", rounds)
        assert refine.rate_lambda == zoo.rate_lambda(None) > 0
    assert refinement_for(None) == refinement_for(None, DEFAULT_EFFORT)
    assert (refinement_for(None, 7).method, refinement_for(None, 7).steps) == ("adam", 7)
    assert refinement_for(None, 0) is None
    with pytest.raises(ValueError, match="fast, best"):
        refinement_for(None, "quick")
    with pytest.raises(ValueError, match="method"):
        Refinement(method="sga")
    job = load_job()
    assert job.build_parser().parse_args(["x", "-o", "y", "--refine", "best"]).refine == "best"


@pytest.mark.parametrize("size, tile", [((48, 64), None), ((75, 101), 32)])
def test_flip_search_lowers_the_distortion_and_repeats_itself(model, size, tile):
    """Two rounds (fast) and more (best) each give an image closer to the input than the
    plain stream, whole or window by window; the same run gives the same bytes again."""
    image = test_image(*size, seed=6)
    plain = mse(codec.decompress(codec.compress(image, model, tile=tile), model),
                image)
    mse_only = {"w_msssim": 0.0, "w_ssim": 0.0, "w_mse": 1e4, "w_psnr": 0.0}
    for rounds in (2, 6):
        refine = Refinement(method="flip", steps=rounds, distortion=mse_only)
        data = codec.compress(image, model, tile=tile, refine=refine)
        assert mse(codec.decompress(data, model), image) < plain
        assert data == codec.compress(image, model, tile=tile, refine=refine)


def test_flip_search_with_a_rate_term_is_repeatable():
    """The rate term's noise comes from a seeded generator: the same bytes on every run."""
    name = next(m.name for m in zoo.list_models() if m.default)
    model = zoo.load(name)
    image = np.asarray(Image.open(SAMPLES / "astronaut.png").convert("RGB"))[96:160, 160:240]
    refine, quality = refinement_for(name, "fast"), zoo.default_quality(name, model)
    first = codec.compress(image, model, refine=refine, quality=quality)
    assert first == codec.compress(image, model, refine=refine, quality=quality)
    assert first != codec.compress(image, model, quality=quality)


def test_gradient_decoder_is_the_decoder(model):
    """The folded copy (BatchNorm in the convolutions, PReLU as leaky ReLU, channels-last) in
    float32 computes what the model's decoder does, and leaves the model as it was."""
    from caeadmm.refine import _gradient_decoder

    before = model.fingerprint()
    decoder, half = _gradient_decoder(model.decoder, torch.device("cpu"))
    assert half in (None, torch.bfloat16)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.PReLU))
                   for m in decoder.modules())
    latent = torch.randn(2, model.config.latent_channels, 5, 7) * 3
    with torch.no_grad():
        expected = model.decoder(latent)
        got = decoder(latent.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert model.fingerprint() == before
    assert all(p.requires_grad for p in model.parameters())


def test_flip_rounds_extend_their_table():
    from caeadmm.refine import MSE_SHARE, ROUNDS, rounds

    assert rounds(2) == list(ROUNDS[:2])
    assert rounds(len(ROUNDS) + 3) == [*ROUNDS, ROUNDS[-2], ROUNDS[-1], ROUNDS[-2]]
    mse_only = {"w_msssim": 0.0, "w_ssim": 0.0, "w_mse": 1e5}
    assert rounds(2, mse_only) == [(kind, MSE_SHARE * share) for kind, share in ROUNDS[:2]]
    assert rounds(2, {"w_ssim": 0.0}) == rounds(2)


def test_cli_compress_refine_fast(model, tmp_path):
    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, model=model, admm=None, optimizer=None, step=0,
                    config=TrainConfig(model=model.config))
    src = tmp_path / "a.png"
    Image.fromarray(test_image(40, 50)).save(src)
    out = {}
    for level in ("fast", "best", None):
        out[level] = tmp_path / f"{level}.cae"
        extra = ["--refine"] if level is None else ["--refine", level]
        assert main(["compress", str(src), "-o", str(out[level]), "--model", str(checkpoint),
                     *extra]) == 0
    image = np.asarray(Image.open(src))
    assert out["fast"].read_bytes() == codec.compress(
        image, model, refine=refinement_for(str(checkpoint), "fast"))
    assert out[None].read_bytes() == out["fast"].read_bytes()  # the default level
    assert codec.decompress(out["best"].read_bytes(), model).shape == (40, 50, 3)
