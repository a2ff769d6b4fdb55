"""`caeadmm eval DATASET --codecs cae:MODEL,jpeg,webp,jpeg2000,avif -o DIR`.

Rate-distortion evaluation of codecs over an image set, spread over the Ray cluster named by
--address or RAY_ADDRESS, else over a local Ray of its own. See docs/evaluation.md for the
protocol and the files written into DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from caeadmm.cli import flags

DEFAULT_CODECS = "jpeg,webp,jpeg2000,avif"
# What a run writes into the output folder (`rd.write_report`, failures.csv): what --force
# removes from an earlier run, so that no old codec's JSON stays beside the new ones.
RESULT_PATTERNS = ("per_image.csv", "per_image.parquet", "per_image.partial.parquet",
                   "summary.csv", "summary.md", "bd_rate.md", "failures.csv", "rd_*.png", "*.json",
                   "index.html", "page/*/*.png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The eval options; shared with jobs/evaluate.py so both entry points read the same."""
    parser.add_argument("dataset", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument(
        "--codecs", default=DEFAULT_CODECS,
        help="comma list of NAME or NAME:S1+S2+...; NAME in jpeg, webp, jpeg2000, avif, cae; "
        "cae needs models, e.g. cae:small-k3+small-k6 (default: %(default)s)",
    )
    flags.add_output(parser, "output folder (created; must be empty unless --force)",
                     required=True, old="--out", metavar="DIR")
    flags.add_force(parser, "write into a non-empty output folder, removing an earlier run's "
                    "results there first")
    parser.add_argument(
        "--resume", action="store_true",
        help="keep the points an earlier run in the output folder measured (a killed or "
        "interrupted one, or a finished one to add codecs or settings to) and measure only "
        "the rest",
    )
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
    parser.add_argument(
        "--page-images", type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
        metavar="NAME,...",
        help="images the report page (index.html) shows side by side at matched bitrate: "
        "names as in per_image.csv, file names or stems (default: the median and the hardest "
        "image for the CAE)",
    )
    flags.add_quiet(parser, "no progress output (a bar on a terminal, else a line every 30 s)")


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; exit code 0 if every point was measured, 1 if some failed, 2 if none
    (or bad arguments), 130 if interrupted (the points measured by then are written)."""
    from caeadmm import baselines, rd
    from caeadmm.distributed import evaluate

    try:
        codecs = baselines.parse_codecs(args.codecs)
        _check_models(codecs)
        references = [] if args.no_published else rd.published_references()
        references += [rd.read_json(p, published=True) for p in args.references]
    except (baselines.CodecError, rd.ResultsFormatError) as exc:
        print(f"caeadmm eval: {exc}", file=sys.stderr)
        return 2
    if args.force and args.resume:
        print("caeadmm eval: --force starts over and --resume keeps an earlier run's points; "
              "pass one of them", file=sys.stderr)
        return 2
    try:
        out = Path(flags.resolve_output(args.output))
        earlier = evaluate.earlier_rows(out) if args.resume else None
        if earlier is not None:
            evaluate.check_resumable(earlier, args.dataset)  # before anything is removed
        _clear_output(out, args.force or args.resume, "--resume" if args.resume else "--force")
    except (ValueError, evaluate.EvaluationError) as exc:
        print(f"caeadmm eval: {exc}", file=sys.stderr)
        return 2
    print(f"caeadmm eval: results go to {out}/", file=sys.stderr, flush=True)
    if earlier is not None:
        print(f"caeadmm eval: --resume: {len(earlier)} points of an earlier run found there "
              "(all are kept; only the points they lack are measured)", file=sys.stderr,
              flush=True)
    try:
        outcome = evaluate.run(
            args.dataset, codecs, out, references=references, address=args.address,
            num_cpus=args.num_cpus, cpus_per_task=args.cpus_per_task, max_bpp=args.max_bpp,
            progress=not args.quiet, earlier=earlier, page_images=args.page_images,
        )
    except evaluate.EvaluationError as exc:
        print(f"caeadmm eval: {exc}", file=sys.stderr)
        return 2
    if outcome.unfinished:
        written = f"; partial results in {out}/" if outcome.paths else ""
        print(f"caeadmm eval: interrupted; {len(outcome.rows) + len(outcome.failures)} of "
              f"{outcome.total} points done{written}", file=sys.stderr)
        return 130
    print(f"{len(outcome.rows)} points measured; results in {out}/")
    for name in ("summary_md", "bd_md", "plot_psnr", "plot_ms_ssim_db", "page"):
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


def _check_models(codecs: dict) -> None:
    """Load each model the codec list names (the set-up of codecs that have one: cae,
    cae-refined) here, before Ray starts: an unknown name is a usage error at once, not a
    failed task per image (CodecError)."""
    from caeadmm import baselines

    for name, settings in codecs.items():
        prepare = baselines.get_codec(name).prepare
        for setting in settings if prepare is not None else ():
            try:
                prepare(setting)
            except ValueError as exc:  # zoo.ModelLoadError, a bad quality
                raise baselines.CodecError(
                    f"{name}:{setting}: {' '.join(str(exc).split())}") from None


def _clear_output(out: Path, force: bool, flag: str = "--force") -> None:
    """Refuse a non-empty output folder (ValueError) unless `force`; with it, remove the
    result files of an earlier run there (other files stay; a resumed run has read the rows
    it keeps) and say so."""
    if not out.is_dir() or not any(out.iterdir()):
        if out.exists() and not out.is_dir():
            raise ValueError(f"{out} is a file; -o needs a folder")
        return
    if not force:
        raise ValueError(f"{out} is not empty; pass --force to replace an earlier run's "
                         "results there, or name another folder with -o")
    old = sorted({p for pattern in RESULT_PATTERNS for p in out.glob(pattern) if p.is_file()})
    for path in old:
        path.unlink()
    if old:
        print(f"caeadmm eval: {flag}: removed {len(old)} result files of an earlier run "
              f"from {out}/", file=sys.stderr)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="rate-distortion evaluation against JPEG, WebP, JPEG 2000, AVIF",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
