"""scripts/venv.sh, sourced by the README's two commands and by users' shells, changes nothing
in the caller's shell but PATH: no `set` options (an interactive shell that got `set -e`
closed on its next failing command), no variables, no functions; a failed set-up returns
non-zero and the shell goes on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "venv.sh"

# What a shell holds before and after sourcing: its options, variables and functions (less
# those that change on their own or that the script is meant to change).
VOLATILE = ("PATH|BASH_[A-Z_]*|_|PIPESTATUS|LINENO|RANDOM|SECONDS|SRANDOM|EPOCH[A-Z]*|BASHPID"
            "|FUNCNAME|OLDPWD|PPID|SHLVL|HISTCMD|COLUMNS|LINES")
STATE = rf"""
state() {{
    echo "flags=$-"
    set -o
    ( set -o posix; set ) | grep -v -E '^({VOLATILE})='
    declare -F
}}
"""

def _source(root: Path, env: dict[str, str], after: str = "") -> subprocess.CompletedProcess:
    script = f"""{STATE}
set +e +u; set +o pipefail
state > "$OUTDIR/before"
source "{root}/scripts/venv.sh"
echo "status=$?"
state > "$OUTDIR/after"
echo "PATH=$PATH"
{after}
echo "still here"
"""
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)


def _environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    return {**env, "OUTDIR": str(tmp_path), **extra}


def _same_shell(tmp_path: Path) -> None:
    before = (tmp_path / "before").read_text()
    after = (tmp_path / "after").read_text()
    assert before == after


def test_sourcing_with_an_active_virtualenv_changes_only_path(tmp_path):
    env = _environment(tmp_path, VIRTUAL_ENV=str(Path(sys.executable).parents[1]))
    result = _source(ROOT, env, after="false")  # a failing command must not close the shell
    assert result.returncode == 0, result.stderr
    assert "status=0" in result.stdout and "still here" in result.stdout
    _same_shell(tmp_path)
    assert f"PATH={Path(sys.executable).parent}:" in result.stdout


def _fake_root(tmp_path: Path, python: str, installed: bool) -> Path:
    """A copy of the repo's venv.sh beside a .venv whose python is the script `python`."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, root / "scripts" / "venv.sh")
    (root / "pyproject.toml").write_text("")
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f"#!/bin/sh\n{python}\n")
    (bin_dir / "python").chmod(0o755)
    if installed:
        stamp = root / ".venv" / ".caeadmm-installed"
        stamp.touch()
        past = time.time() - 60
        os.utime(root / "pyproject.toml", (past, past))
    return root


def test_sourcing_an_installed_venv_changes_only_path(tmp_path):
    root = _fake_root(tmp_path, "exit 0", installed=True)
    result = _source(root, _environment(tmp_path), after="false")
    assert result.returncode == 0, result.stderr
    assert "status=0" in result.stdout and "still here" in result.stdout
    _same_shell(tmp_path)
    assert f"PATH={root}/.venv/bin:" in result.stdout


def test_a_failed_install_returns_non_zero_and_the_shell_goes_on(tmp_path):
    root = _fake_root(tmp_path, "exit 3", installed=False)  # pip fails
    result = _source(root, _environment(tmp_path))
    assert "status=1" in result.stdout and "still here" in result.stdout
    assert "installing into" in result.stderr and "failed" in result.stderr
    _same_shell(tmp_path)
    assert not (root / ".venv" / ".caeadmm-installed").exists()


@pytest.mark.parametrize("caller", ["scripts/test.sh", "scripts/main.sh"])
def test_a_failed_install_stops_the_scripts_that_source_it(tmp_path, caller):
    """The README's commands run under `set -euo pipefail`: a failed set-up stops them."""
    root = _fake_root(tmp_path, "exit 3", installed=False)
    shutil.copy(ROOT / caller, root / caller)
    result = subprocess.run(["bash", str(root / caller)], cwd=tmp_path,
                            env=_environment(tmp_path, OUT=str(tmp_path / "out")),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "installing into" in result.stderr
