"""Entropy coding of sparse integer arrays: zero runs + canonical Huffman, in Numba.

    data = coding.encode(symbols)      # 1-D integer array, values in the int32 range
    symbols = coding.decode(data)      # int32 array, exactly the input values
    coding.encoded_bits(symbols)       # exact size in bits, without building the bytes

Each stream carries its own compact code table, so streams decode on their own. Bad input to
decode raises CorruptStreamError. docs/coding.md describes the format and its performance.
This package needs only numpy and numba.
"""

from __future__ import annotations

import numpy as np

from coding import codec
from coding.errors import CorruptStreamError
from coding.format import MAX_SYMBOLS, SYMBOL_MAX, SYMBOL_MIN

__all__ = [
    "MAX_SYMBOLS",
    "SYMBOL_MAX",
    "SYMBOL_MIN",
    "CorruptStreamError",
    "decode",
    "encode",
    "encoded_bits",
]


def encode(symbols: np.ndarray) -> bytes:
    """Code a 1-D integer array into bytes.

    Accepts any integer dtype (and sequences) with values in [SYMBOL_MIN, SYMBOL_MAX], the
    int32 range, and at most MAX_SYMBOLS elements; anything else raises ValueError (values,
    shape) or TypeError (dtype).
    """
    return codec.encode(symbols)


def decode(data: bytes) -> np.ndarray:
    """The symbols of a stream from `encode`, as a 1-D int32 array.

    Raises CorruptStreamError (a ValueError) for anything `encode` did not write.
    """
    return codec.decode(data)


def encoded_bits(symbols: np.ndarray) -> int:
    """Exact coded size of `symbols` in bits: len(encode(symbols)) == ceil(bits / 8)."""
    return codec.encoded_bits(symbols)
