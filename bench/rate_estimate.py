"""The rate term's estimate against the real coder on Kodak, per image and in total, and
where a gap comes from.

    .venv/bin/python bench/rate_estimate.py --model PATH_OR_NAME [--kodak DIR] [--limit N]
    .venv/bin/python bench/rate_estimate.py --model M --fit-images DIR [--fit-steps 500]

For each image the symbols the codec writes (caeadmm.codec.compress) are coded as a
"channels" payload (coding.encode_channels: the per-channel coder the rate term models; the
default "predicted" payload codes the same symbols 15-24 % smaller, docs/coding.md) and
decoded back; on exactly those symbols:

- est: the entropy model's estimate in bits (eval mode), sum of -log2 P_c(symbol);
- H_pool: the order-0 entropy of each channel pooled over all the images measured, i.e. the
  bits of the best fixed per-channel density there is for this set (a lower bound of est for
  any entropy model; est - H_pool is the density's mismatch);
- H_pc: the order-0 entropy of each channel of this image alone, the bits of ideal tables
  adapted to the image (H_pool - H_pc is what per-image tables gain over any fixed density);
- H_grp: the order-0 entropy of each group of channels that shares a Huffman table;
- zeros: the share of zeros among the kept symbols;
- payload: the coded payload (coding.encode_channels) in bits, split into the Huffman codes
  of the symbols (code), the code tables (tables) and the rest (group labels, parameters,
  length prefixes, byte padding); stream: the whole .cae file, header included;
- adapt: the estimate with each channel's density moved to the image's mean of that channel
  and stretched by the best of a few scales (EntropyModel.adaptive_bits): how close a rate
  estimate that adapts to each image, as the coder's per-image tables do, comes;
- runs: the same adapted apart after a zero and after a non-zero symbol (adaptive_bits with
  zero_context, `rate_estimate: adaptive-runs`): what the coder's zero-run tokens save;
- H_ctx: each channel's order-0 entropy in this image, apart after a zero and after a
  non-zero symbol (the bound of runs, as H_pc is of adapt).

Ratios are over the payload. With --fit-images the entropy model is first fitted alone (the
network frozen: caeadmm.entropy_fit.fit_entropy_model) to the symbols of --fit-batches
batches of random training crops of the model's patch size from that folder, never Kodak,
and the table is printed before and after.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

# Run as a script, this file's folder comes first on sys.path: the repository root goes there
# instead, so that this checkout's packages (`coding`, `caeadmm`, `bench`) are the ones imported.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import coding  # noqa: E402
from bench.image_codec import KODAK  # noqa: E402
from caeadmm import bitstream, codec  # noqa: E402
from caeadmm.entropy_fit import fit_entropy_model  # noqa: E402
from caeadmm.images import list_images, load_rgb  # noqa: E402
from caeadmm.model import CAE, LATENT_MAX  # noqa: E402
from caeadmm.train_local import load_images, random_patches  # noqa: E402
from caeadmm.zoo import load  # noqa: E402
from coding import channels, kernels  # noqa: E402

SIZE = 2 * LATENT_MAX + 1


def entropy_bits(counts: np.ndarray) -> float:
    """Order-0 entropy in bits of the symbols of each row of histograms (R, S), summed."""
    total = counts.sum(axis=1, keepdims=True)
    p = counts / np.maximum(total, 1)
    return float(-(counts * np.log2(np.where(p > 0, p, 1))).sum())


def histograms(symbols: np.ndarray) -> np.ndarray:
    """(K, S) per-channel histograms over -LATENT_MAX..LATENT_MAX of (K, N) symbols."""
    shifted = symbols.astype(np.int64) + LATENT_MAX
    return np.stack([np.bincount(row, minlength=SIZE) for row in shifted])


@torch.no_grad()
def estimated_bits(model: CAE, kept: torch.Tensor, symbols: np.ndarray) -> tuple[float, ...]:
    """The entropy model's bits of (K, h, w) symbols of the kept channels: its estimate, its
    per-image adaptive estimate (EntropyModel.adaptive_bits) and that with zero_context."""
    latent = torch.zeros(1, model.config.latent_channels, *symbols.shape[1:])
    latent[0, kept] = torch.from_numpy(symbols.astype(np.float32))
    mask = torch.zeros(model.config.latent_channels, 1, 1, dtype=torch.bool)
    mask[kept] = True
    return (float(model.entropy.bits(latent, mask)[0]),
            float(model.entropy.adaptive_bits(latent, LATENT_MAX, mask)[0]),
            float(model.entropy.adaptive_bits(latent, LATENT_MAX, mask, zero_context=True)[0]))


def context_entropy_bits(symbols: np.ndarray) -> float:
    """Order-0 entropy of each row of (K, N) symbols, apart after a zero and after a non-zero
    symbol (the row's first symbol counts as after a non-zero), summed."""
    after_zero = np.zeros(symbols.shape, bool)
    after_zero[:, 1:] = symbols[:, :-1] == 0
    shifted = symbols.astype(np.int64) + LATENT_MAX
    return sum(
        entropy_bits(np.bincount(row[part], minlength=SIZE)[None])
        for row, context in zip(shifted, after_zero, strict=True)
        for part in (context, ~context)
    )


def payload_parts(symbols: np.ndarray) -> dict[str, float]:
    """The payload's bits split as the coder plans them, and the per-group entropy."""
    plan = channels._prepare(symbols, kernels)
    labels = np.zeros(len(symbols), np.int64)
    if len(plan.groups) > 1:
        labels = channels.choose_groups(symbols, kernels)
    hist = histograms(symbols)
    groups = np.stack([hist[labels == g].sum(axis=0) for g in range(len(plan.groups))])
    return {
        "payload": 8.0 * plan.size,
        "code": float(sum(c.payload_bits for c in plan.groups)),
        "tables": float(sum(c.table_bits for c in plan.groups)),
        "H_grp": entropy_bits(groups),
    }


def measure(model: CAE, images: list[np.ndarray]) -> list[dict[str, float]]:
    """One row per image: pixels, est, H_pc, the payload's parts and the stream's bits; the
    per-channel histograms under "hist" (for H_pool)."""
    kept = model.kept_channels()
    if kept is None:
        raise SystemExit("the model's mask is not channel-structured: no version 2 streams")
    rows = []
    for image in images:
        header, predicted = bitstream.parse(codec.compress(image, model))
        payload = coding.encode_channels(bitstream.decode_payload(header, predicted))
        symbols = coding.decode_channels(payload)
        parts = payload_parts(symbols)
        if parts["payload"] != 8 * len(payload):
            raise RuntimeError("the coder's plan and the stream disagree")
        hist = histograms(symbols)
        latent = symbols.reshape(len(kept), *header.latent_size)
        rows.append({
            "pixels": float(image.shape[0] * image.shape[1]),
            **dict(zip(("est", "adapt", "runs"), estimated_bits(model, kept, latent),
                       strict=True)),
            "zeros": float((symbols == 0).sum()),
            "symbols": float(symbols.size),
            "H_pc": entropy_bits(hist),
            "H_ctx": context_entropy_bits(symbols),
            "stream": 8.0 * (bitstream.HEADER_BYTES + len(payload)),  # as a "channels" stream
            "hist": hist,
            **parts,
        })
    return rows


def table(names: list[str], rows: list[dict[str, float]]) -> str:
    pooled = sum(r["hist"] for r in rows)
    p = pooled / np.maximum(pooled.sum(axis=1, keepdims=True), 1)
    cost = -np.log2(np.where(p > 0, p, 1))  # bits of each symbol under the pooled density
    for r in rows:
        r["H_pool"] = float((r["hist"] * cost).sum())
    total = {k: sum(r[k] for r in rows) for k in rows[0] if k != "hist"}
    lines = [
        "| image | bpp (payload) | zeros | est/payload | H_pool/payload | H_pc/payload | "
        "H_grp/payload | code/payload | tables/payload | est/H_pool | est/stream | "
        "adapt/payload | runs/payload | H_ctx/payload |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in [*zip(names, rows, strict=True), ("total", total)]:
        pay = r["payload"]
        lines.append(
            f"| {name} | {pay / r['pixels']:.4f} | {r['zeros'] / max(r['symbols'], 1):.3f} | "
            f"{r['est'] / pay:.3f} | "
            f"{r['H_pool'] / pay:.3f} | {r['H_pc'] / pay:.3f} | {r['H_grp'] / pay:.3f} | "
            f"{r['code'] / pay:.3f} | {r['tables'] / pay:.3f} | {r['est'] / r['H_pool']:.3f} | "
            f"{r['est'] / r['stream']:.3f} | {r['adapt'] / pay:.3f} | {r['runs'] / pay:.3f} | "
            f"{r['H_ctx'] / pay:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a registered name or a model file")
    parser.add_argument("--kodak", default=str(KODAK), help="Kodak folder")
    parser.add_argument("--limit", type=int, default=None, help="the first N images only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fit-images", default=None,
                        help="fit the entropy model on random crops of these (never Kodak)")
    parser.add_argument("--fit-batches", type=int, default=64)
    parser.add_argument("--fit-steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load(args.model)
    if model.config.quality_levels:
        raise SystemExit(f"{args.model} is a variable-rate model: this bench measures a "
                         "fixed-rate model's estimate")
    if model.config.entropy_model == "none":
        raise SystemExit(f"{args.model} has no entropy model")
    paths = list_images([args.kodak])[: args.limit]
    images = [load_rgb(path) for path in paths]
    names = [path.stem for path in paths]
    own = {"adaptive": "adapt", "adaptive-runs": "runs"}.get(model.config.rate_estimate, "est")
    print(f"model {args.model}, {len(images)} images from {args.kodak}; its rate term (what it "
          f"was trained on, and reports): {own}\n")
    print(table(names, measure(model, images)))
    if args.fit_images:
        patch, batch = model.config.patch_size, 8
        crops = load_images(args.fit_images, patch, log=lambda _: None)
        batches = [random_patches(crops, batch, patch, [args.seed, 2, i])
                   for i in range(args.fit_batches)]
        stats = fit_entropy_model(model, batches, args.fit_steps)
        print(f"\nentropy model fitted alone for {args.fit_steps} steps on "
              f"{args.fit_batches} x {batch} crops of {patch} px from {args.fit_images}: "
              f"{stats['bits_before']:.4f} -> {stats['bits_after']:.4f} bits per kept symbol "
              f"(their order-0 entropy {stats['entropy_bits']:.4f})\n")
        model.eval()
        print(table(names, measure(model, images)))


if __name__ == "__main__":
    main()
