"""Predicted planes (coding.encode_planes): exact round trips at the edges and the int32
extremes, the gain of the prediction on smooth correlated planes, never much worse than the
plain per-channel stream, bounds checks before allocation, robustness to corrupt streams,
and agreement of the numba prediction kernel with the reference."""

from __future__ import annotations

import tracemalloc

import helpers
import numpy as np
import pytest
from helpers import assert_same_verdict, bit_flips, corruptions, mutate, random_streams
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import coding
from coding import kernels, planes, reference
from coding.format import MAX_CHANNELS, MAX_WEIGHT, StreamKind, put_varint
from coding.synthetic import channel_laplacians, smooth_planes

I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def round_trip(x) -> bytes:
    return helpers.round_trip(coding.encode_planes, coding.decode_planes, x)


def decodes_or_refuses(data: bytes, backend=kernels) -> np.ndarray | None:
    return helpers.decodes_or_refuses(lambda d: planes.decode(d, backend=backend), data, ndim=3)


def plain_size(x: np.ndarray) -> int:
    """Bytes of the same symbols without prediction (coding.encode_channels)."""
    c, h, w = np.shape(x)
    return len(coding.encode_channels(np.asarray(x).reshape(c, h * w)))


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "x",
    [
        np.zeros((0, 0, 0), np.int32),
        np.zeros((0, 4, 5), np.int32),
        np.zeros((3, 0, 5), np.int32),
        np.zeros((3, 5, 0), np.int32),
        np.array([[[0]]], np.int32),
        np.array([[[-5]]], np.int32),
        np.array([[[3]], [[0]], [[-7]]], np.int32),  # 1 x 1 planes
        np.zeros((2, 1, 300), np.int32),  # one row
        np.zeros((2, 300, 1), np.int32),  # one column
        np.full((2, 9, 11), I32_MIN, np.int64),
        np.full((2, 9, 11), I32_MAX, np.int64),
        np.tile(np.array([I32_MIN, I32_MAX], np.int64), (3, 5, 4)),  # alternating extremes
        smooth_planes(5, 33, 47, seed=1),  # odd sides
        smooth_planes(40, 6, 7, seed=2),  # more planes than MAX_DEPTH
        channel_laplacians(4, 900, seed=3).reshape(4, 30, 30),  # no structure to predict
    ],
    ids=lambda x: f"{x.dtype}{x.shape}",
)
def test_round_trip_edges(x):
    data = round_trip(x)
    assert len(data) <= plain_size(x) + 8


def test_accepts_integer_dtypes_and_views():
    x = smooth_planes(3, 20, 30, scale=20.0)
    data = round_trip(x.astype(np.int16))
    assert data == coding.encode_planes(x) == coding.encode_planes(x.astype(np.int64))
    round_trip(x[:, ::2, 1::3])
    round_trip(x.tolist())


def test_encode_refuses_bad_input():
    with pytest.raises(ValueError, match="3-D"):
        coding.encode_planes(np.zeros((2, 2), np.int32))
    with pytest.raises(TypeError, match="integer dtype"):
        coding.encode_planes(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="must lie in"):
        coding.encode_planes(np.full((1, 2, 2), 2**31, np.int64))
    with pytest.raises(ValueError, match="channels per stream"):
        coding.encode_planes(np.zeros((MAX_CHANNELS + 1, 1, 0), np.int8))


# ---------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("seed", range(3))
def test_prediction_pays_on_smooth_correlated_planes(seed):
    """A smooth latent-like array: the prediction (own neighbours and the planes before)
    takes at least a third off the plain per-channel stream, and the tap set with the
    planes before beats the spatial one alone."""
    x = smooth_planes(6, 48, 64, seed=seed)
    data = round_trip(x)
    assert len(data) < 0.67 * plain_size(x)
    chosen = planes.predictor_of(data)
    assert chosen.spatial and chosen.cross > 0
    spatial = coding.planes.encode(x, candidates=(planes.Predictor(spatial=True),))
    assert len(data) < len(spatial) < plain_size(x)


def test_unpredictable_planes_cost_what_the_plain_stream_does():
    """Independent symbols: the encoder keeps no prediction and pays a few bytes of head."""
    x = channel_laplacians(6, 2500, seed=4).reshape(6, 50, 50)
    data = round_trip(x)
    assert planes.predictor_of(data) == planes.NO_PREDICTION
    assert len(data) <= plain_size(x) + 8


def test_weights_are_fitted_per_plane():
    """Plane 1 is plane 0 plus 3: the least-squares weights of plane 1 are the constant 3
    and 1 for the co-located tap (in units of 2**-WEIGHT_SHIFT), its residual is all zeros,
    and plane 0 (no tap before it) has no weights and is coded as it is."""
    base = smooth_planes(1, 40, 41, seed=5)[0].astype(np.int64)
    x = np.stack([base, base + 3])
    predictor = planes.Predictor(spatial=False, cross=2, depth=1)
    assert (predictor.weight_count(0), predictor.weight_count(1)) == (0, 6)
    weights = planes.fit(x, predictor)
    # taps of plane 1: constant, then plane 0 at (0, 0), (0, -1), (-1, 0), (0, 1), (1, 0)
    one = 1 << coding.format.WEIGHT_SHIFT
    np.testing.assert_array_equal(weights, [[0] * 6, [3 * one, one, 0, 0, 0, 0]])
    residual = planes.residuals(x, predictor, weights)
    np.testing.assert_array_equal(residual, np.stack([base, np.zeros_like(base)]))

def _direct_fit(x: np.ndarray, predictor: planes.Predictor) -> np.ndarray:
    """What `fit` means, written out: per plane, least squares on its own design matrix (a
    constant and each tap's shifted plane, zero outside)."""
    count, height, width = x.shape
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2))).astype(np.float64)
    out = np.zeros((count, len(predictor.taps()) + 1), np.int64)
    for i in range(count):
        n = predictor.weight_count(i)
        if not n:
            continue
        columns = [np.ones(height * width)] + [
            padded[i - back, 2 + dy : 2 + dy + height, 2 + dx : 2 + dx + width].ravel()
            for back, dy, dx in predictor.taps()[: n - 1].tolist()
        ]
        design = np.stack(columns, axis=1)
        solution = np.linalg.lstsq(design.T @ design, design.T @ x[i].ravel(), rcond=None)[0]
        out[i, :n] = np.clip(np.round(solution * (1 << coding.format.WEIGHT_SHIFT)),
                             -MAX_WEIGHT, MAX_WEIGHT)
    return out


@pytest.mark.parametrize("block", [planes.FIT_BLOCK, 7])
def test_shared_fit_gives_each_predictor_its_own_weights(block, monkeypatch):
    """The encoder fits all its candidates from one matrix of products of (plane, shift)
    columns, built a block of positions at a time: each predictor gets the weights of its
    own least squares on each plane, whatever the block size."""
    monkeypatch.setattr(planes, "FIT_BLOCK", block)
    x = smooth_planes(7, 33, 29, seed=9)
    shared = planes.fit_many(x, list(planes.CANDIDATES))
    for predictor, weights in zip(planes.CANDIDATES, shared, strict=True):
        np.testing.assert_array_equal(weights, _direct_fit(x, predictor))
    assert any(weights.any() for weights in shared)


# ---------------------------------------------------------------------------- bad streams


def _head(*values: int, predictor: bytes = b"") -> bytes:
    out = bytearray([StreamKind.PLANES])
    for value in values:
        put_varint(out, value)
    return bytes(out) + predictor


def test_decode_refuses_malformed_streams():
    good = coding.encode_planes(smooth_planes(3, 10, 12))
    assert planes.predictor_of(good).spatial
    weights = coding.encode(np.zeros(8, np.int8))
    one_weight_too_many = _head(1, 2, 2, predictor=b"\x01\x00") + bytes([len(weights)])
    for data in [
        b"",
        bytes([2]) + good[1:],  # a channels stream's version
        coding.encode_channels(np.zeros((2, 3), np.int8)),
        _head(MAX_CHANNELS + 1, 1, 1),
        _head(3, 0, 5) + b"\x00",  # data after an empty stream
        _head(2, 3, 3),  # ends before the predictor
        _head(2, 3, 3, predictor=b"\x06\x01"),  # unknown cross-plane tap set
        _head(2, 3, 3, predictor=b"\x02\x02"),  # depth beyond the planes before
        _head(2, 3, 3, predictor=b"\x02\x00"),  # cross-plane taps with depth 0
        _head(2, 3, 3, predictor=b"\x00\x01"),  # depth without cross-plane taps
        _head(2, 3, 3, predictor=b"\x01\x00") + b"\x7f",  # weights longer than the stream
        one_weight_too_many + weights,
        good[:-1],
        good + b"\x00",
    ]:
        with pytest.raises(coding.CorruptStreamError):
            coding.decode_planes(data)


def test_decode_refuses_weights_over_the_limit():
    weights = coding.encode(np.array([0, 0, 0, MAX_WEIGHT + 1, 0, 0, 0]))
    residual = coding.encode_channels(np.zeros((1, 4), np.int8))
    data = _head(1, 2, 2, predictor=b"\x01\x00") + bytes([len(weights)]) + weights + residual
    with pytest.raises(coding.CorruptStreamError, match="weight over the limit"):
        coding.decode_planes(data)


def test_decode_refuses_a_prediction_out_of_the_int32_range():
    """Residuals that are valid symbols but reconstruct values outside int32 (a forged
    stream: the encoder never writes them)."""
    weights = coding.encode(np.array([0, 64, 0, 0, 0, 0, 0]))  # copy the left neighbour
    residual = coding.encode_channels(np.array([[I32_MAX, 1]]))
    data = _head(1, 1, 2, predictor=b"\x01\x00") + bytes([len(weights)]) + weights + residual
    with pytest.raises(coding.CorruptStreamError, match="out of the int32 range"):
        coding.decode_planes(data)


def test_decode_honours_the_callers_limit():
    x = smooth_planes(4, 10, 25)
    data = coding.encode_planes(x)
    np.testing.assert_array_equal(coding.decode_planes(data, max_symbols=1000), x)
    with pytest.raises(coding.CorruptStreamError, match="over the limit"):
        coding.decode_planes(data, max_symbols=999)


def test_declared_sizes_the_stream_cannot_hold_are_refused_before_allocation():
    """A head that claims 2**28 symbols over a few bytes is refused with no allocation beyond
    the stream's own size."""
    data = (_head(2, 2**13, 2**14, predictor=b"\x00\x00")
            + b"\x02\x02\x80\x80\x08\x01" + b"\xff" * 64)  # fmt: skip
    tracemalloc.start()
    try:
        with pytest.raises(coding.CorruptStreamError):
            coding.decode_planes(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_decode_refuses_every_truncation():
    data = coding.encode_planes(smooth_planes(3, 12, 14))
    for cut in range(len(data)):
        with pytest.raises(coding.CorruptStreamError):
            coding.decode_planes(data[:cut])


def test_decode_survives_every_single_bit_flip():
    data = coding.encode_planes(smooth_planes(3, 10, 10))
    refused = sum(decodes_or_refuses(flipped) is None for flipped in bit_flips(data))
    assert refused > 0


def test_decode_survives_random_bytes():
    for data in random_streams(StreamKind.PLANES):
        decodes_or_refuses(data)


@st.composite
def plane_arrays(draw) -> np.ndarray:
    """(C, H, W) arrays: smooth correlated planes of any scale, or independent symbols, with
    int32 extremes patched in."""
    c = draw(st.integers(0, 6))
    h, w = draw(st.integers(0, 12)), draw(st.integers(0, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        x = smooth_planes(c, h, w, scale=draw(st.sampled_from([0.3, 3.0, 1e4])), seed=seed)
    else:
        x = channel_laplacians(c, h * w, seed=seed % 2**31).reshape(c, h, w)
    x = x.astype(np.int64)
    if x.size:
        spots = draw(st.lists(st.tuples(st.integers(0, x.size - 1),
                                        st.sampled_from([I32_MIN, I32_MAX])), max_size=3))
        for at, value in spots:
            x.flat[at] = value
    return x


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plane_arrays())
def test_round_trip_arbitrary(x):
    data = round_trip(x)
    assert len(data) <= plain_size(x) + 8


@pytest.mark.slow  # 1000 fuzzed streams: about 10 s on 2 busy cores
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plane_arrays(), st.data())
def test_mutated_stream_decodes_or_refuses(x, data):
    decodes_or_refuses(mutate(coding.encode_planes(x), data))


# ---------------------------------------------------------------------------- kernels vs reference


@pytest.mark.parametrize("seed", range(6))
def test_kernels_agree_with_reference(seed):
    """Same residuals, same stream byte for byte, same verdict on corruption."""
    rng = np.random.default_rng(seed)
    c, h, w = int(rng.integers(1, 5)), int(rng.integers(1, 12)), int(rng.integers(1, 12))
    x = smooth_planes(c, h, w, scale=float(rng.choice([2.0, 500.0])), seed=seed)
    x.flat[int(rng.integers(x.size))] = [I32_MAX, I32_MIN, 70][seed % 3]
    x = x.astype(np.int64)
    for predictor in planes.CANDIDATES:
        predictor = predictor.for_planes(c)
        weights = planes.fit(x, predictor)
        fast = planes.residuals(x, predictor, weights, kernels)
        slow = planes.residuals(x, predictor, weights, reference)
        assert_same_verdict(fast, slow)
    data = planes.encode(x, backend=kernels)
    assert planes.encode(x, backend=reference) == data
    np.testing.assert_array_equal(planes.decode(data, backend=reference), x)
    for bad in corruptions(data, rng):
        assert_same_verdict(decodes_or_refuses(bad, kernels), decodes_or_refuses(bad, reference))
