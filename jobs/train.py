"""Train CAE-ADMM with Ray Train: DDP workers, ADMM consensus, checkpoints, resume.

    python jobs/train.py --config configs/smoke.yaml shards=runs/shards_p48
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --config configs/small.yaml shards=/data/shards_p128 run_name=r90

Runs on the Ray cluster named by --address or $RAY_ADDRESS (`ray job submit` sets it), else
on an embedded local Ray with 2 logical CPUs per core, at least 4 (docs/distributed.md,
"Small machines"). Any config field can be overridden as key=value or model.key=value.
Submitting the same run_name and storage_path again resumes from the latest checkpoint.
Under `ray job submit` a local storage_path must be absolute (storage_path=$PWD/runs).
Exit status: 0 done, 1 the run failed, 2 bad configuration or data.
"""

from __future__ import annotations

import argparse
import sys

import ray
from ray.train import TrainingFailedError

from caeadmm.cli import flags
from caeadmm.config import ConfigError, load_config
from caeadmm.distributed.session import connect, local_cpus, ray_logs_dir
from caeadmm.distributed.shards import ShardError
from caeadmm.distributed.train import (
    CHECKPOINT_FILE,
    KEEP_CHECKPOINTS,
    LOG_FILE,
    MAX_FAILURES,
    MODEL_FILE,
    TrainRayError,
    fit,
    storage_path,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config (configs/*.yaml); default: all defaults")
    parser.add_argument("overrides", nargs="*", help="key=value or model.key=value overrides")
    parser.add_argument(
        "--debug", action="store_true",
        help="check after every ADMM update that all workers hold the same Z and U",
    )
    parser.add_argument(
        "--max-failures", type=int, default=MAX_FAILURES,
        help=f"worker failures to recover from (default {MAX_FAILURES}; -1: no limit)",
    )
    parser.add_argument(
        "--keep-checkpoints", type=int, default=KEEP_CHECKPOINTS,
        help=f"checkpoints kept on storage (default {KEEP_CHECKPOINTS})",
    )
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    flags.add_version(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after options
    try:
        cfg = load_config(args.config, args.overrides)
        flags.resolve_output(cfg.storage_path, "storage_path=")  # refused when relative in a job
    except (ConfigError, ValueError) as exc:
        print(f"[train] bad configuration: {exc}", file=sys.stderr)
        return 2

    connect(args.address, local_cpus())
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus and not cfg.use_gpu:
        print(f"[train] note: the cluster has {gpus} GPU(s); add use_gpu=true to train on them")
    print(
        f"[train] run {cfg.run_name!r}: {cfg.num_workers} worker(s) x {cfg.cpus_per_worker} CPU"
        f"{' + 1 GPU' if cfg.use_gpu else ''}, {cfg.total_steps()} steps of batch "
        f"{cfg.batch_size} per worker, storage {storage_path(cfg.storage_path)}",
        flush=True,
    )
    try:
        result = fit(
            cfg, debug=args.debug, max_failures=args.max_failures,
            keep_checkpoints=args.keep_checkpoints if args.keep_checkpoints > 0 else None,
            log=lambda line: print(f"[train] {line}", flush=True),
        )
    except (TrainRayError, ShardError, ConfigError) as exc:
        print(f"[train] cannot start: {exc}", file=sys.stderr)
        return 2
    except TrainingFailedError as exc:
        print(f"[train] the run failed: {exc}", file=sys.stderr)
        return 1

    run = result.path
    print(f"[train] done. run directory: {run}")
    if result.checkpoint is not None:
        checkpoint = result.checkpoint.path
        print(f"[train]   latest checkpoint: {checkpoint}/{CHECKPOINT_FILE}")
        print(f"[train]   exported model:    {checkpoint}/{MODEL_FILE}")
    where = "" if "://" in run else f"{run}/{LOG_FILE}, and "
    print(f"[train]   metrics log:       {where}{LOG_FILE} inside each checkpoint")
    print(f"[train]   Ray's own logs:    {ray_logs_dir()} (on each node, its own)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
