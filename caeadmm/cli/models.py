"""`caeadmm models`: the trained models shipped with this installation."""

from __future__ import annotations

import argparse
import sys

from caeadmm.cli.common import EXIT_OK, usage_error


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the shipped models",
        description="List the registered models (name, fingerprint, checkpoint size, the "
        "distortion trained for, rate and quality on the Kodak set, operating point); * marks "
        "the default. CAEADMM_REGISTRY may name another registry.json.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from caeadmm.zoo import ModelLoadError, list_models, registry_path

    try:
        models = list_models()
    except ModelLoadError as exc:
        return usage_error("models", str(exc))
    if not models:
        print(
            f"No models are registered ({registry_path()}): no trained model ships yet. "
            "Pass --model PATH (a checkpoint) to compress and decompress.",
            file=sys.stderr,
        )
        return EXIT_OK
    rows = [("", "NAME", "FINGERPRINT", "SIZE", "FOR", "KODAK (REAL BYTES)", "OPERATING POINT")]
    for m in models:
        size = "missing" if m.size is None else f"{m.size / 1e6:.1f} MB"
        rows.append(("*" if m.default else "", m.name, m.fingerprint[:32], size, m.trained_for,
                     m.kodak_line() or "not measured", m.operating_point))  # fmt: skip
    # Every column padded to its widest cell but the last (the operating point, free text).
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]))
    return EXIT_OK
