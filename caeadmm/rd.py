"""From per-image results to rate-distortion curves, BD-rates, JSON files and plots (no Ray).

- A *curve* is one codec's operating points averaged over the image set: per setting, the
  mean over images of bpp, PSNR, MS-SSIM and the times (per-image averages, bpp included, as
  CompressAI does). PSNR is capped at `metrics.PSNR_CAP_DB` before averaging so a losslessly
  coded image cannot turn a mean into infinity. MS-SSIM in dB is -10 log10(1 - MS-SSIM) of the
  averaged MS-SSIM (how CompressAI plots it), capped the same way.
- JSON files follow CompressAI's results schema: {"name", "description", "results": {"bpp",
  "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"}}; reading also accepts the older
  "psnr" / "ms-ssim" keys some of CompressAI's files use, and curves with only some metrics
  (the published reference points in caeadmm/references/ have MS-SSIM only).
- BD-rate and BD-metric come from the `bjontegaard` package with PCHIP interpolation (the
  method of the JCT-VC/JVET common-test-conditions spreadsheet), over the whole overlap of
  the two curves, on PSNR and on MS-SSIM in dB. Points that do not improve quality over a
  cheaper point of the same curve are dropped first, since interpolation needs a monotone curve.
  Where the curves share less than `MIN_OVERLAP` of the shorter one's range (quality for
  BD-rate, log rate for BD-metric) the value is NaN ("n/a" in tables), not an extrapolation.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import bjontegaard
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from caeadmm.metrics import PSNR_CAP_DB

REFERENCES_DIR = Path(__file__).parent / "references"
BD_METHOD = "pchip"
METRIC_LABELS = {
    "psnr": "PSNR (dB, RGB)",
    "ms_ssim": "MS-SSIM (RGB)",
    "ms_ssim_db": "MS-SSIM (dB, RGB)",
}
BD_METRICS = ("psnr", "ms_ssim_db")
MIN_OVERLAP = 0.5  # BD needs the curves to share half the range of the shorter one
PLOT_SIZE_IN = (8.0, 6.0)
PLOT_DPI = 100  # 800 x 600 pixels


class ResultsFormatError(ValueError):
    """A results JSON file does not follow CompressAI's schema; the message says where."""


@dataclass
class Curve:
    """One codec's averaged RD points, sorted by rate; metrics a source lacks are None."""

    name: str
    description: str
    bpp: list[float]
    psnr: list[float] | None = None
    ms_ssim: list[float] | None = None
    encoding_time: list[float] | None = None
    decoding_time: list[float] | None = None
    published: bool = False  # a reference curve from the literature, not measured here

    def metric(self, key: str) -> list[float] | None:
        """Values of "psnr", "ms_ssim" or "ms_ssim_db" (None if this curve lacks them)."""
        if key == "ms_ssim_db":
            return None if self.ms_ssim is None else [ms_ssim_db(v) for v in self.ms_ssim]
        return getattr(self, key)


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a dB scale, -10 log10(1 - MS-SSIM), capped at PSNR_CAP_DB."""
    if value >= 1.0:
        return PSNR_CAP_DB
    return min(-10.0 * math.log10(1.0 - value), PSNR_CAP_DB)


# -- averaging ----------------------------------------------------------------------------------


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (codec, setting): image count and mean bpp, PSNR, MS-SSIM (also in dB), SSIM, times."""
    capped = rows.assign(psnr=rows["psnr"].clip(upper=PSNR_CAP_DB))
    summary = (
        capped.groupby(["codec", "setting"], sort=False)
        .agg(
            images=("image", "count"),
            bpp=("bpp", "mean"),
            psnr=("psnr", "mean"),
            ms_ssim=("ms_ssim", "mean"),
            ssim=("ssim", "mean"),
            encode_s=("encode_s", "mean"),
            decode_s=("decode_s", "mean"),
        )
        .reset_index()
    )
    summary.insert(6, "ms_ssim_db", summary["ms_ssim"].map(ms_ssim_db))
    order = summary["codec"].map({c: i for i, c in enumerate(rows["codec"].unique())})
    return (
        summary.assign(order=order).sort_values(["order", "bpp"]).drop(columns="order")
        .reset_index(drop=True)
    )


def curves_from_summary(
    summary: pd.DataFrame, labels: dict[str, tuple[str, str]]
) -> dict[str, Curve]:
    """One measured curve per codec; `labels` maps a codec to (display name, description)."""
    curves = {}
    for codec, points in summary.groupby("codec", sort=False):
        name, description = labels.get(codec, (codec, codec))
        curves[codec] = Curve(
            name=name,
            description=description,
            bpp=points["bpp"].tolist(),
            psnr=points["psnr"].tolist(),
            ms_ssim=points["ms_ssim"].tolist(),
            encoding_time=points["encode_s"].tolist(),
            decoding_time=points["decode_s"].tolist(),
        )
    return curves


# -- CompressAI-schema JSON ---------------------------------------------------------------------

_JSON_KEYS = {
    "psnr": ("psnr-rgb", "psnr"),
    "ms_ssim": ("ms-ssim-rgb", "ms-ssim"),
    "encoding_time": ("encoding_time",),
    "decoding_time": ("decoding_time",),
}


def curve_to_json(curve: Curve) -> dict:
    """The curve in CompressAI's results schema (metrics the curve lacks are left out)."""
    results: dict[str, list[float]] = {"bpp": curve.bpp}
    for field, (key, *_) in _JSON_KEYS.items():
        values = getattr(curve, field)
        if values is not None:
            results[key] = values
    return {"name": curve.name, "description": curve.description, "results": results}


def write_json(curve: Curve, path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(curve_to_json(curve), indent=2) + "\n")


def read_json(path: str | os.PathLike, published: bool = False) -> Curve:
    """Read a results file in CompressAI's schema; ResultsFormatError says what is wrong."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsFormatError(f"{path}: not a readable JSON file: {exc}") from exc
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, dict) or not isinstance(results.get("bpp"), list):
        raise ResultsFormatError(f"{path}: needs an object with results.bpp (a list)")
    bpp = results["bpp"]
    fields: dict[str, list[float] | None] = {}
    for field, keys in _JSON_KEYS.items():
        values = next((results[k] for k in keys if k in results), None)
        if values is not None and (not isinstance(values, list) or len(values) != len(bpp)):
            raise ResultsFormatError(f"{path}: results.{keys[0]} must be a list as long as bpp")
        fields[field] = values
    if fields["psnr"] is None and fields["ms_ssim"] is None:
        raise ResultsFormatError(f"{path}: has neither psnr-rgb nor ms-ssim-rgb")
    try:
        curve = Curve(
            name=str(doc.get("name", Path(path).stem)),
            description=str(doc.get("description", "")),
            bpp=[float(v) for v in bpp],
            **{k: None if v is None else [float(x) for x in v] for k, v in fields.items()},
            published=published,
        )
    except (TypeError, ValueError) as exc:
        raise ResultsFormatError(f"{path}: results must hold numbers: {exc}") from exc
    return curve


def published_references() -> list[Curve]:
    """The published curves shipped in caeadmm/references/ (docs/evaluation.md lists them)."""
    return [read_json(p, published=True) for p in sorted(REFERENCES_DIR.glob("*.json"))]


# -- Bjontegaard deltas -------------------------------------------------------------------------


def _monotone(bpp: Sequence[float], quality: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted by rate, keeping only points better than every cheaper point."""
    keep_r, keep_q = [], []
    for r, q in sorted(zip(bpp, quality, strict=True)):
        if not (math.isfinite(r) and math.isfinite(q)) or r <= 0:
            continue
        if keep_q and q <= keep_q[-1]:
            continue
        if keep_r and r == keep_r[-1]:
            keep_r.pop()
            keep_q.pop()
        keep_r.append(r)
        keep_q.append(q)
    return np.asarray(keep_r), np.asarray(keep_q)


def _bd(anchor: Curve, test: Curve, metric: str, kind: str) -> float:
    a, t = anchor.metric(metric), test.metric(metric)
    if a is None or t is None:
        return math.nan
    ra, qa = _monotone(anchor.bpp, a)
    rt, qt = _monotone(test.bpp, t)
    if len(ra) < 2 or len(rt) < 2:
        return math.nan
    # The integration runs over quality (BD-rate) or log rate (BD-metric): demand that the
    # curves share enough of it, or the average is taken over a sliver and means nothing.
    xa, xt = (qa, qt) if kind == "rate" else (np.log(ra), np.log(rt))
    shared = min(xa[-1], xt[-1]) - max(xa[0], xt[0])
    if shared < MIN_OVERLAP * min(xa[-1] - xa[0], xt[-1] - xt[0]):
        return math.nan
    function = bjontegaard.bd_rate if kind == "rate" else bjontegaard.bd_psnr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "curves do not overlap" comes back as NaN
        return float(
            function(ra, qa, rt, qt, method=BD_METHOD, require_matching_points=False,
                     min_overlap=0.0)
        )


def bd_rate(anchor: Curve, test: Curve, metric: str = "psnr") -> float:
    """Average rate difference (%) of `test` against `anchor` at equal quality; NaN if undefined.

    Negative means `test` needs fewer bits. `metric` is "psnr" or "ms_ssim_db".
    """
    return _bd(anchor, test, metric, "rate")


def bd_metric(anchor: Curve, test: Curve, metric: str = "psnr") -> float:
    """Average quality difference (dB) of `test` against `anchor` at equal rate; NaN if none."""
    return _bd(anchor, test, metric, "metric")


def bd_matrix(curves: Sequence[Curve], anchors: Sequence[Curve], metric: str,
              kind: str = "rate") -> pd.DataFrame:
    """BD-rate (kind "rate") or BD-metric ("metric") of each curve (rows) against each anchor."""
    function = bd_rate if kind == "rate" else bd_metric
    return pd.DataFrame(
        [[function(a, c, metric) for a in anchors] for c in curves],
        index=[c.name for c in curves],
        columns=[a.name for a in anchors],
    )


# -- tables and plots ---------------------------------------------------------------------------


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f", index: bool = True) -> str:
    """A GitHub-markdown table; NaN prints as n/a."""

    def cell(v: object) -> str:
        if isinstance(v, float | np.floating):
            return "n/a" if math.isnan(v) else format(v, floatfmt)
        return str(v)

    header = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in frame.iterrows():
        cells = ([str(label)] if index else []) + [cell(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_rd(curves: Iterable[Curve], metric: str, path: str | os.PathLike,
            max_bpp: float = 2.0, title: str | None = None) -> list[tuple[str, float]]:
    """One PNG (PLOT_SIZE_IN at PLOT_DPI) of quality against bpp, points up to `max_bpp`.

    Measured curves are solid; published reference curves dashed with hollow markers. Drawn on
    a bare matplotlib Figure (Agg canvas, no pyplot): no window, no global state, thread-safe.
    Returns the (curve name, bpp) of every point left out for lying above `max_bpp`.
    """
    fig = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI)
    ax = fig.subplots()
    dropped: list[tuple[str, float]] = []
    for curve in curves:
        values = curve.metric(metric)
        if values is None:
            continue
        dropped += [(curve.name, r) for r in curve.bpp if r > max_bpp]
        points = [(r, q) for r, q in zip(curve.bpp, values, strict=True) if r <= max_bpp]
        if not points:
            continue
        rates, quality = zip(*points, strict=True)
        if curve.published:
            ax.plot(rates, quality, "--o", mfc="none", label=f"{curve.name} (published)")
        else:
            ax.plot(rates, quality, "-o", markersize=4, label=curve.name)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel(METRIC_LABELS[metric])
    ax.set_xlim(0, max_bpp)
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small", loc="lower right")
    if title:
        ax.set_title(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=PLOT_DPI)
    return dropped


# -- everything for one output directory --------------------------------------------------------


def _labels(codecs: Iterable[str]) -> dict[str, tuple[str, str]]:
    from caeadmm.baselines import CODECS

    return {c: (CODECS[c].label, CODECS[c].description) for c in codecs if c in CODECS}


def _bd_section(title: str, frame: pd.DataFrame, unit: str) -> str:
    return f"### {title}\n\n{markdown_table(frame, '+.2f')}\nUnit: {unit}.\n\n"


def bd_report(measured: Sequence[Curve], references: Sequence[Curve]) -> str:
    """Markdown: BD-rate and BD-metric of every codec against every other (and the published)."""
    text = [
        "# BD-rate tables\n\n",
        "Row codec against column codec (the anchor). BD-rate: average bitrate difference at\n"
        "equal quality, negative = the row codec needs fewer bits. BD-metric: average quality\n"
        "difference at equal rate, positive = the row codec is better. Bjontegaard package, "
        f"{BD_METHOD.upper()} interpolation,\nover the whole overlap of each pair of curves; "
        f"n/a where they share less than {MIN_OVERLAP:.0%} of the shorter curve's range.\n\n",
    ]
    for metric in BD_METRICS:
        name = METRIC_LABELS[metric]
        text.append(_bd_section(f"BD-rate, {name}", bd_matrix(measured, measured, metric), "%"))
        text.append(
            _bd_section(f"BD-metric, {name}", bd_matrix(measured, measured, metric, "metric"),
                        "dB")
        )
    single = [c.name for c in measured if len(set(c.bpp)) < 2]
    if single:
        text.append(
            "No BD-rate for " + ", ".join(single) + ": one rate point each. BD-rate compares\n"
            "curves, which need at least two points: give a CAE codec several models\n"
            "(`cae:small-k3+small-k6+small-k12`) or a baseline several settings.\n\n"
        )
    usable = [r for r in references if r.ms_ssim is not None]
    if usable:
        text.append(
            _bd_section(
                "BD-rate against published curves, MS-SSIM (dB, RGB)",
                bd_matrix(measured, usable, "ms_ssim_db"),
                "% (few published points: coarse; see docs/evaluation.md)",
            )
        )
    return "".join(text)


def write_report(rows: pd.DataFrame, out_dir: str | os.PathLike,
                 references: Sequence[Curve] = (), max_bpp: float = 2.0,
                 image_set: str | None = None) -> dict[str, Path]:
    """Write every artifact of an evaluation into `out_dir`; returns {artifact: path}.

    Plots are titled with the image set's name (`image_set`) and how many images were
    measured; points above `max_bpp` are listed in summary.md rather than dropped silently.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def target(key: str, name: str) -> Path:
        paths[key] = out / name
        return paths[key]

    rows.to_csv(target("per_image_csv", "per_image.csv"), index=False)
    rows.to_parquet(target("per_image_parquet", "per_image.parquet"), index=False)
    summary = summarize(rows)
    summary.to_csv(target("summary_csv", "summary.csv"), index=False)
    curves = curves_from_summary(summary, _labels(summary["codec"].unique()))
    for codec, curve in curves.items():
        write_json(curve, target(f"json_{codec}", f"{codec}.json"))
    measured = list(curves.values())
    n_images = rows["image"].nunique()
    title = f"{image_set + ': ' if image_set else ''}{n_images} image{'s' * (n_images != 1)}"
    dropped: set[tuple[str, float]] = set()
    for metric in METRIC_LABELS:
        dropped.update(plot_rd([*measured, *references], metric,
                               target(f"plot_{metric}", f"rd_{metric}.png"), max_bpp, title))
    note = ""
    if dropped:
        listed = "\n".join(f"- {name}: {bpp:.3f} bpp" for name, bpp in sorted(dropped))
        note = f"\nNot plotted (above {max_bpp:g} bpp, the plots' range):\n\n{listed}\n"
    target("summary_md", "summary.md").write_text(
        f"# Summary ({title}; means over images)\n\n"
        + markdown_table(summary, ".4f", index=False) + note
    )
    target("bd_md", "bd_rate.md").write_text(bd_report(measured, references))
    return paths
