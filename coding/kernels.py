"""Numba kernels: tokens, histograms, code lengths, table coding, bit writing and reading.

Each public function here is one step of the coder over numpy arrays, compiled once and cached
on disk (`cache=True`). coding/reference.py implements the same functions in plain Python and
the tests check that both agree. The decoding kernels trust nothing they read: numba does no
bounds checking, so every index is validated before use and problems come back as error codes
(format.ERR_*), never as a crash.

Tokens. Symbol i of a stream is either zero or not. Every non-zero symbol v becomes one token
(r, j): r = the zeros before it modulo the run cap R, j = its value class; each full R zeros
before it becomes one zero-run token Z. Value classes (D = `direct`, m = |v|, s = 1 if v < 0):
    m <= D:  j = 2 (m - 1) + s                       (no extra bits)
    m >  D:  e = m - D, k = bit_length(e) - 1, j = 2 D + 2 k + s, then k raw bits of e - 2**k
With V = 2 D + 2 K value classes, token (r, j) has index r V + j and Z has index R V.
"""

from __future__ import annotations

import numpy as np
from numba import njit

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

U64 = np.uint64
PRIMARY_BITS = 11  # first level of the payload decode table: 2**11 entries, 16 KiB
SECOND_LEVEL = 1 << 21  # decode-table entry flag, see _token_entries


# ---------------------------------------------------------------------------- tokens


@njit(cache=True)
def nonzero_tokens(symbols):
    """(runs, values, trailing): zeros before each non-zero symbol, the symbols, zeros after.

    Branch-free: every symbol is written to the next free slot, which only advances on a
    non-zero, so the loop runs at memory speed whatever the zero pattern. The slots are
    counted first, so memory is sized by the non-zeros (8 bytes each), not the symbols.
    """
    n = symbols.shape[0]
    count = 0
    for i in range(n):  # (vectorises; faster than numba's np.count_nonzero)
        count += symbols[i] != 0
    runs = np.empty(count + 1, np.int32)  # + 1: the slot written after the last non-zero
    values = np.empty(count + 1, np.int32)
    count = 0
    last = -1
    for i in range(n):
        v = symbols[i]
        runs[count] = i - last - 1
        values[count] = v
        nonzero = np.int64(v != 0)
        last += (i - last) * nonzero
        count += nonzero
    return runs[:count], values[:count], n - 1 - last


@njit(cache=True)
def token_extent(runs, values, trailing):
    """(longest zero run, trailing zeros included; largest magnitude)."""
    max_run = trailing
    max_magnitude = 0
    for i in range(runs.size):
        max_run = max(max_run, runs[i])
        max_magnitude = max(max_magnitude, abs(np.int64(values[i])))
    return max_run, max_magnitude


@njit(cache=True)
def _bit_length(x):
    """Bits needed for x >= 0. A plain loop: magnitudes cluster, so its branch predicts well,
    and in the histogram loops it measured faster than a branch-free binary search."""
    bits = 0
    while x > 0:
        x >>= 1
        bits += 1
    return bits


@njit(cache=True)
def _value_class(value, direct):
    """(class j, extra bit count k, extra bits) of a non-zero value."""
    v = np.int64(value)
    sign = 1 if v < 0 else 0
    m = -v if sign else v
    if m <= direct:
        return 2 * (m - 1) + sign, 0, 0
    e = m - direct
    k = _bit_length(e) - 1
    return 2 * direct + 2 * k + sign, k, e - (1 << k)


# ---------------------------------------------------------------------------- histograms


@njit(cache=True)
def run_value_histogram(runs, values, log2_rows, magnitudes, columns):
    """Joint counts of (run mod 2**log2_rows, signed magnitude bin), to choose R and D from.

    Magnitudes up to `magnitudes` have a column per sign; larger ones are binned by their bit
    length (the planner only needs their approximate escape class). Returns the histogram and
    the sum over runs of run >> log2_rows (the zero-run tokens of runs longer than the rows).
    """
    hist = np.zeros((1 << log2_rows, columns), np.int64)
    mask = (1 << log2_rows) - 1
    long_runs = 0
    for i in range(runs.size):
        r = runs[i]
        v = np.int64(values[i])
        sign = 1 if v < 0 else 0
        m = -v if sign else v
        if m <= magnitudes:
            col = 2 * (m - 1) + sign
        else:
            col = 2 * magnitudes + 2 * (_bit_length(m) - 1) + sign
        hist[r & mask, col] += 1
        long_runs += r >> log2_rows
    return hist, long_runs


@njit(cache=True)
def approx_token_counts(cells, log2_rows, long_runs, trailing, magnitudes, log2_run, direct,
                        classes):  # fmt: skip
    """Token counts for (R, D, K) derived from `run_value_histogram`, and the extra bits.

    `cells` lists the histogram's non-zero cells as (row, column, count) rows. Exact for the
    runs and magnitudes the histogram resolves; magnitudes binned by bit length are placed at
    the middle of their bin. Good enough to compare parameter choices.
    """
    run_cap = 1 << log2_run
    width = 2 * direct + 2 * classes
    counts = np.zeros(run_cap * width + 1, np.int64)
    zero_runs = (long_runs << (log2_rows - log2_run)) + (trailing >> log2_run)
    extra_bits = 0
    for i in range(cells.shape[0]):
        row, col, c = cells[i, 0], cells[i, 1], cells[i, 2]
        zero_runs += c * (row >> log2_run)
        sign = col & 1
        if col < 2 * magnitudes:
            m = col // 2 + 1
        else:
            b = (col - 2 * magnitudes) // 2
            m = (1 << b) + (1 << b >> 1)
        j, k, _ = _value_class(-m if sign else m, direct)
        if m > direct and k >= classes:  # a bin's middle may lie past the largest value
            k = classes - 1
            j = 2 * direct + 2 * k + sign
        counts[(row & (run_cap - 1)) * width + j] += c
        extra_bits += c * k
    counts[run_cap * width] = zero_runs
    return counts, extra_bits


@njit(cache=True)
def token_counts(runs, values, trailing, log2_run, direct, classes):
    """Exact token counts for (R, D, K), and the number of raw extra bits escapes carry."""
    run_cap = 1 << log2_run
    width = 2 * direct + 2 * classes
    counts = np.zeros(run_cap * width + 1, np.int64)
    zero_runs = trailing >> log2_run
    extra_bits = 0
    for i in range(runs.size):
        r = runs[i]
        zero_runs += r >> log2_run
        j, k, _ = _value_class(values[i], direct)
        counts[(r & (run_cap - 1)) * width + j] += 1
        extra_bits += k
    counts[run_cap * width] = zero_runs
    return counts, extra_bits


# ---------------------------------------------------------------------------- code lengths


@njit(cache=True)
def code_lengths(counts, max_length):
    """Optimal prefix-code lengths of at most `max_length` bits (package-merge).

    Symbols with count 0 get length 0 (no code); a lone symbol gets 1 bit. The caller keeps
    the number of used symbols <= 2**max_length. Ties are broken by symbol index (stable sort,
    leaves before packages), so the result is deterministic.
    """
    lengths = np.zeros(counts.size, np.uint8)
    used = np.nonzero(counts)[0]
    n = used.size
    if n == 0:
        return lengths
    if n == 1:
        lengths[used[0]] = 1
        return lengths
    order = used[np.argsort(counts[used], kind="mergesort")]
    leaves = counts[order]
    keep = 2 * n - 2  # a full binary tree on n leaves has 2n - 2 non-root nodes
    is_package = np.zeros((max_length, keep), np.bool_)
    size = min(n, keep)
    items = leaves[:size].copy()  # deepest level: the leaves alone
    for level in range(1, max_length):
        packages = size // 2
        merged = np.empty(keep, np.int64)
        a = b = out = 0
        package = 0
        while out < keep and (a < n or b < packages):
            if b < packages:
                package = items[2 * b] + items[2 * b + 1]
            if b >= packages or (a < n and leaves[a] <= package):
                merged[out] = leaves[a]
                a += 1
            else:
                merged[out] = package
                is_package[level, out] = True
                b += 1
            out += 1
        items = merged
        size = out
    take = keep
    for level in range(max_length - 1, -1, -1):
        chosen_packages = 0
        for i in range(take):
            chosen_packages += is_package[level, i]
        for i in range(take - chosen_packages):
            lengths[order[i]] += 1
        take = 2 * chosen_packages
    return lengths


@njit(cache=True)
def _canonical_codes(lengths):
    """Canonical Huffman codes (as in DEFLATE): by length, then by symbol index."""
    per_length = np.zeros(MAX_CODE_LENGTH + 1, np.int64)
    for t in range(lengths.size):
        per_length[lengths[t]] += 1
    per_length[0] = 0
    next_code = np.zeros(MAX_CODE_LENGTH + 1, np.int64)
    code = 0
    for bits in range(1, MAX_CODE_LENGTH + 1):
        code = (code + per_length[bits - 1]) << 1
        next_code[bits] = code
    codes = np.zeros(lengths.size, np.int64)
    for t in range(lengths.size):
        if lengths[t]:
            codes[t] = next_code[lengths[t]]
            next_code[lengths[t]] += 1
    return codes


# ---------------------------------------------------------------------------- table coding


@njit(cache=True)
def table_symbols(lengths, width):
    """Each code length as a table symbol relative to its prediction.

    The prediction is the length of the same value class one run length shorter (t - V),
    which varies slowly, or else the last non-zero length. Symbols: 0 unused, 1 same,
    2 / 3 one more / less, 4 / 5 two, 6 / 7 three, 8 escape (the length follows in 4 bits).
    """
    symbols = np.zeros(lengths.size, np.uint8)
    last = TABLE_FIRST_PREDICTION
    for t in range(lengths.size):
        length = np.int64(lengths[t])
        if length == 0:
            continue
        up = np.int64(lengths[t - width]) if width > 0 and t >= width else 0
        d = length - (up if up > 0 else last)
        if -3 <= d <= 3:
            symbols[t] = 2 * abs(d) + (1 if d <= 0 else 0)
        else:
            symbols[t] = TABLE_ESCAPE
        last = length
    return symbols


@njit(cache=True)
def _table_code(symbols):
    """Counts and code lengths of the table symbols."""
    counts = np.zeros(TABLE_SYMBOLS, np.int64)
    for t in range(symbols.size):
        counts[symbols[t]] += 1
    return counts, code_lengths(counts, TABLE_CODE_MAX_LENGTH)


@njit(cache=True)
def table_bits(lengths, width):
    """Size in bits of the coded code-length table."""
    counts, table_lengths = _table_code(table_symbols(lengths, width))
    bits = TABLE_SYMBOLS * TABLE_LENGTH_BITS + TABLE_ESCAPE_BITS * counts[TABLE_ESCAPE]
    for s in range(TABLE_SYMBOLS):
        bits += counts[s] * np.int64(table_lengths[s])
    return bits


# ---------------------------------------------------------------------------- writing


@njit(cache=True)
def _put(words, acc, nbits, w, value, width):
    """Append `width` (1..32) bits to 32-bit words, filling each from its top bit down.

    `acc` holds the `nbits` (< 32) pending bits at its top. Branch-free: the word being filled
    is stored on every call, `w` moves on when it is full, and the caller stores the last
    partial word. An index past the end of `words` is clamped to the last word, so a wrong
    size plan can never write out of bounds (it shows as a wrong bit count instead).
    """
    acc |= U64(value) << U64(64 - nbits - width)
    nbits += width
    words[min(w, words.size - 1)] = np.uint32(acc >> U64(32))
    full = nbits >> 5
    return acc << U64(full << 5), nbits - (full << 5), w + full


@njit(cache=True)
def write_stream(words, header, lengths, runs, values, trailing, log2_run, direct, classes):
    """Write header bytes, table and payload into `words`; returns the number of bits.

    The caller sizes `words` from table_bits and the token counts and checks the returned
    bit count against its plan.
    """
    run_cap = 1 << log2_run
    width = 2 * direct + 2 * classes
    acc = U64(0)
    nbits = w = 0
    for b in header:
        acc, nbits, w = _put(words, acc, nbits, w, b, 8)

    symbols = table_symbols(lengths, width)
    _, table_lengths = _table_code(symbols)
    table_codes = _canonical_codes(table_lengths)
    for s in range(TABLE_SYMBOLS):
        acc, nbits, w = _put(words, acc, nbits, w, table_lengths[s], TABLE_LENGTH_BITS)
    for t in range(lengths.size):
        s = symbols[t]
        acc, nbits, w = _put(words, acc, nbits, w, table_codes[s], table_lengths[s])
        if s == TABLE_ESCAPE:
            acc, nbits, w = _put(words, acc, nbits, w, lengths[t], TABLE_ESCAPE_BITS)

    codes = _canonical_codes(lengths)
    packed = codes << 4 | lengths  # code and length in one load
    zero_run = packed[run_cap * width]
    for i in range(runs.size):
        r = runs[i]
        for _ in range(r >> log2_run):
            acc, nbits, w = _put(words, acc, nbits, w, zero_run >> 4, zero_run & 15)
        j, k, extra = _value_class(values[i], direct)
        p = packed[(r & (run_cap - 1)) * width + j]
        acc, nbits, w = _put(words, acc, nbits, w, p >> 4, p & 15)
        if k:
            acc, nbits, w = _put(words, acc, nbits, w, extra, k)
    for _ in range(trailing >> log2_run):
        acc, nbits, w = _put(words, acc, nbits, w, zero_run >> 4, zero_run & 15)
    if nbits:  # the bits left over after the last full word, zero-padded
        words[min(w, words.size - 1)] = np.uint32(acc >> U64(32))
    return 32 * w + nbits


# ---------------------------------------------------------------------------- reading


@njit(cache=True)
def _load_be64(data, pos):
    word = U64(0)
    for i in range(8):
        word = (word << U64(8)) | U64(data[pos + i])
    return word


@njit(cache=True)
def _peek(data, bitpos, width):
    """`width` (1..57) bits at bit position `bitpos`; `data` carries 16 bytes of padding."""
    word = _load_be64(data, bitpos >> 3)
    return np.int64((word << U64(bitpos & 7)) >> U64(64 - width))


@njit(cache=True)
def _code_lookup(lengths, primary_bits):
    """(lookup, primary, secondary, ok): a two-level decode table of the canonical code.

    lookup[:1 << primary] is indexed by the next `primary` = min(max length, primary_bits)
    bits: t << 4 | length for a code that fits, -offset for the prefix of longer codes, whose
    entries sit at lookup[offset:] indexed by the following `secondary` bits, and 0 where no
    code starts. A small first level stays in L1 cache; longer codes are rare by construction.
    ok is False when the lengths break the Kraft inequality, which only a corrupt table does.
    """
    kraft = 0
    max_length = 0
    for t in range(lengths.size):
        length = np.int64(lengths[t])
        if length:
            kraft += 1 << (MAX_CODE_LENGTH - length)
            max_length = max(max_length, length)
    primary = min(max_length, primary_bits)
    secondary = max_length - primary
    if kraft > 1 << MAX_CODE_LENGTH:
        return np.zeros(1, np.int64), primary, secondary, False
    codes = _canonical_codes(lengths)
    prefixes = np.zeros(1 << primary, np.bool_)
    for t in range(lengths.size):
        if lengths[t] > primary:
            prefixes[codes[t] >> (lengths[t] - primary)] = True
    lookup = np.zeros((1 << primary) + prefixes.sum() * (1 << secondary), np.int64)
    offset = 1 << primary
    for t in range(lengths.size):
        length = np.int64(lengths[t])
        if length == 0:
            continue
        code = codes[t]
        if length <= primary:
            start = code << (primary - length)
            lookup[start : start + (1 << (primary - length))] = t << 4 | length
        else:
            prefix = code >> (length - primary)
            if lookup[prefix] == 0:
                lookup[prefix] = -offset
                offset += 1 << secondary
            suffix = code & ((1 << (length - primary)) - 1)
            start = -lookup[prefix] + (suffix << (max_length - length))
            lookup[start : start + (1 << (max_length - length))] = t << 4 | length
    return lookup, primary, secondary, True


@njit(cache=True)
def read_table(data, bitpos, total_bits, size, width):
    """(lengths, bit position after the table, error code): the inverse of the table coding."""
    lengths = np.zeros(size, np.uint8)
    if bitpos + TABLE_SYMBOLS * TABLE_LENGTH_BITS > total_bits:
        return lengths, bitpos, ERR_TRUNCATED
    table_lengths = np.zeros(TABLE_SYMBOLS, np.uint8)
    for s in range(TABLE_SYMBOLS):
        table_lengths[s] = _peek(data, bitpos, TABLE_LENGTH_BITS)
        bitpos += TABLE_LENGTH_BITS
    lookup, max_length, _, ok = _code_lookup(table_lengths, TABLE_CODE_MAX_LENGTH)
    if not ok or max_length == 0:
        return lengths, bitpos, ERR_TABLE
    last = TABLE_FIRST_PREDICTION
    for t in range(size):
        if bitpos > total_bits:
            return lengths, bitpos, ERR_TRUNCATED
        entry = lookup[_peek(data, bitpos, max_length)]
        if entry == 0:
            return lengths, bitpos, ERR_TABLE
        bitpos += entry & 15
        s = entry >> 4
        if s == TABLE_ESCAPE:
            length = _peek(data, bitpos, TABLE_ESCAPE_BITS)
            bitpos += TABLE_ESCAPE_BITS
            if length == 0:
                return lengths, bitpos, ERR_TABLE
        elif s == 0:
            length = 0
        else:
            up = np.int64(lengths[t - width]) if width > 0 and t >= width else 0
            d = s >> 1 if s & 1 == 0 else -(s >> 1)
            length = (up if up > 0 else last) + d
            if length < 1 or length > MAX_CODE_LENGTH:
                return lengths, bitpos, ERR_TABLE
        lengths[t] = length
        if length:
            last = length
    if bitpos > total_bits:
        return lengths, bitpos, ERR_TRUNCATED
    return lengths, bitpos, OK


@njit(cache=True)
def _token_entries(lookup, log2_run, direct, width):
    """The decode table with everything one token needs packed in 64 bits per entry.

    bits 0-3 code length (0: no code), 4-8 extra bit count k, 9 sign, 10-20 positions
    advanced, 21 "second level: offset in bits 32-63", 32-63 magnitude (D + 2**k for escapes).
    """
    entries = np.zeros(lookup.size, np.uint64)
    zero_run = (1 << log2_run) * width
    for i in range(lookup.size):
        if lookup[i] < 0:
            entries[i] = U64(-lookup[i] << 32 | SECOND_LEVEL)
        if lookup[i] <= 0:
            continue
        t = lookup[i] >> 4
        length = lookup[i] & 15
        if t == zero_run:
            advance, magnitude, k, sign = 1 << log2_run, 0, 0, 0
        else:
            advance = t // width + 1
            j = t % width
            sign = j & 1
            if j < 2 * direct:
                magnitude, k = j // 2 + 1, 0
            else:
                k = (j - 2 * direct) // 2
                magnitude = direct + (1 << k)
        entries[i] = U64(magnitude << 32 | advance << 10 | sign << 9 | k << 4 | length)
    return entries


@njit(cache=True)
def decode_payload(data, bitpos, total_bits, lengths, log2_run, direct, classes, count, tail):
    """(symbols, error code): decode tokens from `bitpos` until `count - tail` symbols exist.

    The output starts as zeros, so a token only writes its non-zero value (a zero-run token
    writes a harmless 0). One or two table lookups per token; the bit buffer is refilled
    branch-free from `data`, which carries 16 bytes of zero padding past `total_bits`.
    """
    out = np.zeros(count, np.int32)
    body = count - tail
    lookup, primary, secondary, ok = _code_lookup(lengths, PRIMARY_BITS)
    if not ok or (body > 0 and primary == 0):
        return out, ERR_TABLE
    entries = _token_entries(lookup, log2_run, direct, 2 * direct + 2 * classes)
    shift1 = U64(64 - primary)
    shift2 = U64(64 - max(secondary, 1))

    bytepos = bitpos >> 3
    buf = _load_be64(data, bytepos) << U64(bitpos & 7)
    bytepos += 7
    nbits = 56 - (bitpos & 7)
    pos = 0
    while pos < body:
        buf |= _load_be64(data, bytepos) >> U64(nbits)
        bytepos += (63 - nbits) >> 3
        nbits |= 56
        entry = entries[buf >> shift1]
        if entry & U64(SECOND_LEVEL):
            entry = entries[(entry >> U64(32)) + ((buf << U64(primary)) >> shift2)]
        length = entry & U64(15)
        if length == 0:
            return out, ERR_CODE
        k = (entry >> U64(4)) & U64(31)
        magnitude = (entry >> U64(32)) + (((buf << length) >> U64(1)) >> (U64(63) - k))
        used = length + k
        buf <<= used
        nbits -= np.int64(used)
        if bytepos * 8 - nbits > total_bits:
            return out, ERR_TRUNCATED
        advance = np.int64((entry >> U64(10)) & U64(2047))
        if pos + advance > body:
            return out, ERR_OVERFLOW
        negative = np.int64((entry >> U64(9)) & U64(1))
        if np.int64(magnitude) > 2147483647 + negative:
            return out, ERR_VALUE
        pos += advance
        out[pos - 1] = (np.int64(magnitude) ^ -negative) + negative  # branch-free sign

    end = bytepos * 8 - nbits
    padding = total_bits - end
    if padding >= 8 or (padding > 0 and _peek(data, end, padding) != 0):
        return out, ERR_TRAILING
    return out, OK


# ---------------------------------------------------------------------------- channel groups


@njit(cache=True)
def channel_histograms(symbols, magnitudes):
    """Per-row value histograms of a (C, N) int32 array, for grouping channels.

    Values up to `magnitudes` in size have a bin each (value + magnitudes); larger ones are
    binned by (bit length, sign) after them, 2 * magnitudes + 1 + 2 (bit length - 1) + sign.
    """
    rows, n = symbols.shape
    hist = np.zeros((rows, 2 * magnitudes + 1 + 64), np.int64)
    for c in range(rows):
        for i in range(n):
            v = np.int64(symbols[c, i])
            if -magnitudes <= v <= magnitudes:
                hist[c, v + magnitudes] += 1
            else:
                sign = 1 if v < 0 else 0
                hist[c, 2 * magnitudes + 1 + 2 * (_bit_length(-v if sign else v) - 1) + sign] += 1
    return hist


@njit(cache=True)
def _group_cost(counts, bin_bits, group_bits):
    """Estimated coded bits of one table over `counts`: order-0 entropy, `bin_bits` per used
    bin for the table, `group_bits` for the group's header."""
    total = 0
    used = 0
    sum_nlogn = 0.0
    for b in range(counts.size):
        c = counts[b]
        if c > 0:
            total += c
            used += 1
            sum_nlogn += c * np.log2(np.float64(c))
    if total == 0:
        return 0.0
    return total * np.log2(np.float64(total)) - sum_nlogn + bin_bits * used + group_bits


@njit(cache=True)
def merge_groups(hist, bin_bits, group_bits):
    """Group labels (C,) for the rows of `hist`: greedy merging of the pair of groups whose
    merge saves the most estimated bits (`_group_cost`), while one saves any. Labels are
    numbered in order of first appearance."""
    rows = hist.shape[0]
    sums = hist.copy()
    alive = np.ones(rows, np.bool_)
    owner = np.arange(rows)
    cost = np.zeros(rows)
    for a in range(rows):
        cost[a] = _group_cost(sums[a], bin_bits, group_bits)
    saving = np.full((rows, rows), -np.inf)
    for a in range(rows):
        for b in range(a + 1, rows):
            saving[a, b] = cost[a] + cost[b] - _group_cost(sums[a] + sums[b], bin_bits,
                                                           group_bits)  # fmt: skip
    while True:
        best, best_a, best_b = 0.0, -1, -1
        for a in range(rows):
            if alive[a]:
                for b in range(a + 1, rows):
                    if alive[b] and saving[a, b] > best:
                        best, best_a, best_b = saving[a, b], a, b
        if best_a < 0:
            break
        sums[best_a] += sums[best_b]
        alive[best_b] = False
        cost[best_a] = _group_cost(sums[best_a], bin_bits, group_bits)
        for c in range(rows):
            if owner[c] == best_b:
                owner[c] = best_a
        for b in range(rows):
            if alive[b] and b != best_a:
                a, z = min(best_a, b), max(best_a, b)
                saving[a, z] = cost[a] + cost[z] - _group_cost(sums[a] + sums[z], bin_bits,
                                                               group_bits)  # fmt: skip
    labels = np.full(rows, -1, np.int64)
    relabel = np.full(rows, -1, np.int64)
    groups = 0
    for c in range(rows):
        if relabel[owner[c]] < 0:
            relabel[owner[c]] = groups
            groups += 1
        labels[c] = relabel[owner[c]]
    return labels


# ---------------------------------------------------------------------------- prediction


@njit(cache=True)
def predict_planes(planes, residuals, taps, weights, inverse):
    """Linear prediction over (C, H, W) int32 planes, in raster order plane by plane.

    Value (i, y, x) is predicted as floor((w0 + sum_t w_t v_t) / 2**WEIGHT_SHIFT + 1/2), v_t the
    value of tap t = (back, dy, dx) at plane i - back, position (y + dy, x + dx) (zero outside
    the plane; taps with back > i skipped), with the weights `weights[i]` = (w0, w_1, ...).
    Taps with back = 0 must come before (i, y, x) in raster order. Forward (inverse=False)
    fills `residuals` = planes - prediction; inverse fills `planes` = residuals + prediction,
    checking that every value stays in the int32 range (ERR_PREDICTION otherwise).
    """
    if not inverse:
        return _predict_forward(planes, residuals, taps, weights)
    channels, height, width = planes.shape
    half = np.int64(1) << (WEIGHT_SHIFT - 1)
    for i in range(channels):
        for y in range(height):
            for x in range(width):
                acc = weights[i, 0]
                for t in range(taps.shape[0]):
                    w = weights[i, t + 1]
                    back = taps[t, 0]
                    if w == 0 or back > i:
                        continue
                    yy = y + taps[t, 1]
                    xx = x + taps[t, 2]
                    if 0 <= yy < height and 0 <= xx < width:
                        acc += w * np.int64(planes[i - back, yy, xx])
                value = np.int64(residuals[i, y, x]) + ((acc + half) >> WEIGHT_SHIFT)
                if value < SYMBOL_MIN or value > SYMBOL_MAX:
                    return ERR_PREDICTION
                planes[i, y, x] = value
    return OK


@njit(cache=True)
def _predict_forward(planes, residuals, taps, weights):
    """predict_planes forward: every prediction reads only `planes`, so the sums are formed
    tap by tap over whole rows (loops the compiler vectorizes) instead of value by value; the
    same integers (int64 sums wrap alike in any order)."""
    channels, height, width = planes.shape
    half = np.int64(1) << (WEIGHT_SHIFT - 1)
    acc = np.empty((height, width), np.int64)
    for i in range(channels):
        acc[:] = weights[i, 0]
        for t in range(taps.shape[0]):
            w = weights[i, t + 1]
            back = taps[t, 0]
            if w == 0 or back > i:
                continue
            dy, dx = taps[t, 1], taps[t, 2]
            source = planes[i - back]
            for y in range(max(0, -dy), min(height, height - dy)):
                for x in range(max(0, -dx), min(width, width - dx)):
                    acc[y, x] += w * np.int64(source[y + dy, x + dx])
        for y in range(height):
            for x in range(width):
                value = np.int64(planes[i, y, x]) - ((acc[y, x] + half) >> WEIGHT_SHIFT)
                if value < SYMBOL_MIN or value > SYMBOL_MAX:
                    return ERR_PREDICTION
                residuals[i, y, x] = value
    return OK
