"""The report page: one self-contained HTML file that shows what an evaluation's numbers mean.

`caeadmm eval ... -o DIR` writes DIR/index.html (`write_eval_page`), `caeadmm compare IMAGE -o
DIR` writes the same image view for one image at a size the user gives (`write_compare_page`).
The page needs no network: its CSS and JavaScript are inline, its images are files beside it
(the RD plots `rd_*.png` that `rd.write_report` wrote, and PNGs of the decoded images under
DIR/page/), all linked by relative paths, so the folder can be copied or zipped as it is.

What an eval page holds, in order:
- the RD plots in PSNR and MS-SSIM (dB);
- the images at matched bitrate: for a few images (named with `caeadmm eval --page-images`;
  by default two, the median and the hardest for the anchor codec, below) the original and
  every codec side by side, each codec at its setting nearest (in ratio) to the anchor's bpp
  on that image, at full resolution (one image pixel per CSS pixel at zoom 1), with bpp,
  PSNR and MS-SSIM under each crop. The crops pan together (drag any of them, or click the
  overview), zoom 1x-8x (pixels drawn as squares), and an A/B view toggles between two codecs
  at the same place (click it, or press the button);
- the BD-rate tables (PSNR and MS-SSIM in dB, every codec against every other);
- the per-image table: one row per image, each codec at that matched setting, sortable.

The *anchor* is the codec whose point the others are matched to: the first `cae` or
`cae-refined` codec of the run, else the first codec; its setting is the middle one by mean
bpp (the only one for a single model). The *hardest* image is the one with the lowest PSNR at
the anchor point, the *median* the one with the median PSNR.

The decoded images are made again here, in the calling process, by the same codec calls the
evaluation measured (every codec is deterministic on one machine, the refined CAE nearly so);
the numbers under each crop are those of the pixels shown.
"""

from __future__ import annotations

import html
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from caeadmm import metrics, rd

PAGE = "index.html"
ASSETS = "page"  # folder beside the page holding its decoded images
VIEW = 256  # CSS px: the side of a crop tile
AB_VIEW = 512  # CSS px: the side of the A/B view
ZOOMS = (1, 2, 4, 8)
DEFAULT_IMAGES = 2  # images shown when none are named: the median and the hardest


@dataclass
class Tile:
    """One crop of the image view: the original or one codec's decoded image."""

    key: str  # "original" or the codec name; also the PNG's file name
    label: str  # "JPEG", "CAE-ADMM"
    setting: str = ""  # "quality 40", "small-rate-k6-r2", "target 0.3 bpp"
    pixels: np.ndarray | None = None  # uint8 (H, W, 3); None: the codec failed (see note)
    nbytes: int | None = None
    bpp: float | None = None
    psnr: float | None = None
    ms_ssim: float | None = None
    note: str = ""  # shown under the numbers, e.g. "above the size asked for"
    src: str = ""  # the PNG's path relative to the page, once written


@dataclass
class Comparison:
    """The image view of one image: the original first, then one tile per codec."""

    name: str
    why: str  # why this image is shown ("median PSNR of CAE-ADMM")
    tiles: list[Tile] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the image."""
        height, width = self.tiles[0].pixels.shape[:2]
        return width, height


# -- codec settings -------------------------------------------------------------------------


def codec_label(codec: str) -> str:
    from caeadmm.baselines import CODECS

    return CODECS[codec].label if codec in CODECS else codec


def setting_text(codec: str, setting: object) -> str:
    """A setting in words: "quality 40", "target 0.3 bpp", or a CAE model name."""
    if codec.startswith("cae"):
        return str(setting)
    if codec == "jpeg2000":
        return f"target {float(setting):.3g} bpp"
    return f"quality {setting}"


def encode_tile(codec_name: str, setting: object, rgb: np.ndarray, known: Mapping | None = None,
                ) -> Tile:
    """Encode and decode `rgb` with one codec setting; a codec error becomes a tile's note.
    `known`: the evaluation's row of this point, whose PSNR and MS-SSIM are taken when the
    file has the bytes it had (the same pixels: every codec is deterministic on one machine)."""
    from caeadmm.baselines import get_codec

    codec = get_codec(codec_name)
    label = setting_text(codec_name, setting)
    try:
        if codec.prepare is not None:
            codec.prepare(setting)
        data, decoded = codec(rgb, setting)
    except Exception as exc:  # any codec failure costs this tile only
        return Tile(codec_name, codec.label, label, note=f"failed: {type(exc).__name__}: {exc}")
    if known is not None and int(known["bytes"]) == len(data):
        return Tile(codec_name, codec.label, label, decoded, len(data), float(known["bpp"]),
                    float(known["psnr"]), float(known["ms_ssim"]))
    return measured_tile(codec_name, codec.label, label, rgb, len(data), decoded)


def measured_tile(key: str, label: str, setting: str, rgb: np.ndarray, nbytes: int,
                  decoded: np.ndarray, note: str = "") -> Tile:
    """A tile with its rate and quality measured against the original `rgb`."""
    height, width = rgb.shape[:2]
    return Tile(key, label, setting, decoded, nbytes, metrics.bpp(nbytes, height, width),
                metrics.psnr(rgb, decoded), metrics.ms_ssim(rgb, decoded), note)


# -- choosing the anchor, the images and the matched settings -------------------------------


def anchor_point(rows: pd.DataFrame) -> tuple[str, str]:
    """(codec, setting) the other codecs are matched to: the first CAE codec of the run (else
    the first codec), at its middle setting by mean bpp."""
    codecs = list(dict.fromkeys(rows["codec"]))
    codec = next((c for c in codecs if c.startswith("cae")), codecs[0])
    mean_bpp = rows[rows["codec"] == codec].groupby("setting", sort=False)["bpp"].mean()
    ordered = mean_bpp.sort_values(kind="stable").index.tolist()
    return codec, ordered[(len(ordered) - 1) // 2]


def choose_images(rows: pd.DataFrame, anchor: tuple[str, str],
                  names: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """[(image, why)]: the images named (`resolve_names`), else the median and the hardest
    for the anchor point (lowest PSNR); one image when the run has one."""
    label = f"{codec_label(anchor[0])} ({anchor[1]})"
    if names:
        return [(name, "chosen with --page-images") for name in names]
    points = rows[(rows["codec"] == anchor[0]) & (rows["setting"] == anchor[1])]
    if points.empty:
        points = rows[rows["codec"] == anchor[0]]
    by_psnr = (points.groupby("image", sort=False)["psnr"].mean()
               .clip(upper=metrics.PSNR_CAP_DB).sort_values(ascending=False, kind="stable"))
    images = by_psnr.index.tolist()
    if not images:
        return []
    median, hardest = images[(len(images) - 1) // 2], images[-1]
    if median == hardest:
        return [(median, f"the only image; {label} at {by_psnr[median]:.2f} dB PSNR")]
    return [
        (median, f"median PSNR of {label}: {by_psnr[median]:.2f} dB"),
        (hardest, f"hardest for {label}: lowest PSNR, {by_psnr[hardest]:.2f} dB"),
    ][:DEFAULT_IMAGES]


def resolve_names(wanted: Iterable[str], names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Map names given on the command line to the run's image names: the exact name (a path
    relative to the data set), a file name, or a file name without its extension. Returns
    (resolved names, a message for each name that matches no image or several)."""
    resolved, problems = [], []
    for text in wanted:
        matches = [n for n in names if n == text] or [
            n for n in names if Path(n).name == text or Path(n).stem == text
        ]
        if len(matches) != 1:
            what = "no image" if not matches else f"{len(matches)} images"
            sample = ", ".join(list(names)[:5]) + (", ..." if len(names) > 5 else "")
            problems.append(f"{text!r} names {what} of the run ({sample})")
        elif matches[0] not in resolved:
            resolved.append(matches[0])
    return resolved, problems


def matched_rows(rows: pd.DataFrame, image: str, anchor: tuple[str, str]) -> dict[str, dict]:
    """{codec: row} for one image: the anchor point, and for every other codec the setting
    whose bpp on this image is nearest (in ratio) to the anchor's bpp on it."""
    mine = rows[rows["image"] == image]
    anchor_rows = mine[(mine["codec"] == anchor[0]) & (mine["setting"] == anchor[1])]
    if anchor_rows.empty:
        return {}
    target = float(anchor_rows["bpp"].iloc[0])
    matched = {}
    for codec, points in mine.groupby("codec", sort=False):
        if codec == anchor[0]:
            matched[codec] = anchor_rows.iloc[0].to_dict()
            continue
        distance = (np.log(points["bpp"].clip(lower=1e-9)) - math.log(max(target, 1e-9))).abs()
        matched[codec] = points.loc[distance.idxmin()].to_dict()
    return matched


# -- assets ---------------------------------------------------------------------------------


def write_assets(out_dir: Path, comparisons: Sequence[Comparison]) -> None:
    """The decoded images as PNGs under out_dir/ASSETS/<n>/ (lossless: what the codec gave)."""
    from PIL import Image

    root = out_dir / ASSETS
    if root.exists():
        shutil.rmtree(root)
    for n, comparison in enumerate(comparisons):
        folder = root / str(n)
        folder.mkdir(parents=True)
        for tile in comparison.tiles:
            if tile.pixels is None:
                continue
            Image.fromarray(tile.pixels).save(folder / f"{tile.key}.png", compress_level=3)
            tile.src = f"{ASSETS}/{n}/{tile.key}.png"


def crop_centre(comparison: Comparison) -> tuple[int, int]:
    """(x, y) of the VIEW x VIEW window where the codecs' errors are largest: where they
    differ most from the original (the image's centre when nothing differs)."""
    original = comparison.tiles[0].pixels.astype(np.float32)
    height, width = original.shape[:2]
    error = np.zeros((height, width), np.float32)
    for tile in comparison.tiles[1:]:
        if tile.pixels is not None:
            error += np.square(tile.pixels.astype(np.float32) - original).mean(axis=2)
    win_h, win_w = min(VIEW, height), min(VIEW, width)
    if not error.any() or (win_h == height and win_w == width):
        return width // 2, height // 2
    total = np.pad(error.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (total[win_h:, win_w:] - total[:-win_h, win_w:] - total[win_h:, :-win_w]
            + total[:-win_h, :-win_w])
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(x) + win_w // 2, int(y) + win_h // 2


# -- HTML -----------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "lossless"
    return f"{value:{spec}}{unit}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _initial_zoom(width: int, height: int) -> int:
    """1 for images that fill a tile; small images start enlarged (at most 8x)."""
    zoom = 1
    while zoom < ZOOMS[-1] and max(width, height) * zoom * 2 <= VIEW:
        zoom *= 2
    return zoom


def _offset(width: int, height: int, box_w: int, box_h: int, zoom: int,
            centre: tuple[int, int]) -> str:
    """The CSS transform that shows the image from `centre` in a box_w x box_h box."""
    x0 = min(max(centre[0] - box_w / zoom / 2, 0), width - box_w / zoom)
    y0 = min(max(centre[1] - box_h / zoom / 2, 0), height - box_h / zoom)
    return f"translate({-round(x0 * zoom)}px,{-round(y0 * zoom)}px) scale({zoom})"


def _img(tile: Tile, width: int, height: int, transform: str, extra: str = "") -> str:
    return (f'<img src="{_e(tile.src)}" alt="{_e(tile.label)}, {_e(tile.setting)}" '
            f'width="{width}" height="{height}" data-width="{width}" data-height="{height}" '
            f'style="transform:{transform}" draggable="false"{extra}>')


def _view(tiles: Sequence[Tile], width: int, height: int, size: int, zoom: int,
          centre: tuple[int, int], css: str = "view", extra: Sequence[str] = ("",)) -> str:
    """A crop box of at most `size` CSS px showing the images from `centre` (stacked: the
    A/B view holds several, all but one hidden)."""
    box_w, box_h = min(size, width * zoom), min(size, height * zoom)
    transform = _offset(width, height, box_w, box_h, zoom, centre)
    images = "".join(_img(t, width, height, transform, x) for t, x in zip(tiles, extra,
                                                                           strict=True))
    return (f'<div class="{css}" data-size="{size}" style="width:{box_w}px;height:{box_h}px">'
            f"{images}</div>")


def _caption(tile: Tile) -> str:
    if tile.pixels is None and tile.key != "original":
        return (f'<figcaption><b>{_e(tile.label)}</b> <span>{_e(tile.setting)}</span>'
                f'<span class="note">{_e(tile.note)}</span></figcaption>')
    if tile.key == "original":
        height, width = tile.pixels.shape[:2]
        numbers = f"{width} x {height} px" + (f", {tile.note}" if tile.note else "")
        return f'<figcaption><b>{_e(tile.label)}</b> <span>{_e(numbers)}</span></figcaption>'
    numbers = (f'{_fmt(tile.bpp, ".3f")} bpp ({tile.nbytes:,} bytes)<br>'
               f'PSNR {_fmt(tile.psnr, ".2f", " dB")}, MS-SSIM {_fmt(tile.ms_ssim, ".4f")}')
    note = f'<span class="note">{_e(tile.note)}</span>' if tile.note else ""
    return (f'<figcaption><b>{_e(tile.label)}</b> <span>{_e(tile.setting)}</span>'
            f'<span class="num">{numbers}</span>{note}</figcaption>')


def comparison_html(comparison: Comparison, n: int) -> str:
    """One image's view: controls, overview, one tile per codec, and the A/B view."""
    width, height = comparison.size
    zoom = _initial_zoom(width, height)
    centre = crop_centre(comparison)
    shown = [t for t in comparison.tiles if t.src]
    tiles = []
    for tile in comparison.tiles:
        view = _view([tile], width, height, VIEW, zoom, centre) if tile.src else (
            f'<div class="view missing" style="width:{min(VIEW, width * zoom)}px;'
            f'height:{min(VIEW, height * zoom)}px">no image</div>')
        tiles.append(f'<figure class="tile" data-key="{_e(tile.key)}">{view}'
                     f'{_caption(tile)}</figure>')
    a = shown[1] if len(shown) > 1 else shown[0]
    b = shown[2] if len(shown) > 2 else shown[0]
    options_a = "".join(
        f'<option value="{i}"{" selected" * (t is a)}>{_e(t.label)}</option>'
        for i, t in enumerate(shown))
    options_b = "".join(
        f'<option value="{i}"{" selected" * (t is b)}>{_e(t.label)}</option>'
        for i, t in enumerate(shown))
    ab_view = _view(shown, width, height, AB_VIEW, zoom, centre, "view abview",
                    [f' data-ab="{i}"' + ("" if t is a else ' class="off"')
                     for i, t in enumerate(shown)])
    pressed = ' aria-pressed="true"'
    zoom_buttons = "".join(
        f'<button type="button" data-zoom="{z}"{pressed * (z == zoom)}>'
        f'{z}x</button>' for z in ZOOMS)
    overview_w = max(120, min(240, width))
    original = comparison.tiles[0]
    return f"""
<article class="cmp" id="image-{n}" data-w="{width}" data-h="{height}" data-zoom="{zoom}"
 data-cx="{centre[0]}" data-cy="{centre[1]}">
<h3>{_e(comparison.name)} <small>{_e(comparison.why)}</small></h3>
<div class="bar">
 <div class="overview" style="width:{overview_w}px" title="click to move the crops">
  <img src="{_e(original.src)}" alt="overview of {_e(comparison.name)}" width="{width}"
   height="{height}" data-width="{width}" data-height="{height}" draggable="false">
  <div class="box"></div>
 </div>
 <div class="controls">
  <div>Zoom {zoom_buttons}</div>
  <p>Drag a crop or click the overview to move all crops; crops are at full resolution
  (one image pixel per screen pixel at 1x).</p>
 </div>
</div>
<div class="tiles">{"".join(tiles)}</div>
<div class="ab">
 <div class="abbar">A/B:
  <select class="sel-a" aria-label="codec A">{options_a}</select>
  <button type="button" class="swap">show the other (or click the image)</button>
  <select class="sel-b" aria-label="codec B">{options_b}</select>
  <span class="showing"></span>
 </div>
 {ab_view}
</div>
</article>"""


_CSS = """
:root{--fg:#1b1f24;--mute:#59636e;--line:#d1d9e0;--bg:#fff;--soft:#f6f8fa;--acc:#0969da}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
 background:var(--bg)}
main{max-width:1700px;margin:0 auto;padding:12px 20px 40px}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid
 var(--line);padding-bottom:4px}h3{font-size:16px;margin:18px 0 8px}
h3 small{font-weight:normal;color:var(--mute);margin-left:8px}
nav a{margin-right:14px;color:var(--acc);text-decoration:none}
p.meta,.note,figcaption span{color:var(--mute)}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
.plots figure{margin:0}.plots img{width:100%;height:auto;border:1px solid var(--line)}
.plots figcaption{font-size:13px;color:var(--mute)}
.bar{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
.overview{position:relative;cursor:crosshair;border:1px solid var(--line);line-height:0}
.overview img{width:100%;height:auto}
.overview .box{position:absolute;border:2px solid #ff3b30;box-shadow:0 0 0 1px #fff;
 pointer-events:none}
.controls p{margin:6px 0;color:var(--mute);font-size:13px;max-width:520px}
button{font:inherit;font-size:13px;padding:2px 9px;border:1px solid var(--line);
 border-radius:5px;background:var(--soft);cursor:pointer}
button[aria-pressed=true]{background:var(--acc);color:#fff;border-color:var(--acc)}
.tiles{display:flex;flex-wrap:wrap;gap:14px;margin-top:12px}
.tile{margin:0;width:min-content;min-width:170px}
.view{position:relative;overflow:hidden;background:#888;cursor:grab;touch-action:none;
 border:1px solid var(--line)}
.view.missing{display:flex;align-items:center;justify-content:center;color:#fff;cursor:default}
.view img{position:absolute;left:0;top:0;transform-origin:0 0;max-width:none;
 image-rendering:pixelated;user-select:none}
.view img.off{visibility:hidden}
figcaption{font-size:13px;padding-top:4px}
figcaption b{display:block}figcaption span{display:block}
figcaption .num{color:var(--fg);font-variant-numeric:tabular-nums}
.ab{margin-top:14px}.abbar{margin-bottom:6px;font-size:14px}
.abbar select{font:inherit;font-size:13px}
.abview{cursor:pointer}.showing{margin-left:8px;font-weight:600}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums;margin:6px 0}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:right;white-space:nowrap}
th{background:var(--soft)}td:first-child,th:first-child{text-align:left}
th.sort{cursor:pointer}th.sort:hover{color:var(--acc)}
tfoot td{font-weight:600;background:var(--soft)}
td.good{background:#dafbe1}td.bad{background:#ffebe9}td.na{color:var(--mute)}
.bd{display:flex;flex-wrap:wrap;gap:28px}
ul.files{columns:3 260px;font-size:13px}
"""

_JS = r"""
(function () {
  'use strict';
  function clamp(v, lo, hi) { return Math.max(lo, Math.min(hi, v)); }
  document.querySelectorAll('.cmp').forEach(function (cmp) {
    var w = +cmp.dataset.w, h = +cmp.dataset.h, zoom = +cmp.dataset.zoom;
    var cx = +cmp.dataset.cx, cy = +cmp.dataset.cy;
    var views = Array.prototype.slice.call(cmp.querySelectorAll('.view[data-size]'));
    var box = cmp.querySelector('.overview .box');
    var abImgs = Array.prototype.slice.call(cmp.querySelectorAll('.abview img'));
    var selA = cmp.querySelector('.sel-a'), selB = cmp.querySelector('.sel-b');
    var showing = cmp.querySelector('.showing'), onB = false;
    function render() {
      views.forEach(function (v) {
        var size = +v.dataset.size, vw = Math.min(size, w * zoom), vh = Math.min(size, h * zoom);
        v.style.width = vw + 'px'; v.style.height = vh + 'px';
        var x0 = clamp(cx - vw / zoom / 2, 0, w - vw / zoom);
        var y0 = clamp(cy - vh / zoom / 2, 0, h - vh / zoom);
        var t = 'translate(' + (-Math.round(x0 * zoom)) + 'px,' + (-Math.round(y0 * zoom)) +
          'px) scale(' + zoom + ')';
        v.querySelectorAll('img').forEach(function (im) { im.style.transform = t; });
        if (size === __VIEW__ && box) {
          box.style.left = (100 * x0 / w) + '%'; box.style.top = (100 * y0 / h) + '%';
          box.style.width = (100 * vw / zoom / w) + '%';
          box.style.height = (100 * vh / zoom / h) + '%';
        }
      });
      cmp.querySelectorAll('button[data-zoom]').forEach(function (b) {
        b.setAttribute('aria-pressed', String(+b.dataset.zoom === zoom));
      });
      var shown = onB ? selB : selA;
      abImgs.forEach(function (im) {
        im.classList.toggle('off', im.dataset.ab !== shown.value);
      });
      showing.textContent = (onB ? 'B: ' : 'A: ') + shown.options[shown.selectedIndex].text;
    }
    cmp.querySelectorAll('button[data-zoom]').forEach(function (b) {
      b.addEventListener('click', function () { zoom = +b.dataset.zoom; render(); });
    });
    views.forEach(function (v) {
      var drag = null;
      v.addEventListener('pointerdown', function (e) {
        drag = {x: e.clientX, y: e.clientY, cx: cx, cy: cy, moved: false};
        try { v.setPointerCapture(e.pointerId); } catch (err) { /* a synthetic pointer */ }
      });
      v.addEventListener('pointermove', function (e) {
        if (!drag) return;
        var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
        if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
        cx = clamp(drag.cx - dx / zoom, 0, w); cy = clamp(drag.cy - dy / zoom, 0, h);
        render();
      });
      v.addEventListener('pointerup', function () {
        if (drag && !drag.moved && v.classList.contains('abview')) { onB = !onB; render(); }
        drag = null;
      });
    });
    var overview = cmp.querySelector('.overview');
    if (overview) {
      overview.addEventListener('click', function (e) {
        var r = overview.getBoundingClientRect();
        cx = clamp((e.clientX - r.left) / r.width * w, 0, w);
        cy = clamp((e.clientY - r.top) / r.height * h, 0, h);
        render();
      });
    }
    cmp.querySelector('.swap').addEventListener('click', function () { onB = !onB; render(); });
    selA.addEventListener('change', function () { onB = false; render(); });
    selB.addEventListener('change', function () { onB = true; render(); });
    render();
  });
  document.querySelectorAll('table.sortable').forEach(function (table) {
    table.querySelectorAll('th.sort').forEach(function (th) {
      th.addEventListener('click', function () {
        var col = +th.dataset.col, body = table.tBodies[0];
        var dir = th.dataset.dir === 'asc' ? -1 : 1;
        th.dataset.dir = dir === 1 ? 'asc' : 'desc';
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (r1, r2) {
          var a = r1.cells[col].dataset.v, b = r2.cells[col].dataset.v;
          var x = parseFloat(a), y = parseFloat(b);
          if (isNaN(x) || isNaN(y)) return dir * String(a).localeCompare(String(b));
          return dir * (x - y);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
""".replace("__VIEW__", str(VIEW))


def page_html(title: str, header: str, sections: Sequence[str]) -> str:
    """The whole page: inline CSS and script, the given header and sections."""
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{header}\n{''.join(sections)}\n</main>\n<script>{_JS}</script>\n</body>\n</html>\n"
    )


def _table(head: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    rows = "".join("<tr>" + "".join(r) + "</tr>" for r in body)
    return f"<table><thead><tr>{''.join(head)}</tr></thead><tbody>{rows}</tbody></table>"


def bd_tables_html(curves: Sequence[rd.Curve]) -> str:
    """The BD-rate matrices (PSNR, MS-SSIM in dB), each cell coloured by its sign."""
    parts = []
    for metric in rd.BD_METRICS:
        matrix = rd.bd_matrix(curves, curves, metric)
        head = [f"<th>{_e('row vs column')}</th>"] + [f"<th>{_e(c)}</th>" for c in matrix.columns]
        body = []
        for label, row in matrix.iterrows():
            cells = [f"<td>{_e(label)}</td>"]
            for column, value in row.items():
                if column == label:
                    cells.append('<td class="na">-</td>')
                elif math.isnan(value):
                    cells.append('<td class="na">n/a</td>')
                else:
                    kind = "good" if value < 0 else "bad"
                    cells.append(f'<td class="{kind}">{value:+.1f} %</td>')
            body.append(cells)
        parts.append(f"<div><h3>BD-rate, {_e(rd.METRIC_LABELS[metric])}</h3>"
                     f"{_table(head, body)}</div>")
    single = [c.name for c in curves if len(set(c.bpp)) < 2]
    note = (f"<p class=\"meta\">n/a for {_e(', '.join(single))}: one rate point each (a "
            "curve needs two; give a CAE codec several models).</p>") if single else ""
    return (
        '<section id="bd"><h2>BD-rate</h2><p class="meta">Average bitrate difference of the '
        "row codec against the column codec at equal quality (Bjontegaard, PCHIP, over the "
        "overlap of the two curves): negative (green) means the row codec needs fewer bits. "
        "n/a where the curves overlap too little. BD-metric and the published curves: "
        f'<a href="bd_rate.md">bd_rate.md</a>.</p><div class="bd">{"".join(parts)}</div>'
        f"{note}</section>"
    )


def per_image_html(rows: pd.DataFrame, anchor: tuple[str, str], shown: Mapping[str, int]
                   ) -> str:
    """One row per image: every codec at its setting matched to the anchor point."""
    codecs = list(dict.fromkeys(rows["codec"]))
    images = list(dict.fromkeys(rows["image"]))
    head = ['<th class="sort" data-col="0" rowspan="2">image</th>']
    sub = []
    for codec in codecs:
        name = codec_label(codec) + (f" ({anchor[1]})" if codec == anchor[0] else "")
        head.append(f'<th colspan="3">{_e(name)}</th>')
    for i in range(len(codecs)):
        for j, what in enumerate(("bpp", "PSNR", "MS-SSIM")):
            sub.append(f'<th class="sort" data-col="{1 + 3 * i + j}">{what}</th>')
    body, sums = [], {c: [] for c in codecs}
    for image in images:
        matched = matched_rows(rows, image, anchor)
        link = (f'<a href="#image-{shown[image]}">{_e(image)}</a>' if image in shown
                else _e(image))
        cells = [f'<td data-v="{_e(image)}">{link}</td>']
        for codec in codecs:
            row = matched.get(codec)
            if row is None:
                cells += ['<td class="na" data-v="">-</td>'] * 3
                continue
            psnr = min(float(row["psnr"]), metrics.PSNR_CAP_DB)
            sums[codec].append((row["bpp"], psnr, row["ms_ssim"]))
            title = setting_text(codec, row["setting"])
            cells += [
                f'<td data-v="{row["bpp"]:.6f}" title="{_e(title)}">{row["bpp"]:.3f}</td>',
                f'<td data-v="{psnr:.4f}">{_fmt(float(row["psnr"]), ".2f")}</td>',
                f'<td data-v="{row["ms_ssim"]:.6f}">{row["ms_ssim"]:.4f}</td>',
            ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    foot = ["<td>mean</td>"]
    for codec in codecs:
        if sums[codec]:
            mean = np.mean(np.asarray(sums[codec], dtype=float), axis=0)
            foot += [f"<td>{mean[0]:.3f}</td>", f"<td>{mean[1]:.2f}</td>",
                     f"<td>{mean[2]:.4f}</td>"]
        else:
            foot += ["<td></td>"] * 3
    anchor_name = f"{codec_label(anchor[0])} ({anchor[1]})"
    return (
        '<section id="per-image"><h2>Per image</h2><p class="meta">Each codec at its setting '
        f"nearest in bpp to {_e(anchor_name)} on that image (hover a bpp for the setting; "
        "click a column to sort). PSNR in dB. Every point of the run: "
        '<a href="per_image.csv">per_image.csv</a>.</p><div class="scroll">'
        f'<table class="sortable"><thead><tr>{"".join(head)}</tr><tr>{"".join(sub)}</tr>'
        f'</thead><tbody>{"".join(body)}</tbody><tfoot><tr>{"".join(foot)}</tr></tfoot>'
        "</table></div></section>"
    )


def _eval_comparison(rows: pd.DataFrame, image: str, why: str, path: Path,
                     anchor: tuple[str, str]) -> Comparison | None:
    """The image view of one evaluated image, its codecs encoded again at matched settings."""
    from caeadmm.baselines import get_codec
    from caeadmm.images import ImageLoadError, load_rgb

    matched = matched_rows(rows, image, anchor)
    if not matched:
        return None
    try:
        rgb = load_rgb(path)
    except ImageLoadError:
        return None
    tiles = [Tile("original", "Original", pixels=rgb)]
    for codec, row in matched.items():
        setting = get_codec(codec).parse_setting(str(row["setting"]))
        tiles.append(encode_tile(codec, setting, rgb, row))
    return Comparison(image, why, tiles)


def write_eval_page(out_dir: str | os.PathLike, rows: pd.DataFrame,
                    image_paths: Mapping[str, str | os.PathLike],
                    image_set: str | None = None, names: Sequence[str] | None = None,
                    failures: int = 0) -> Path:
    """Write out_dir/index.html for the per-image `rows` of an evaluation (beside the plots
    `rd.write_report` wrote there); `image_paths` maps each image name to its file, `names`
    the images to show (run names, `resolve_names`; None: the median and the hardest)."""
    out = Path(out_dir)
    anchor = anchor_point(rows)
    chosen = choose_images(rows, anchor, names)
    comparisons = [c for image, why in chosen if image in image_paths
                   for c in [_eval_comparison(rows, image, why, Path(image_paths[image]),
                                              anchor)] if c is not None]
    write_assets(out, comparisons)
    n_images = rows["image"].nunique()
    what = f"{n_images} image{'s' * (n_images != 1)}"
    title = f"caeadmm eval: {image_set + ', ' if image_set else ''}{what}"
    summary = rd.summarize(rows)
    labels = {c: (codec_label(c), c) for c in summary["codec"].unique()}
    curves = list(rd.curves_from_summary(summary, labels).values())
    codec_list = ", ".join(
        f"{codec_label(c)} ({_count(rows[rows['codec'] == c]['setting'].nunique(), 'setting')})"
        for c in dict.fromkeys(rows["codec"]))
    failed = (f' {failures} points failed: <a href="failures.csv">failures.csv</a>.'
              if failures else "")
    header = (
        f"<header><h1>{_e(title)}</h1><p class=\"meta\">{_e(codec_list)}; "
        f"{len(rows)} points measured.{failed} Made by <code>caeadmm eval</code>; tables: "
        '<a href="summary.md">summary.md</a>, <a href="bd_rate.md">bd_rate.md</a>; curves in '
        "CompressAI's JSON schema beside this page.</p><nav><a href=\"#curves\">Curves</a>"
        '<a href="#images">Images</a><a href="#bd">BD-rate</a>'
        '<a href="#per-image">Per image</a></nav></header>'
    )
    plots = "".join(
        f'<figure><img src="rd_{metric}.png" alt="RD curve, {_e(rd.METRIC_LABELS[metric])}" '
        f'width="{int(rd.PLOT_SIZE_IN[0] * rd.PLOT_DPI)}" '
        f'height="{int(rd.PLOT_SIZE_IN[1] * rd.PLOT_DPI)}" '
        f'data-width="{int(rd.PLOT_SIZE_IN[0] * rd.PLOT_DPI)}" '
        f'data-height="{int(rd.PLOT_SIZE_IN[1] * rd.PLOT_DPI)}">'
        f"<figcaption>{_e(rd.METRIC_LABELS[metric])}, mean over images</figcaption></figure>"
        for metric in ("psnr", "ms_ssim_db") if (out / f"rd_{metric}.png").is_file())
    curves_html = (
        '<section id="curves"><h2>Rate-distortion curves</h2>'
        f'<div class="plots">{plots}</div><p class="meta">Also '
        '<a href="rd_ms_ssim.png">MS-SSIM on its own scale</a>; dashed: published curves.</p>'
        "</section>"
    )
    anchor_name = f"{codec_label(anchor[0])} ({anchor[1]})"
    images_html = (
        '<section id="images"><h2>Images at matched bitrate</h2><p class="meta">The original '
        f"and every codec at its setting nearest in bpp to {_e(anchor_name)} on the image. "
        f"{'Shown: the median and the hardest image; ' if not names else ''}"
        "other images: <code>caeadmm eval --page-images NAME,...</code> (or "
        "<code>caeadmm compare IMAGE --bpp B</code> for any size).</p>"
        + "".join(comparison_html(c, n) for n, c in enumerate(comparisons))
        + ("" if comparisons else "<p>No image could be shown.</p>") + "</section>"
    )
    shown = {c.name: n for n, c in enumerate(comparisons)}
    page = page_html(title, header, [curves_html, images_html, bd_tables_html(curves),
                                     per_image_html(rows, anchor, shown)])
    path = out / PAGE
    path.write_text(page, encoding="utf-8")
    return path


def write_compare_page(out_dir: str | os.PathLike, comparison: Comparison, target: str,
                       files: Mapping[str, str] | None = None) -> Path:
    """Write out_dir/index.html showing one image's codecs set to meet a size (`target`, in
    words); `files` maps a tile's key to its encoded file (relative to out_dir)."""
    out = Path(out_dir)
    write_assets(out, [comparison])
    files = files or {}
    width, height = comparison.size
    title = f"caeadmm compare: {comparison.name} at {target}"
    head = [f"<th>{h}</th>" for h in ("codec", "setting", "bytes", "bpp", "PSNR (dB)",
                                      "MS-SSIM", "file", "")]
    body = []
    for tile in comparison.tiles[1:]:
        link = (f'<a href="{_e(files[tile.key])}">{_e(Path(files[tile.key]).name)}</a>'
                if tile.key in files else "")
        body.append([
            f"<td>{_e(tile.label)}</td>", f"<td>{_e(tile.setting)}</td>",
            f"<td>{'' if tile.nbytes is None else f'{tile.nbytes:,}'}</td>",
            f"<td>{_fmt(tile.bpp, '.3f')}</td>", f"<td>{_fmt(tile.psnr, '.2f')}</td>",
            f"<td>{_fmt(tile.ms_ssim, '.4f')}</td>", f"<td>{link}</td>",
            f'<td class="na">{_e(tile.note)}</td>',
        ])
    header = (f"<header><h1>{_e(title)}</h1><p class=\"meta\">{width} x {height} px; each "
              "codec at its largest setting whose file fits the size (made by <code>caeadmm "
              "compare</code>).</p></header>")
    section = (f'<section id="images"><h2>Codecs at {_e(target)}</h2>'
               + comparison_html(comparison, 0) + "</section>"
               + f'<section id="table"><h2>Numbers</h2><div class="scroll">{_table(head, body)}'
               "</div></section>")
    path = out / PAGE
    path.write_text(page_html(title, header, [section]), encoding="utf-8")
    return path
