"""`caeadmm compress INPUT... [-o FILE|DIR] [--model M] [--refine [STEPS]] [--workers N]
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
    flags.add_refine(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caeadmm.images import list_images
    from caeadmm.refine import refinement_for
    from caeadmm.zoo import ModelLoadError

    try:
        pairs, errors = common.plan(args.inputs, args.output, ".cae", lambda d: list_images([d]))
        common.cached_model(args.model)  # fail early, once, if the model is unusable
        refine = refinement_for(args.model, args.refine)
    except (common.UsageError, ModelLoadError) as exc:
        return common.usage_error("compress", str(exc))
    task = functools.partial(compress_one, model=args.model, existing=common.existing_mode(args),
                             refine=refine)
    return common.execute("compress", pairs, errors, task, args.workers,
                          quiet=args.quiet)


def compress_one(
    src: Path, dst: Path, model: str | None, existing: str, refine: Refinement | None = None
) -> common.Done:
    from caeadmm.image_codec import compress_file
    from caeadmm.resume import Wanted, check_stream

    def write(overwrite: bool) -> str:
        nbytes, bpp = compress_file(src, dst, common.cached_model(model), overwrite=overwrite,
                                    refine=refine)
        return f"{src} -> {dst}: {nbytes} bytes, {bpp:.4f} bpp"

    # An existing output counts as done only if made with this model.
    wanted = Wanted(common.cached_model(model).fingerprint(), model or "the default model")
    check = functools.partial(check_stream, wanted=wanted)
    return common.run_task(src, dst, existing, check, write)
