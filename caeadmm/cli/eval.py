"""`caeadmm eval DATASET --codecs cae:MODEL,jpeg,webp,jpeg2000,avif --out DIR`.

Rate-distortion evaluation of codecs over an image set, spread over the Ray cluster named by
--address or RAY_ADDRESS, else over a local Ray of its own. See docs/evaluation.md for the
protocol and the files written into DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CODECS = "jpeg,webp,jpeg2000,avif"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The eval options; shared with jobs/evaluate.py so both entry points read the same."""
    parser.add_argument("dataset", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument(
        "--codecs", default=DEFAULT_CODECS,
        help="comma list of NAME or NAME:S1+S2+...; NAME in jpeg, webp, jpeg2000, avif, cae; "
        "cae needs models, e.g. cae:small-k3+small-k6 (default: %(default)s)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--references", action="append", type=Path, default=[], metavar="JSON",
        help="extra reference curve (CompressAI results JSON) to plot; repeatable",
    )
    parser.add_argument(
        "--no-published", action="store_true",
        help="leave the shipped published curves (caeadmm/references) off the plots",
    )
    parser.add_argument(
        "--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray of its own)"
    )
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (without a cluster)")
    parser.add_argument("--cpus-per-task", type=float, default=1.0, help="(default: 1)")
    parser.add_argument("--max-bpp", type=float, default=2.0, help="plot range (default: 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; exit code 0 if every point was measured, 1 if some failed, 2 if none."""
    from caeadmm import baselines, rd
    from caeadmm.distributed import evaluate

    try:
        codecs = baselines.parse_codecs(args.codecs)
        references = [] if args.no_published else rd.published_references()
        references += [rd.read_json(p, published=True) for p in args.references]
        outcome = evaluate.run(
            args.dataset, codecs, args.out, references=references, address=args.address,
            num_cpus=args.num_cpus, cpus_per_task=args.cpus_per_task, max_bpp=args.max_bpp,
            progress=not args.quiet,
        )
    except (baselines.CodecError, rd.ResultsFormatError, evaluate.EvaluationError) as exc:
        print(f"caeadmm eval: {exc}", file=sys.stderr)
        return 2
    print(f"{len(outcome.rows)} points measured; results in {args.out}/")
    for name in ("summary_md", "bd_md", "plot_psnr", "plot_ms_ssim_db"):
        print(f"  {outcome.paths[name]}")
    if len(outcome.failures):
        first = outcome.failures.iloc[0]
        print(
            f"caeadmm eval: {len(outcome.failures)} points failed (see "
            f"{outcome.paths['failures_csv']}); first: {first['image']} {first['codec']} "
            f"{first['setting']}: {first['error']}",
            file=sys.stderr,
        )
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="rate-distortion evaluation against JPEG, WebP, JPEG 2000, AVIF",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
