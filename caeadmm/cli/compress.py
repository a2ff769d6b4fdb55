"""`caeadmm compress INPUT... [-o FILE|DIR] [--model M | --metric ms-ssim|mse]
[--quality Q | --target-bpp X] [--refine [fast|best|STEPS]] [--workers N] [--device cpu|cuda]
[--force|--skip-existing]`."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import TYPE_CHECKING

from caeadmm.cli import common, flags

if TYPE_CHECKING:
    from caeadmm.refine import Refinement


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compress",
        help="compress images into .cae files",
        description="Compress image files (directories recurse) into .cae files. Without -o "
        "each output goes beside its input, NAME.cae.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or directories")
    p.add_argument(
        "-o", "--output", metavar="FILE|DIR",
        help="output file (one input file) or directory (mirrors input directories)",
    )
    common.add_common_options(p, model_help="registered model name or checkpoint path "
                              "(default: the registry's default model)")
    add_rate_options(p)
    flags.add_refine(p)
    p.set_defaults(func=run)


def add_rate_options(p: argparse.ArgumentParser) -> None:
    """--metric, --quality and --target-bpp: the variable-rate model's choices."""
    p.add_argument("--metric", choices=("ms-ssim", "mse"),
                   help="the registered variable-rate model trained for this metric "
                   "(instead of --model)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--quality", type=float, metavar="Q",
                      help="a variable-rate model's quality, from 0 (fewest bytes) to its top "
                      "(`caeadmm models NAME`); default: the model's default quality")
    rate.add_argument("--target-bpp", type=float, metavar="X",
                      help="the highest quality whose file has at most X bits per pixel "
                      "(variable-rate models)")


def resolve_rate(args: argparse.Namespace) -> tuple[str | None, float | None, float | None]:
    """(model spec, quality, target bpp) from --model/--metric, --quality and --target-bpp;
    the model's default quality when a variable-rate model gets neither. Raises UsageError
    or zoo.ModelLoadError."""
    from caeadmm import zoo

    if args.metric and args.model:
        raise common.UsageError("give --model or --metric, not both")
    spec = zoo.for_metric(args.metric) if args.metric else args.model
    model = common.cached_model(spec)  # fail early, once, if the model is unusable
    levels = model.config.quality_levels
    if not levels and (args.quality is not None or args.target_bpp is not None):
        raise common.UsageError(f"--quality and --target-bpp need a variable-rate model; "
                                f"{spec or 'the default model'} has one rate")
    if args.quality is not None and not 0 <= args.quality <= levels - 1:
        raise common.UsageError(f"--quality must be in [0, {levels - 1}] for this model")
    if args.target_bpp is not None and not args.target_bpp > 0:
        raise common.UsageError("--target-bpp must be positive")
    quality = args.quality
    if levels and quality is None and args.target_bpp is None:
        quality = zoo.default_quality(spec, model)
    return spec, quality, args.target_bpp


def run(args: argparse.Namespace) -> int:
    from caeadmm.images import list_images
    from caeadmm.refine import refinement_for
    from caeadmm.zoo import ModelLoadError

    try:
        common.check_device(args.device)
        pairs, errors = common.plan(args.inputs, args.output, ".cae", lambda d: list_images([d]))
        spec, quality, target_bpp = resolve_rate(args)
        refine = refinement_for(spec, args.refine)
    except (common.UsageError, ModelLoadError) as exc:
        return common.usage_error("compress", str(exc))
    task = functools.partial(compress_one, model=spec, existing=common.existing_mode(args),
                             refine=refine, quality=quality, target_bpp=target_bpp,
                             device=args.device)
    return common.execute("compress", pairs, errors, task, args.workers,
                          quiet=args.quiet)


def compress_one(
    src: Path,
    dst: Path,
    model: str | None,
    existing: str,
    refine: Refinement | None = None,
    quality: float | None = None,
    target_bpp: float | None = None,
    device: str = "cpu",
) -> common.Done:
    from caeadmm.codec import compress_file
    from caeadmm.outputs import Wanted, check_stream

    def write(overwrite: bool) -> tuple[str, int, int]:
        nbytes, bpp, used = compress_file(src, dst, common.model_on(model, device),
                                          overwrite=overwrite, refine=refine, quality=quality,
                                          target_bpp=target_bpp)  # fmt: skip
        line = f"{src} -> {dst}: {nbytes} bytes, {bpp:.4f} bpp"
        if used is not None:
            line += f", quality {used:.3f}"
        if target_bpp is not None and bpp > target_bpp:
            line += f" (the lowest quality; the target {target_bpp} bpp is out of reach)"
        elif target_bpp is not None and bpp < 0.95 * target_bpp:
            # A nested model's rate steps up where a channel joins: no quality lands closer.
            line += (f" ({bpp / target_bpp:.0%} of the target {target_bpp} bpp: the nearest"
                     f" under it; the next quality up is over it)")
        return line, round(8 * nbytes / bpp), nbytes

    # An existing output counts as done only if made with this model (and quality).
    wanted = Wanted(common.cached_model(model).fingerprint(), model or "the default model",
                    quality if target_bpp is None else None)
    check = functools.partial(check_stream, wanted=wanted)
    return common.run_task(src, dst, existing, check, write)
