"""`caeadmm decompress FILE... [-o FILE|DIR] [--model M] [--max-pixels N] [--workers N]
[--force|--skip-existing]`.

Without --model each stream picks the registered model whose fingerprint it names. Outputs
are PNG unless -o names a file with another image extension; grayscale streams give
grayscale images.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from caeadmm.bitstream import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, max_pixels_from_env
from caeadmm.cli import common


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "decompress",
        help="decompress .cae files into images",
        description="Decompress .cae files (directories recurse) into images. Without -o "
        "each output goes beside its input, NAME.png.",
    )
    p.add_argument("inputs", nargs="+", metavar="FILE", help=".cae files or directories")
    p.add_argument(
        "-o", "--output", metavar="FILE|DIR",
        help="output image (one input file; its extension picks the format) or directory",
    )
    common.add_common_options(p, model_help="registered model name or checkpoint path "
                              "(default: the registered model whose fingerprint the stream names)")
    p.add_argument("--max-pixels", type=_pixels, default=None, metavar="N",
                   help=f"refuse streams of larger images, 'none' for no limit (default "
                   f"${MAX_PIXELS_ENV}, else {DEFAULT_MAX_PIXELS:,}: Pillow's limit, "
                   "e.g. 10000 x 8947)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caeadmm.zoo import ModelLoadError

    try:
        common.check_device(args.device)
        pairs, errors = common.plan(args.inputs, args.output, ".png", _cae_files)
        if args.max_pixels is None:
            args.max_pixels = max_pixels_from_env()  # ValueError when malformed
        elif args.max_pixels == "none":
            args.max_pixels = None
        if args.model is not None:
            common.cached_model(args.model)  # fail early, once, if the model is unusable
    except (common.UsageError, ModelLoadError, ValueError) as exc:
        return common.usage_error("decompress", str(exc))
    task = functools.partial(decompress_one, model=args.model,
                             existing=common.existing_mode(args), max_pixels=args.max_pixels,
                             device=args.device)
    return common.execute("decompress", pairs, errors, task, args.workers,
                          quiet=args.quiet)


def decompress_one(
    src: Path, dst: Path, model: str | None, existing: str, max_pixels: int,
    device: str = "cpu",
) -> common.Done:
    from caeadmm.outputs import check_image

    def write(overwrite: bool) -> tuple[str, int, int]:
        return _decompress(src, dst, model, overwrite, max_pixels, device)

    return common.run_task(src, dst, existing, check_image, write)


def _decompress(src: Path, dst: Path, model: str | None, overwrite: bool, max_pixels: int,
                device: str = "cpu") -> tuple[str, int, int]:
    from caeadmm import bitstream, zoo
    from caeadmm.codec import decompress, save_image

    data = src.read_bytes()
    if model is None:
        header = bitstream.read_header(data, max_pixels)
        info = zoo.find_by_fingerprint(header.fingerprint)
        if info is None:
            raise zoo.ModelLoadError(
                f"stream needs the model with fingerprint {header.fingerprint.hex()}, which "
                "is not registered; pass --model PATH to its checkpoint"
            )
        model = info.name
    image = decompress(data, common.model_on(model, device), max_pixels=max_pixels)
    save_image(dst, image, overwrite=overwrite)
    mode = "L" if image.ndim == 2 else "RGB"
    line = f"{src} -> {dst}: {image.shape[1]}x{image.shape[0]} {mode}"
    return line, image.shape[0] * image.shape[1], len(data)


def _pixels(text: str) -> int | str:
    """A --max-pixels value: a positive count (1_000_000 or 1,000,000 too), or 'none'."""
    if text.strip().lower() == "none":
        return "none"
    value = int(text.replace("_", "").replace(",", ""))
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1 (or 'none')")
    return value


def _cae_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.cae") if p.is_file())
