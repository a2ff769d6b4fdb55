"""Plain Python/numpy reference for coding.kernels: same functions, same results, written for
clarity rather than speed (textbook package-merge, bit strings, bit-by-bit decoding).

The tests run coding.huffman with this module as the backend and check that streams, sizes and
decoded symbols agree with the numba kernels byte for byte. Use it on small inputs only.
"""

from __future__ import annotations

import math

import numpy as np

from coding.format import (
    ERR_CODE,
    ERR_OVERFLOW,
    ERR_PREDICTION,
    ERR_TABLE,
    ERR_TRAILING,
    ERR_TRUNCATED,
    ERR_VALUE,
    MAX_CODE_LENGTH,
    OK,
    SYMBOL_MAX,
    SYMBOL_MIN,
    TABLE_CODE_MAX_LENGTH,
    TABLE_ESCAPE,
    TABLE_ESCAPE_BITS,
    TABLE_FIRST_PREDICTION,
    TABLE_LENGTH_BITS,
    TABLE_SYMBOLS,
    WEIGHT_SHIFT,
)


class _Corrupt(Exception):
    """Carries a format.ERR_* code out of nested reading code."""

    def __init__(self, code: int) -> None:
        self.code = code


# ---------------------------------------------------------------------------- tokens


def nonzero_tokens(symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    positions = np.flatnonzero(symbols)
    runs = np.diff(positions, prepend=-1) - 1
    trailing = len(symbols) - 1 - int(positions[-1]) if positions.size else len(symbols)
    return runs.astype(np.int32), symbols[positions].astype(np.int32), trailing


def token_extent(runs: np.ndarray, values: np.ndarray, trailing: int) -> tuple[int, int]:
    max_run = max([trailing, *runs.tolist()])
    max_magnitude = max([0, *(abs(v) for v in values.tolist())])
    return max_run, max_magnitude


def value_class(value: int, direct: int) -> tuple[int, int, int]:
    """(class j, extra bit count k, extra bits) of a non-zero value; see coding.kernels."""
    sign = 1 if value < 0 else 0
    m = abs(value)
    if m <= direct:
        return 2 * (m - 1) + sign, 0, 0
    e = m - direct
    k = e.bit_length() - 1
    return 2 * direct + 2 * k + sign, k, e - (1 << k)


def class_value(j: int, extra: int, direct: int) -> int:
    """The value of class j with its extra bits (inverse of value_class)."""
    if j < 2 * direct:
        m = j // 2 + 1
    else:
        m = direct + (1 << ((j - 2 * direct) // 2)) + extra
    return -m if j & 1 else m


# ---------------------------------------------------------------------------- histograms


def run_value_histogram(runs, values, log2_rows, magnitudes, columns):
    hist = np.zeros((1 << log2_rows, columns), np.int64)
    long_runs = 0
    for r, v in zip(runs.tolist(), values.tolist(), strict=True):
        m = abs(v)
        sign = 1 if v < 0 else 0
        if m <= magnitudes:
            col = 2 * (m - 1) + sign
        else:
            col = 2 * magnitudes + 2 * (m.bit_length() - 1) + sign
        hist[r % (1 << log2_rows), col] += 1
        long_runs += r >> log2_rows
    return hist, long_runs


def _tally(pairs, zero_runs, log2_run, direct, classes, clamp):
    """Counts of the tokens (run, value, multiplicity) and their extra bits."""
    width = 2 * direct + 2 * classes
    counts = np.zeros((width << log2_run) + 1, np.int64)
    extra_bits = 0
    for r, v, c in pairs:
        j, k, _ = value_class(v, direct)
        if clamp and abs(v) > direct and k >= classes:
            k = classes - 1
            j = 2 * direct + 2 * k + (1 if v < 0 else 0)
        counts[(r % (1 << log2_run)) * width + j] += c
        extra_bits += c * k
        zero_runs += c * (r >> log2_run)
    counts[-1] = zero_runs
    return counts, extra_bits


def approx_token_counts(
    cells, log2_rows, long_runs, trailing, magnitudes, log2_run, direct, classes
):
    pairs = []
    for row, col, count in cells.tolist():
        if col < 2 * magnitudes:
            m = col // 2 + 1
        else:
            b = (col - 2 * magnitudes) // 2
            m = (1 << b) + (1 << b >> 1)
        pairs.append((row, -m if col & 1 else m, count))
    zero_runs = (long_runs << (log2_rows - log2_run)) + (trailing >> log2_run)
    return _tally(pairs, zero_runs, log2_run, direct, classes, clamp=True)


def token_counts(runs, values, trailing, log2_run, direct, classes):
    pairs = [(r, v, 1) for r, v in zip(runs.tolist(), values.tolist(), strict=True)]
    return _tally(pairs, trailing >> log2_run, log2_run, direct, classes, clamp=False)


# ---------------------------------------------------------------------------- code lengths


def code_lengths(counts: np.ndarray, max_length: int) -> np.ndarray:
    """Package-merge as in the textbook: items are (weight, symbols); lists are not trimmed."""
    lengths = np.zeros(len(counts), np.uint8)
    used = [t for t in range(len(counts)) if counts[t] > 0]
    if len(used) == 1:
        lengths[used[0]] = 1
    if len(used) <= 1:
        return lengths
    leaves = sorted(((int(counts[t]), [t]) for t in used), key=lambda item: item[0])
    items = leaves
    for _ in range(max_length - 1):
        packages = [
            (items[i][0] + items[i + 1][0], items[i][1] + items[i + 1][1])
            for i in range(0, len(items) - 1, 2)
        ]
        items = sorted(leaves + packages, key=lambda item: item[0])  # stable: leaves first
    for _, symbols in items[: 2 * len(used) - 2]:
        for t in symbols:
            lengths[t] += 1
    return lengths


def canonical_codes(lengths: np.ndarray) -> dict[int, tuple[int, int]]:
    """{symbol: (code, length)}: codes assigned in order of (length, symbol)."""
    codes = {}
    code = 0
    previous = 0
    for length, t in sorted((int(length), t) for t, length in enumerate(lengths) if length):
        code <<= length - previous
        codes[t] = (code, length)
        code += 1
        previous = length
    return codes


# ---------------------------------------------------------------------------- table coding


def _prediction(lengths, t: int, width: int, last: int) -> int:
    up = int(lengths[t - width]) if width > 0 and t >= width else 0
    return up if up > 0 else last


def table_symbols(lengths, width):
    symbols = np.zeros(len(lengths), np.uint8)
    last = TABLE_FIRST_PREDICTION
    for t, length in enumerate(lengths.tolist()):
        if length:
            d = length - _prediction(lengths, t, width, last)
            symbols[t] = {0: 1, 1: 2, -1: 3, 2: 4, -2: 5, 3: 6, -3: 7}.get(d, TABLE_ESCAPE)
            last = length
    return symbols


def _table_code(symbols):
    counts = np.bincount(symbols, minlength=TABLE_SYMBOLS)
    return counts, code_lengths(counts, TABLE_CODE_MAX_LENGTH)


def table_bits(lengths, width):
    counts, table_lengths = _table_code(table_symbols(lengths, width))
    escapes = TABLE_ESCAPE_BITS * int(counts[TABLE_ESCAPE])
    return TABLE_SYMBOLS * TABLE_LENGTH_BITS + escapes + int(np.dot(counts, table_lengths))


# ---------------------------------------------------------------------------- writing


def write_stream(words, header, lengths, runs, values, trailing, log2_run, direct, classes):
    width = 2 * direct + 2 * classes
    bits = []

    def put(value: int, n: int) -> None:
        bits.append(format(value, f"0{n}b") if n else "")

    for byte in header.tolist():
        put(byte, 8)

    symbols = table_symbols(lengths, width)
    _, table_lengths = _table_code(symbols)
    table_codes = canonical_codes(table_lengths)
    for length in table_lengths.tolist():
        put(length, TABLE_LENGTH_BITS)
    for t, s in enumerate(symbols.tolist()):
        put(*table_codes[s])
        if s == TABLE_ESCAPE:
            put(int(lengths[t]), TABLE_ESCAPE_BITS)

    codes = canonical_codes(lengths)
    zero_run = len(lengths) - 1
    for r, v in zip(runs.tolist(), values.tolist(), strict=True):
        for _ in range(r >> log2_run):
            put(*codes[zero_run])
        j, k, extra = value_class(v, direct)
        put(*codes[(r % (1 << log2_run)) * width + j])
        put(extra, k)
    for _ in range(trailing >> log2_run):
        put(*codes[zero_run])

    text = "".join(bits)
    padded = text + "0" * (-len(text) % 32)
    for i in range(0, len(padded), 32):
        words[i // 32] = int(padded[i : i + 32], 2)
    return len(text)


# ---------------------------------------------------------------------------- reading


class _BitReader:
    def __init__(self, data, bitpos: int, total_bits: int) -> None:
        self.data = bytes(data[: (total_bits + 7) // 8])
        self.pos = bitpos
        self.total = total_bits

    def bit(self) -> int:
        if self.pos >= self.total:
            raise _Corrupt(ERR_TRUNCATED)
        byte = self.data[self.pos >> 3]
        self.pos += 1
        return byte >> (7 - (self.pos - 1) % 8) & 1

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = value << 1 | self.bit()
        return value

    def symbol(self, codes: dict[tuple[int, int], int], max_length: int, error: int) -> int:
        code = 0
        for length in range(1, max_length + 1):
            code = code << 1 | self.bit()
            if (code, length) in codes:
                return codes[code, length]
        raise _Corrupt(error)


def _decoding_codes(lengths) -> dict[tuple[int, int], int] | None:
    """{(code, length): symbol}, or None when the lengths break the Kraft inequality."""
    if sum(2.0 ** -int(n) for n in lengths if n) > 1:
        return None
    return {code: t for t, code in canonical_codes(lengths).items()}


def read_table(data, bitpos, total_bits, size, width):
    lengths = np.zeros(size, np.uint8)
    reader = _BitReader(data, bitpos, total_bits)
    try:
        table_lengths = [reader.bits(TABLE_LENGTH_BITS) for _ in range(TABLE_SYMBOLS)]
        codes = _decoding_codes(table_lengths)
        if not codes:
            return lengths, reader.pos, ERR_TABLE
        last = TABLE_FIRST_PREDICTION
        for t in range(size):
            s = reader.symbol(codes, TABLE_CODE_MAX_LENGTH, ERR_TABLE)
            if s == TABLE_ESCAPE:
                length = reader.bits(TABLE_ESCAPE_BITS)
                if length == 0:
                    return lengths, reader.pos, ERR_TABLE
            elif s == 0:
                length = 0
            else:
                d = s // 2 if s % 2 == 0 else -(s // 2)
                length = _prediction(lengths, t, width, last) + d
                if not 1 <= length <= MAX_CODE_LENGTH:
                    return lengths, reader.pos, ERR_TABLE
            lengths[t] = length
            last = length or last
    except _Corrupt as corrupt:
        return lengths, reader.pos, corrupt.code
    return lengths, reader.pos, OK


def decode_payload(data, bitpos, total_bits, lengths, log2_run, direct, classes, count, tail):
    out = np.zeros(count, np.int32)
    body = count - tail
    codes = _decoding_codes(lengths)
    if codes is None or (body > 0 and not codes):
        return out, ERR_TABLE
    width = 2 * direct + 2 * classes
    zero_run = len(lengths) - 1
    reader = _BitReader(data, bitpos, total_bits)
    pos = 0
    try:
        while pos < body:
            t = reader.symbol(codes, MAX_CODE_LENGTH, ERR_CODE)
            if t == zero_run:
                advance, value = 1 << log2_run, 0
            else:
                j = t % width
                k = (j - 2 * direct) // 2 if j >= 2 * direct else 0
                advance, value = t // width + 1, class_value(j, reader.bits(k), direct)
            if pos + advance > body:
                return out, ERR_OVERFLOW
            if value > SYMBOL_MAX or value < -SYMBOL_MAX - 1:
                return out, ERR_VALUE
            pos += advance
            out[pos - 1] = value
        padding = total_bits - reader.pos
        if padding >= 8 or reader.bits(padding):
            return out, ERR_TRAILING
    except _Corrupt as corrupt:
        return out, corrupt.code
    return out, OK


# ---------------------------------------------------------------------------- channel groups


def channel_histograms(symbols, magnitudes):
    hist = np.zeros((symbols.shape[0], 2 * magnitudes + 1 + 64), np.int64)
    for c, row in enumerate(symbols.tolist()):
        for v in row:
            if abs(v) <= magnitudes:
                hist[c, v + magnitudes] += 1
            else:
                hist[c, 2 * magnitudes + 1 + 2 * (abs(v).bit_length() - 1) + (v < 0)] += 1
    return hist


def _group_cost(counts: list[int], bin_bits: float, group_bits: float) -> float:
    used = [c for c in counts if c > 0]
    if not used:
        return 0.0
    total = sum(used)
    entropy = total * math.log2(total) - sum(c * math.log2(c) for c in used)
    return entropy + bin_bits * len(used) + group_bits


def merge_groups(hist, bin_bits, group_bits):
    """Greedy merging written plainly: every round scores every pair of groups afresh."""
    groups = {c: ([c], hist[c].tolist()) for c in range(hist.shape[0])}  # root -> members

    def saving(a: int, b: int) -> float:
        merged = [x + y for x, y in zip(groups[a][1], groups[b][1], strict=True)]
        return (_group_cost(groups[a][1], bin_bits, group_bits)
                + _group_cost(groups[b][1], bin_bits, group_bits)
                - _group_cost(merged, bin_bits, group_bits))  # fmt: skip

    while True:
        roots = sorted(groups)
        pairs = [(a, b) for i, a in enumerate(roots) for b in roots[i + 1 :]]
        best = max(pairs, key=lambda pair: saving(*pair), default=None)  # first of the best
        if best is None or saving(*best) <= 0:
            break
        a, b = best
        members, counts = groups.pop(b)
        groups[a] = (groups[a][0] + members, [x + y for x, y in zip(groups[a][1], counts,
                                                                     strict=True)])  # fmt: skip
    labels = np.zeros(hist.shape[0], np.int64)
    for label, root in enumerate(sorted(groups)):  # a group's root is its first channel
        labels[groups[root][0]] = label
    return labels


# ---------------------------------------------------------------------------- prediction


def predict_planes(planes, residuals, taps, weights, inverse):
    """kernels.predict_planes with Python integers (no overflow) and explicit bounds."""
    channels, height, width = planes.shape
    for i in range(channels):
        for y in range(height):
            for x in range(width):
                acc = int(weights[i, 0])
                for t, (back, dy, dx) in enumerate(taps.tolist()):
                    inside = 0 <= y + dy < height and 0 <= x + dx < width
                    if back <= i and inside:
                        acc += int(weights[i, t + 1]) * int(planes[i - back, y + dy, x + dx])
                prediction = (acc + 2 ** (WEIGHT_SHIFT - 1)) // 2**WEIGHT_SHIFT
                if inverse:
                    value = int(residuals[i, y, x]) + prediction
                else:
                    value = int(planes[i, y, x]) - prediction
                if not SYMBOL_MIN <= value <= SYMBOL_MAX:
                    return ERR_PREDICTION
                (planes if inverse else residuals)[i, y, x] = value
    return OK
