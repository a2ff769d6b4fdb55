"""`caeadmm train`: single-process training over a folder of images (no Ray needed).

    caeadmm train --config configs/small.yaml --images DIR -o DIR [key=value ...]

Overrides are TrainConfig fields (`rho=0.5`, `model.latent_channels=16`); see
docs/training.md. An existing checkpoint in the output directory is resumed unless --force,
which starts afresh (removing the earlier run's checkpoint, model, log and summary there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from caeadmm.cli import flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model on a folder of images (single process, no Ray)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config (default: built-in defaults)")
    parser.add_argument("--images", help="folder of training images (overrides `images`)")
    flags.add_output(parser, "output directory (default: storage_path/run_name)", old="--out")
    flags.add_force(parser, "start afresh instead of resuming: remove an earlier run's "
                    "checkpoint, model, log and summary from the output directory",
                    old="--no-resume")
    flags.add_quiet(parser, "no progress lines: errors and the last line only")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caeadmm.config import ConfigError, load_config
    from caeadmm.train_local import (
        CHECKPOINT_FILE,
        LOG_FILE,
        MODEL_FILE,
        SUMMARY_FILE,
        TrainDataError,
        train,
    )

    overrides = list(args.overrides)
    if args.images:
        overrides.append(f"images={args.images}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"caeadmm train: error: {exc}")
        return 2
    out = Path(args.output) if args.output else Path(cfg.storage_path) / cfg.run_name
    if out.exists() and not out.is_dir():
        print(f"caeadmm train: error: -o {out} is a file; the run needs a folder (its "
              "checkpoint, model, log and summary go there)")
        return 2
    if cfg.use_gpu:
        import torch

        if not torch.cuda.is_available():
            print("caeadmm train: note: the config asks for a GPU (use_gpu: true), but torch "
                  "finds no CUDA device here: training on the CPU", file=sys.stderr, flush=True)
    if args.force:
        removed = [out / f for f in (CHECKPOINT_FILE, MODEL_FILE, LOG_FILE, SUMMARY_FILE)
                   if (out / f).is_file()]
        for path in removed:
            path.unlink()
        if removed and not args.quiet:
            print(f"caeadmm train: --force: removed the earlier run's "
                  f"{', '.join(p.name for p in removed)} from {out}", flush=True)
    log = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    try:
        train(cfg, out, resume=not args.force, log=log)
    except (ConfigError, TrainDataError) as exc:
        print(f"caeadmm train: error: {exc}")
        return 2
    if args.quiet:
        print(f"done: model in {out / MODEL_FILE}")
    return 0
