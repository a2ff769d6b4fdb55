"""The entropy coder: exact round trips, robustness to corrupt streams, exact sizes, closeness to
the order-0 entropy, and agreement of the numba kernels with the plain Python reference."""

from __future__ import annotations

import dataclasses
import heapq
import math

import helpers
import numpy as np
import pytest
from helpers import assert_same_verdict, bit_flips, corruptions, mutate, random_streams
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import coding
from coding import huffman, kernels, plan, reference
from coding.format import (
    MAX_LOG2_RUN,
    MAX_SYMBOLS,
    HuffmanHeader,
    StreamKind,
    pack_header,
    unpack_header,
)
from coding.synthetic import sparse_laplacian

INT16 = np.iinfo(np.int16)




def order0_bits(x: np.ndarray) -> float:
    """n times the empirical entropy of the symbols, each zero counted on its own."""
    _, counts = np.unique(x, return_counts=True)
    return float(-(counts * np.log2(counts / x.size)).sum())


def round_trip(x) -> bytes:
    data = helpers.round_trip(coding.encode, coding.decode, x)
    assert len(data) == math.ceil(coding.encoded_bits(x) / 8)
    return data


def decodes_or_refuses(data: bytes, backend=kernels) -> np.ndarray | None:
    return helpers.decodes_or_refuses(lambda d: huffman.decode(d, backend), data, ndim=1)


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "x",
    [
        np.zeros(0, np.int32),
        np.array([0], np.int32),
        np.array([7], np.int32),
        np.array([-1], np.int32),
        np.zeros(1 << MAX_LOG2_RUN, np.int32),  # exactly one longest run
        np.zeros(5 * (1 << MAX_LOG2_RUN) + 3, np.int32),  # runs longer than any run cap
        np.zeros(1_000_000, np.int8),
        np.full(1000, 3, np.int16),  # one distinct value, no zeros
        np.full(1000, -32768, np.int16),
        np.arange(1, 5000, dtype=np.int32),  # no zeros, all distinct
        np.array([0, 5] * 700, np.int32),  # two values
        np.array([9, -9] * 700, np.int32),
        np.arange(INT16.min, INT16.max + 1, dtype=np.int16),  # the full int16 range
        np.array([INT16.min, INT16.max, 0, INT16.min, 1, INT16.max], np.int16),
        np.array([-(2**31), 2**31 - 1, 0, 0, -(2**31), 1], np.int64),  # int32 extremes
        np.array([1, 0, 0, 0, 2**31 - 1], np.int32),
    ],
    ids=lambda x: f"{x.dtype}[{x.size}]",
)
def test_round_trip_edges(x):
    round_trip(x)


@pytest.mark.parametrize("zeros", [0.5, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("scale", [0.7, 4.0, 300.0])
def test_round_trip_sparse_laplacian(zeros, scale):
    round_trip(sparse_laplacian(50_000, zeros, scale, seed=int(zeros * 100)))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 63, 64, 65, 1000, 4097, 100_000])
def test_round_trip_lengths(n):
    round_trip(sparse_laplacian(n, 0.8, seed=n))
    round_trip(np.zeros(n, np.int32))


def test_round_trip_ten_million():
    round_trip(sparse_laplacian(10_000_000, 0.9, seed=7))


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                   np.uint32, np.uint64, ">i4"])  # fmt: skip
def test_accepts_integer_dtypes(dtype):
    x = np.array([0, 1, 0, 0, 100, 3, 0, 127], dtype=dtype)
    data = round_trip(x)
    assert data == coding.encode(x.astype(np.int32))  # the stream depends on values only


def test_accepts_lists_and_strided_views():
    round_trip([0, 0, 3, -4, 0])
    x = sparse_laplacian(1001, 0.7)
    round_trip(x[::3])
    assert coding.encode([]) == coding.encode(np.zeros(0, np.int32))


def test_decode_accepts_bytes_like():
    x = sparse_laplacian(500, 0.8)
    data = coding.encode(x)
    for view in (bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        np.testing.assert_array_equal(coding.decode(view), x)


def test_encoding_is_deterministic():
    x = sparse_laplacian(20_000, 0.9)
    assert coding.encode(x) == coding.encode(x.copy())


# ---------------------------------------------------------------------------- bad input to encode


@pytest.mark.parametrize(
    "x",
    [
        np.array([2**31], np.int64),
        np.array([-(2**31) - 1, 0], np.int64),
        np.array([2**32 - 1], np.uint32),
        np.array([2**63], np.uint64),
    ],
)
def test_encode_refuses_out_of_range(x):
    with pytest.raises(ValueError, match="must lie in"):
        coding.encode(x)
    with pytest.raises(ValueError):
        coding.encoded_bits(x)


def test_encode_refuses_too_many_symbols():
    too_many = np.broadcast_to(np.int8(0), MAX_SYMBOLS + 1)  # a view: no memory behind it
    with pytest.raises(ValueError, match="at most"):
        coding.encode(too_many)


def test_encode_refuses_bad_shape_and_dtype():
    with pytest.raises(ValueError, match="1-D"):
        coding.encode(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="1-D"):
        coding.encode(np.int32(3))
    with pytest.raises(TypeError, match="integer dtype"):
        coding.encode(np.array([0.5, 1.0]))
    with pytest.raises(TypeError, match="integer dtype"):
        coding.encode(np.array([True, False]))


# ---------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("zeros", [0.5, 0.8, 0.9, 0.95])
@pytest.mark.parametrize("scale", [None, 4.0])
def test_close_to_order0_entropy(zeros, scale):
    """The design target: table included, at most 1.05x the order-0 entropy (aim 1.02x)."""
    if scale is None:  # pure rounded Laplacian, its scale set by the share of zeros
        scale = 0.5 / math.log(1 / (1 - zeros))
    x = sparse_laplacian(500_000, zeros, scale, seed=3)
    assert coding.encoded_bits(x) <= 1.03 * order0_bits(x)


def test_small_streams_have_small_overhead():
    assert len(coding.encode(np.zeros(0, np.int32))) == 2
    assert len(coding.encode(np.zeros(1000, np.int32))) <= 12  # no tokens at all
    assert len(coding.encode(np.zeros(10**6, np.int32))) <= 150  # one bit per 1024 zeros
    x = sparse_laplacian(300, 0.8, seed=1)
    assert coding.encoded_bits(x) <= order0_bits(x) + 200  # header and table: ~25 bytes


@pytest.mark.parametrize("seed", range(20))
def test_encoded_bits_is_exact(seed):
    rng = np.random.default_rng(seed)
    x = sparse_laplacian(int(rng.integers(1, 3000)), rng.random(), 10 ** rng.uniform(-1, 4), seed)
    bits = coding.encoded_bits(x)
    assert len(coding.encode(x)) == (bits + 7) // 8
    c = huffman.prepare(x, kernels)
    assert bits == 8 * len(pack_header(c.header)) + c.table_bits + c.payload_bits


# ---------------------------------------------------------------------------- corrupt streams


def test_decode_refuses_malformed_headers():
    good = coding.encode(sparse_laplacian(1000, 0.8))
    for data in [
        b"",
        bytes([StreamKind.HUFFMAN + 1]) + good[1:],
        bytes([StreamKind.HUFFMAN, 0x80]),  # varint cut short
        bytes([StreamKind.HUFFMAN]) + b"\xff" * 9,  # varint over the symbol cap
        bytes([StreamKind.HUFFMAN]) + b"\x80" * 9 + b"\x01",  # overlong varint
        good[:3],
        good + b"\x00",  # bytes after the payload
        bytes([StreamKind.HUFFMAN, 0, 0]),  # empty stream with a trailing byte
    ]:
        with pytest.raises(coding.CorruptStreamError):
            coding.decode(data)


def _with_count(data: bytes, count: int) -> bytes:
    """The stream with another symbol count in its header."""
    header, offset = unpack_header(data)
    return pack_header(dataclasses.replace(header, count=count)) + data[offset:]


def test_decode_refuses_sizes_the_stream_cannot_hold():
    """A header that claims more symbols than its payload can hold is refused before the
    output is allocated (here MAX_SYMBOLS int32 would be 1 GiB)."""
    for x in (sparse_laplacian(1000, 0.8), np.zeros(5000, np.int32)):
        with pytest.raises(coding.CorruptStreamError, match="larger than the payload"):
            coding.decode(_with_count(coding.encode(x), MAX_SYMBOLS))
    big_alphabet = pack_header(HuffmanHeader(10, log2_run=7, direct=63, classes=32, tail=0))
    with pytest.raises(coding.CorruptStreamError, match="table larger than"):
        coding.decode(big_alphabet + b"\xff" * 100)
    too_big = pack_header(HuffmanHeader(10, log2_run=10, direct=63, classes=32, tail=0))
    with pytest.raises(coding.CorruptStreamError, match="inconsistent"):
        coding.decode(too_big + b"\xff" * 100_000)


def test_decode_refuses_every_truncation():
    x = sparse_laplacian(2000, 0.8, scale=40.0)
    data = coding.encode(x)
    for cut in range(len(data)):
        with pytest.raises(coding.CorruptStreamError):
            coding.decode(data[:cut])


def test_decode_survives_every_single_bit_flip():
    x = sparse_laplacian(400, 0.7, scale=20.0)
    data = coding.encode(x)
    refused = sum(decodes_or_refuses(flipped) is None for flipped in bit_flips(data))
    assert refused > 0


def test_decode_survives_random_bytes():
    for data in random_streams(StreamKind.HUFFMAN):
        decodes_or_refuses(data)


@st.composite
def symbol_arrays(draw) -> np.ndarray:
    """Arrays of any integer dtype built from pieces (a value repeated 1 to 2,000 times):
    zero runs of every length, small values and extremes, with few draws per example."""
    dtype = draw(st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint16]))
    info = np.iinfo(dtype)
    lo, hi = max(int(info.min), -(2**31)), min(int(info.max), 2**31 - 1)
    value = st.one_of(st.just(0), st.integers(max(lo, -3), min(hi, 3)), st.integers(lo, hi))
    repeat = st.one_of(st.just(1), st.integers(1, 8), st.integers(1, 2000))
    pieces = draw(st.lists(st.tuples(value, repeat), max_size=24))
    return np.repeat(
        np.array([v for v, _ in pieces], dtype=dtype), [r for _, r in pieces]
    ).astype(dtype)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(symbol_arrays())
def test_round_trip_arbitrary(x):
    round_trip(x)


@pytest.mark.slow  # 2000 fuzzed streams: about 10 s on 2 busy cores
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(symbol_arrays(), st.data())
def test_mutated_stream_decodes_or_refuses(x, data):
    decodes_or_refuses(mutate(coding.encode(x), data))


# ---------------------------------------------------------------------------- kernels vs reference


@pytest.mark.parametrize("seed", range(40))
def test_kernels_agree_with_reference(seed):
    """Same stream byte for byte, same size, same decoding, same verdict on corruption."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 600))
    scale = [0.5, 3.0, 60.0, 1e5, 3e9][seed % 5]
    x = np.clip(np.round(rng.laplace(0, scale, n)), -(2**31), 2**31 - 1).astype(np.int64)
    x[rng.random(n) < rng.random()] = 0
    data = huffman.encode(x, kernels)
    assert huffman.encode(x, reference) == data
    assert huffman.encoded_bits(x, reference) == huffman.encoded_bits(x, kernels)
    np.testing.assert_array_equal(huffman.decode(data, reference), x)
    for bad in corruptions(data, rng):
        assert_same_verdict(decodes_or_refuses(bad, kernels), decodes_or_refuses(bad, reference))


def _huffman(counts) -> tuple[int, int]:
    """(cost, depth) of an unrestricted Huffman code: the optimum without a length limit."""
    heap = [(int(c), 0) for c in counts if c > 0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        (a, da), (b, db) = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, (a + b, max(da, db) + 1))
    return cost, heap[0][1]


def test_long_codes_decode_through_the_second_table_level():
    """Codes longer than the first level of the decode table take the second level."""
    rng = np.random.default_rng(0)
    x = np.repeat(np.arange(1, 22, dtype=np.int32), 2 ** np.maximum(0, 14 - np.arange(21)))
    x = rng.permutation(np.concatenate([x, -x]))
    c = huffman.prepare(x, kernels)
    assert c.lengths.max() == 15 > kernels.PRIMARY_BITS
    data = coding.encode(x)
    np.testing.assert_array_equal(huffman.decode(data, reference), x)
    np.testing.assert_array_equal(coding.decode(data), x)


@pytest.mark.parametrize("scale", [0.5, 4.0, 60.0, 1000.0])
def test_planner_counts_are_exact(scale):
    """When every magnitude is resolved, encode reuses the planner's counts: they must be
    the true token counts (with more, it counts again)."""
    x = sparse_laplacian(20_000, 0.9, scale, seed=2)
    runs, values, trailing = kernels.nonzero_tokens(x)
    p = plan.choose(runs, values, trailing, kernels)
    counts, extra_bits = kernels.token_counts(
        runs, values, trailing, p.log2_run, p.direct, p.classes
    )
    if np.abs(x).max() <= plan.HISTOGRAM_MAGNITUDES:
        np.testing.assert_array_equal(p.counts, counts)
        assert p.extra_bits == extra_bits
    else:
        assert p.counts is None


@pytest.mark.parametrize("seed", range(30))
def test_code_lengths_agree_and_are_optimal(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, 100) * rng.integers(1, 10 ** int(rng.integers(1, 7)), 100)
    huffman_cost, huffman_depth = _huffman(counts)
    for max_length in (7, 9, 15):
        fast = kernels.code_lengths(counts, max_length)
        np.testing.assert_array_equal(fast, reference.code_lengths(counts, max_length))
        used = counts > 0
        assert np.all((fast > 0) == used) and fast.max() <= max_length
        assert np.sum(2.0 ** -fast[used].astype(float)) == pytest.approx(1.0)  # complete code
        cost = int(np.dot(counts, fast.astype(np.int64)))
        assert cost >= huffman_cost
        if huffman_depth <= max_length:
            assert cost == huffman_cost


@pytest.mark.parametrize("seed", range(10))
def test_histogram_kernels_agree(seed):
    x = sparse_laplacian(3000, 0.3 + 0.07 * seed, scale=[1, 10, 200][seed % 3], seed=seed)
    x[::97] = 0
    x[5] = 100_000
    fast, slow = kernels.nonzero_tokens(x), reference.nonzero_tokens(x)
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)
    runs, values, trailing = fast
    assert kernels.token_extent(*fast) == reference.token_extent(*fast)
    for log2_rows, magnitudes in [(0, 1), (3, 16), (6, 64)]:
        columns = 2 * magnitudes + 64
        hist, long_runs = kernels.run_value_histogram(runs, values, log2_rows, magnitudes, columns)
        ref_hist, ref_long = reference.run_value_histogram(
            runs, values, log2_rows, magnitudes, columns
        )
        np.testing.assert_array_equal(hist, ref_hist)
        assert long_runs == ref_long
        rows, cols = np.nonzero(hist)
        cells = np.column_stack([rows, cols, hist[rows, cols]])
        for log2_run in range(log2_rows + 1):
            for direct in (0, 1, 5):
                classes = 32
                args = (cells, log2_rows, long_runs, trailing, magnitudes, log2_run, direct)
                a = kernels.approx_token_counts(*args, classes)
                b = reference.approx_token_counts(*args, classes)
                np.testing.assert_array_equal(a[0], b[0])
                assert a[1] == b[1]
                exact = kernels.token_counts(runs, values, trailing, log2_run, direct, classes)
                ref_exact = reference.token_counts(
                    runs, values, trailing, log2_run, direct, classes
                )
                np.testing.assert_array_equal(exact[0], ref_exact[0])
                assert exact[1] == ref_exact[1]
                assert exact[0].sum() == a[0].sum()  # same number of tokens either way
