"""`caeadmm train`: single-process training over a folder of images (no Ray needed).

    caeadmm train --config configs/small.yaml --images DIR -o DIR [key=value ...]

Overrides are TrainConfig fields (`rho=0.5`, `model.latent_channels=16`); see
docs/training.md. An existing checkpoint in the output directory is resumed unless
--no-resume.
"""

from __future__ import annotations

import argparse

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
    parser.add_argument(
        "--no-resume", action="store_true", help="start afresh even if -o has a checkpoint"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caeadmm.config import ConfigError, load_config
    from caeadmm.train_local import TrainDataError, train

    overrides = list(args.overrides)
    if args.images:
        overrides.append(f"images={args.images}")
    try:
        cfg = load_config(args.config, overrides)
        train(cfg, args.output, resume=not args.no_resume, log=lambda line: print(line, flush=True))
    except (ConfigError, TrainDataError) as exc:
        print(f"caeadmm train: error: {exc}")
        return 2
    return 0
