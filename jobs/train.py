"""Train CAE-ADMM with Ray Train: DDP workers, ADMM consensus, checkpoints, resume.

    python jobs/train.py --config configs/smoke.yaml shards=runs/shards_p48
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --config configs/small.yaml shards=/data/shards_p128 -o /data/runs/r90

Runs on the Ray cluster named by --address or $RAY_ADDRESS (`ray job submit` sets it), else
on an embedded local Ray with 2 logical CPUs per core, at least 4 (docs/distributed.md,
"Small machines"). Any config field can be overridden as key=value or model.key=value.
The run folder is storage_path/run_name; `-o DIR` names it directly (storage_path is its
parent, run_name its name). Submitting the same run again resumes from its latest
checkpoint; --force starts afresh, removing the run folder first. Under `ray job submit`
local paths must be absolute (-o $PWD/runs/r90, shards=$PWD/runs/shards_p128).
Exit status: 0 done, 1 the run failed, 2 bad configuration or data.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import ray
from ray.train import TrainingFailedError

from caeadmm.cli import flags
from caeadmm.config import ConfigError, TrainConfig, load_config
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
    flags.add_output(parser, "the run folder (sets storage_path to its parent and run_name to "
                     "its name; default: storage_path/run_name of the config)", metavar="DIR")
    flags.add_force(parser, "start afresh instead of resuming: remove the run folder (its "
                    "checkpoints and log) first")
    flags.add_quiet(parser, "no progress lines: errors and the closing summary only")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or local)")
    flags.add_version(parser)
    return parser


def configure(args: argparse.Namespace) -> TrainConfig:
    """The run's config: the YAML, the overrides and -o; paths checked for a submitted job
    (ValueError: relative there). Raises ConfigError for a bad one."""
    overrides = list(args.overrides)
    if args.output:
        clash = sorted({o.split("=", 1)[0] for o in overrides} & {"storage_path", "run_name"})
        if clash:
            raise ConfigError(f"-o names the run folder, which sets storage_path and run_name; "
                              f"drop {' and '.join(f'{k}=' for k in clash)}")
        run = flags.resolve_output(args.output, "-o").rstrip("/")
        if "://" in run:
            parent, _, name = run.rpartition("/")
        else:
            if os.path.exists(run) and not os.path.isdir(run):
                raise ConfigError(f"-o {args.output} is a file; the run needs a folder")
            parent, name = os.path.split(run)
        if not name or not parent or parent.endswith(":/"):
            raise ConfigError(f"-o {args.output}: name a run folder, e.g. -o $PWD/runs/r75")
        overrides += [f"storage_path={parent}", f"run_name={name}"]
    cfg = load_config(args.config, overrides)
    flags.resolve_output(cfg.storage_path, "storage_path=")  # refused when relative in a job
    if cfg.shards:
        flags.check_job_input(cfg.shards, "shards=")
    return cfg


def remove_run(cfg: TrainConfig) -> str | None:
    """--force: delete the run folder, storage_path/run_name (local or a URI); returns it, or
    None when there was none."""
    run = f"{storage_path(cfg.storage_path).rstrip('/')}/{cfg.run_name}"
    if "://" not in run:
        if not os.path.isdir(run):
            return None
        shutil.rmtree(run)
        return run
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(run)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    fs.delete_dir(path)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after options
    try:
        cfg = configure(args)
    except (ConfigError, ValueError) as exc:
        print(f"[train] bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.force:
        removed = remove_run(cfg)
        if removed and not args.quiet:
            print(f"[train] --force: removed the earlier run {removed}", flush=True)

    connect(args.address, local_cpus(), **({"announce": None} if args.quiet else {}))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus and not cfg.use_gpu:
        print(f"[train] note: the cluster has {gpus} GPU(s); add use_gpu=true to train on them")
    if not args.quiet:
        print(
            f"[train] run {cfg.run_name!r}: {cfg.num_workers} worker(s) x {cfg.cpus_per_worker} "
            f"CPU{' + 1 GPU' if cfg.use_gpu else ''}, {cfg.total_steps()} steps of batch "
            f"{cfg.batch_size} per worker, storage {storage_path(cfg.storage_path)}",
            flush=True,
        )
    try:
        result = fit(
            cfg, debug=args.debug, max_failures=args.max_failures,
            keep_checkpoints=args.keep_checkpoints if args.keep_checkpoints > 0 else None,
            log=(lambda line: None) if args.quiet
            else (lambda line: print(f"[train] {line}", flush=True)),
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
