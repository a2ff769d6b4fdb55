"""Rate-distortion evaluation on Ray: one task per (image, codec, setting), anywhere in the cluster.

The driver reads each image file's bytes once and puts them in Ray's object store, so only the
driver needs the data set on disk; tasks decode the image, run `baselines.measure` and return
one result row. Rows come back as they finish (progress over `ray.wait`), then
`rd.write_report` writes the tables, JSON files, plots and BD-rate tables, and
`report.write_eval_page` the report page, index.html. Stopped with
Ctrl-C, the run cancels the points still pending and reports the ones measured.

Each task asks for `cpus_per_task` CPUs (1 by default) and limits torch and the AVIF codec to
that many threads, so timings are comparable and tasks do not oversubscribe a node. Connected to
a cluster (`address=`, RAY_ADDRESS, `ray job submit`) the tasks spread over it; otherwise a
local Ray of this process's own starts for the run and stops after it
(`caeadmm.distributed.session.connect`).
A task that fails (a corrupt image, a codec error) costs only its own row: failures are
collected, written to failures.csv and reported, the other points still count.

Resuming: while it runs, the rows measured so far are saved to PARTIAL in the output folder
every SAVE_EVERY_S seconds. A later run given them (`earlier=earlier_rows(out_dir)`, the CLI's
`--resume`) measures only the points they lack, so a killed or interrupted hour-long run
loses at most a minute of work, and codecs or settings can be added to a finished run. A
resumed run keeps every point the earlier one measured: those of codecs or settings it does
not ask for stay in its results.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import ray
import torch
from PIL import AvifImagePlugin

from caeadmm import rd, report
from caeadmm.baselines import Setting, measure
from caeadmm.distributed.session import connect
from caeadmm.images import list_images, load_rgb
from caeadmm.progress import Progress

PARTIAL = "per_image.partial.parquet"  # the rows so far of a run in progress
SAVE_EVERY_S = 60.0


class EvaluationError(RuntimeError):
    """The evaluation could not run at all (no images, nothing measured)."""


@dataclass
class Outcome:
    """What a run produced: the per-image rows, the points that failed and the files written."""

    rows: pd.DataFrame
    failures: pd.DataFrame
    paths: dict[str, Path] = field(default_factory=dict)
    total: int = 0  # points asked for
    unfinished: int = 0  # points not measured because the run was interrupted


def _limit_threads(cpus: float) -> None:
    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    AvifImagePlugin.DEFAULT_MAX_THREADS = threads  # the AVIF decoder's thread pool


def _measure_task(image: str, data: bytes, codec: str, setting: Setting, cpus: float) -> dict:
    _limit_threads(cpus)
    return measure(image, load_rgb(data), codec, setting)


def _image_name(path: Path, roots: Sequence[Path]) -> str:
    """The path relative to the data set root it came from (unique even across sub-folders)."""
    for root in roots:
        if root.is_dir() and path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return path.name


def earlier_rows(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The per-image rows an earlier run wrote into `out_dir`: a killed run's PARTIAL file,
    else a finished or interrupted run's per_image.parquet; empty when there is neither."""
    for name in (PARTIAL, "per_image.parquet"):
        path = Path(out_dir) / name
        if path.is_file():
            try:
                return pd.read_parquet(path)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                raise EvaluationError(f"cannot resume from {path}: {exc}") from exc
    return pd.DataFrame()


def evaluate(
    images: Sequence[Path],
    codecs: Mapping[str, Sequence[Setting]],
    *,
    roots: Sequence[Path] = (),
    cpus_per_task: float = 1.0,
    progress: bool = True,
    earlier: pd.DataFrame | None = None,
    save: Callable[[pd.DataFrame], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Measure every image at every codec setting on the connected Ray cluster.

    Returns (rows, failures, unfinished): the per-image result rows (columns of
    `baselines.measure`), one row per failed point (image, codec, setting, error), and how
    many points were left unmeasured because Ctrl-C stopped the run (their tasks cancelled).
    Points with a row in `earlier` are not measured again: those rows are returned instead,
    and its rows of other codecs or settings on these images come back unchanged with them (a
    resumed run never drops a measured point; `check_resumable` refuses other images). `save`
    is called with the rows so far every SAVE_EVERY_S seconds.
    """
    if not images:
        raise EvaluationError("no images to evaluate")
    task = ray.remote(_measure_task).options(num_cpus=cpus_per_task, max_retries=0)
    names = [_image_name(Path(p), [Path(r) for r in roots]) for p in images]
    twice = sorted(n for n, count in Counter(names).items() if count > 1)
    if twice:
        raise EvaluationError(f"two images share a name: {', '.join(twice[:5])}")
    total = len(images) * sum(len(settings) for settings in codecs.values())
    rows = _rows_of(earlier, names, codecs)
    carried = _rows_of(earlier, names, codecs, other=True)  # codecs or settings not asked for
    measured = {(r["image"], r["codec"], r["setting"]) for r in rows}
    pending: dict[ray.ObjectRef, tuple[str, str, Setting]] = {}
    failures = []
    if save is not None and (rows or carried):
        save(pd.DataFrame(carried + rows))  # the earlier run's files may be gone: keep its rows
    bar = Progress(total - len(rows), "eval", "point", enabled=progress)
    saved = time.monotonic()
    try:
        for path, name in zip(images, names, strict=True):
            todo = [(codec, setting) for codec, settings in codecs.items() for setting in settings
                    if (name, codec, str(setting)) not in measured]
            if not todo:
                continue
            try:
                data_ref = ray.put(Path(path).read_bytes())
            except OSError as exc:
                raise EvaluationError(f"cannot read {path}: {exc}") from exc
            for codec, setting in todo:
                ref = task.remote(name, data_ref, codec, setting, cpus_per_task)
                pending[ref] = (name, codec, setting)
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=0.5)
            for ref in done:
                try:
                    rows.append(ray.get(ref))
                except ray.exceptions.RayError as exc:  # task raised, or its worker died
                    name, codec, setting = pending[ref]
                    cause = getattr(exc, "cause", None) or exc
                    failures.append(
                        {"image": name, "codec": codec, "setting": str(setting),
                         "error": f"{type(cause).__name__}: {cause}"}
                    )
            bar.update(len(done))
            if save is not None and done and time.monotonic() - saved >= SAVE_EVERY_S:
                save(pd.DataFrame(carried + rows))
                saved = time.monotonic()
    except KeyboardInterrupt:
        bar.close(summary=False)
        for ref in pending:
            ray.cancel(ref)  # a no-op for finished tasks
    else:
        bar.close()
    failure_frame = pd.DataFrame(failures, columns=["image", "codec", "setting", "error"])
    unfinished = total - len(rows) - len(failures)
    return pd.DataFrame(carried + rows), failure_frame, unfinished


def _rows_of(
    earlier: pd.DataFrame | None, names: Sequence[str], codecs: Mapping[str, Sequence[Setting]],
    other: bool = False,
) -> list[dict]:
    """The rows of `earlier` for these images and codec settings, as records; with `other`,
    its rows for these images at the codecs and settings not in `codecs`."""
    if earlier is None or earlier.empty:
        return []
    wanted = {(codec, str(setting)) for codec, settings in codecs.items() for setting in settings}
    settings = pd.Series(list(zip(earlier["codec"], earlier["setting"].astype(str), strict=True)),
                         index=earlier.index)
    keep = earlier["image"].isin(set(names)) & (settings.isin(wanted) != other)
    return earlier[keep].to_dict("records")


def check_resumable(earlier: pd.DataFrame, dataset: Sequence[str | os.PathLike]) -> None:
    """Refuse (EvaluationError) to resume from rows of images that `dataset` does not hold:
    the new report would drop their points. Rows of other codecs or settings are fine (kept)."""
    if earlier.empty:
        return
    roots = [Path(p) for p in dataset]
    names = {_image_name(p, roots) for p in list_images(roots)}
    others = sorted(set(earlier["image"]) - names)
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise EvaluationError(
            f"--resume: the earlier run in this folder measured images that this run does not "
            f"have ({shown}); resuming would drop their points. Give the same images, or "
            "another folder with -o"
        )


def _order(rows: pd.DataFrame, codecs: Mapping[str, Sequence[Setting]]) -> pd.DataFrame:
    """Rows in a stable order: codecs as asked, then image, then setting as asked."""
    if rows.empty:
        return rows
    codec_rank = {c: i for i, c in enumerate(codecs)}
    setting_rank = {(c, str(s)): i for c, ss in codecs.items() for i, s in enumerate(ss)}
    for c, s in zip(rows["codec"], rows["setting"], strict=True):  # carried by --resume: after
        codec_rank.setdefault(c, len(codec_rank))
        setting_rank.setdefault((c, s), len(setting_rank))
    keys = pd.DataFrame({
        "c": rows["codec"].map(codec_rank),
        "i": rows["image"],
        "s": [setting_rank[(c, s)] for c, s in zip(rows["codec"], rows["setting"], strict=True)],
    })
    return rows.loc[keys.sort_values(["c", "i", "s"]).index].reset_index(drop=True)


def run(
    dataset: Sequence[str | os.PathLike],
    codecs: Mapping[str, Sequence[Setting]],
    out_dir: str | os.PathLike,
    *,
    references: Sequence[rd.Curve] = (),
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_task: float = 1.0,
    max_bpp: float = 2.0,
    progress: bool = True,
    earlier: pd.DataFrame | None = None,
    page_images: Sequence[str] | None = None,
) -> Outcome:
    """Evaluate the images under `dataset` and write every artifact into `out_dir`, measuring
    only the points that `earlier` (rows of an earlier run, `earlier_rows`) lacks; the report
    page (`caeadmm.report`) shows `page_images` (None: the median and the hardest image)."""
    roots = [Path(p) for p in dataset]
    images = list_images(roots)
    if not images:
        raise EvaluationError(f"no image files under {', '.join(map(str, dataset))}")
    paths_by_name = {_image_name(p, roots): p for p in images}
    shown, unknown = report.resolve_names(page_images or (), list(paths_by_name))
    for problem in unknown:  # a warning, not an error: --resume has cleared the folder
        print(f"caeadmm eval: --page-images {problem}; the page leaves it out", file=sys.stderr)
    partial = Path(out_dir) / PARTIAL

    def save(rows: pd.DataFrame) -> None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        rows.to_parquet(partial.with_suffix(".tmp"), index=False)
        partial.with_suffix(".tmp").replace(partial)  # never a half-written file

    started = connect(address, num_cpus)
    try:
        rows, failures, unfinished = evaluate(
            images, codecs, roots=roots, cpus_per_task=cpus_per_task, progress=progress,
            earlier=earlier, save=save,
        )
    finally:
        if started:
            ray.shutdown()
    total = len(rows) + len(failures) + unfinished
    if unfinished and rows.empty:
        return Outcome(rows, failures, total=total, unfinished=unfinished)
    if rows.empty:
        first = failures["error"].iloc[0] if len(failures) else "no result"
        raise EvaluationError(f"every point failed; first error: {first}")
    rows = _order(rows, codecs)
    image_set = ", ".join(root.resolve().name for root in roots)
    paths = rd.write_report(rows, out_dir, references, max_bpp, image_set=image_set)
    paths["page"] = report.write_eval_page(out_dir, rows, paths_by_name, image_set,
                                           shown or None, failures=len(failures))
    partial.unlink(missing_ok=True)  # per_image.parquet holds every row now
    if len(failures):
        paths["failures_csv"] = Path(out_dir) / "failures.csv"
        failures.to_csv(paths["failures_csv"], index=False)
    return Outcome(rows, failures, paths, total=total, unfinished=unfinished)
