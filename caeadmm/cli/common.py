"""What the file-processing commands share: options, input planning, a worker pool, reports.

`compress` and `decompress` plan (source, output) pairs with `plan`, run a task on each with
`execute` (N worker processes, a progress bar, one line per failure) and return its exit
code: 0 all ok, 1 some files failed, 2 usage or no model. torch and the codec are imported
inside the functions: the dispatcher imports every subcommand module to build its parser,
and `caeadmm --help` should not wait for torch.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The arguments cannot work as given (exit code 2)."""


def add_common_options(p: argparse.ArgumentParser, model_help: str) -> None:
    p.add_argument("--model", metavar="NAME|PATH", help=model_help)
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="worker processes (default 1)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")


@functools.lru_cache(maxsize=8)
def cached_model(spec: str | None):
    """A model loaded once per process and spec (worker processes each keep their own)."""
    from caeadmm.zoo import load

    return load(spec)


def plan(
    inputs: list[str],
    output: str | None,
    suffix: str,
    list_dir: Callable[[Path], list[Path]],
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """(pairs, per-file errors) for the -o convention (`caeadmm.inputs.plan_outputs`).

    One input file with -o not naming a directory: -o is the output file. Otherwise -o
    (created if missing) holds the outputs, each directory input's tree mirrored below it;
    without -o every output goes beside its input.
    """
    from caeadmm.inputs import plan_outputs

    single = len(inputs) == 1 and not Path(inputs[0]).is_dir()
    if single and output is not None and not _names_dir(output):
        return plan_outputs(inputs, suffix, list_dir, output_file=output)
    if output is not None and Path(output).is_file():
        raise UsageError(f"{output} is a file, but the outputs need a directory")
    return plan_outputs(inputs, suffix, list_dir, output_dir=output)


def execute(
    command: str,
    pairs: list[tuple[Path, Path]],
    errors: list[tuple[Path, str]],
    task: Callable[[Path, Path], str],
    workers: int,
) -> int:
    """Run `task(src, dst)` for every pair, report each failure on one line, return the code."""
    failed = len(errors)
    for src, message in errors:
        report_failure(command, src, message)
    with tqdm(total=len(pairs), unit="file", file=sys.stderr,
              disable=None if len(pairs) > 1 else True) as bar:
        for src, (ok, text) in _results(pairs, task, workers):
            if ok:
                tqdm.write(text, file=sys.stdout)
            else:
                failed += 1
                report_failure(command, src, text)
            bar.update()
    if failed and len(pairs) + len(errors) > 1:
        print(f"caeadmm {command}: {failed} of {len(pairs) + len(errors)} files failed",
              file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def report_failure(command: str, src: Path, message: str) -> None:
    tqdm.write(f"caeadmm {command}: {src}: {message}", file=sys.stderr)


def usage_error(command: str, message: str) -> int:
    print(f"caeadmm {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _results(
    pairs: list[tuple[Path, Path]], task: Callable[[Path, Path], str], workers: int
) -> Iterable[tuple[Path, tuple[bool, str]]]:
    """(source, (ok, summary line or error message)) per pair, in completion order."""
    if workers == 1 or len(pairs) < 2:
        for src, dst in pairs:
            yield src, _guarded(task, src, dst)
        return
    # spawn, not fork: forking a process that already runs torch's thread pools can hang.
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                initargs=(threads,)) as pool:
        futures = {pool.submit(_guarded, task, src, dst): src for src, dst in pairs}
        for future in cf.as_completed(futures):
            yield futures[future], future.result()


def _guarded(task: Callable[[Path, Path], str], src: Path, dst: Path) -> tuple[bool, str]:
    """Files fail for reasons of their own (ValueError: unreadable image, corrupt stream, wrong
    model; OSError: existing output, permissions); anything else is a bug and propagates.
    Returns plain strings, which cross process boundaries where some exceptions cannot."""
    try:
        return True, task(src, dst)
    except (ValueError, OSError) as exc:
        return False, " ".join(str(exc).split()) or type(exc).__name__


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _names_dir(output: str) -> bool:
    return output.endswith(("/", os.sep)) or Path(output).is_dir()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
