"""Planes: a (C, H, W) integer array coded as the residuals of a linear prediction.

The latent of a learned codec is smooth in space and correlated across channels, which a
per-channel Huffman table (coding.channels) cannot see: it codes each value on its own. Here
each value is first predicted from values the decoder already has, its causal neighbours in
its own plane and the co-located values of the planes before it, and only the residual is
coded (with coding.channels). The weights are fitted to each array by least squares and sent
with it, so the prediction adapts to every image; the encoder tries a few tap sets and keeps
the smallest stream, the plain one (no prediction) among them. docs/coding.md ("Planes")
describes the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from coding import channels, huffman, kernels
from coding.errors import CorruptStreamError
from coding.format import (
    ERROR_MESSAGES,
    MAX_CHANNELS,
    MAX_DEPTH,
    MAX_SYMBOLS,
    MAX_WEIGHT,
    OK,
    WEIGHT_SHIFT,
    StreamKind,
    as_channel_symbols,
    get_varint,
    put_varint,
)

# Taps (back, dy, dx): back = 0 is the value's own plane (causal neighbours: left, up,
# up-left, up-right, two left, two up), back = b the plane b before it.
SPATIAL_TAPS = ((0, 0, -1), (0, -1, 0), (0, -1, -1), (0, -1, 1), (0, 0, -2), (0, -2, 0))
CROSS_TAPS = {0: (), 1: ((0, 0),), 2: ((0, 0), (0, -1), (-1, 0), (0, 1), (1, 0))}
FIT_POSITIONS = 1 << 16  # least squares on at most this many positions per plane
FIT_BLOCK = 1 << 13  # positions per block of the products (memory: 8 bytes x columns x this)


@dataclass(frozen=True)
class Predictor:
    """Which taps predict a value: its own plane's causal neighbours (`spatial`), and from each
    of the `depth` planes before it none (`cross` 0), the co-located value (1), or the
    co-located value and its four neighbours (2)."""

    spatial: bool
    cross: int = 0
    depth: int = 0

    def taps(self) -> np.ndarray:
        """(T, 3) int64 taps, own plane first, then plane by plane going back: the taps of
        plane i are the first `weight_count(i) - 1` of them."""
        taps = list(SPATIAL_TAPS) if self.spatial else []
        for back in range(1, self.depth + 1):
            taps += [(back, dy, dx) for dy, dx in CROSS_TAPS[self.cross]]
        return np.array(taps, np.int64).reshape(-1, 3)

    def weight_count(self, plane: int) -> int:
        """Weights of plane `plane`: one per tap it has and a constant term (none without
        taps: such a plane is coded as it is)."""
        own = len(SPATIAL_TAPS) if self.spatial else 0
        taps = own + min(plane, self.depth) * len(CROSS_TAPS[self.cross])
        return taps + 1 if taps else 0

    def for_planes(self, count: int) -> Predictor:
        """The same predictor for `count` planes, in canonical form (depth < count)."""
        depth = min(self.depth, max(count - 1, 0)) if self.cross else 0
        return Predictor(self.spatial, self.cross if depth else 0, depth)


NO_PREDICTION = Predictor(spatial=False)
# What encode tries; it keeps the smallest stream.
CANDIDATES = (
    NO_PREDICTION,
    Predictor(spatial=True),
    Predictor(spatial=True, cross=1, depth=MAX_DEPTH),
    Predictor(spatial=True, cross=2, depth=4),
    Predictor(spatial=True, cross=2, depth=MAX_DEPTH),
)


def as_planes(symbols: object) -> np.ndarray:
    """(C, H, W) int32 `symbols`, after the checks of coding.encode_channels."""
    x = np.asarray(symbols)
    if x.ndim != 3:
        raise ValueError(f"symbols must be a 3-D (channels, rows, columns) array, got {x.shape}")
    count, height, width = x.shape
    return as_channel_symbols(x.reshape(count, height * width)).reshape(x.shape)


def fit(planes: np.ndarray, predictor: Predictor) -> np.ndarray:
    """Least-squares weights (C, T + 1) of `predictor` for (C, H, W) `planes`, quantized to
    2**-WEIGHT_SHIFT and clipped to MAX_WEIGHT; a plane's unused taps get weight 0."""
    return fit_many(planes, [predictor])[0]


def fit_many(planes: np.ndarray, predictors: list[Predictor]) -> list[np.ndarray]:
    """`fit` for each of `predictors`, from one matrix of sums of products: a tap of plane i
    is a shifted copy of some plane, the same column for every plane that uses it, so the
    products of all (plane, shift) columns are formed once (`_column_products`) and each
    plane and predictor solves its own corner of them."""
    count = len(planes)
    union = list(dict.fromkeys(tuple(t) for p in predictors for t in p.taps().tolist()))
    out = [np.zeros((count, len(p.taps()) + 1), np.int64) for p in predictors]
    if not union:
        return out
    shifts = list(dict.fromkeys([(0, 0)] + [(dy, dx) for _, dy, dx in union]))
    products = _column_products(planes, shifts)

    def column(plane: int, dy: int, dx: int) -> int:  # column 0: the constant term
        return 1 + plane * len(shifts) + shifts.index((dy, dx))

    for i in range(count):
        target = column(i, 0, 0)
        for predictor, weights in zip(predictors, out, strict=True):
            n = predictor.weight_count(i)
            if not n:
                continue
            taps = predictor.taps()[: n - 1].tolist()
            index = [0] + [column(i - back, dy, dx) for back, dy, dx in taps]
            # The normal equations: (taps x taps) problems, much cheaper than the SVD of the
            # design matrix; lstsq also takes a singular one (flat planes, repeated taps).
            solution = np.linalg.lstsq(products[np.ix_(index, index)],
                                       products[index, target], rcond=None)[0]
            weights[i, :n] = np.clip(np.round(solution * (1 << WEIGHT_SHIFT)),
                                     -MAX_WEIGHT, MAX_WEIGHT)
    return out


def _column_products(planes: np.ndarray, shifts: list[tuple[int, int]]) -> np.ndarray:
    """D^T D for the design matrix D whose columns are a constant 1 and each plane shifted by
    each of `shifts` (zero outside the plane; plane-major), over every step-th position, at
    most FIT_POSITIONS of them. Built a block of positions at a time (bounded memory); the
    sums are of integers, exact in float64 for symbols of a latent, so the blocks change
    nothing."""
    count, height, width = planes.shape
    padded = np.pad(planes, ((0, 0), (2, 2), (2, 2))).reshape(count, -1)
    offsets = np.array([dy * (width + 4) + dx for dy, dx in shifts], np.int64)
    positions = np.arange(0, height * width, max(1, height * width // FIT_POSITIONS))
    size = 1 + count * len(shifts)
    products = np.zeros((size, size))
    for start in range(0, len(positions), FIT_BLOCK):
        block = positions[start : start + FIT_BLOCK]
        centre = (block // width + 2) * (width + 4) + block % width + 2
        design = np.ones((size, len(block)))
        design[1:] = padded[:, centre[None, :] + offsets[:, None]].reshape(size - 1, -1)
        products += design @ design.T
    return products


def residuals(planes: np.ndarray, predictor: Predictor, weights: np.ndarray,
              backend: ModuleType = kernels) -> np.ndarray | None:  # fmt: skip
    """planes - prediction, or None where a residual leaves the int32 range."""
    out = np.zeros_like(planes)
    error = backend.predict_planes(planes, out, predictor.taps(), weights, False)
    return out if error == OK else None


def _head(shape: tuple[int, ...]) -> bytearray:
    out = bytearray([StreamKind.PLANES])
    for value in shape:
        put_varint(out, value)
    return out


def _stream(predictor: Predictor, weights: np.ndarray, residual: np.ndarray,
            backend: ModuleType) -> bytes:  # fmt: skip
    out = _head(residual.shape)
    out += bytes([int(predictor.spatial) | predictor.cross << 1, predictor.depth])
    count = len(residual)
    flat = np.concatenate([weights[i, : predictor.weight_count(i)] for i in range(count)])
    if flat.size:  # the weights, as a 1-D stream after its length
        coded = huffman.encode(flat, backend)
        put_varint(out, len(coded))
        out += coded
    return bytes(out) + channels.encode(residual.reshape(count, -1), backend)


def _candidate(planes: np.ndarray, predictor: Predictor, weights: np.ndarray,
               plain: list[int], backend: ModuleType) -> bytes | None:  # fmt: skip
    """The stream with `predictor` and its fitted `weights`, prediction dropped on planes
    where it does not pay: where the residual takes at least the `plain` bits of the plane."""
    residual = residuals(planes, predictor, weights, backend)
    if residual is None:
        return None
    for i in range(len(planes)):
        if not weights[i].any():  # predicts 0: the residual is the plane already
            continue
        if huffman.encoded_bits(residual[i].ravel(), backend) >= plain[i]:
            weights[i] = 0
            residual[i] = planes[i]
    return _stream(predictor, weights, residual, backend)


def encode(symbols: object, candidates: tuple[Predictor, ...] = CANDIDATES,
           backend: ModuleType = kernels) -> bytes:  # fmt: skip
    """Code a (C, H, W) integer array (values in the int32 range): the smallest stream over
    the `candidates` predictors (NO_PREDICTION always among them)."""
    planes = as_planes(symbols)
    if planes.size == 0:
        return bytes(_head(planes.shape))
    tried = list(dict.fromkeys(p.for_planes(len(planes)) for p in (NO_PREDICTION, *candidates)))
    fitted = fit_many(planes, tried)
    plain = [huffman.encoded_bits(plane.ravel(), backend) for plane in planes]
    streams = [_candidate(planes, p, w, plain, backend)
               for p, w in zip(tried, fitted, strict=True)]
    return min((s for s in streams if s is not None), key=len)


def _read_predictor(raw: bytes, offset: int, count: int) -> tuple[Predictor, int]:
    if offset + 2 > len(raw):
        raise CorruptStreamError("stream ends inside the predictor")
    flags, depth = raw[offset], raw[offset + 1]
    spatial, cross = bool(flags & 1), flags >> 1
    if cross not in CROSS_TAPS:
        raise CorruptStreamError(f"unknown predictor code {flags}")
    if depth > min(MAX_DEPTH, count - 1) or (cross == 0) != (depth == 0):
        raise CorruptStreamError(f"bad predictor depth {depth} for {count} planes")
    return Predictor(spatial, cross, depth), offset + 2


def _read_head(raw: bytes, limit: int) -> tuple[tuple[int, int, int], int]:
    if not raw:
        raise CorruptStreamError("empty stream")
    if raw[0] != StreamKind.PLANES:
        raise CorruptStreamError(
            f"unknown stream kind {raw[0]} (expected {StreamKind.PLANES})"
        )
    count, offset = get_varint(raw, 1, MAX_CHANNELS, "channel count")
    height, offset = get_varint(raw, offset, limit, "row count")
    width, offset = get_varint(raw, offset, limit, "column count")
    if count * height * width > limit:
        raise CorruptStreamError(
            f"{count} x {height} x {width} symbols is over the limit {limit}"
        )
    return (count, height, width), offset


def predictor_of(data: bytes) -> Predictor:
    """The predictor a stream from encode uses (NO_PREDICTION for an empty array)."""
    raw = bytes(data)
    (count, height, width), offset = _read_head(raw, MAX_SYMBOLS)
    if count * height * width == 0:
        return NO_PREDICTION
    return _read_predictor(raw, offset, count)[0]


def decode(data: object, max_symbols: int = MAX_SYMBOLS,
           backend: ModuleType = kernels) -> np.ndarray:  # fmt: skip
    """The (C, H, W) int32 array of a stream that encode wrote, or CorruptStreamError.

    Streams that declare more than `max_symbols` symbols are refused before anything is
    allocated."""
    raw = memoryview(data).cast("B").tobytes()
    (count, height, width), offset = _read_head(raw, min(max_symbols, MAX_SYMBOLS))
    if count * height * width == 0:
        if offset != len(raw):
            raise CorruptStreamError("data after an empty stream")
        return np.zeros((count, height, width), np.int32)
    predictor, offset = _read_predictor(raw, offset, count)
    taps = predictor.taps()
    weights = np.zeros((count, len(taps) + 1), np.int64)
    sizes = [predictor.weight_count(i) for i in range(count)]
    if sum(sizes):
        length, offset = get_varint(raw, offset, len(raw) - offset, "weights length")
        flat = huffman.decode(raw[offset : offset + length], backend)
        offset += length
        if flat.size != sum(sizes):
            raise CorruptStreamError(f"{flat.size} weights where the predictor has {sum(sizes)}")
        if np.abs(flat.astype(np.int64)).max() > MAX_WEIGHT:
            raise CorruptStreamError("prediction weight over the limit")
        for i, row in enumerate(np.split(flat, np.cumsum(sizes)[:-1])):
            weights[i, : len(row)] = row
    residual = channels.decode(raw[offset:], count * height * width, backend)
    if residual.shape != (count, height * width):
        raise CorruptStreamError(
            f"residuals of shape {residual.shape} for {count} planes of {height} x {width}"
        )
    # In place: each value's residual is read just before its value is written over it, and
    # the prediction reads only values written before (so the decoder holds one int32 array).
    planes = residual.reshape(count, height, width)
    error = backend.predict_planes(planes, planes, taps, weights, True)
    if error != OK:
        raise CorruptStreamError(ERROR_MESSAGES[error])
    return planes
