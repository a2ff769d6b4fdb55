"""Compress an image corpus into .cae files on a Ray cluster, with a Parquet manifest.

    python jobs/compress.py /data/photos -o runs/photos_cae --model PATH
    ray job submit --working-dir . -- \
        python jobs/compress.py /shared/photos -o /shared/cae --model NAME

Runs on the Ray cluster named by --address or $RAY_ADDRESS, else on a local Ray of its own.
Reruns skip what is done (checked whole; damaged outputs are made again); bad images are
listed in the manifest (status "failed") and do not stop the others. Under `ray job submit`
the output must be an absolute path. Exit code (as `caeadmm compress`): 0 when every file was
compressed or already done, 1 when some failed (status "failed" in the manifest), 2 for bad
arguments or no model, 130 when interrupted (the manifest then lists what finished).
`--refine [fast|best|STEPS]` refines each image's latent before coding (docs/refine.md);
`--metric`, `--quality` and `--target-bpp` choose a variable-rate model and its rate, as for
`caeadmm compress` (docs/variable-rate.md); `--device cuda` runs the network on a GPU per
actor (default cpu). The job ends with images/s and MB/s (of pixels), as `caeadmm compress`
does (docs/speed.md).
See docs/cli.md ("Corpora on a Ray cluster") and caeadmm/distributed/batch_compress.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from caeadmm.cli import flags
from caeadmm.cli.common import UsageError
from caeadmm.cli.compress import add_rate_options, resolve_rate
from caeadmm.devices import DeviceError
from caeadmm.distributed.batch_compress import Interrupted, compress_corpus
from caeadmm.distributed.session import connect
from caeadmm.refine import refinement_for
from caeadmm.zoo import ModelLoadError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files or directories (recursed)")
    flags.add_output(parser, "output directory (tree mirrored)", required=True)
    parser.add_argument("--model", help="registered model name or checkpoint path "
                        "(default: the registry's default model)")
    add_rate_options(parser)
    parser.add_argument("--manifest", help="manifest path (default OUTPUT/manifest.parquet)")
    parser.add_argument("--concurrency", type=int, default=2, help="actors (default 2)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="default 1")
    parser.add_argument("--gpus-per-actor", type=float,
                        help="with --device cuda; default 1 then")
    flags.add_device(parser)
    flags.add_force(parser, "recompress existing outputs")
    flags.add_refine(parser)
    flags.add_quiet(parser, "no progress output (a bar on a terminal, else a line every 30 s)",
                    old="--no-progress")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else "
                        "a local Ray of its own)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (without a cluster)")
    flags.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        output = flags.resolve_output(args.output)
        if "://" not in output and Path(output).exists() and not Path(output).is_dir():
            raise ValueError(f"-o {args.output} is a file; the outputs need a folder")
        manifest = args.manifest and flags.resolve_output(args.manifest, "--manifest")
        # A missing or broken model fails here, not in every actor.
        model, quality, target_bpp = resolve_rate(args)
        if args.gpus_per_actor and args.device != "cuda":
            raise UsageError("--gpus-per-actor needs --device cuda")
    except (ValueError, UsageError, ModelLoadError) as exc:
        print(f"compress: {exc}", file=sys.stderr)
        return 2
    print(f"compress: outputs go to {output}", flush=True)
    try:
        connect(args.address, args.num_cpus)
        summary = compress_corpus(
            args.inputs, output, model, manifest=manifest, quality=quality,
            target_bpp=target_bpp,
            concurrency=args.concurrency, num_cpus=args.cpus_per_actor,
            num_gpus=args.gpus_per_actor, force=args.force, device=args.device,
            refine=refinement_for(model, args.refine), progress=not args.quiet,
        )
    except Interrupted as stop:
        print(f"compress: {stop}; manifest: {stop.manifest}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before any file was planned
        print("compress: interrupted; nothing done", file=sys.stderr)
        return 130
    except DeviceError as exc:  # the cluster has no GPU for --device cuda
        print(f"compress: {exc}", file=sys.stderr)
        return 2
    redone = f", {summary.redone} of them damaged ones made again" if summary.redone else ""
    print(f"compressed {summary.compressed}{redone}, already done {summary.skipped}, "
          f"failed {summary.failed}; outputs in {output}; manifest: {summary.manifest}")
    if summary.compressed:
        print(f"compress: {summary.throughput()}")
    if summary.failed:
        print(f"compress: {summary.failed} files failed (status \"failed\" in "
              f"{summary.manifest}, with the reason)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
