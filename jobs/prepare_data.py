"""Cut image corpora into Parquet patch shards (a Ray Data job).

    python jobs/prepare_data.py /data/photos s3://bucket/more -o runs/shards_p128
    ray job submit --working-dir . -- python jobs/prepare_data.py ... -o s3://bucket/shards

Runs on the Ray cluster named by --address or $RAY_ADDRESS, else on a local Ray of its own.
Under `ray job submit` a local output must be an absolute path. Prints a summary; the full
record (shards, sources, rejected files with reasons) is the
`_manifest.json` written beside the shards. See docs/data.md.
"""

from __future__ import annotations

import argparse
import sys

from caeadmm.cli import flags
from caeadmm.distributed.prepare import format_summary, prepare_patches
from caeadmm.distributed.session import connect
from caeadmm.patches import PatchSpec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "inputs", nargs="+", help="folders, image files or .txt/.lst path lists (local or URI)"
    )
    flags.add_output(parser, "output folder for the shards (local or URI)", required=True,
                     old="--out")
    parser.add_argument("--patch-size", type=int, default=128, help="patch side P (default 128)")
    parser.add_argument(
        "--crops", type=int, default=16, help="random crops per image (default 16)"
    )
    parser.add_argument(
        "--grid", action="store_true", help="cut a regular grid instead of random crops"
    )
    parser.add_argument("--stride", type=int, help="grid step in pixels (default: the patch size)")
    parser.add_argument(
        "--small",
        choices=["pad", "skip"],
        default="pad",
        help="images smaller than the patch: reflect-pad (default) or skip",
    )
    parser.add_argument("--seed", type=int, default=0, help="crop seed (default 0)")
    parser.add_argument("--rows-per-shard", type=int, default=1024, help="patches per shard")
    parser.add_argument("--files-per-task", type=int, default=8, help="files decoded per Ray task")
    parser.add_argument(
        "--compression", default="none", help="Parquet codec: none (default, fastest), zstd, ..."
    )
    parser.add_argument("--max-pixels", type=int, help="decompression-bomb pixel limit")
    flags.add_force(parser, "replace a non-empty output folder", old="--overwrite")
    flags.add_quiet(parser, "no progress display", old="--no-progress")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else "
                        "a local Ray of its own)")
    parser.add_argument(
        "--num-cpus", type=int, help="CPUs of the local Ray, without a cluster (default: all cores)"
    )
    flags.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        output = flags.resolve_output(args.output)
        print(f"prepare_data: shards go to {output}", flush=True)
        spec = PatchSpec(
            patch_size=args.patch_size,
            mode="grid" if args.grid else "random",
            crops=args.crops,
            stride=args.stride,
            small=args.small,
            seed=args.seed,
        )
        connect(args.address, args.num_cpus)
        manifest = prepare_patches(
            args.inputs,
            output,
            spec,
            rows_per_shard=args.rows_per_shard,
            files_per_task=args.files_per_task,
            compression=args.compression,
            max_pixels=args.max_pixels,
            overwrite=args.force,
            progress=not args.quiet,
        )
    except ValueError as exc:  # PatchSpec's checks, and ShardError for inputs and output
        print(f"prepare_data: {exc}", file=sys.stderr)
        return 2
    print(format_summary(manifest))
    print(f"shards and _manifest.json in {output}")
    return 0 if manifest["counts"]["patches"] else 1


if __name__ == "__main__":
    sys.exit(main())
