"""The stream format: limits, the byte header, and the input checks shared by both backends.

A stream is a byte header followed by one bit string (MSB first), padded with zero bits to a
whole byte:

    header   version (1 byte), symbol count n (LEB128 varint); if n > 0 also a 16-bit word
             (log2 of the run cap R: 4 bits, direct range D: 6 bits, escape classes K: 6 bits)
             and the trailing zeros not covered by a run token (varint, < R)
    table    the Huffman code lengths of the stream's token alphabet (see `kernels.table_bits`)
    payload  one Huffman code per token, escape tokens followed by raw bits

docs/coding.md describes the token alphabet and the table coding in full, and the per-channel
stream of coding.channels (version 2), whose groups reuse the parameters, table and payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from coding.errors import CorruptStreamError


class StreamKind(IntEnum):
    """The first byte of every stream this package writes: which of its three formats follows
    (each decoder refuses the other two)."""

    HUFFMAN = 1  # coding.huffman: one table for a 1-D array (`encode`)
    CHANNELS = 2  # coding.channels: a table per group of channels (`encode_channels`)
    PLANES = 3  # coding.planes: prediction residuals of (C, H, W) (`encode_planes`)


SYMBOL_MIN = -(2**31)
SYMBOL_MAX = 2**31 - 1
MAX_SYMBOLS = 2**28  # 1 GiB of int32: far beyond one image's latents, refused beyond

MAX_CHANNELS = 2**16

# coding.planes: each value is predicted from its neighbours (and from the planes before it)
# by integer weights in units of 2**-WEIGHT_SHIFT; the prediction is floor(sum / 2**shift + 1/2).
WEIGHT_SHIFT = 6
MAX_WEIGHT = 2**15 - 1  # |weight| at most this: the sums stay far inside int64
MAX_DEPTH = 32  # a plane is predicted from at most this many planes before it

MAX_CODE_LENGTH = 15  # Huffman codes are length-limited so that one table lookup decodes
MAX_ALPHABET = 1 << MAX_CODE_LENGTH  # every token gets a code, so the alphabet must fit
MAX_LOG2_RUN = 10  # run cap R = 1 << log2_run <= 1024 zeros per token
MAX_DIRECT = 63  # magnitudes 1..D have their own tokens; larger ones use escape classes
MAX_CLASSES = 32  # escape class k covers magnitudes D + [2**k, 2**(k+1))

# The code-length table is itself coded: each length becomes one of these symbols, relative
# to a prediction (see kernels.table_symbols), and those symbols get a small Huffman code.
TABLE_SYMBOLS = 9  # unused, same, +1, -1, +2, -2, +3, -3, escape (+ 4 raw bits)
TABLE_ESCAPE = 8
TABLE_ESCAPE_BITS = 4
TABLE_CODE_MAX_LENGTH = 7
TABLE_LENGTH_BITS = 3  # how each of the 9 table-symbol code lengths is stored
TABLE_FIRST_PREDICTION = 2  # the prediction for the first code length of a table

_SMALL_DTYPES = tuple(np.dtype(t) for t in (np.int8, np.int16, np.uint8, np.uint16))


@dataclass(frozen=True)
class HuffmanHeader:
    """What the decoder must know before it reads the bit string."""

    count: int  # number of symbols
    log2_run: int = 0  # run cap R = 1 << log2_run
    direct: int = 0  # D: magnitudes up to D are tokens of their own
    classes: int = 0  # K: number of escape classes in the alphabet
    tail: int = 0  # zeros at the very end that no token covers (< R)

    @property
    def run_cap(self) -> int:
        return 1 << self.log2_run

    @property
    def width(self) -> int:
        """V, the number of non-zero value tokens per run length."""
        return 2 * self.direct + 2 * self.classes

    @property
    def alphabet(self) -> int:
        """Token alphabet size: R run lengths x V values, plus the zero-run token."""
        return self.run_cap * self.width + 1


def as_symbols(symbols: object) -> np.ndarray:
    """A contiguous 1-D integer array the kernels accept, or ValueError/TypeError."""
    x = np.asarray(symbols)
    if x.ndim != 1:
        raise ValueError(f"symbols must be a 1-D array, got shape {x.shape}")
    if x.size == 0:
        return np.zeros(0, np.int32)
    if x.dtype.kind not in "iu":
        raise TypeError(f"symbols must have an integer dtype, got {x.dtype}")
    if x.size > MAX_SYMBOLS:
        raise ValueError(f"at most {MAX_SYMBOLS} symbols per stream, got {x.size}")
    if x.dtype != np.int32 and x.dtype not in _SMALL_DTYPES:
        lo, hi = int(x.min()), int(x.max())
        if lo < SYMBOL_MIN or hi > SYMBOL_MAX:
            raise ValueError(
                f"symbols must lie in [{SYMBOL_MIN}, {SYMBOL_MAX}], got [{lo}, {hi}]"
            )
    # One dtype for the kernels: a single compiled specialisation, and int32 is what the
    # codec's latents are anyway (a no-op for contiguous native int32).
    return np.ascontiguousarray(x, dtype=np.int32)


def as_channel_symbols(symbols: object) -> np.ndarray:
    """A contiguous (C, N) int32 array for coding.channels, or ValueError/TypeError: the
    checks of `as_symbols`, at most MAX_CHANNELS rows."""
    x = np.asarray(symbols)
    if x.ndim != 2:
        raise ValueError(f"symbols must be a 2-D (channels, positions) array, got {x.shape}")
    if x.shape[0] > MAX_CHANNELS:
        raise ValueError(f"at most {MAX_CHANNELS} channels per stream, got {x.shape[0]}")
    if x.size > MAX_SYMBOLS:  # before reshape, which may copy
        raise ValueError(f"at most {MAX_SYMBOLS} symbols per stream, got {x.size}")
    if x.size == 0:
        return np.zeros(x.shape, np.int32)
    return as_symbols(x.reshape(-1)).reshape(x.shape)


def put_varint(out: bytearray, value: int) -> None:
    """Append `value` >= 0 as a LEB128 varint (7 bits per byte, low bits first)."""
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def get_varint(data: bytes, offset: int, limit: int, what: str) -> tuple[int, int]:
    """(value, offset after it) of the varint at `offset`; CorruptStreamError past `limit`."""
    value = 0
    for shift in range(0, 35, 7):  # at most 5 bytes: 35 bits hold every allowed value
        if offset >= len(data):
            raise CorruptStreamError(f"stream ends inside the {what}")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if value > limit:
            raise CorruptStreamError(f"{what} {value} is over the limit {limit}")
        if byte < 0x80:
            return value, offset
    raise CorruptStreamError(f"{what} longer than 5 bytes")


def pack_parameters(header: HuffmanHeader) -> bytes:
    """The coding parameters of a non-empty stream: the (R, D, K) word and the tail."""
    word = header.log2_run << 12 | header.direct << 6 | header.classes
    out = bytearray(word.to_bytes(2, "big"))
    put_varint(out, header.tail)
    return bytes(out)


def unpack_parameters(data: bytes, offset: int, count: int) -> tuple[HuffmanHeader, int]:
    """Parse and validate the parameters of a stream of `count` > 0 symbols at `offset`;
    returns the header and the offset of the bit string."""
    if offset + 2 > len(data):
        raise CorruptStreamError("stream ends inside the header")
    word = int.from_bytes(data[offset : offset + 2], "big")
    log2_run, direct, classes = word >> 12, word >> 6 & 63, word & 63
    if log2_run > MAX_LOG2_RUN or classes > MAX_CLASSES:
        raise CorruptStreamError(f"bad coding parameters R=2**{log2_run}, K={classes}")
    tail, offset = get_varint(data, offset + 2, (1 << log2_run) - 1, "tail length")
    header = HuffmanHeader(count, log2_run, direct, classes, tail)
    if tail > count or header.alphabet > MAX_ALPHABET:
        raise CorruptStreamError("inconsistent header")
    return header, offset


def pack_header(header: HuffmanHeader) -> bytes:
    out = bytearray([StreamKind.HUFFMAN])
    put_varint(out, header.count)
    if header.count:
        out += pack_parameters(header)
    return bytes(out)


def unpack_header(data: bytes) -> tuple[HuffmanHeader, int]:
    """Parse and validate the header; returns it and the offset of the bit string."""
    if not data:
        raise CorruptStreamError("empty stream")
    if data[0] != StreamKind.HUFFMAN:
        raise CorruptStreamError(
            f"unknown stream kind {data[0]} (expected {StreamKind.HUFFMAN})"
        )
    count, offset = get_varint(data, 1, MAX_SYMBOLS, "symbol count")
    if count == 0:
        return HuffmanHeader(0), offset
    return unpack_parameters(data, offset, count)


# Error codes returned by the decoding kernels (numba cannot raise rich exceptions cheaply);
# coding.huffman turns them into CorruptStreamError with these messages.
OK = 0
ERR_TRUNCATED = 1
ERR_TABLE = 2
ERR_CODE = 3
ERR_OVERFLOW = 4
ERR_VALUE = 5
ERR_TRAILING = 6
ERR_PREDICTION = 7

ERROR_MESSAGES = {
    ERR_TRUNCATED: "stream is truncated",
    ERR_TABLE: "invalid code-length table",
    ERR_CODE: "invalid Huffman code in the payload",
    ERR_OVERFLOW: "tokens run past the declared symbol count",
    ERR_VALUE: "escaped value out of the int32 range",
    ERR_TRAILING: "data or non-zero padding after the last token",
    ERR_PREDICTION: "predicted value out of the int32 range",
}
