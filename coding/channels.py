"""Per-channel coding: a (C, N) array coded with one Huffman table per group of channels.

Channels with similar value statistics share a table; the groups come from a greedy merge
over an estimate of the coded size (`kernels.merge_groups`), and each group is coded exactly
like a 1-D stream (coding.huffman: zero runs folded into tokens where they pay, R = 1 where
they do not). Encode measures the grouped stream and the single-table one (G = 1) and keeps
the smaller. docs/coding.md describes the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from coding import huffman, kernels
from coding.errors import CorruptStreamError
from coding.format import (
    MAX_CHANNELS,
    MAX_SYMBOLS,
    StreamKind,
    as_channel_symbols,
    get_varint,
    pack_parameters,
    put_varint,
    unpack_parameters,
)
from coding.plan import HISTOGRAM_MAGNITUDES

# The merge estimate of a group's size: order-0 entropy, plus BIN_BITS per distinct value
# (histogram bin) for its table, plus GROUP_BITS for its table's fixed part, parameters,
# length and padding. Fitted on coding.synthetic.channel_laplacians (docs/coding.md).
BIN_BITS = 4.0
GROUP_BITS = 80.0
MERGE_ROWS = 256


@dataclass(frozen=True)
class _Plan:
    """Everything encode_channels writes, and its exact size in bytes."""

    groups: list[huffman.Coding]
    head: bytes  # version, C, N, G and the packed labels
    sections: list[bytes]  # each group's length prefix (none for the last) and parameters

    @property
    def size(self) -> int:
        body = sum((c.body_bits + 7) // 8 for c in self.groups)
        return len(self.head) + sum(len(s) for s in self.sections) + body


def _label_bits(groups: int) -> int:
    return (groups - 1).bit_length()


def _head(shape: tuple[int, int], labels: np.ndarray) -> bytes:
    out = bytearray([StreamKind.CHANNELS])
    for value in shape:
        put_varint(out, value)
    if labels.size == 0:
        return bytes(out)
    groups = int(labels.max()) + 1
    put_varint(out, groups)
    width = _label_bits(groups)
    if width:
        bits = (labels[:, None] >> np.arange(width - 1, -1, -1)) & 1
        out += np.packbits(bits.astype(np.uint8).ravel()).tobytes()
    return bytes(out)


def _plan(x: np.ndarray, labels: np.ndarray, backend: ModuleType) -> _Plan:
    """The stream of x with channel c in group labels[c] (labels canonical; empty if x is)."""
    groups = int(labels.max()) + 1 if x.size else 0
    rows = _group_rows(labels, groups) if groups else []
    codings = [huffman.prepare(x[r].ravel(), backend) for r in rows]
    sections = []
    for g, c in enumerate(codings):
        parameters = pack_parameters(c.header)
        prefix = bytearray()
        if g < groups - 1:
            put_varint(prefix, len(parameters) + (c.body_bits + 7) // 8)
        sections.append(bytes(prefix) + parameters)
    return _Plan(codings, _head(x.shape, labels), sections)


def choose_groups(x: np.ndarray, backend: ModuleType = kernels) -> np.ndarray:
    """Group labels for the channels (rows) of a (C, N) int32 array, by estimated size.

    Beyond MERGE_ROWS channels, the merge starts from MERGE_ROWS blocks of channels with
    neighbouring order-0 entropies instead of single channels (its cost grows as rows**3).
    """
    hist = backend.channel_histograms(x, HISTOGRAM_MAGNITUDES)
    if hist.shape[0] <= MERGE_ROWS:
        return backend.merge_groups(hist, BIN_BITS, GROUP_BITS)
    p = hist / hist.sum(axis=1, keepdims=True)
    entropy = -(p * np.log2(np.where(p > 0, p, 1))).sum(axis=1)
    rows = hist.shape[0]
    block = np.empty(rows, np.int64)
    block[np.argsort(entropy, kind="stable")] = np.arange(rows) * MERGE_ROWS // rows
    block_hist = np.zeros((MERGE_ROWS, hist.shape[1]), np.int64)
    np.add.at(block_hist, block, hist)
    merged = backend.merge_groups(block_hist, BIN_BITS, GROUP_BITS)[block]
    _, first, labels = np.unique(merged, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first)] = np.arange(first.size)  # renumber by first appearance
    return rank[labels]


def _prepare(symbols: object, backend: ModuleType) -> _Plan:
    x = as_channel_symbols(symbols)
    single = np.zeros(x.shape[0] if x.size else 0, np.int64)
    best = _plan(x, single, backend)
    if x.shape[0] > 1 and x.size:
        labels = choose_groups(x, backend)
        if labels.max() > 0:
            grouped = _plan(x, labels, backend)
            if grouped.size < best.size:
                best = grouped
    return best


def encoded_bits(symbols: object, backend: ModuleType = kernels) -> int:
    """Exact size of encode(symbols) in bits (a whole number of bytes: groups are padded)."""
    return 8 * _prepare(symbols, backend).size


def encode(symbols: object, backend: ModuleType = kernels) -> bytes:
    """Code a (C, N) integer array (values in the int32 range) into a self-describing stream."""
    p = _prepare(symbols, backend)
    parts = [p.head]
    for section, c in zip(p.sections, p.groups, strict=True):
        parts.append(huffman.write(c, section, backend))
    data = b"".join(parts)
    if len(data) != p.size:
        raise RuntimeError(f"coder wrote {len(data)} bytes where it planned {p.size}")
    return data


def _group_rows(labels: np.ndarray, groups: int) -> list[np.ndarray]:
    """The channels of each group, in order (one sort: no pass over the labels per group)."""
    order = np.argsort(labels, kind="stable")
    return np.split(order, np.cumsum(np.bincount(labels, minlength=groups))[:-1])


def _read_labels(raw: bytes, offset: int, channels: int, groups: int) -> tuple[np.ndarray, int]:
    """The labels of a stream with `groups` > 1 at `offset`, and the offset after them."""
    width = _label_bits(groups)
    end = offset + (channels * width + 7) // 8
    if end > len(raw):  # checked before anything is allocated: C is at most 8 * len(raw)
        raise CorruptStreamError("stream ends inside the channel groups")
    bits = np.unpackbits(np.frombuffer(raw, np.uint8, end - offset, offset))
    if bits[channels * width :].any():
        raise CorruptStreamError("non-zero padding after the channel groups")
    labels = bits[: channels * width].reshape(channels, width) @ (1 << np.arange(width - 1, -1, -1))
    # Canonical labels: every group used, numbered in order of first appearance.
    first = np.unique(labels, return_index=True)
    if first[0].size != groups or first[0][-1] != groups - 1 or np.any(np.diff(first[1]) < 0):
        raise CorruptStreamError("channel groups are not numbered in order of appearance")
    return labels.astype(np.int64), end


def decode(data: object, max_symbols: int = MAX_SYMBOLS,
           backend: ModuleType = kernels) -> np.ndarray:  # fmt: skip
    """The (C, N) int32 symbols of a stream that encode wrote, or CorruptStreamError.

    Streams that declare more than `max_symbols` symbols (C * N) are refused before anything
    is allocated, as are sizes that the stream's length cannot hold.
    """
    raw = memoryview(data).cast("B").tobytes()
    if not raw:
        raise CorruptStreamError("empty stream")
    if raw[0] != StreamKind.CHANNELS:
        raise CorruptStreamError(
            f"unknown stream kind {raw[0]} (expected {StreamKind.CHANNELS})"
        )
    limit = min(max_symbols, MAX_SYMBOLS)
    channels, offset = get_varint(raw, 1, MAX_CHANNELS, "channel count")
    positions, offset = get_varint(raw, offset, limit, "position count")
    if channels * positions > limit:
        raise CorruptStreamError(f"{channels} x {positions} symbols is over the limit {limit}")
    if channels * positions == 0:
        if offset != len(raw):
            raise CorruptStreamError("data after an empty stream")
        return np.zeros((channels, positions), np.int32)
    groups, offset = get_varint(raw, offset, channels, "group count")
    if groups == 0:
        raise CorruptStreamError("no channel groups")
    sizes = [channels]
    if groups > 1:
        labels, offset = _read_labels(raw, offset, channels, groups)
        sizes = np.bincount(labels, minlength=groups)

    # Parse every group's extent and parameters first: each group's symbol count is checked
    # against its own bits before the output is allocated.
    view = memoryview(raw)
    extents = []
    for g in range(groups):
        end = len(raw)
        if g < groups - 1:
            length, offset = get_varint(raw, offset, len(raw) - offset, "group length")
            end = offset + length
            if end > len(raw):
                raise CorruptStreamError("group longer than the stream")
        header, start = unpack_parameters(view[:end], offset, int(sizes[g]) * positions)
        if header.count - header.tail > header.run_cap * 8 * (end - start):
            raise CorruptStreamError("symbol count larger than the payload can hold")
        extents.append((header, start, end))
        offset = end
    stream = huffman.padded(raw)
    if groups == 1:
        header, start, end = extents[0]
        return huffman.read(stream, 8 * start, 8 * end, header, backend).reshape(channels, -1)
    out = np.empty((channels, positions), np.int32)
    for rows, (header, start, end) in zip(_group_rows(labels, groups), extents, strict=True):
        out[rows] = huffman.read(stream, 8 * start, 8 * end, header, backend).reshape(-1, positions)
    return out
