"""The layers stay apart: the core never imports Ray, and `coding` imports neither torch nor Ray.

The core is every module of the caeadmm package outside caeadmm/distributed/ (the Ray layer),
the CLI included: its commands that use Ray (`eval`) import the Ray layer only when they run.
Each check imports the modules in a fresh interpreter, so nothing another test imported counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

NOT_CORE = {
    "caeadmm.__main__",  # runs the CLI on import
}


def _modules(package: str) -> list[str]:
    """Every module of a package under the repository root, found on disk (nothing imported)."""
    names = []
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _first_importers(modules: list[str], banned: list[str]) -> dict[str, str]:
    """{banned package: the first of `modules` whose import brought it in}, in a new process."""
    script = (
        "import importlib, json, sys\n"
        f"banned, found = {banned!r}, {{}}\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "    for b in banned:\n"
        "        if b in sys.modules and b not in found:\n"
        "            found[b] = name\n"
        "print(json.dumps(found))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_core_never_imports_ray():
    core = [m for m in _modules("caeadmm")
            if not m.startswith("caeadmm.distributed") and m not in NOT_CORE]
    assert {"caeadmm.model", "caeadmm.inputs", "caeadmm.cli.eval", "caeadmm.cli.common"} <= {
        *core
    }
    assert _first_importers(core, ["ray"]) == {}


def test_the_ray_layer_is_what_imports_ray():
    """The check above can fail: importing the Ray layer does bring Ray in."""
    assert _first_importers(["caeadmm.inputs", "caeadmm.distributed.shards"], ["ray"]) == {
        "ray": "caeadmm.distributed.shards"
    }


def test_coding_imports_neither_torch_nor_ray():
    modules = _modules("coding")
    assert "coding.kernels" in modules
    assert _first_importers(modules, ["torch", "ray"]) == {}
