"""Entropy coding of sparse integer arrays: zero runs + canonical Huffman, in Numba.

    data = coding.encode(symbols)      # 1-D integer array, values in the int32 range
    symbols = coding.decode(data)      # int32 array, exactly the input values
    coding.encoded_bits(symbols)       # exact size in bits, without building the bytes

    data = coding.encode_channels(x)   # (C, N) integer array: one table per group of channels
    x = coding.decode_channels(data, max_symbols=...)   # (C, N) int32

    data = coding.encode_planes(x)     # (C, H, W) integer array: residuals of a prediction
    x = coding.decode_planes(data, max_symbols=...)     # (C, H, W) int32

Each stream carries its own compact code table, so streams decode on their own. Bad input to
decode raises CorruptStreamError. docs/coding.md describes the format and its performance.
This package needs only numpy and numba.
"""

from __future__ import annotations

import numpy as np

from coding import channels, huffman, planes
from coding.errors import CorruptStreamError
from coding.format import MAX_CHANNELS, MAX_SYMBOLS, SYMBOL_MAX, SYMBOL_MIN

__all__ = [
    "MAX_CHANNELS",
    "MAX_SYMBOLS",
    "SYMBOL_MAX",
    "SYMBOL_MIN",
    "CorruptStreamError",
    "decode",
    "decode_channels",
    "decode_planes",
    "encode",
    "encode_channels",
    "encode_planes",
    "encoded_bits",
    "encoded_bits_channels",
]


def encode(symbols: np.ndarray) -> bytes:
    """Code a 1-D integer array into bytes.

    Accepts any integer dtype (and sequences) with values in [SYMBOL_MIN, SYMBOL_MAX], the
    int32 range, and at most MAX_SYMBOLS elements; anything else raises ValueError (values,
    shape) or TypeError (dtype).
    """
    return huffman.encode(symbols)


def decode(data: bytes) -> np.ndarray:
    """The symbols of a stream from `encode`, as a 1-D int32 array.

    Raises CorruptStreamError (a ValueError) for anything `encode` did not write.
    """
    return huffman.decode(data)


def encoded_bits(symbols: np.ndarray) -> int:
    """Exact coded size of `symbols` in bits: len(encode(symbols)) == ceil(bits / 8)."""
    return huffman.encoded_bits(symbols)


def encode_channels(symbols: np.ndarray) -> bytes:
    """Code a (C, N) integer array (C channels of N positions) with one Huffman table per
    group of channels with similar statistics, or one table for all where that is smaller.

    The input checks of `encode` apply to the values, plus at most MAX_CHANNELS rows; a
    non-2-D array raises ValueError.
    """
    return channels.encode(symbols)


def decode_channels(data: bytes, max_symbols: int = MAX_SYMBOLS) -> np.ndarray:
    """The (C, N) int32 symbols of a stream from `encode_channels`.

    Raises CorruptStreamError for anything `encode_channels` did not write, and for streams
    that declare more than `max_symbols` symbols (checked before anything is allocated).
    """
    return channels.decode(data, max_symbols)


def encoded_bits_channels(symbols: np.ndarray) -> int:
    """Exact size of encode_channels(symbols) in bits (always a whole number of bytes)."""
    return channels.encoded_bits(symbols)


def encode_planes(symbols: np.ndarray) -> bytes:
    """Code a (C, H, W) integer array (C planes of H x W, e.g. a latent's channels) as the
    residuals of a linear prediction from each value's causal neighbours and the planes before
    it, with weights fitted to the array; never more than a few bytes over encode_channels.

    The input checks of `encode_channels` apply; a non-3-D array raises ValueError.
    """
    return planes.encode(symbols)


def decode_planes(data: bytes, max_symbols: int = MAX_SYMBOLS) -> np.ndarray:
    """The (C, H, W) int32 array of a stream from `encode_planes`.

    Raises CorruptStreamError for anything `encode_planes` did not write, and for streams that
    declare more than `max_symbols` symbols (checked before anything is allocated).
    """
    return planes.decode(data, max_symbols)
