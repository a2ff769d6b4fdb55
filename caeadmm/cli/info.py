"""`caeadmm info FILE...`: the header fields of .cae files, checked, with the file's bpp."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from caeadmm.bitstream import CaeHeader, parse
from caeadmm.cli.common import EXIT_FAILED, EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info",
        help="show the header of .cae files",
        description="Check .cae files (header, length, checksum) and print their header "
        "fields and bits per pixel. Needs no model.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".cae files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for i, name in enumerate(args.files):
        try:
            data = _read(Path(name))
            header, _ = parse(data, max_pixels=None)  # reads no pixels: no limit needed
        except (ValueError, OSError) as exc:
            print(f"caeadmm info: {name}: {' '.join(str(exc).split())}", file=sys.stderr)
            status = EXIT_FAILED
            continue
        if i:
            print()
        for key, value in describe(name, header, len(data)):
            print(f"{key + ':':<20}{value}")
    return status


def _read(path: Path) -> bytes:
    """The file's bytes; OSError with a plain reason (no errno, no repeated path)."""
    if path.is_dir():
        raise OSError(f"is a folder; give its .cae files (e.g. {path / '*.cae'})")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise OSError("no such file") from None
    except OSError as exc:
        raise OSError(f"cannot be read: {exc.strerror or exc}") from None


def describe(name: str, header: CaeHeader, size: int) -> list[tuple[str, str]]:
    """(field, value) rows for one checked stream."""
    from caeadmm.zoo import ModelLoadError, find_by_fingerprint

    try:
        registered = find_by_fingerprint(header.fingerprint)
    except ModelLoadError:
        registered = None
    pixels = header.width * header.height
    if header.layout == "tiles":
        rows, cols = header.tiles
        slots = header.latent_channels * (header.tile_size // 8) ** 2
        layout = [
            ("layout", f"tiles of {header.tile_size} ({rows}x{cols} tiles)"),
            ("latent channels", str(header.latent_channels)),
            ("kept slots", f"{header.kept} of {slots} per tile"),
        ]
    else:
        rows, cols = header.latent_size
        layout = [
            ("layout", f"whole image (latent {cols}x{rows}), "
                       + ("predicted" if header.layout == "predicted" else "not predicted")),
            ("latent channels", f"{header.kept} of {header.latent_channels} kept"),
        ]
    return [
        ("file", name),
        ("format version", str(header.version)),
        ("image", f"{header.width}x{header.height} {header.mode}"),
        *layout,
        ("symbols", str(header.n_symbols)),
        ("model fingerprint", header.fingerprint.hex()
         + (f" (registered model {registered.name})" if registered else " (not registered)")),
        ("payload", f"{header.payload_length} bytes"),
        ("file size", f"{size} bytes"),
        ("bpp", f"{8 * size / pixels:.4f}"),
        ("checksum", "ok"),
    ]
