"""Benchmark of the entropy coder against general-purpose compressors and an ANS coder.

    .venv/bin/python bench/entropy_coder.py            # 4M symbols at 50/80/90/95 % zeros
    .venv/bin/python bench/entropy_coder.py --small    # also: overhead on short streams
    .venv/bin/python bench/entropy_coder.py --size 400000 --runs 3    # a quick look
    .venv/bin/python bench/entropy_coder.py --channels-only --latents a.npy b.npy    # real latents

The full run takes several minutes on an idle machine, most of it in zstd -19 and lzma.

Data: sparse Laplacian symbols, i.e. rounded Laplacian(0, b) values with extra zeros mixed in
until the wanted share is zero. Two families: b = 4 (a wide "slab" of values, like kept latent
slots) and b set by the share of zeros alone (nearly ternary values at high sparsity).

Per row: bits per symbol (stream size, table or header included), its ratio to the order-0
empirical entropy, and encode / decode throughput in million symbols per second, single
thread, from the median CPU time of --runs runs after a warm-up. The byte compressors get the
symbols as int8 (the narrowest dtype that holds them: their most favourable input).
constriction's ANS coder gets the empirical categorical model; its size carries no table and
its timings exclude building the model, so both favour it.

Per-channel latents, (C, N) arrays: `coding.encode_channels` (a table per group of channels)
next to the single-table `coding.encode` of the flattened array, zstd -19, lzma and
constriction with one empirical model per channel. Synthetic ones from
`coding.synthetic.channel_laplacians` (N = 6144, one Kodak image's latent at stride 8;
N = 1536 for a small image), and real ones from `--latents`: .npy files of the kept
symbols, (C, N), (C, H, W) or (B, C, H, W) (the channel axis is the one before H, W).
Sizes are compared to the per-channel order-0 entropy: the sum over channels of N times the
channel's empirical entropy.
"""

from __future__ import annotations

import argparse
import lzma
import math
import os
import platform
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Run as a script, this file's folder comes first on sys.path: the repository root goes there
# instead, so that this checkout's packages (`coding`, `caeadmm`, `bench`) are the ones imported.
sys.path[0] = str(Path(__file__).resolve().parent.parent)
import coding  # noqa: E402
from coding.synthetic import channel_laplacians, sparse_laplacian  # noqa: E402

try:
    import constriction
    import zstandard
except ImportError as error:  # the dev extra has them
    raise SystemExit(f"bench/entropy_coder.py needs the dev extra: {error}") from error

ZEROS = (0.50, 0.80, 0.90, 0.95)
SIZE = 4_000_000
CHANNEL_SHAPES = ((4, 6144), (12, 6144), (32, 6144), (12, 1536))


def order0_bits_per_symbol(x: np.ndarray) -> float:
    _, counts = np.unique(x, return_counts=True)
    p = counts / x.size
    return float(-(p * np.log2(p)).sum())


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    """Median CPU time of the process over `runs` calls, after a warm-up call.

    Every coder here is single-threaded, so on an idle machine this equals wall time; on a
    shared one it keeps other jobs' load out of the comparison.
    """
    fn()  # warm-up (and numba compilation on a fresh cache)
    times = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def byte_coder(compress: Callable[[bytes], bytes], decompress: Callable[[bytes], bytes],
               dtype: type = np.int8):  # fmt: skip
    """A coder of symbols through a general-purpose byte compressor, as `dtype` bytes."""

    def encode(x: np.ndarray) -> bytes:
        return compress(x.astype(dtype).tobytes())

    def decode(data: bytes) -> np.ndarray:
        return np.frombuffer(decompress(data), dtype)

    return encode, decode


def narrowest_dtype(x: np.ndarray) -> type:
    """The narrowest signed integer dtype that holds every value of x."""
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if x.size == 0 or (info.min <= x.min() and x.max() <= info.max):
            return dtype
    raise ValueError("symbols beyond int32")


class AnsPeer:
    """constriction's ANS coder with the stream's empirical categorical model."""

    def __init__(self, x: np.ndarray) -> None:
        self.low = int(x.min())
        counts = np.bincount(x - self.low)
        self.model = constriction.stream.model.Categorical(
            counts / counts.sum(), perfect=False
        )
        self.count = x.size

    def encode(self, x: np.ndarray) -> np.ndarray:
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse((x - self.low).astype(np.int32), self.model)
        return coder.get_compressed()

    def decode(self, words: np.ndarray) -> np.ndarray:
        coder = constriction.stream.stack.AnsCoder(words)
        return coder.decode(self.model, self.count) + self.low


class ChannelAnsPeer:
    """constriction's ANS coder with one empirical categorical model per channel (row)."""

    def __init__(self, x: np.ndarray) -> None:
        self.peers = [AnsPeer(row) for row in x]
        self.shape = x.shape

    def encode(self, x: np.ndarray) -> np.ndarray:
        coder = constriction.stream.stack.AnsCoder()
        for peer, row in zip(self.peers[::-1], x[::-1], strict=True):  # a stack: last first
            coder.encode_reverse((row - peer.low).astype(np.int32), peer.model)
        return coder.get_compressed()

    def decode(self, words: np.ndarray) -> np.ndarray:
        coder = constriction.stream.stack.AnsCoder(words)
        rows = [coder.decode(peer.model, self.shape[1]) + peer.low for peer in self.peers]
        return np.stack(rows)


def channel_coders(x: np.ndarray) -> dict[str, tuple[Callable, Callable, Callable]]:
    """name -> (encode, decode, size in bits) for (C, N) arrays."""
    zstd19 = zstandard.ZstdCompressor(level=19)
    unzstd = zstandard.ZstdDecompressor()
    ans = ChannelAnsPeer(x)
    dtype = narrowest_dtype(x)
    nbytes = lambda data: 8 * len(data)  # noqa: E731

    def flat(coder: tuple[Callable, Callable]) -> tuple[Callable, Callable, Callable]:
        """A 1-D coder over the flattened array (channel after channel)."""
        encode, decode = coder
        return (lambda x: encode(x.ravel()), lambda d: decode(d).reshape(x.shape), nbytes)

    return {
        "ours per-channel": (coding.encode_channels, coding.decode_channels, nbytes),
        "ours single table": flat((coding.encode, coding.decode)),
        "zstd -19": flat(byte_coder(zstd19.compress, unzstd.decompress, dtype)),
        "lzma": flat(byte_coder(lambda b: lzma.compress(b, preset=6), lzma.decompress, dtype)),
        "constriction ANS per channel": (ans.encode, ans.decode, lambda w: 32 * w.size),
    }


def per_channel_order0_bits(x: np.ndarray) -> float:
    """Sum over channels of N times the channel's order-0 entropy."""
    return sum(order0_bits_per_symbol(row) * row.size for row in x)


def load_latents(path: Path) -> np.ndarray:
    """Kept latent symbols from a .npy file as a (C, N) int32 array."""
    x = np.load(path, allow_pickle=False)
    if x.dtype.kind not in "iu" and not np.array_equal(x, np.round(x)):
        raise SystemExit(f"{path}: latents must be integer symbols, got {x.dtype}")
    if x.ndim == 4:  # (B, C, H, W)
        x = x.transpose(1, 0, 2, 3)
    if x.ndim not in (2, 3, 4):
        raise SystemExit(f"{path}: expected (C, N), (C, H, W) or (B, C, H, W), got {x.shape}")
    return x.reshape(x.shape[0], -1).astype(np.int32)


def coders(x: np.ndarray) -> dict[str, tuple[Callable, Callable, Callable]]:
    """name -> (encode, decode, size in bits of an encoded object)."""
    zstd3 = zstandard.ZstdCompressor(level=3)
    zstd19 = zstandard.ZstdCompressor(level=19)
    unzstd = zstandard.ZstdDecompressor()
    ans = AnsPeer(x)
    nbytes = lambda data: 8 * len(data)  # noqa: E731
    return {
        "ours (coding)": (coding.encode, coding.decode, nbytes),
        "zlib -6": (*byte_coder(lambda b: zlib.compress(b, 6), zlib.decompress), nbytes),
        "zstd -3": (*byte_coder(zstd3.compress, unzstd.decompress), nbytes),
        "zstd -19": (*byte_coder(zstd19.compress, unzstd.decompress), nbytes),
        "lzma": (*byte_coder(lambda b: lzma.compress(b, preset=6), lzma.decompress), nbytes),
        "constriction ANS": (ans.encode, ans.decode, lambda words: 32 * words.size),
    }


def measure(x: np.ndarray, runs: int, make_coders: Callable = coders) -> list[tuple]:
    rows = []
    for name, (encode, decode, bits) in make_coders(x).items():
        data = encode(x)
        if not np.array_equal(np.asarray(decode(data), np.int64), x):
            raise SystemExit(f"{name} did not round-trip")
        t_enc = median_seconds(lambda encode=encode: encode(x), runs)
        t_dec = median_seconds(lambda decode=decode, data=data: decode(data), runs)
        rows.append((name, bits(data) / x.size, x.size / t_enc / 1e6, x.size / t_dec / 1e6))
    return rows


def one_table(args: argparse.Namespace) -> None:
    header = "| data | zeros | coder | bits/sym | x order-0 | enc Msym/s | dec Msym/s |"
    print(header)
    print("|" + "---|" * 7)
    for family in ("b=4", "b=auto"):
        for zeros in ZEROS:
            scale = 4.0 if family == "b=4" else 0.5 / math.log(1 / (1 - zeros))
            x = sparse_laplacian(args.size, zeros, scale, seed=int(zeros * 100))
            h0 = order0_bits_per_symbol(x)
            print(f"| {family} | {zeros:.0%} | order-0 entropy | {h0:.4f} | 1.000 | | |")
            for name, bps, enc, dec in measure(x, args.runs):
                print(f"| {family} | {zeros:.0%} | {name} | {bps:.4f} | {bps / h0:.3f} "
                      f"| {enc:.1f} | {dec:.1f} |")  # fmt: skip


def channel_table(args: argparse.Namespace) -> None:
    datasets = [(f"synthetic C={c} N={n}", channel_laplacians(c, n, seed=c)) for c, n in
                CHANNEL_SHAPES]  # fmt: skip
    datasets += [(f"{path.name} C={x.shape[0]} N={x.shape[1]}", x) for path in args.latents
                 for x in [load_latents(path)]]  # fmt: skip
    print("| latents | coder | bits/sym | x per-channel order-0 | x pooled order-0 "
          "| enc Msym/s | dec Msym/s |")  # fmt: skip
    print("|" + "---|" * 7)
    for name, x in datasets:
        h = per_channel_order0_bits(x) / x.size
        pooled = order0_bits_per_symbol(x)
        print(f"| {name} | per-channel order-0 entropy | {h:.4f} | 1.000 | {h / pooled:.3f} "
              "| | |")  # fmt: skip
        for coder, bps, enc, dec in measure(x, args.runs, channel_coders):
            print(f"| {name} | {coder} | {bps:.4f} | {bps / h:.3f} | {bps / pooled:.3f} "
                  f"| {enc:.1f} | {dec:.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="also show short-stream overhead")
    parser.add_argument("--channels-only", action="store_true",
                        help="only the per-channel latents")  # fmt: skip
    parser.add_argument("--latents", type=Path, nargs="*", default=[],
                        help=".npy files of kept latents for the per-channel rows")  # fmt: skip
    args = parser.parse_args()

    print(f"# coding benchmark: {args.size:,} symbols, single thread, median CPU time of "
          f"{args.runs} runs")  # fmt: skip
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, numpy {np.__version__}")  # fmt: skip
    if not args.channels_only:
        print()
        one_table(args)
    print()
    channel_table(args)
    print()
    if args.small:
        print()
        print("| symbols | zeros | order-0 bytes | ours bytes | overhead bytes |")
        print("|---|---|---|---|---|")
        for n in (100, 300, 1_000, 3_000, 30_000, 300_000):
            for zeros in (0.5, 0.8, 0.95):
                x = sparse_laplacian(n, zeros, 4.0, seed=n)
                h0 = order0_bits_per_symbol(x) * n / 8
                ours = len(coding.encode(x))
                print(f"| {n:,} | {zeros:.0%} | {h0:.0f} | {ours} | {ours - h0:.0f} |")


if __name__ == "__main__":
    main()
