"""BD-rates between the curves of several `caeadmm eval` runs on the same images.

    python scripts/compare_evals.py VR=runs/kodak-vr FAMILY=runs/kodak-msfamily:cae \
        runs/kodak-msfamily:jpeg,webp,jpeg2000,avif

Each argument is [LABEL=]EVAL_DIR[:CODEC,...]: the per-image results of that run
(per_image.csv), its codecs (all by default), each curve labelled LABEL (one codec) or by its
codec name. One `caeadmm eval` run puts all of a codec's settings on one curve; this script
puts curves of separate runs side by side, e.g. a variable-rate model against the family of
fixed-rate models it replaces. It prints the BD-rate tables (PSNR and MS-SSIM in dB) of every
curve against every other, as `caeadmm eval` writes them into bd_rate.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from caeadmm import rd


def load(spec: str) -> pd.DataFrame:
    """The per-image rows one argument names, with the codec column set to the curve's label."""
    label, _, rest = spec.rpartition("=")
    folder, _, codecs = rest.partition(":")
    rows = pd.read_csv(Path(folder) / "per_image.csv")
    if codecs:
        rows = rows[rows["codec"].isin(codecs.split(","))]
    if rows.empty:
        raise SystemExit(f"{spec}: no rows")
    if label:
        if rows["codec"].nunique() != 1:
            raise SystemExit(f"{spec}: a label names one codec; pick it with :CODEC")
        rows = rows.assign(codec=label)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="[LABEL=]EVAL_DIR[:CODEC,...]")
    args = parser.parse_args(argv)
    parts = [load(spec) for spec in args.runs]
    images = [set(p["image"]) for p in parts]
    if any(s != images[0] for s in images):
        raise SystemExit("the runs measured different images; BD-rates need the same set")
    rows = pd.concat(parts, ignore_index=True)
    summary = rd.summarize(rows)
    curves = list(rd.curves_from_summary(summary, {}).values())
    print(f"{len(images[0])} images\n")
    for metric in rd.BD_METRICS:
        table = rd.bd_matrix(curves, curves, metric)
        print(f"BD-rate (%), {rd.METRIC_LABELS[metric]}, row against column:\n")
        print(rd.markdown_table(table, "+.1f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
