"""The shell blocks that README.md and docs/*.md mark runnable work as written, and what
every command in the docs' code blocks must keep to.

A block is runnable when the line before its ```bash fence is `<!-- runnable -->`; only
cheap blocks are marked (seconds on tiny inputs, a minute for the smoke Ray Train run). The
marker may name placeholders to fill, `<!-- runnable DIR=train -->`: each word DIR of the
block becomes `train`. Each block runs with bash -e in a temporary folder that holds
photo.jpg and photos/ (two images), train/ (four training images), all made small from
caeadmm/samples, and configs/, jobs/, scripts/ and bench/ of the repository, with `caeadmm`
on the PATH; it must exit 0.

Every code block (fenced or indented) of README.md, docs/*.md and cluster/README.md: no old
flag spelling (they print deprecation notes), and no two `jobs/train.py` commands of one page
train into the same run folder (the second would resume the first, finished, run and train
nothing).
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PAGES = [*DOCS, ROOT / "cluster" / "README.md"]
MARKER = re.compile(r"^<!-- runnable((?:\s+[^\s=]+=\S+)*)\s*-->$")
FENCE = re.compile(r"^```(bash|sh)\s*$")
LINKED = ("configs", "jobs", "scripts", "bench")  # repository folders the blocks name


def runnable_blocks(path: Path) -> list[str]:
    """The runnable blocks of a Markdown file, in order, their placeholders filled."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines[:-1]):
        marker = MARKER.match(line.strip())
        if marker:
            assert FENCE.match(lines[i + 1]), f"{path.name}:{i + 1}: {line} not before ```bash"
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            block = "\n".join(lines[i + 2 : end])
            for fill in marker.group(1).split():
                word, value = fill.split("=", 1)
                block = re.sub(rf"(?<![\w/]){re.escape(word)}(?![\w/])", value, block)
            blocks.append(block)
    return blocks


def code_blocks(path: Path) -> list[str]:
    """Every code block of a Markdown file: fenced, or indented by four spaces after a blank
    line (list items' continuation lines are not code)."""
    blocks, current, fenced, previous = [], [], False, ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if fenced:
                blocks.append("\n".join(current))
                current = []
            fenced = not fenced
        elif fenced:
            current.append(line)
        elif line.startswith("    ") and (current or not previous.strip()):
            current.append(line[4:])
        elif current:
            blocks.append("\n".join(current))
            current = []
        previous = line
    return [*blocks, "\n".join(current)] if current else blocks


def commands(block: str) -> list[list[str]]:
    """The block's command lines (continuations joined), split into words; comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:  # not shell (an output listing)
            continue
        if words:
            out.append(words)
    return out


BLOCKS = [(path, n, block) for path in DOCS for n, block in enumerate(runnable_blocks(path))]


def test_the_main_usage_blocks_are_marked_runnable():
    marked = {path.relative_to(ROOT).as_posix() for path, _, _ in BLOCKS}
    assert {"README.md", "docs/cli.md", "docs/training.md", "docs/distributed.md"} <= marked


OLD_SPELLINGS = re.compile(r"(?<![\w-])(--out|--overwrite|--no-progress|--no-resume)(?![\w-])")


@pytest.mark.parametrize("path", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_no_command_in_the_docs_uses_an_old_flag_spelling(path):
    """Old spellings still work, with a deprecation note on every run: the docs show the
    current ones."""
    for block in code_blocks(path):
        for words in commands(block):
            old = [w for w in words if OLD_SPELLINGS.fullmatch(w)]
            assert not old, f"{path.name}: {' '.join(words)} uses {old}"


def _run_folder(words: list[str]) -> str | None:
    """The run folder a `python jobs/train.py ...` command trains into, as written ($PWD/
    dropped), or None for another command."""
    if "jobs/train.py" not in words:
        return None
    args = words[words.index("jobs/train.py") + 1 :]
    settings = {"storage_path": "runs", "run_name": "caeadmm"}  # TrainConfig's defaults
    if "--config" in args:
        config = yaml.safe_load((ROOT / args[args.index("--config") + 1]).read_text()) or {}
        settings |= {k: str(v) for k, v in config.items() if k in settings}
    output = None
    for i, word in enumerate(args):
        key, eq, value = word.partition("=")
        if eq and key in settings:
            settings[key] = value
        elif word in ("-o", "--output"):
            output = args[i + 1]
    folder = output or f"{settings['storage_path']}/{settings['run_name']}"
    return os.path.normpath(folder.removeprefix("$PWD/"))


def test_training_commands_train_into_folders_of_their_own():
    """Two different `jobs/train.py` commands of the docs into the same run folder (the
    cluster submit after the quick start, say): the second resumes the first's run, which has
    finished, and trains nothing. The same command on two pages is the same run."""
    seen: dict[str, tuple[str, str]] = {}
    for path in PAGES:
        for block in code_blocks(path):
            for words in commands(block):
                folder = _run_folder(words)
                if folder is None:
                    continue
                command = " ".join(words[words.index("jobs/train.py"):])
                first = seen.setdefault(folder, (command, path.name))
                assert first[0] == command, (
                    f"{path.name}: `{command}` trains into {folder}, as `{first[0]}` of "
                    f"{first[1]} does")


@pytest.fixture
def workdir(tmp_path) -> tuple[Path, dict[str, str]]:
    """A folder with photo.jpg, photos/, train/ and the repository's configs/, jobs/,
    scripts/ and bench/, and an environment with `caeadmm` on the PATH."""
    samples = ROOT / "caeadmm" / "samples"
    with Image.open(samples / "rocket.jpg") as image:
        image.convert("RGB").resize((64, 48)).save(tmp_path / "photo.jpg", quality=90)
    (tmp_path / "photos").mkdir()
    for name in ("astronaut.png", "coffee.png"):
        with Image.open(samples / name) as image:
            image.convert("RGB").resize((48, 40)).save(tmp_path / "photos" / name)
    (tmp_path / "train").mkdir()
    for path in sorted(samples.iterdir()):
        if path.suffix in (".png", ".jpg"):
            with Image.open(path) as image:
                image.convert("RGB").resize((128, 96)).save(tmp_path / "train" / f"{path.stem}.png")
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
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


@pytest.mark.slow  # the documented commands in a shell: up to a minute a block (Ray Train)
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
