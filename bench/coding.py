"""Benchmark of the entropy coder against general-purpose compressors and an ANS coder.

    .venv/bin/python bench/coding.py            # 4M symbols at 50/80/90/95 % zeros
    .venv/bin/python bench/coding.py --small    # also: overhead on short streams
    .venv/bin/python bench/coding.py --size 400000 --runs 3    # a quick look

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

# Run as a script, this file's folder comes first on sys.path, where the file would shadow the
# `coding` package it measures: look in the repository root instead.
sys.path[0] = str(Path(__file__).resolve().parent.parent)
import coding  # noqa: E402
from coding.synthetic import sparse_laplacian  # noqa: E402

try:
    import constriction
    import zstandard
except ImportError as error:  # the dev extra has them
    raise SystemExit(f"bench/coding.py needs the dev extra: {error}") from error

ZEROS = (0.50, 0.80, 0.90, 0.95)
SIZE = 4_000_000




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


def byte_coder(compress: Callable[[bytes], bytes], decompress: Callable[[bytes], bytes]):
    """A coder of int8 symbols through a general-purpose byte compressor."""

    def encode(x: np.ndarray) -> bytes:
        return compress(x.astype(np.int8).tobytes())

    def decode(data: bytes) -> np.ndarray:
        return np.frombuffer(decompress(data), np.int8)

    return encode, decode


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


def measure(x: np.ndarray, runs: int) -> list[tuple]:
    rows = []
    for name, (encode, decode, bits) in coders(x).items():
        data = encode(x)
        if not np.array_equal(np.asarray(decode(data), np.int64), x):
            raise SystemExit(f"{name} did not round-trip")
        t_enc = median_seconds(lambda encode=encode: encode(x), runs)
        t_dec = median_seconds(lambda decode=decode, data=data: decode(data), runs)
        rows.append((name, bits(data) / x.size, x.size / t_enc / 1e6, x.size / t_dec / 1e6))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="also show short-stream overhead")
    args = parser.parse_args()

    print(f"# coding benchmark: {args.size:,} symbols, single thread, median CPU time of "
          f"{args.runs} runs")  # fmt: skip
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, numpy {np.__version__}")  # fmt: skip
    print()
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
