"""encode, decode and encoded_bits, written once over a backend of kernels.

The backend is coding.kernels (numba) in normal use; coding.reference (plain Python) offers
the same functions, and the tests run both through this module to check that they agree.
`prepare`, `write` and `read` code one non-empty array with one table; coding.channels
builds its per-group streams from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from coding import kernels, plan
from coding.errors import CorruptStreamError
from coding.format import (
    ERR_TRAILING,
    ERROR_MESSAGES,
    MAX_CODE_LENGTH,
    OK,
    TABLE_LENGTH_BITS,
    TABLE_SYMBOLS,
    HuffmanHeader,
    as_symbols,
    pack_header,
    unpack_header,
)

PADDING = 16  # zero bytes after the stream, so that 64-bit loads near its end stay in bounds


@dataclass(frozen=True)
class Coding:
    """Everything needed to write one table and payload, and their exact size."""

    header: HuffmanHeader
    lengths: np.ndarray
    tokens: tuple  # (runs, values, trailing) from nonzero_tokens
    table_bits: int
    payload_bits: int

    @property
    def body_bits(self) -> int:
        """Table and payload: everything after the header bytes."""
        return self.table_bits + self.payload_bits


def prepare(x: np.ndarray, backend: ModuleType) -> Coding:
    """The coding of a non-empty array from `as_symbols`, with its (R, D) chosen."""
    runs, values, trailing = backend.nonzero_tokens(x)
    p = plan.choose(runs, values, trailing, backend)
    counts, extra_bits = p.counts, p.extra_bits
    if counts is None:  # the planner binned large magnitudes: count the tokens exactly
        counts, extra_bits = backend.token_counts(
            runs, values, trailing, p.log2_run, p.direct, p.classes
        )
    lengths = backend.code_lengths(counts, MAX_CODE_LENGTH)
    tail = int(trailing) & ((1 << p.log2_run) - 1)
    header = HuffmanHeader(x.size, p.log2_run, p.direct, p.classes, tail)
    return Coding(
        header,
        lengths,
        (runs, values, int(trailing)),
        int(backend.table_bits(lengths, header.width)),
        int(np.dot(counts, lengths)) + int(extra_bits),
    )


def write(c: Coding, header_bytes: bytes, backend: ModuleType) -> bytes:
    """`header_bytes`, then the table and payload of `c`, padded with zero bits to a byte."""
    planned = 8 * len(header_bytes) + c.body_bits
    words = np.zeros((planned + 31) // 32, np.uint32)
    h = c.header
    runs, values, trailing = c.tokens
    bits = backend.write_stream(
        words, np.frombuffer(header_bytes, np.uint8), c.lengths, runs, values, trailing,
        h.log2_run, h.direct, h.classes,
    )  # fmt: skip
    if bits != planned:
        raise RuntimeError(f"coder wrote {bits} bits where it planned {planned}")
    return words.astype(">u4", copy=False).view(np.uint8)[: (bits + 7) // 8].tobytes()


def padded(raw: bytes) -> np.ndarray:
    """The stream as uint8 with PADDING zero bytes after it, as `read` needs."""
    out = np.zeros(len(raw) + PADDING, np.uint8)
    out[: len(raw)] = np.frombuffer(raw, np.uint8)
    return out


def _check(error: int) -> None:
    if error != OK:
        raise CorruptStreamError(ERROR_MESSAGES[error])


def read(data: np.ndarray, bitpos: int, total_bits: int, header: HuffmanHeader,
         backend: ModuleType) -> np.ndarray:  # fmt: skip
    """The header.count > 0 symbols of the table and payload in bits [bitpos, total_bits) of
    `data` (from `padded`), which must end there with less than a byte of zero padding."""
    # Every table entry takes at least one bit and every token at least one bit while covering
    # at most R symbols: sizes the stream cannot hold are refused before anything is allocated.
    table_room = total_bits - bitpos - TABLE_SYMBOLS * TABLE_LENGTH_BITS
    if header.alphabet > table_room:
        raise CorruptStreamError("code table larger than the stream")
    lengths, bitpos, error = backend.read_table(
        data, bitpos, total_bits, header.alphabet, header.width
    )
    _check(error)
    if header.count - header.tail > header.run_cap * (total_bits - bitpos):
        raise CorruptStreamError("symbol count larger than the payload can hold")
    symbols, error = backend.decode_payload(
        data, bitpos, total_bits, lengths, header.log2_run, header.direct, header.classes,
        header.count, header.tail,
    )  # fmt: skip
    _check(error)
    return symbols


def encoded_bits(symbols: object, backend: ModuleType = kernels) -> int:
    """Exact size of encode(symbols) in bits before the last byte is padded.

    len(encode(symbols)) == ceil(encoded_bits(symbols) / 8); header and table are included.
    """
    x = as_symbols(symbols)
    if x.size == 0:
        return 8 * len(pack_header(HuffmanHeader(0)))
    c = prepare(x, backend)
    return 8 * len(pack_header(c.header)) + c.body_bits


def encode(symbols: object, backend: ModuleType = kernels) -> bytes:
    """Code a 1-D integer array (values in the int32 range) into a self-describing stream."""
    x = as_symbols(symbols)
    if x.size == 0:
        return pack_header(HuffmanHeader(0))
    c = prepare(x, backend)
    return write(c, pack_header(c.header), backend)


def decode(data: object, backend: ModuleType = kernels) -> np.ndarray:
    """The int32 symbols of a stream that encode wrote, or CorruptStreamError."""
    raw = memoryview(data).cast("B").tobytes()
    header, offset = unpack_header(raw)
    if header.count == 0:
        if offset != len(raw):
            _check(ERR_TRAILING)
        return np.zeros(0, np.int32)
    return read(padded(raw), 8 * offset, 8 * len(raw), header, backend)
