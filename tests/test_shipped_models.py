"""The models shipped inside the package load, match their sha256, and decode the committed
reference stream to the committed reference image (scripts/ship_model.py writes both)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caeadmm import image_codec, zoo

DATA = Path(__file__).parent / "data"
MODELS = zoo.list_models()


def test_registry_has_a_default_model():
    assert MODELS, "no model ships in caeadmm/models/registry.json"
    assert sum(m.default for m in MODELS) == 1


@pytest.mark.parametrize("info", MODELS, ids=[m.name for m in MODELS])
def test_shipped_model_matches_registry_and_decodes_reference(info):
    assert info.size is not None and info.size <= 10 * 1024 * 1024
    assert hashlib.sha256(info.file.read_bytes()).hexdigest() == info.sha256
    model = zoo.load(info.name)
    assert model.fingerprint().hex() == info.fingerprint
    decoded = image_codec.decompress((DATA / f"{info.name}.cae").read_bytes(), model)
    expected = np.asarray(Image.open(DATA / f"{info.name}.png").convert("RGB"))
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1
