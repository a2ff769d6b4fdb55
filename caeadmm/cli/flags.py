"""One flag style for the `caeadmm` commands and the jobs/ scripts.

`-o/--output` names where results go, `--force` replaces what is there, `--quiet` turns off
progress output, `--version` prints the version, `--refine [fast|best|STEPS]` refines each
image's latent before coding (caeadmm.refine), `--device cpu|cuda` picks where the network
runs. Old spellings (`--out`, `--overwrite`,
`--no-progress`) still work in this release and print a note naming the new one; they go
in the next release.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from caeadmm import __version__


class _Deprecated(argparse.Action):
    """An old spelling: does what the new one does, after a note on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str, flag: bool = False,
                 **kwargs: Any):
        self.new, self.flag = new, flag
        if flag:
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        print(f"{parser.prog}: note: {option_string} is deprecated and goes in the next "
              f"release; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, True if self.flag else values)


def add_output(parser: argparse.ArgumentParser, help: str, *, required: bool = False,
               old: str | None = None, **kwargs: Any) -> None:
    """-o/--output (dest "output"), and the old spelling `old` (e.g. "--out") as an alias."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("-o", "--output", help=help, **kwargs)
    if old:
        group.add_argument(old, dest="output", action=_Deprecated, new="-o/--output", **kwargs)


def add_force(parser: argparse.ArgumentParser, help: str, *, old: str | None = None) -> None:
    parser.add_argument("--force", action="store_true", help=help)
    if old:
        parser.add_argument(old, dest="force", action=_Deprecated, new="--force", flag=True)


def add_quiet(parser: argparse.ArgumentParser, help: str = "no progress output", *,
              old: str | None = None) -> None:
    parser.add_argument("--quiet", action="store_true", help=help)
    if old:
        parser.add_argument(old, dest="quiet", action=_Deprecated, new="--quiet", flag=True)


def add_refine(parser: argparse.ArgumentParser) -> None:
    """`--refine [fast|best|STEPS]`: 0 (absent) plain coding, None (alone) the default effort
    (caeadmm.refine.DEFAULT_EFFORT), "fast" or "best", or a number of Adam steps."""
    parser.add_argument(
        "--refine", type=effort, nargs="?", const=None, default=0, metavar="fast|best|STEPS",
        help="refine each image's latent before coding: better quality at about the same "
        "rate, read by the same decoder. fast (the default when no value is given): about "
        "2 s per Kodak image on a CPU core (a plain encode: under 1 s); best: a third more "
        "gain in about 4 times fast's time; STEPS: that many Adam steps, the slower method "
        "of earlier releases (docs/refine.md, docs/speed.md)",
    )


def effort(text: str) -> str | int:
    """A --refine value: "fast", "best", or a count of Adam steps, 0 or more."""
    if text in ("fast", "best"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected fast, best or a number of steps, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"steps must be >= 0, got {value}")
    return value


def add_device(parser: argparse.ArgumentParser) -> None:
    """`--device cpu|cuda` (dest "device"): where the network runs (caeadmm.devices)."""
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu",
        help="where the network runs (default cpu); cuda needs an NVIDIA GPU and a CUDA "
        "build of PyTorch, and is refused with a message where there is none",
    )


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"caeadmm {__version__}")


SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # Ray's job supervisor sets it for the driver


def submitted_job() -> bool:
    """Whether this process is the driver of a job started by `ray job submit`."""
    return SUBMITTED_JOB_ENV in os.environ


def resolve_output(path: str, option: str = "--output") -> str:
    """`path` made absolute against the current directory (URIs such as s3://... unchanged);
    `option` names it in messages ("--output", or "storage_path=" for a config key).

    Under `ray job submit` the current directory is Ray's temporary copy of the working
    directory, shared by every job with the same code and deleted with it, so a relative
    path is refused there (ValueError) with what to pass instead.
    """
    if "://" in path:
        return path
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded):
        return expanded
    if submitted_job():
        sep = "" if option.endswith("=") else " "
        raise ValueError(
            f"{option}{sep}{path} is relative, and this job runs in Ray's temporary copy of "
            f"the working directory ({os.getcwd()}), where results would be lost; pass an "
            f"absolute path, e.g. `{option}{sep}$PWD/{path}` in the submitting shell"
        )
    return os.path.abspath(expanded)


def check_job_input(path: str, option: str) -> None:
    """Refuse (ValueError) a relative input path that is not there under `ray job submit`:
    the job runs in Ray's temporary copy of the working directory, which holds the uploaded
    code (not what .gitignore leaves out, such as runs/), so the message says what to pass."""
    if "://" in path or os.path.isabs(os.path.expanduser(path)) or not submitted_job():
        return
    if os.path.exists(path):
        return  # uploaded with the working directory
    sep = "" if option.endswith("=") else " "
    raise ValueError(
        f"{option}{sep}{path} is relative, and this job runs in Ray's temporary copy of the "
        f"working directory ({os.getcwd()}), where it is not (the upload leaves out what "
        f".gitignore does); pass an absolute path, e.g. `{option}{sep}$PWD/{path}` in the "
        "submitting shell"
    )
