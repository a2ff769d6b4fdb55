"""What the file-processing commands share: options, input planning, a worker pool, reports.

`compress` and `decompress` plan (source, output) pairs with `plan`, run a task on each with
`execute` (N worker processes, a progress bar, one line per failure) and return its exit
code: 0 all ok, 1 some files failed, 2 usage or no model, 130 interrupted (Ctrl-C). Worker
processes stop as soon as their parent is gone (killed or interrupted) and leave no
temporary file behind. torch and the codec are imported inside the functions: the
dispatcher imports every subcommand module to build its parser, and `caeadmm --help`
should not wait for torch.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from caeadmm import progress
from caeadmm.cli import flags
from caeadmm.lifeline import die_with_parent, exit_now

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# What to do with an output that exists: "refuse" (a per-file error), "force" (replace it),
# "skip" (keep it when it checks out as complete, redo it when it is damaged).
EXISTING_MODES = ("refuse", "force", "skip")


class Done(NamedTuple):
    """What a task did with one file: kind "written", "skipped", "redone" (a damaged output
    made again) or "replaced" (one made with another model or quality), its line, and for a
    file it coded the image's pixel count and the bytes of the stream (compressed size)."""

    kind: str
    line: str
    pixels: int = 0
    stream_bytes: int = 0


class UsageError(Exception):
    """The arguments cannot work as given (exit code 2)."""


def add_common_options(p: argparse.ArgumentParser, model_help: str) -> None:
    p.add_argument("--model", metavar="NAME|PATH", help=model_help)
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="worker processes (default 1)")
    flags.add_device(p)
    flags.add_quiet(p, "no progress bar")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--force", action="store_true", help="overwrite existing outputs")
    existing.add_argument(
        "--skip-existing", action="store_true",
        help="keep outputs that exist and check out as complete (resume an interrupted run); "
        "damaged ones are made again",
    )


def existing_mode(args: argparse.Namespace) -> str:
    """The EXISTING_MODES entry that --force / --skip-existing ask for."""
    return "force" if args.force else "skip" if args.skip_existing else "refuse"


@functools.lru_cache(maxsize=8)
def cached_model(spec: str | None):
    """A model loaded once per process and spec (worker processes each keep their own)."""
    from caeadmm.zoo import load

    return load(spec)


def model_on(spec: str | None, device: str = "cpu"):
    """`cached_model(spec)` on `device` ("cpu" or "cuda"; caeadmm.devices.resolve, whose
    DeviceError says why a GPU cannot be used)."""
    from caeadmm.devices import resolve

    return cached_model(spec).to(resolve(device))


def check_device(device: str) -> None:
    """Raise UsageError when `device` cannot be used here (before any file is planned)."""
    from caeadmm.devices import resolve

    try:
        resolve(device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


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
        _check_format(output, suffix)
        return plan_outputs(inputs, suffix, list_dir, output_file=output)
    if output is not None and Path(output).is_file():
        raise UsageError(f"{output} is a file, but the outputs need a directory")
    if output is not None and not _names_dir(output) and _looks_like_file(output, suffix):
        raise UsageError(f"-o {output} looks like a file name, but the outputs of several "
                         "files need a directory; end it with / to make a directory of that "
                         "name")
    return plan_outputs(inputs, suffix, list_dir, output_dir=output)


def execute(
    command: str,
    pairs: list[tuple[Path, Path]],
    errors: list[tuple[Path, str]],
    task: Callable[[Path, Path], Done],
    workers: int,
    quiet: bool = False,
) -> int:
    """Run `task(src, dst)` for every pair, report each failure on one line, return the code.

    Ctrl-C stops the workers (their unfinished outputs are removed) and prints one line,
    "interrupted; N of M done"; the exit code is then 130.
    """
    failed = len(errors)
    for src, message in errors:
        report_failure(command, src, message)
    counts = dict.fromkeys(("written", "skipped", "redone", "replaced"), 0)
    rate = Throughput()
    bar = tqdm(total=len(pairs), unit="file", file=sys.stderr,
               disable=True if quiet or len(pairs) < 2 else None)
    try:
        with contextlib.closing(_results(pairs, task, workers)) as results:
            for src, (ok, outcome) in results:
                if ok:
                    counts[outcome.kind] += 1
                    rate.add(outcome)
                    tqdm.write(outcome.line, file=sys.stdout)
                else:
                    failed += 1
                    report_failure(command, src, outcome)
                bar.update()
    except KeyboardInterrupt:
        bar.close()
        print(f"caeadmm {command}: interrupted; {sum(counts.values())} of {len(pairs)} done",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    bar.close()
    if counts["skipped"] or counts["redone"] or counts["replaced"]:
        other = (f", {counts['replaced']} made with another model or quality and made again"
                 if counts["replaced"] else "")
        print(f"caeadmm {command}: {counts['skipped']} already done, {counts['redone']} damaged "
              f"and made again{other}", file=sys.stderr)
    if failed and len(pairs) + len(errors) > 1:
        print(f"caeadmm {command}: {failed} of {len(pairs) + len(errors)} files failed",
              file=sys.stderr)
    if rate.images and not quiet:
        print(f"caeadmm {command}: {rate.summary()}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


class Throughput:
    """Images coded and their pixels and stream bytes since it was made (wall clock), for
    the throughput line (progress.throughput) that compress and decompress end with."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.images = self.pixels = self.stream_bytes = 0

    def add(self, done: Done) -> None:
        if done.pixels:
            self.images += 1
            self.pixels += done.pixels
            self.stream_bytes += done.stream_bytes

    def summary(self) -> str:
        return progress.throughput(self.images, time.perf_counter() - self.start, self.pixels,
                                   self.stream_bytes)  # fmt: skip


def check_existing(
    dst: Path, existing: str, check: Callable[[Path], object]
) -> tuple[str, str] | str | None:
    """Apply the EXISTING_MODES policy to `dst` before a task writes it.

    Returns None when the task should write `dst` (overwriting it when `existing` is
    "force"), "ok" when a complete output is there to keep, or (state, reason) for one to
    write again, overwriting: "damaged", or "stale" (made with another model or quality).
    Raises FileExistsError for an output the policy keeps off limits. `check` is
    `caeadmm.outputs.check_stream` (with what the run wants) or `check_image`.
    """
    if existing == "force" or not dst.exists():
        return None
    if existing == "refuse":
        raise FileExistsError(f"{dst} exists (use --force to overwrite, --skip-existing to "
                              "keep it)")
    state = check(dst)
    if state.state == "ok":
        return "ok"
    if state.state in ("damaged", "stale"):
        return state.state, state.reason
    raise FileExistsError(f"{dst} exists and is not an output of ours ({state.reason}); "
                          "use --force to replace it")


def run_task(
    src: Path, dst: Path, existing: str, check: Callable[[Path], object],
    write: Callable[[bool], tuple[str, int, int]],
) -> Done:
    """One file under the EXISTING_MODES policy: `write(overwrite)` makes the output and
    returns its summary line, the image's pixel count and the stream's bytes. With "skip",
    an output that another run writes between the check and the write is judged by the same
    rule (kept, or replaced). Warnings that the work raises (an alpha channel dropped, ...)
    end the line, one note each."""
    state = check_existing(dst, existing, check)
    if state == "ok":
        return Done("skipped", f"{src} -> {dst}: already done (checked), skipped")
    try:
        (line, *coded), notes = _noting(write, existing == "force" or state is not None, src)
    except FileExistsError:
        if existing != "skip" or state is not None:
            raise
        state = check_existing(dst, existing, check)  # another run wrote it meanwhile
        if state == "ok":
            return Done("skipped", f"{src} -> {dst}: made meanwhile by another run "
                        "(checked), skipped")
        (line, *coded), notes = _noting(write, True, src)
    line += "".join(f"; note: {note}" for note in notes)
    if state is None:
        return Done("written", line, *coded)
    kind, reason = state
    if kind == "stale":
        return Done("replaced", f"{line} (replaced an output {reason})", *coded)
    return Done("redone", f"{line} (replaced a damaged output: {reason})", *coded)


def _noting(
    write: Callable[[bool], tuple[str, int, int]], overwrite: bool, src: Path
) -> tuple[tuple[str, int, int], list[str]]:
    """(write(overwrite), the messages of the UserWarnings it raised, each on one line and
    without a leading "SRC: "), instead of Python's warning lines with file and line; other
    warnings (deprecations) are shown as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = write(overwrite)
    notes = []
    for w in caught:
        if issubclass(w.category, UserWarning):
            notes.append(" ".join(str(w.message).split()).removeprefix(f"{src}: "))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return line, list(dict.fromkeys(notes))


def report_failure(command: str, src: Path, message: str) -> None:
    tqdm.write(f"caeadmm {command}: {src}: {message}", file=sys.stderr)


def usage_error(command: str, message: str) -> int:
    print(f"caeadmm {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _results(
    pairs: list[tuple[Path, Path]], task: Callable[[Path, Path], Done], workers: int
) -> Iterator[tuple[Path, tuple[bool, Done | str]]]:
    """(source, (ok, Done or error message)) per pair, in completion order."""
    if workers == 1 or len(pairs) < 2:
        for src, dst in pairs:
            yield src, _guarded(task, src, dst)
        return
    # spawn, not fork: forking a process that already runs torch's thread pools can hang.
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    with cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                initargs=(threads, os.getpid())) as pool:
        with _sigint_ignored():  # workers start with Ctrl-C ignored: the parent handles it
            futures = {pool.submit(_guarded, task, src, dst): src for src, dst in pairs}
        try:
            for future in cf.as_completed(futures):
                yield futures[future], future.result()
        except BaseException:  # Ctrl-C, or the caller stopped early (GeneratorExit)
            # No future.cancel(): the pool then marks the rest broken, and Python 3.11's pool
            # thread fails on futures that are both cancelled and broken.
            for child in multiprocessing.active_children():
                child.terminate()  # SIGTERM: exit_now removes the partial output and exits
            raise


def _guarded(task: Callable[[Path, Path], Done], src: Path, dst: Path) -> tuple[bool, Done | str]:
    """Files fail for reasons of their own (ValueError: unreadable image, corrupt stream, wrong
    model; OSError: existing output, permissions); anything else is a bug and propagates.
    Returns plain data, which crosses process boundaries where some exceptions cannot."""
    try:
        return True, task(src, dst)
    except (ValueError, OSError) as exc:
        return False, " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _init_worker(threads: int, parent: int) -> None:
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, exit_now)
    die_with_parent(parent)
    torch.set_num_threads(threads)


def _check_format(output: str, suffix: str) -> None:
    """Refuse an output file named as the other kind: `compress -o x.png` (it would be a .cae
    stream named .png) or `decompress -o x.cae`."""
    from caeadmm.images import IMAGE_EXTENSIONS

    ext = Path(output).suffix.lower()
    if suffix == ".cae" and ext in IMAGE_EXTENSIONS:
        raise UsageError(f"-o {output} names a {ext[1:].upper()} image, but the output is a "
                         f".cae stream; name it {Path(output).with_suffix('.cae')}")
    if suffix != ".cae" and ext == ".cae":
        raise UsageError(f"-o {output} names a .cae stream, but the output is an image; name "
                         f"it {Path(output).with_suffix(suffix)} (or .jpg, .webp, ...)")


def _looks_like_file(output: str, suffix: str) -> bool:
    """Whether a path that does not exist yet ends like an output file (x.cae, x.png)."""
    from caeadmm.images import IMAGE_EXTENSIONS

    return Path(output).suffix.lower() in {suffix, ".cae", *IMAGE_EXTENSIONS}


def _names_dir(output: str) -> bool:
    return output.endswith(("/", os.sep)) or Path(output).is_dir()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
