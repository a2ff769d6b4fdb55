"""Outputs an earlier run left behind, checked before a resumed run counts them as done.

Outputs are written atomically, so a file at an output path is normally whole; but a copy,
a disk or another tool can cut one short or damage it, and a resumed run must not count
such a file as done. `check_stream` reads a whole .cae file (header, payload length against
the file size, checksum) and, given what the run asks for (`Wanted`), compares the model
fingerprint and quality in its header: a whole stream made with another model or quality is
not this run's output either. `check_image` decodes an image file.
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
    complete: redo it); "stale" (a complete output of ours made with another model or
    quality than the run asks for: redo it); "foreign" (something else: leave it alone and
    report it).
    """

    state: str
    reason: str = ""
    header: bitstream.CaeHeader | None = None
    size: int = 0


@dataclass(frozen=True)
class Wanted:
    """What a run asks of a .cae output for it to count as done: made by the model whose
    fingerprint this is (`name` says which, in messages), at `quality` when that is given
    (a variable-rate model's; None: any)."""

    fingerprint: bytes
    name: str = "the model asked for"
    quality: float | None = None


def mismatch(header: bitstream.CaeHeader, wanted: Wanted) -> str | None:
    """Why a whole stream is not what `wanted` asks for (None when it is)."""
    if not wanted.fingerprint.startswith(header.fingerprint):
        from caeadmm import zoo

        known = zoo.find_by_fingerprint(header.fingerprint)
        made = f"{known.name}, " if known is not None else ""
        return (f"made with another model ({made}fingerprint {header.fingerprint[:4].hex()}), "
                f"not {wanted.name} (fingerprint {wanted.fingerprint[:4].hex()})")
    if wanted.quality is not None:
        asked = bitstream.quantize_quality(wanted.quality)
        if header.quality != asked:
            return f"made at quality {header.quality}, not {asked}"
    return None


def check_stream(path: str | os.PathLike, wanted: Wanted | None = None) -> Existing:
    """The state of a .cae output; a file that starts like a .cae stream but fails the
    checks (or is shorter than the magic number) is damaged, anything else foreign; with
    `wanted`, a whole stream that `mismatch`es it is stale."""
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
    reason = None if wanted is None else mismatch(header, wanted)
    if reason is not None:
        return Existing("stale", reason, header=header, size=len(data))
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
