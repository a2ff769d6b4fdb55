"""Rate-distortion evaluation of codecs over an image set, on a Ray cluster.

    ray job submit --working-dir . -- python jobs/evaluate.py DATA/ -o /abs/OUT/ \
        --codecs cae:MODEL,jpeg,webp,jpeg2000,avif
    python jobs/evaluate.py DATA/ -o OUT/      # Ray embedded in this process

Same options and outputs as `caeadmm eval` (see docs/evaluation.md); under `ray job submit`
-o must be an absolute path. Only the driver reads
DATA/; the images travel to the tasks through Ray's object store. Exit code 0 when every point
was measured, 1 when some failed (listed in OUT/failures.csv), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from caeadmm.cli import flags
from caeadmm.cli.eval import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    flags.add_version(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
