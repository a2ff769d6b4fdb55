"""The .cae file format: a fixed 52-byte header followed by one coded payload.

This module owns the format: the header (`CaeHeader`, `pack`, `parse`), the layouts and the
payload each one uses (`encode_payload`, `decode_payload`, with every shape check), and it
is the one place that reads `coding`'s stream headers. What produces and consumes the
symbols is the model's (caeadmm.model.CAE.compress, decompress; the legacy "tiles" layout in
caeadmm.legacy); caeadmm.codec joins the two.

The header says everything a decoder must check before it allocates anything: which model
the stream needs, how large the image is, how its symbols are laid out and how many the
payload holds. `parse` validates every field, the total length and a CRC32 over header and
payload, and raises BitstreamError (a ValueError) for anything wrong, so that callers see one
error type for every malformed file. docs/bitstream.md is the specification.

Version 3 is version 2 for a variable-rate model's stream: the same fields, and the quality
the image was coded at in the 16-bit field that holds the tile size in a "tiles" stream
(whole-image layouts only, in units of 1/QUALITY_SCALE). Fixed-rate models write version 2.

Version 2 (written) has a layout byte: "predicted" (the whole image through the network, the
kept latent channels coded as the residuals of a linear prediction, with a Huffman table per
group of channels), "channels" (the same latent without the prediction, written before
"predicted" existed; read only) or "tiles" (independent P x P tiles, version 1's layout and
single-table payload, for models whose mask is not channel-structured). Version 1 streams
(always "tiles") are read.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

import coding
from caeadmm.model import LATENT_STRIDE, padded_side
from coding.format import unpack_header

MAGIC = b"\x89CAE"


class CaeVersion(IntEnum):
    """The header's version byte: each version this decoder reads, by what it adds."""

    TILES_ONLY = 1  # read only: no layout byte, always "tiles"
    FIXED_RATE = 2  # the layout byte; what a fixed-rate model writes
    VARIABLE_RATE = 3  # version 2 plus the quality; what a variable-rate model writes


QUALITY_SCALE = 1024  # version 3 stores round(quality * QUALITY_SCALE) as a uint16
MAX_QUALITY = (2**16 - 1) / QUALITY_SCALE
FINGERPRINT_BYTES = 16  # leading bytes of the model's sha256 fingerprint
MODES = {0: "RGB", 1: "L"}
MODE_CODES = {name: code for code, name in MODES.items()}
# Symbol layouts and their payloads (`encode_payload`, `decode_payload`): "predicted" (K, h, w)
# by coding.encode_planes, "channels" (K, h w) by coding.encode_channels (read only), "tiles"
# (tiles, K) flattened by coding.encode. A new payload kind is a new code here, not a new
# version.
LAYOUTS = {0: "tiles", 1: "channels", 2: "predicted"}
LAYOUT_CODES = {name: code for code, name in LAYOUTS.items()}
WHOLE_IMAGE_LAYOUTS = ("channels", "predicted")  # one latent for the whole image

# magic, version, mode, tile size, latent channels, layout, reserved, width, height,
# kept (slots per tile or channels), model fingerprint, payload length, CRC32.
_HEADER = struct.Struct("<4sBBHHBBIII16sQI")
HEADER_BYTES = _HEADER.size  # 52

# Default limit on the pixels a stream may declare: Pillow's MAX_IMAGE_PIXELS (e.g. 10000 x
# 8947); callers that need larger images pass their own `max_pixels`, the CLI takes
# --max-pixels or $CAEADMM_MAX_PIXELS (`max_pixels_from_env`).
DEFAULT_MAX_PIXELS = 89_478_485
MAX_PIXELS_ENV = "CAEADMM_MAX_PIXELS"
# Limit on the shape (every stream, whatever `max_pixels`): the network computes the image
# padded (to multiples of 8 and at least 16, or to whole tiles), at most MAX_PADDING times
# its pixels plus PADDING_ALLOWANCE, so that no shape (1 x N, N x 1, a tile row of one pixel)
# costs more per pixel than a photo does, beyond one small window's worth.
MAX_PADDING = 1.5
PADDING_ALLOWANCE = 1 << 16
_MAX_TILE = 4096  # a tile larger than this is certainly not a real model's
_MAX_CHANNELS = 1024


class BitstreamError(ValueError):
    """A byte string is not a valid .cae stream (truncated, corrupted or not ours)."""


class ModelMismatchError(BitstreamError):
    """A valid stream was given to a model other than the one that wrote it."""

    def __init__(self, needed: bytes, given: bytes):
        self.needed = needed
        self.given = given
        super().__init__(
            f"stream needs the model with fingerprint {needed.hex()}, "
            f"but the given model's fingerprint is {given[: len(needed)].hex()}"
        )


@dataclass(frozen=True)
class CaeHeader:
    """The decoded header fields of a stream."""

    width: int
    height: int
    mode: str  # "RGB" or "L": the mode the image had, and the one decompress returns
    layout: str  # "predicted", "channels" or "tiles"
    latent_channels: int
    kept: int  # whole image: kept latent channels; "tiles": kept latent slots per tile
    fingerprint: bytes  # first FINGERPRINT_BYTES bytes of the model fingerprint
    payload_length: int
    tile_size: int = 0  # "tiles" only: the tile side P; 0 for a whole-image layout
    quality: float | None = None  # a variable-rate model's quality (version 3), else None
    version: int = CaeVersion.FIXED_RATE

    @property
    def tiles(self) -> tuple[int, int]:
        """"tiles" layout: (rows, columns) of tiles covering the image after padding."""
        return -(-self.height // self.tile_size), -(-self.width // self.tile_size)

    @property
    def latent_size(self) -> tuple[int, int]:
        """Whole-image layouts: (rows, columns) of the whole image's latent."""
        return (padded_side(self.height) // LATENT_STRIDE,
                padded_side(self.width) // LATENT_STRIDE)

    @property
    def network_pixels(self) -> int:
        """Pixels the decoder's network computes: the image padded to multiples of 8 (at
        least 16) each way, or for "tiles" to whole tiles."""
        if self.layout == "tiles":
            rows, cols = self.tiles
            return rows * cols * self.tile_size**2
        return padded_side(self.height) * padded_side(self.width)

    @property
    def n_symbols(self) -> int:
        rows, cols = self.tiles if self.layout == "tiles" else self.latent_size
        return rows * cols * self.kept


def quantize_quality(quality: float) -> float:
    """The quality a version 3 stream can record nearest to `quality` (a multiple of
    1/QUALITY_SCALE): the codec codes at this one, so that its decoder uses the same gains."""
    if not 0 <= quality <= MAX_QUALITY:
        raise ValueError(f"quality must be in [0, {MAX_QUALITY:.3f}], got {quality}")
    return round(quality * QUALITY_SCALE) / QUALITY_SCALE


def pack(header: CaeHeader, payload: bytes) -> bytes:
    """Build a complete stream from its header fields and payload: version 3 when the header
    has a quality, else version 2."""
    if len(payload) != header.payload_length:
        raise ValueError("payload_length does not match the payload")
    _check_fields(header, max_pixels=None)
    version, setting = CaeVersion.FIXED_RATE, header.tile_size
    if header.quality is not None:
        if header.quality != quantize_quality(header.quality):
            raise ValueError(f"quality {header.quality} is not a multiple of 1/{QUALITY_SCALE}")
        version, setting = CaeVersion.VARIABLE_RATE, round(header.quality * QUALITY_SCALE)
    fields = (
        MAGIC, version, MODE_CODES[header.mode], setting, header.latent_channels,
        LAYOUT_CODES[header.layout], 0, header.width, header.height, header.kept,
        header.fingerprint, header.payload_length,
    )
    head = _HEADER.pack(*fields, 0)[:-4]
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + struct.pack("<I", crc) + payload


def encode_payload(symbols: np.ndarray, layout: str) -> bytes:
    """The coded payload of a layout this version writes: "predicted" symbols (K, h, w) as
    prediction residuals (coding.encode_planes), "tiles" symbols (tiles, K) with one table
    (coding.encode). "channels" is read only."""
    if layout == "predicted":
        return coding.encode_planes(symbols)
    if layout == "tiles":
        return coding.encode(symbols.ravel())
    raise ValueError(f"layout {layout!r} is not written (this version writes 'predicted', "
                     "and 'tiles' for slot-masked models)")


def decode_payload(header: CaeHeader, payload: bytes) -> np.ndarray:
    """The payload's symbols, checked against the header: (K, h w) for the whole-image
    layouts, (tiles, K) for "tiles". The header bounds the symbol count before anything is
    decoded or allocated; any disagreement, or a coding.CorruptStreamError, raises
    BitstreamError."""
    try:
        if header.layout in WHOLE_IMAGE_LAYOUTS:
            rows, cols = header.latent_size
            # The bound admits the position count of a stream with no kept channels too.
            limit = max(header.n_symbols, rows * cols)
            if header.layout == "predicted":
                planes = coding.decode_planes(payload, max_symbols=limit)
                if planes.shape != (header.kept, rows, cols):
                    raise BitstreamError(
                        f"payload holds {' x '.join(map(str, planes.shape))} symbols, the "
                        f"header implies {header.kept} x {rows} x {cols}"
                    )
                return planes.reshape(header.kept, rows * cols)
            symbols = coding.decode_channels(payload, max_symbols=limit)
            if symbols.shape != (header.kept, rows * cols):
                raise BitstreamError(
                    f"payload holds {symbols.shape[0]} channels x {symbols.shape[1]} "
                    f"positions, the header implies {header.kept} x {rows * cols}"
                )
            return symbols
        # The payload's own symbol count (its first bytes) is checked before anything is
        # decoded: a crafted count must not size an allocation.
        count = unpack_header(payload)[0].count
        if count != header.n_symbols:
            raise BitstreamError(
                f"payload holds {count} symbols, the header implies {header.n_symbols}"
            )
        rows, cols = header.tiles
        return coding.decode(payload).reshape(rows * cols, header.kept)
    except coding.CorruptStreamError as exc:
        raise BitstreamError(f"corrupt payload: {exc}") from exc


def max_pixels_from_env(default: int | None = DEFAULT_MAX_PIXELS) -> int | None:
    """The pixel limit $CAEADMM_MAX_PIXELS sets (a positive integer, or "none" for no limit),
    else `default`; ValueError for anything else."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return default
    if text.lower() == "none":
        return None
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"${MAX_PIXELS_ENV}={text} is not a positive number of pixels "
                         "(or 'none')")
    return value


def read_header(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> CaeHeader:
    """Decode and check the header alone (no length or CRC check): enough for `info`."""
    if len(data) < HEADER_BYTES:
        raise BitstreamError(
            f"truncated: {len(data)} bytes is shorter than the {HEADER_BYTES}-byte header"
        )
    (magic, version, mode, tile, channels, layout, reserved, width, height, kept, fingerprint,
     payload_length, _crc) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise BitstreamError("not a .cae stream (bad magic number)")
    if version not in set(CaeVersion):
        raise BitstreamError(
            f"unsupported format version {version} (this decoder reads versions "
            f"{', '.join(map(str, CaeVersion))})"
        )
    version = CaeVersion(version)
    if mode not in MODES:
        raise BitstreamError(f"unknown image mode code {mode}")
    # Version 1 had two reserved bytes where version 2 has the layout and a reserved byte:
    # a version 1 stream is a "tiles" stream with both zero.
    if reserved != 0 or (version == CaeVersion.TILES_ONLY and layout != 0):
        raise BitstreamError("reserved header field is not zero")
    if layout not in LAYOUTS:
        raise BitstreamError(f"unknown symbol layout code {layout}")
    quality = None
    if version == CaeVersion.VARIABLE_RATE:
        if LAYOUTS[layout] not in WHOLE_IMAGE_LAYOUTS:
            raise BitstreamError(f"a version {version} stream must have a whole-image layout")
        quality, tile = tile / QUALITY_SCALE, 0
    header = CaeHeader(
        width=width, height=height, mode=MODES[mode], layout=LAYOUTS[layout],
        latent_channels=channels, kept=kept, fingerprint=fingerprint,
        payload_length=payload_length, tile_size=tile, quality=quality, version=version,
    )
    _check_fields(header, max_pixels)
    return header


def parse(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[CaeHeader, bytes]:
    """Check a whole stream and split it into (header, payload)."""
    data = bytes(data)
    header = read_header(data, max_pixels)
    expected = HEADER_BYTES + header.payload_length
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "trailing bytes"
        raise BitstreamError(
            f"{state}: header says {expected} bytes, the stream has {len(data)}"
        )
    (stored_crc,) = struct.unpack_from("<I", data, HEADER_BYTES - 4)
    crc = zlib.crc32(data[HEADER_BYTES:], zlib.crc32(data[: HEADER_BYTES - 4]))
    if crc != stored_crc:
        raise BitstreamError("checksum mismatch: the stream is corrupted")
    return header, data[HEADER_BYTES:]


def _check_fields(header: CaeHeader, max_pixels: int | None) -> None:
    """Refuse values no model or image can have, before anyone sizes a buffer from them."""
    if header.width < 1 or header.height < 1:
        raise BitstreamError(f"bad image size {header.width}x{header.height}")
    if max_pixels is not None and header.width * header.height > max_pixels:
        raise BitstreamError(
            f"image of {header.width}x{header.height} = {header.width * header.height} pixels "
            f"exceeds the limit of {max_pixels} (raise it with --max-pixels or "
            f"${MAX_PIXELS_ENV})"
        )
    if not 1 <= header.latent_channels <= _MAX_CHANNELS:
        raise BitstreamError(f"bad latent channel count {header.latent_channels}")
    tile = header.tile_size
    if header.layout == "tiles":
        if header.quality is not None:
            raise BitstreamError("a tiles stream has no quality")
        if not (16 <= tile <= _MAX_TILE and tile % 8 == 0):
            raise BitstreamError(f"bad tile size {tile} (a multiple of 8 from 16 to {_MAX_TILE})")
        slots = header.latent_channels * (tile // 8) ** 2
        if not 0 <= header.kept <= slots:
            raise BitstreamError(
                f"{header.kept} kept slots per tile, but a tile has only {slots}"
            )
    elif header.layout in WHOLE_IMAGE_LAYOUTS:
        if header.quality is not None and not 0 <= header.quality <= MAX_QUALITY:
            raise BitstreamError(f"bad quality {header.quality}")
        if tile != 0:
            raise BitstreamError(f"tile size {tile} in a whole-image stream (must be 0)")
        if not 0 <= header.kept <= header.latent_channels:
            raise BitstreamError(
                f"{header.kept} kept channels, but the latent has only {header.latent_channels}"
            )
    else:
        raise BitstreamError(f"unknown symbol layout {header.layout!r}")
    pixels = header.width * header.height
    if header.network_pixels > MAX_PADDING * pixels + PADDING_ALLOWANCE:
        raise BitstreamError(
            f"image of {header.width}x{header.height} is too thin for the {header.layout} "
            f"layout: the network would compute {header.network_pixels} pixels for its "
            f"{pixels} (at most {MAX_PADDING} times plus {PADDING_ALLOWANCE}; docs/bitstream.md)"
        )
    if header.mode not in MODE_CODES:
        raise BitstreamError(f"unknown image mode {header.mode!r}")
    if len(header.fingerprint) != FINGERPRINT_BYTES:
        raise BitstreamError("bad model fingerprint length")
