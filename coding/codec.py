"""encode, decode and encoded_bits, written once over a backend of kernels.

The backend is coding.kernels (numba) in normal use; coding.reference (plain Python) offers
the same functions, and the tests run both through this module to check that they agree.
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
    Header,
    as_symbols,
    pack_header,
    unpack_header,
)

PADDING = 16  # zero bytes after the stream, so that 64-bit loads near its end stay in bounds


@dataclass(frozen=True)
class _Coding:
    """Everything encode needs to write a stream, and its exact size."""

    header: Header
    header_bytes: bytes
    lengths: np.ndarray
    tokens: tuple  # (runs, values, trailing) from nonzero_tokens
    table_bits: int
    payload_bits: int

    @property
    def bits(self) -> int:
        return 8 * len(self.header_bytes) + self.table_bits + self.payload_bits


def _prepare(symbols: object, backend: ModuleType) -> _Coding:
    x = as_symbols(symbols)
    if x.size == 0:
        header = Header(0)
        return _Coding(header, pack_header(header), np.zeros(0, np.uint8), (), 0, 0)
    runs, values, trailing = backend.nonzero_tokens(x)
    p = plan.choose(runs, values, trailing, backend)
    counts, extra_bits = p.counts, p.extra_bits
    if counts is None:  # the planner binned large magnitudes: count the tokens exactly
        counts, extra_bits = backend.token_counts(
            runs, values, trailing, p.log2_run, p.direct, p.classes
        )
    lengths = backend.code_lengths(counts, MAX_CODE_LENGTH)
    tail = int(trailing) & ((1 << p.log2_run) - 1)
    header = Header(x.size, p.log2_run, p.direct, p.classes, tail)
    return _Coding(
        header,
        pack_header(header),
        lengths,
        (runs, values, int(trailing)),
        int(backend.table_bits(lengths, header.width)),
        int(np.dot(counts, lengths)) + int(extra_bits),
    )


def encoded_bits(symbols: object, backend: ModuleType = kernels) -> int:
    """Exact size of encode(symbols) in bits before the last byte is padded.

    len(encode(symbols)) == ceil(encoded_bits(symbols) / 8); header and table are included.
    """
    return _prepare(symbols, backend).bits


def encode(symbols: object, backend: ModuleType = kernels) -> bytes:
    """Code a 1-D integer array (values in the int32 range) into a self-describing stream."""
    c = _prepare(symbols, backend)
    if c.header.count == 0:
        return c.header_bytes
    words = np.zeros((c.bits + 31) // 32, np.uint32)
    h = c.header
    runs, values, trailing = c.tokens
    header_bytes = np.frombuffer(c.header_bytes, np.uint8)
    bits = backend.write_stream(
        words, header_bytes, c.lengths, runs, values, trailing, h.log2_run, h.direct, h.classes
    )
    if bits != c.bits:
        raise RuntimeError(f"coder wrote {bits} bits where it planned {c.bits}")
    return words.astype(">u4", copy=False).view(np.uint8)[: (bits + 7) // 8].tobytes()


def _check(error: int) -> None:
    if error != OK:
        raise CorruptStreamError(ERROR_MESSAGES[error])


def decode(data: object, backend: ModuleType = kernels) -> np.ndarray:
    """The int32 symbols of a stream that encode wrote, or CorruptStreamError."""
    raw = memoryview(data).cast("B").tobytes()
    header, offset = unpack_header(raw)
    if header.count == 0:
        if offset != len(raw):
            _check(ERR_TRAILING)
        return np.zeros(0, np.int32)
    total_bits = 8 * len(raw)
    # Every table entry takes at least one bit and every token at least one bit while covering
    # at most R symbols: sizes the stream cannot hold are refused before anything is allocated.
    table_room = total_bits - 8 * offset - TABLE_SYMBOLS * TABLE_LENGTH_BITS
    if header.alphabet > table_room:
        raise CorruptStreamError("code table larger than the stream")
    padded = np.zeros(len(raw) + PADDING, np.uint8)
    padded[: len(raw)] = np.frombuffer(raw, np.uint8)
    lengths, bitpos, error = backend.read_table(
        padded, 8 * offset, total_bits, header.alphabet, header.width
    )
    _check(error)
    if header.count - header.tail > header.run_cap * (total_bits - bitpos):
        raise CorruptStreamError("symbol count larger than the payload can hold")
    symbols, error = backend.decode_payload(
        padded, bitpos, total_bits, lengths, header.log2_run, header.direct, header.classes,
        header.count, header.tail,
    )  # fmt: skip
    _check(error)
    return symbols
