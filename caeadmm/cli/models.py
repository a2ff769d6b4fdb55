"""`caeadmm models [NAME] [--all] [--json]`: the trained models shipped with this installation.

Without NAME: one row per model, under 100 columns (name, the metric it was trained for, its
rate and quality on Kodak, checkpoint size), the default marked with *: the variable-rate
models first, then the fixed-rate ones, each grouped by metric (the default's first) and
sorted by rate; models marked `"superseded": true` in the registry
(kept so that their streams decode) only with --all. With NAME: everything the registry says
about that model. --json prints the same selection as JSON for scripts.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import textwrap
from pathlib import Path

from caeadmm.cli.common import EXIT_OK, usage_error

WIDTH = 100  # the table and the descriptions fit this many columns
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `... | head` stopping a command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the shipped models",
        description="List the registered models, one row each: the metric each was trained "
        "for, its rate and quality on the Kodak set (real file bytes), checkpoint size; * "
        "marks the default. `caeadmm models NAME` describes one model in full. "
        "CAEADMM_REGISTRY may name another registry.json.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="describe this model in full")
    p.add_argument("--all", action="store_true",
                   help="also the superseded models (kept so that their streams decode)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caeadmm.zoo import ModelLoadError, list_models, registry_path

    try:
        models = list_models()
        entries = _raw_entries(registry_path())
    except ModelLoadError as exc:
        return usage_error("models", str(exc))
    if not models:
        print(
            f"No models are registered ({registry_path()}): no trained model ships yet. "
            "Pass --model PATH (a checkpoint) to compress and decompress.",
            file=sys.stderr,
        )
        return EXIT_OK
    if args.name is not None:
        found = next((m for m in models if m.name == args.name), None)
        if found is None:
            close = difflib.get_close_matches(args.name, [m.name for m in models], n=3)
            hint = (f"; did you mean {', '.join(close)}?" if close
                    else "; `caeadmm models` lists them")
            return usage_error("models", f"no model named {args.name!r}{hint}")
        entry = entries.get(found.name, {})
        text = (json.dumps(_as_json(found, entry), indent=2) + "\n" if args.json
                else describe(found, entry))
        return _emit(text)
    shown = [m for m in models if args.all or not m.superseded]
    shown = _ordered(shown, entries)
    if args.json:
        return _emit(json.dumps([_as_json(m, entries.get(m.name, {})) for m in shown],
                                indent=2) + "\n")
    hidden = len(models) - len(shown)
    notes = ["The default is marked *."]
    if hidden:
        notes.append(f"{hidden} superseded models not shown (--all).")
    notes.append("`caeadmm models NAME` for one in full; --json for scripts.")
    return _emit(table(shown, entries) + "\n" + textwrap.fill(" ".join(notes), WIDTH) + "\n")


def _raw_entries(path: os.PathLike) -> dict[str, dict]:
    """The registry's entries by name, as written (fields zoo does not read, e.g. `metric`)."""
    try:
        return {e["name"]: e for e in json.loads(Path(path).read_text())["models"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # list_models has read it; a field we cannot see is only left out


def metric(model, entry: dict) -> str:
    """What the model was trained for: the registry's `metric` if it says, else "MSE" or
    "MS-SSIM" from its distortion weights (zoo.ModelInfo.trained_for)."""
    value = entry.get("metric")
    return str(value).upper() if value else model.trained_for


def _ordered(models: list, entries: dict[str, dict]) -> list:
    """Variable-rate models first, then fixed-rate ones; each grouped by metric (the default
    model's first), by Kodak rate within a group."""
    groups: list[str] = []
    for m in sorted(models, key=lambda m: not m.default):
        if metric(m, entries.get(m.name, {})) not in groups:
            groups.append(metric(m, entries.get(m.name, {})))

    def key(m) -> tuple:
        points = _points(m)
        return (m.default_quality is None, groups.index(metric(m, entries.get(m.name, {}))),
                not points, points[0]["bpp"] if points else 0.0)

    return sorted(models, key=key)


def _points(model) -> list[dict[str, float]]:
    if not model.kodak:
        return []
    return model.kodak if isinstance(model.kodak, list) else [model.kodak]


def _span(values: list[float], spec: str) -> str:
    low, high = min(values), max(values)
    return format(low, spec) if len(values) == 1 or low == high else \
        f"{low:{spec}}-{high:{spec}}"


def _size(model) -> str:
    return "missing" if model.size is None else f"{model.size / 1e6:.1f} MB"


def table(models: list, entries: dict[str, dict]) -> str:
    """One line per model; a model with several Kodak points shows their ranges."""
    rows = [("", "NAME", "METRIC", "KODAK BPP", "PSNR (dB)", "MS-SSIM", "SIZE")]
    for m in models:
        points = _points(m)
        if points:
            kodak = (_span([p["bpp"] for p in points], ".3f"),
                     _span([p["psnr"] for p in points], ".2f"),
                     _span([p["ms_ssim"] for p in points], ".4f"))
        else:
            kodak = ("not measured", "", "")
        trained = metric(m, entries.get(m.name, {}))
        if m.default_quality is not None and points:  # variable rate: its quality range
            trained += f", q {_span([p.get('quality', 0.0) for p in points], 'g')}"
        rows.append(("*" if m.default else "", m.name, trained, *kodak, _size(m)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {3, 4, 5, 6}  # numbers line up on the right
    lines = []
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append(("  ".join(cells)).rstrip())
    return "\n".join(lines) + "\n"


def describe(model, entry: dict) -> str:
    """Everything the registry says about one model, wrapped to WIDTH columns."""
    label = "  ".join([model.name, *(["(default)"] if model.default else []),
                       *(["(superseded)"] if model.superseded else [])])
    fields: list[tuple[str, str]] = []
    trained = metric(model, entry)
    what = ("MSE alone (the PSNR family)" if trained == "MSE" and not entry.get("metric")
            else "the default distortion mix, MS-SSIM and SSIM first"
            if trained == "MS-SSIM" and not entry.get("metric") else trained)
    fields.append(("metric", f"{trained}: trained for {what}" if what != trained else trained))
    for i, p in enumerate(_points(model)):
        extra = "".join(f", {k} {v:g}" for k, v in p.items() if k not in ("bpp", "psnr",
                                                                          "ms_ssim"))
        fields.append(("Kodak" if i == 0 else "",
                       f"{p['bpp']:.3f} bpp, PSNR {p['psnr']:.2f} dB, MS-SSIM "
                       f"{p['ms_ssim']:.4f}{extra}"))
    if not model.kodak:
        fields.append(("Kodak", "not measured"))
    else:
        fields.append(("", "mean over the 24 Kodak images, real file bytes (caeadmm eval)"))
    for i, p in enumerate(entry.get("photos") or []):
        fields.append(("DebPhotos37" if i == 0 else "",
                       f"{p['bpp']:.3f} bpp, PSNR {p['psnr']:.2f} dB, MS-SSIM "
                       f"{p['ms_ssim']:.4f}, quality {p.get('quality', 0):g}"))
    if entry.get("photos"):
        count = entry.get("photos_images", 37)
        which = "all 37" if count == 37 else f"{count} of the 37"
        fields.append(("", f"mean over {which} photos of the second evaluation set "
                       "(docs/data.md), no model trained on them"))
    if model.default_quality is not None:
        fields.append(("quality", f"default {model.default_quality:g} (--quality, "
                       "--target-bpp: docs/variable-rate.md)"))
    fields.append(("size", f"{_size(model)}, {model.file}"))
    if model.rate_lambda:
        fields.append(("rate_lambda", f"{model.rate_lambda:g}"))
    if model.distortion:
        fields.append(("distortion", ", ".join(f"{k} {v:g}" for k, v in
                                               model.distortion.items())))
    known = {"name", "file", "sha256", "fingerprint", "operating_point", "kodak", "rate_lambda",
             "distortion", "superseded", "metric", "photos", "photos_images",
             "default_quality"}
    fields += [(key, json.dumps(value)) for key, value in entry.items() if key not in known]
    if model.superseded:
        fields.append(("superseded", "yes: registered so that its streams still decode; a "
                       "newer model does better (caeadmm models)"))
    fields += [("sha256", model.sha256), ("fingerprint", model.fingerprint)]
    width = max(len(k) for k, _ in fields) + 2
    lines = [label]
    for key, value in fields:
        lines += textwrap.wrap(value, WIDTH, initial_indent="  " + key.ljust(width),
                               subsequent_indent=" " * (width + 2)) or [f"  {key}"]
    if model.operating_point:
        lines += ["", "  operating point:"]
        lines += textwrap.wrap(model.operating_point, WIDTH, initial_indent="    ",
                               subsequent_indent="    ")
    return "\n".join(lines) + "\n"


def _as_json(model, entry: dict) -> dict:
    """The registry entry as written, with what zoo derives: path, size, default, metric."""
    return {
        **entry,
        "name": model.name,
        "default": model.default,
        "superseded": model.superseded,
        "metric": metric(model, entry),
        "kodak": model.kodak,
        "path": str(model.file),
        "size_bytes": model.size,
    }


def _emit(text: str) -> int:
    """Print `text`; a reader that went away (`caeadmm models | head -2`) ends the command
    quietly with the code a shell reports for a command that SIGPIPE stopped, as
    caeadmm.cli.main does for the other commands."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the pipe again when it flushes stdout at exit: point it at
        # /dev/null first (the recipe of Python's signal documentation).
        try:
            fileno = sys.stdout.fileno()
        except (AttributeError, OSError, ValueError):
            return EXIT_BROKEN_PIPE  # not a file (a test's stand-in): nothing to flush
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fileno)
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return EXIT_OK
