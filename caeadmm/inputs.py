"""What the user's input arguments name: the files behind them, and where each one's output goes.

`list_sources` expands local paths or pyarrow filesystem URIs (s3://...) for the shard
preparation job; `plan_outputs` pairs local input files with output paths for the CLI and
the batch compression job. No Ray here: the core and the Ray layer both use it.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from caeadmm.images import IMAGE_EXTENSIONS

LIST_EXTENSIONS = (".txt", ".lst")  # an input file with one of these is a list of paths


def filesystem_and_path(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for a local path or a URI."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def _expand(uri: str, allow_lists: bool) -> Iterator[tuple[str, pafs.FileSystem, str]]:
    """(source label, filesystem, path) of each file an input names.

    A folder gives its image files (by extension, recursively); a .txt/.lst file gives the
    paths it lists, one per line (relative ones from the list's folder); anything else,
    missing paths included, is taken as one image file and is judged when it is read.
    """
    fs, path = filesystem_and_path(uri)
    info = fs.get_file_info(path)
    local = "://" not in uri
    if info.type == pafs.FileType.Directory:
        root = path.rstrip("/")
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        for f in sorted(found, key=lambda f: f.path):
            if f.type == pafs.FileType.File and _extension(f.path) in IMAGE_EXTENSIONS:
                label = f.path if local else uri.rstrip("/") + f.path[len(root) :]
                yield label, fs, f.path
    elif allow_lists and info.type == pafs.FileType.File and _extension(path) in LIST_EXTENSIONS:
        with fs.open_input_stream(path) as stream:
            lines = stream.read().decode("utf-8").splitlines()
        base = uri.rsplit("/", 1)[0] if not local else os.path.dirname(path)
        for line in (s.strip() for s in lines):
            if line and not line.startswith("#"):
                entry = line if "://" in line or os.path.isabs(line) else f"{base}/{line}"
                yield from _expand(entry, allow_lists=False)
    else:
        yield (path if local else uri), fs, path


def list_sources(inputs: Sequence[str]) -> tuple[list[dict[str, Any]], list[pafs.FileSystem]]:
    """Expand the inputs into items {"source", "path", "fs"} sorted by source, duplicates
    removed, and the filesystems that `fs` indexes."""
    filesystems: list[pafs.FileSystem] = []
    items: dict[str, dict[str, Any]] = {}
    for uri in inputs:
        for label, fs, path in _expand(str(uri), allow_lists=True):
            index = next((i for i, known in enumerate(filesystems) if known.equals(fs)), None)
            if index is None:
                filesystems.append(fs)
                index = len(filesystems) - 1
            items.setdefault(label, {"source": label, "path": path, "fs": index})
    return [items[label] for label in sorted(items)], filesystems


def missing_reason(path: Path) -> str:
    """Why `path`, which does not exist as a file or folder, cannot be read: "not found", or
    what the symbolic link it is does (loops, or leads nowhere)."""
    try:
        os.stat(path)
    except OSError as exc:
        link = f"{path} -> {os.readlink(path)}" if path.is_symlink() else None
        if exc.errno == errno.ELOOP:
            return f"is a symbolic link that loops ({link or exc.strerror})"
        if link is not None and exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"is a broken symbolic link ({link}, which does not exist)"
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return f"cannot be read ({exc.strerror})"
    return "not found"


def plan_outputs(
    inputs: Sequence[str | os.PathLike],
    suffix: str,
    list_dir: Callable[[Path], list[Path]],
    *,
    output_dir: str | os.PathLike | None = None,
    output_file: str | os.PathLike | None = None,
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Pair every input file with its output path: returns (pairs, per-input errors).

    A directory input gives the files `list_dir` finds in it, its tree mirrored below
    `output_dir`; a file input gives itself. Each output is the file's name with `suffix`
    in `output_dir`, or `output_file` (for one input file), or beside its input when
    neither is given. Missing inputs, directories with nothing to process, an output that
    would replace its input and two inputs with the same output are errors.
    """
    found: list[tuple[Path, Path]] = []
    errors: list[tuple[Path, str]] = []
    for root in map(Path, inputs):
        if root.is_dir():
            files = list_dir(root)
            found += [(f, f.relative_to(root)) for f in files]
            if not files:
                errors.append((root, "directory holds no files to process"))
        elif root.exists():
            found.append((root, Path(root.name)))
        else:
            errors.append((root, missing_reason(root)))
    pairs, taken = [], {}
    for src, rel in found:
        if output_file is not None:
            dst = Path(output_file)
        elif output_dir is not None:
            dst = (Path(output_dir) / rel).with_suffix(suffix)
        else:
            dst = src.with_suffix(suffix)
        key = os.path.abspath(dst)
        if key == os.path.abspath(src):
            errors.append((src, "output would replace the input; use -o"))
        elif key in taken:
            errors.append((src, f"output {dst} is also the output of {taken[key]}"))
        else:
            taken[key] = src
            pairs.append((src, dst))
    return pairs, errors
