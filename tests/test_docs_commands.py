"""The shell blocks that README.md and docs/*.md mark runnable work as written.

A block is runnable when the line before its ```bash fence is `<!-- runnable -->`; only
cheap blocks are marked (seconds on tiny inputs). Each runs with bash -e in a temporary
folder that holds photo.jpg and photos/ (two images), made small from caeadmm/samples, with
`caeadmm` on the PATH; it must exit 0.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = "<!-- runnable -->"
FENCE = re.compile(r"^```(bash|sh)\s*$")


def runnable_blocks(path: Path) -> list[str]:
    """The runnable blocks of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines[:-1]):
        if line.strip() == MARKER:
            assert FENCE.match(lines[i + 1]), f"{path.name}:{i + 1}: {MARKER} not before ```bash"
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            blocks.append("\n".join(lines[i + 2 : end]))
    return blocks


BLOCKS = [(path, n, block) for path in DOCS for n, block in enumerate(runnable_blocks(path))]


def test_the_main_usage_blocks_are_marked_runnable():
    marked = {path.relative_to(ROOT).as_posix() for path, _, _ in BLOCKS}
    assert {"README.md", "docs/cli.md"} <= marked


@pytest.fixture
def workdir(tmp_path) -> tuple[Path, dict[str, str]]:
    """A folder with photo.jpg and photos/, and an environment with `caeadmm` on the PATH."""
    samples = ROOT / "caeadmm" / "samples"
    with Image.open(samples / "rocket.jpg") as image:
        image.convert("RGB").resize((64, 48)).save(tmp_path / "photo.jpg", quality=90)
    (tmp_path / "photos").mkdir()
    for name in ("astronaut.png", "coffee.png"):
        with Image.open(samples / name) as image:
            image.convert("RGB").resize((48, 40)).save(tmp_path / "photos" / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "caeadmm"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m caeadmm "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT)}
    for name in ("CAEADMM_REGISTRY", "RAY_ADDRESS"):  # the shipped models, no outside Ray
        env.pop(name, None)
    return tmp_path, env


@pytest.mark.parametrize(
    ("path", "n", "block"), BLOCKS,
    ids=[f"{p.relative_to(ROOT).as_posix()}#{n}" for p, n, _ in BLOCKS],
)
def test_runnable_block(path, n, block, workdir):
    cwd, env = workdir
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f"{path.name} block {n} exited {result.returncode}\n--- block\n{block}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )
