"""Outputs an earlier run left behind, checked before a resumed run counts them as done.

Outputs are written atomically, so a file at an output path is normally whole; but a copy,
a disk or another tool can cut one short or damage it, and a resumed run must not count
such a file as done. `check_stream` reads a whole .cae file (header, payload length against
the file size, checksum); `check_image` decodes an image file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from caeadmm import bitstream


@dataclass(frozen=True)
class Existing:
    """What is at an output path.

    state: "missing"; "ok" (complete: skip it); "damaged" (an output of ours that is not
    complete: redo it); "foreign" (something else: leave it alone and report it).
    """

    state: str
    reason: str = ""
    header: bitstream.Header | None = None
    size: int = 0


def check_stream(path: str | os.PathLike) -> Existing:
    """The state of a .cae output; a file that starts like a .cae stream but fails the
    checks (or is shorter than the magic number) is damaged, anything else foreign."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return Existing("missing")
    except OSError as exc:
        return Existing("foreign", f"cannot be read ({exc.strerror or exc})")
    try:
        header, _ = bitstream.parse(data, max_pixels=None)
    except bitstream.BitstreamError as exc:
        ours = data.startswith(bitstream.MAGIC) or bitstream.MAGIC.startswith(data)
        return Existing("damaged" if ours else "foreign", " ".join(str(exc).split()))
    return Existing("ok", header=header, size=len(data))


def check_image(path: str | os.PathLike) -> Existing:
    """The state of a decoded-image output: ok when Pillow decodes it whole, else damaged."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        return Existing("missing")
    if not path.is_file():
        return Existing("foreign", "is not a file")
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises for a bad file
        return Existing("damaged", " ".join(str(exc).split()) or type(exc).__name__)
    return Existing("ok", size=path.stat().st_size)
