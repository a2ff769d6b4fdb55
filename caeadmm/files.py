"""Atomic file writes: a reader sees either no file or the whole file, never a torn one.

Every file the project writes for a user (.cae streams, decoded images, checkpoints,
manifests) goes through `write_atomic`: the bytes go to a hidden temporary file in the
same directory, named with TEMP_PREFIX so that clean-up code can tell ours from a user's,
are flushed to disk, then renamed over the target in one step. `remove_partial_files`
deletes this process's unfinished temporary files, for a worker that must exit at once.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".caeadmm-tmp."  # every temporary file this project creates starts with it
TEMP_SUFFIX = ".part"
_writing: set[Path] = set()  # temporary files this process has open for writing


def temp_path(path: Path) -> Path:
    """A fresh temporary name beside `path`: .caeadmm-tmp.NAME.RANDOM.part."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp_file(name: str) -> bool:
    """Whether a file name is one of `write_atomic`'s temporary files."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def write_atomic(
    path: str | os.PathLike,
    data: bytes | Callable[[BinaryIO], object],
    *,
    overwrite: bool = False,
) -> Path:
    """Write `data` (bytes, or a function that writes into an open binary file) to `path`.

    Raises FileExistsError if `path` exists and `overwrite` is false.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    _writing.add(tmp)  # before the file exists: an exit in between finds nothing to remove
    try:
        with open(tmp, "xb") as fh:
            if isinstance(data, (bytes, bytearray, memoryview)):
                fh.write(data)
            else:
                data(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        _writing.discard(tmp)
    return path


def remove_partial_files() -> None:
    """Delete the temporary files of writes in progress in this process (before os._exit)."""
    for tmp in list(_writing):
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
