"""`caeadmm compare IMAGE -o DIR (--bpp BPP | --size SIZE) [--codecs ...] [--models ...]`.

One image, every codec set to meet the size given (caeadmm.matching: the largest setting whose
file fits), shown side by side in DIR/index.html: the same image view as the report page of
`caeadmm eval` (caeadmm.report), with the encoded files in DIR/files/.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from caeadmm.cli import flags
from caeadmm.cli.common import EXIT_FAILED, EXIT_OK, usage_error

DEFAULT_CODECS = "cae,jpeg,webp,jpeg2000,avif"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="one image, every codec at the same file size, side by side (HTML page)",
        description="Encode one image with every codec at its largest setting whose file "
        "fits the size given, and write a page that shows them side by side at full "
        "resolution (DIR/index.html; the files in DIR/files/).",
    )
    p.add_argument("image", metavar="IMAGE", help="the image file")
    flags.add_output(p, "output folder (created; must be empty unless --force)", required=True,
                     metavar="DIR")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--bpp", type=_positive_float, help="size in bits per pixel, e.g. 0.25")
    size.add_argument("--size", metavar="SIZE",
                      help="file size: 20KB (1000 bytes each), 20KiB, 1.5MB, or bytes")
    p.add_argument("--codecs", default=DEFAULT_CODECS,
                   help="comma list of codec names (default: %(default)s)")
    p.add_argument("--models", metavar="M1,M2,...",
                   help="the CAE's models to choose from (registered names or checkpoint "
                   "paths); default: the registry's current models trained for the default "
                   "model's metric")
    flags.add_force(p, "write into a non-empty output folder, replacing an earlier page")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caeadmm import matching, report
    from caeadmm.baselines import CodecError, get_codec
    from caeadmm.images import ImageLoadError, load_rgb
    from caeadmm.zoo import ModelLoadError

    try:
        codecs = [get_codec(name.strip()).name for name in args.codecs.split(",") if name.strip()]
        if not codecs:
            raise CodecError("no codec given")
        rgb = load_rgb(args.image)
        height, width = rgb.shape[:2]
        if args.size is not None:
            max_bytes, target = matching.parse_size(args.size), args.size
        else:
            max_bytes = matching.bytes_for_bpp(args.bpp, height, width)
            target = f"{args.bpp:g} bpp"
        target = f"{target} ({max_bytes:,} bytes, {8 * max_bytes / (height * width):.3f} bpp)"
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models \
            else None
        out = Path(flags.resolve_output(args.output))
        _prepare_output(out, args.force)
    except (CodecError, ImageLoadError, ModelLoadError, ValueError) as exc:
        return usage_error("compare", str(exc))
    original = report.Tile("original", "Original", pixels=rgb,
                           note=f"{Path(args.image).name}")
    comparison = report.Comparison(Path(args.image).name, "", [original])
    files: dict[str, str] = {}
    (out / "files").mkdir(parents=True, exist_ok=True)
    failed = 0
    for codec in codecs:
        try:
            fit = matching.fit_codec(codec, rgb, max_bytes, models)
        except (CodecError, ModelLoadError, ValueError, OSError) as exc:
            failed += 1
            comparison.tiles.append(report.Tile(codec, report.codec_label(codec),
                                                note=f"failed: {exc}"))
            print(f"caeadmm compare: {codec}: {exc}", file=sys.stderr)
            continue
        name = f"files/{Path(args.image).stem}-{codec}{matching.EXTENSIONS.get(codec, '.bin')}"
        (out / name).write_bytes(fit.data)
        files[codec] = name
        note = "" if fit.fits else "over the size: the codec's smallest setting"
        tile = report.measured_tile(codec, report.codec_label(codec),
                                    report.setting_text(codec, fit.setting), rgb,
                                    len(fit.data), fit.decoded, note)
        comparison.tiles.append(tile)
        print(f"{tile.label:<26} {tile.setting:<22} {tile.nbytes:>9,} bytes  {tile.bpp:.3f} bpp"
              f"  PSNR {tile.psnr:5.2f} dB  MS-SSIM {tile.ms_ssim:.4f}"
              + (f"  ({note})" if note else ""), flush=True)
    page = report.write_compare_page(out, comparison, target, files)
    print(f"page: {page}")
    return EXIT_FAILED if failed else EXIT_OK


def _prepare_output(out: Path, force: bool) -> None:
    """Refuse a non-empty folder unless `force`; with it, remove an earlier page there."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; -o needs a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ValueError(f"{out} is not empty; pass --force to replace an earlier page "
                             "there, or name another folder with -o")
        (out / "index.html").unlink(missing_ok=True)
        for folder in ("page", "files"):
            shutil.rmtree(out / folder, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value <= 24:
        raise argparse.ArgumentTypeError(f"must be in (0, 24], got {text}")
    return value
