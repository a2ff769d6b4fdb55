"""The models shipped inside the package load, match their sha256, and decode the committed
reference streams to the committed reference images: the current format (tests/data/NAME.cae,
written by scripts/ship_model.py) and version 1 (tests/data/v1/, written before version 2).
A shipped model's windows give the one-pass result, and a fresh process decodes as a warm one."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import test_image
from PIL import Image

from caeadmm import bitstream, codec, zoo
from caeadmm.bitstream import WHOLE_IMAGE_LAYOUTS, CaeVersion, parse

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
MODELS = zoo.list_models()


def test_registry_has_a_default_model():
    assert MODELS, "no model ships in caeadmm/models/registry.json"
    assert sum(m.default for m in MODELS) == 1


def assert_decodes_reference(stream: Path, expected: Path, model) -> None:
    decoded = codec.decompress(stream.read_bytes(), model)
    expected = np.asarray(Image.open(expected).convert("RGB"))
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("info", MODELS, ids=[m.name for m in MODELS])
def test_shipped_model_matches_registry_and_decodes_reference(info):
    assert info.size is not None and info.size <= 10 * 1024 * 1024
    assert hashlib.sha256(info.file.read_bytes()).hexdigest() == info.sha256
    model = zoo.load(info.name)
    assert model.fingerprint().hex() == info.fingerprint
    header, _ = parse((DATA / f"{info.name}.cae").read_bytes())
    # A variable-rate model's stream records its quality (version 3).
    variable = info.default_quality is not None
    version = CaeVersion.VARIABLE_RATE if variable else CaeVersion.FIXED_RATE
    assert header.version == version and header.layout in WHOLE_IMAGE_LAYOUTS
    assert_decodes_reference(DATA / f"{info.name}.cae", DATA / f"{info.name}.png", model)
    assert info.kodak is not None, "ship with --kodak: `caeadmm models` shows rate and quality"


# The models shipped before bitstream version 2 keep decoding their version-1 streams.
V1_STREAMS = sorted((DATA / "v1").glob("*.cae"))


@pytest.mark.parametrize("v1", V1_STREAMS, ids=[p.stem for p in V1_STREAMS])
def test_version_1_reference_stream_decodes(v1):
    assert v1.stem in {m.name for m in MODELS}, f"{v1.name}: its model is no longer shipped"
    assert parse(v1.read_bytes())[0].version == 1
    assert_decodes_reference(v1, v1.with_suffix(".png"), zoo.load(v1.stem))


def test_every_model_shipped_before_version_2_has_a_version_1_stream():
    assert {p.stem for p in V1_STREAMS} >= {"small-k2", "small-k3", "small-k6", "small-k12",
                                            "small-k20"}


DEFAULT = next(m.name for m in MODELS if m.default)


@pytest.fixture(scope="module")
def default_model():
    return zoo.load(DEFAULT)


@pytest.fixture(scope="module")
def quality(default_model):
    """The quality compress uses for the default model (None: a fixed-rate model)."""
    return zoo.default_quality(DEFAULT, default_model)


def test_shipped_model_windows_give_the_one_pass_result(default_model, quality):
    """512 x 768 through the default model in 128-pixel windows and in one pass: identical
    symbols, and pixels within one level (in practice identical)."""
    image = test_image(512, 768, seed=11)
    data = codec.compress(image, default_model, tile=128, quality=quality)
    one_pass = codec.compress(image, default_model, tile=None, quality=quality)
    np.testing.assert_array_equal(bitstream.decode_payload(*parse(data)),
                                  bitstream.decode_payload(*parse(one_pass)))
    tiled = codec.decompress(data, default_model, tile=128).astype(int)
    whole = codec.decompress(data, default_model, tile=None).astype(int)
    assert np.abs(tiled - whole).max() <= 1


FRESH_DECODE = """
import sys, numpy as np
from caeadmm import codec, zoo
model = zoo.load(sys.argv[1])
np.save(sys.argv[3], codec.decompress(open(sys.argv[2], "rb").read(), model))
"""


def test_first_decode_in_a_fresh_process_equals_later_ones(default_model, quality, tmp_path):
    """Decoding must not depend on what ran before in the process: the first decode in a
    fresh process, with 1 and with 2 threads, equals a decode after many others here."""
    data = codec.compress(test_image(300, 420, seed=12), default_model, quality=quality)
    stream = tmp_path / "a.cae"
    stream.write_bytes(data)
    warm = codec.decompress(data, default_model)
    for threads in ("1", "2"):
        out = tmp_path / f"fresh{threads}.npy"
        env = {"OMP_NUM_THREADS": threads, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
        subprocess.run([sys.executable, "-c", FRESH_DECODE, DEFAULT, str(stream), str(out)],
                       cwd=ROOT, env=env, check=True, timeout=600)
        np.testing.assert_array_equal(np.load(out), warm)
