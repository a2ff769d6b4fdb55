"""Compress an image corpus on a Ray cluster into .cae files, with a Parquet manifest.

    ray job submit --working-dir . -- python jobs/compress.py DATA/ -o OUT/ --model PATH
    python jobs/compress.py DATA/ -o OUT/ --model PATH     # Ray embedded in this process

Reruns skip what is done; bad images are listed in the manifest (status "failed") and do
not fail the job. Exit code 0 once the corpus has been processed, 2 for bad arguments.
See caeadmm/batch_compress.py.
"""

from __future__ import annotations

import argparse
import sys

from caeadmm.batch_compress import compress_corpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="image files or directories (recursed)")
    parser.add_argument("-o", "--output", required=True, help="output directory")
    parser.add_argument("--model", required=True, help="registered model name or checkpoint path")
    parser.add_argument("--manifest", help="manifest path (default OUTPUT/manifest.parquet)")
    parser.add_argument("--concurrency", type=int, default=2, help="actors (default 2)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument("--gpus-per-actor", type=float, default=None,
                        help="default: 1 when the cluster has GPUs, else 0")
    parser.add_argument("--force", action="store_true", help="recompress existing outputs")
    args = parser.parse_args(argv)
    summary = compress_corpus(
        args.inputs, args.output, args.model, manifest=args.manifest,
        concurrency=args.concurrency, num_cpus=args.cpus_per_actor,
        num_gpus=args.gpus_per_actor, force=args.force,
    )
    print(f"compressed {summary.compressed}, already done {summary.skipped}, "
          f"failed {summary.failed}; manifest: {summary.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
