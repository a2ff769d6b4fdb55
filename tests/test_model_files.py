"""Files given where a model is expected: anything that is not a caeadmm model or checkpoint
gets one plain line, never torch's multi-line advice to turn off weights_only."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from caeadmm import zoo
from caeadmm.checkpoint import CheckpointError, load_checkpoint


@pytest.mark.parametrize(
    "content",
    [b"", b"not a model at all\n", b"PK\x03\x04" + b"\0" * 100, b"\x89PNG\r\n\x1a\n" + b"x" * 64],
)
def test_foreign_file_is_not_a_caeadmm_model(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"{path} is not a caeadmm model or checkpoint"
    with pytest.raises(zoo.ModelLoadError, match="not a caeadmm model"):
        zoo.load(path)


def test_torch_file_of_another_kind_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="is not a caeadmm checkpoint or model file"):
        load_checkpoint(path)


def test_cli_prints_one_line_for_a_foreign_model(tmp_path):
    model = tmp_path / "model.pt"
    model.write_text("hello")
    image = tmp_path / "in.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    proc = subprocess.run(
        [sys.executable, "-m", "caeadmm", "compress", str(image), "-o", str(tmp_path / "o.cae"),
         "--model", str(model)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "not a caeadmm model" in lines[0] and "weights_only" not in lines[0]
