"""The report page of `caeadmm eval` and the page of `caeadmm compare`: what they choose and
show, and that a real browser (headless Chromium) renders them: every image loaded at its
natural size, no console error, a screenshot that is not blank."""

from __future__ import annotations

import importlib.util
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import test_image
from PIL import Image

from caeadmm import baselines, matching, report, zoo
from caeadmm.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def _import_script(path: Path):
    """scripts/browser_check.py as a module (registered: its dataclasses look it up)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


browser = _import_script(ROOT / "scripts" / "browser_check.py")
DEFAULT_MODEL = next(m.name for m in zoo.list_models() if m.default)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Page(HTMLParser):
    """The <img> tags and ids of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag in ("a", "link", "script") and (attrs.get("href") or attrs.get("src")):
            self.links.append(attrs.get("href") or attrs.get("src"))


def parse_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def assert_self_contained(page_path: Path) -> _Page:
    """Every image and link of the page is a file beside it: nothing from the network."""
    page = parse_page(page_path)
    assert page.images
    for target in [im["src"] for im in page.images] + page.links:
        if target.startswith("#"):
            continue
        assert not re.match(r"^[a-z]+:", target), f"{target}: not a relative path"
        assert (page_path.parent / target).is_file(), f"{target} is not beside the page"
    for im in page.images:
        with Image.open(page_path.parent / im["src"]) as file:
            assert file.size == (int(im["data-width"]), int(im["data-height"]))
    return page


def assert_renders(page_path: Path, tmp_path: Path, **kwargs) -> browser.PageReport:
    """Open the page in headless Chromium (skip when there is none) and check what it saw."""
    if browser.find_chromium() is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium)")
    shot = tmp_path / "screenshot.png"
    seen = browser.check_page(page_path, shot, **kwargs)
    assert not seen.console_errors, seen.console_errors
    assert not seen.failed_requests, seen.failed_requests
    assert seen.images and not seen.bad_images, seen.bad_images
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[1] == kwargs.get("width", 1280)
    assert pixels.std() > 20, "the screenshot is blank"
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 200, "too few colours"
    return seen


# -- choices, on made-up rows ---------------------------------------------------------------


def made_up_rows(n_images: int) -> pd.DataFrame:
    """Two CAE models and JPEG on `n_images` images; image i is harder as i grows."""
    rows = []
    for i in range(n_images):
        for model, bpp in (("m-small", 0.1), ("m-big", 0.4)):
            rows.append({"image": f"im{i:02d}.png", "codec": "cae", "setting": model,
                         "bytes": 100, "bpp": bpp * (1 + i / 10), "psnr": 30.0 - i + bpp,
                         "ms_ssim": 0.95 - i / 100, "ssim": 0.9, "encode_s": 0.1, "decode_s": 0.1})
        for quality, bpp in ((10, 0.15), (30, 0.3), (50, 0.45), (70, 0.6)):
            rows.append({"image": f"im{i:02d}.png", "codec": "jpeg", "setting": str(quality),
                         "bytes": 100, "bpp": bpp, "psnr": 25.0 + quality / 10,
                         "ms_ssim": 0.9, "ssim": 0.9, "encode_s": 0.1, "decode_s": 0.1})
    return pd.DataFrame(rows)


def test_the_anchor_is_the_cae_at_its_middle_setting():
    rows = made_up_rows(3)
    assert report.anchor_point(rows) == ("cae", "m-small")  # the lower of two
    assert report.anchor_point(rows[rows["codec"] == "jpeg"]) == ("jpeg", "30")


@pytest.mark.parametrize(("n_images", "expected"), [
    (24, ["im11.png", "im23.png"]),  # median PSNR, then the lowest
    (2, ["im00.png", "im01.png"]),
    (1, ["im00.png"]),  # one image: shown once
])
def test_the_median_and_the_hardest_image_are_shown(n_images, expected):
    rows = made_up_rows(n_images)
    chosen = report.choose_images(rows, report.anchor_point(rows))
    assert [image for image, _ in chosen] == expected
    assert ("hardest" in chosen[-1][1]) == (n_images > 1)


def test_each_codec_is_matched_at_its_setting_nearest_in_ratio():
    rows = made_up_rows(24)
    # im20: the CAE's small model at 0.1 x 3 = 0.3 bpp; JPEG 30 is at 0.3
    matched = report.matched_rows(rows, "im20.png", ("cae", "m-small"))
    assert matched["cae"]["setting"] == "m-small" and matched["jpeg"]["setting"] == "30"
    # im00: 0.1 bpp; 0.15 is nearer than 0.3 in ratio
    assert report.matched_rows(rows, "im00.png", ("cae", "m-small"))["jpeg"]["setting"] == "10"


def test_images_are_named_by_path_file_name_or_stem():
    names = ["a/kodim01.png", "b/kodim02.png", "c/kodim02.jpg"]
    resolved, problems = report.resolve_names(["kodim01", "a/kodim01.png", "kodim02.jpg",
                                               "kodim02", "nope"], names)
    assert resolved == ["a/kodim01.png", "c/kodim02.jpg"]
    assert len(problems) == 2 and "'kodim02' names 2 images" in problems[0]
    assert "'nope' names no image" in problems[1]


def test_a_page_for_24_images_has_one_table_row_each(tmp_path):
    """24 images, two shown: the tables hold every image, the views two of them."""
    folder = tmp_path / "images"
    folder.mkdir()
    rows = made_up_rows(24).query("codec == 'jpeg'")
    paths = {}
    for name in rows["image"].unique():
        paths[name] = folder / name
        Image.fromarray(test_image(24, 32, seed=len(paths))).save(paths[name])
    page_path = report.write_eval_page(tmp_path, rows, paths, "made-up")
    page = parse_page(page_path)
    text = page_path.read_text()
    assert {"curves", "images", "bd", "per-image", "image-0", "image-1"} <= page.ids
    assert "image-2" not in page.ids
    assert text.count("<tr><td data-v=") == 24
    # original + JPEG, in the tiles, the A/B view and the overview
    assert sum(im["src"].startswith("page/0/") for im in page.images) == 5
    assert 'href="#image-1"' in text


# -- the real thing: caeadmm eval and caeadmm compare, then Chromium -----------------------


@pytest.fixture
def two_images(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(test_image(48, 64, seed=1)).save(root / "flat.png")
    Image.fromarray(test_image(40, 72, seed=2)).save(root / "busy.png")
    return root


@pytest.mark.slow  # about 35 s on 2 busy cores: Ray workers load the CAE model
def test_eval_writes_a_page_that_a_browser_renders(ray_local, two_images, tmp_path, capsys):
    out = tmp_path / "eval"
    code = cli_main(["eval", str(two_images), "--codecs", f"cae:{DEFAULT_MODEL},jpeg:10+40+80",
                     "-o", str(out), "--no-published", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].strip() == str(out / "index.html")
    page = assert_self_contained(out / "index.html")
    sources = {im["src"] for im in page.images}
    assert {"rd_psnr.png", "rd_ms_ssim_db.png"} <= sources
    assert {f"page/{n}/{key}.png" for n in (0, 1) for key in ("original", "cae", "jpeg")} \
        <= sources
    text = (out / "index.html").read_text()
    assert f"CAE-ADMM ({DEFAULT_MODEL})" in text and "MS-SSIM" in text
    seen = assert_renders(out / "index.html", tmp_path, full_page=True, evaluate=CLICK_THROUGH)
    assert len(seen.images) == len(page.images)
    assert seen.evaluated == {"zoomed": True, "pressed": "8", "showing": "B: JPEG",
                              "visible": 1, "moved": True}, seen.evaluated


# Zoom to 8x, toggle the A/B view to B, drag a crop: what the page's script then shows.
CLICK_THROUGH = """(function () {
  var cmp = document.querySelector('.cmp');
  var tile = cmp.querySelector('.tile[data-key="cae"] img');
  cmp.querySelector('button[data-zoom="8"]').click();
  cmp.querySelector('.swap').click();
  var before = tile.style.transform, view = tile.parentNode, r = view.getBoundingClientRect();
  function fire(type, x, y) {
    view.dispatchEvent(new PointerEvent(type, {pointerId: 1, clientX: x, clientY: y,
                                               bubbles: true}));
  }
  fire('pointerdown', r.left + 50, r.top + 50); fire('pointermove', r.left + 10, r.top + 10);
  fire('pointerup', r.left + 10, r.top + 10);
  var shown = Array.prototype.filter.call(cmp.querySelectorAll('.abview img'),
    function (im) { return !im.classList.contains('off'); });
  return {zoomed: before.indexOf('scale(8)') >= 0,
          pressed: cmp.querySelector('button[aria-pressed="true"]').dataset.zoom,
          showing: cmp.querySelector('.showing').textContent, visible: shown.length,
          moved: tile.style.transform !== before};
})()"""


def test_eval_shows_the_images_named(ray_local, two_images, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli_main(["eval", str(two_images), "--codecs", "jpeg:20+60", "-o", str(out),
                     "--no-published", "--quiet", "--page-images", "busy,nope"]) == 0
    assert "--page-images 'nope' names no image" in capsys.readouterr().err
    page = parse_page(out / "index.html")
    assert "image-0" in page.ids and "image-1" not in page.ids
    assert "busy.png" in (out / "index.html").read_text().split('id="image-0"')[1][:400]


def test_compare_meets_the_size_with_every_codec(two_images, tmp_path, capsys):
    out = tmp_path / "compare"
    image = two_images / "busy.png"
    code = cli_main(["compare", str(image), "-o", str(out), "--size", "600B",
                     "--codecs", "cae,jpeg,webp,jpeg2000"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"page: {out / 'index.html'}"
    for codec, extension in (("cae", ".cae"), ("jpeg", ".jpg"), ("webp", ".webp"),
                             ("jpeg2000", ".j2k")):
        size = (out / "files" / f"busy-{codec}{extension}").stat().st_size
        over = "over the size" in next(line for line in lines if line.startswith(
            report.codec_label(codec) + " "))
        assert size <= 600 or over, f"{codec}: {size} bytes"
    assert_self_contained(out / "index.html")
    assert_renders(out / "index.html", tmp_path, width=1024, height=700)
    # a second run needs --force
    assert cli_main(["compare", str(image), "-o", str(out), "--bpp", "1"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_compare_refuses_what_cannot_work(two_images, tmp_path, capsys):
    image = str(two_images / "busy.png")
    assert cli_main(["compare", image, "-o", str(tmp_path / "a"), "--size", "lots"]) == 2
    assert "not a size" in capsys.readouterr().err
    assert cli_main(["compare", image, "-o", str(tmp_path / "b"), "--bpp", "1",
                     "--codecs", "gif"]) == 2
    assert "unknown codec" in capsys.readouterr().err
    assert cli_main(["compare", str(tmp_path / "none.png"), "-o", str(tmp_path / "c"),
                     "--bpp", "1"]) == 2


# -- matching a size ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "size"), [
    ("20KB", 20_000), ("20 kB", 20_000), ("20KiB", 20_480), ("1.5MB", 1_500_000),
    ("5000", 5000), ("700B", 700),
])
def test_sizes_are_read_in_bytes(text, size):
    assert matching.parse_size(text) == size


def test_bisection_finds_the_largest_setting_that_fits():
    sizes = [10, 20, 30, 40, 50]
    calls = []

    def size_of(setting):
        calls.append(setting)
        return sizes[setting]

    assert matching.largest_fitting(range(5), size_of, 35) == (2, True)
    assert len(calls) <= 3
    assert matching.largest_fitting(range(5), size_of, 5) == (0, False)
    assert matching.largest_fitting(range(5), size_of, 99) == (4, True)


def test_jpeg_at_a_size_is_the_best_quality_that_fits():
    rgb = test_image(48, 64)
    fit = matching.fit_codec("jpeg", rgb, 900)
    assert fit.fits and len(fit.data) <= 900 and fit.decoded.shape == rgb.shape
    bigger = matching.fit_codec("jpeg", rgb, 10**6)
    assert bigger.setting == 100
    if fit.setting < 100:
        assert len(matching.fit_codec("jpeg", rgb, len(fit.data)).data) == len(fit.data)


def test_the_cae_chooses_among_the_current_models_of_the_default_metric():
    """The default model is a variable-rate one: `compare` searches its qualities alone."""
    infos = {m.name: m for m in zoo.list_models()}
    assert infos[DEFAULT_MODEL].default_quality is not None
    assert matching.candidate_models() == [DEFAULT_MODEL]
    mse = matching.candidate_models("MSE")
    assert len(mse) == 1 and infos[mse[0]].trained_for == "MSE" and not infos[mse[0]].superseded
    settings = matching.cae_settings(DEFAULT_MODEL)
    top = zoo.load(DEFAULT_MODEL).config.quality_levels - 1
    assert settings[0] == f"{DEFAULT_MODEL}@0" and settings[-1] == f"{DEFAULT_MODEL}@{top}"
    assert len(settings) == top * matching.CAE_QUALITY_STEPS + 1
    assert matching.cae_settings("small-rate-k6-r2") == ["small-rate-k6-r2"]  # fixed rate


def test_a_variable_rate_cae_meets_a_size_at_its_largest_fitting_quality():
    rgb = test_image(64, 96)
    sizes = {s: len(baselines.get_codec("cae").encode(rgb, s))
             for s in matching.cae_settings(DEFAULT_MODEL)[:: matching.CAE_QUALITY_STEPS]}
    low, high = min(sizes.values()), max(sizes.values())
    max_bytes = (low + high) // 2
    fit = matching.fit_codec("cae", rgb, max_bytes)
    assert fit.fits and len(fit.data) <= max_bytes and fit.decoded.shape == rgb.shape
    quality = float(fit.setting.partition("@")[2])
    above = f"{DEFAULT_MODEL}@{quality + 1 / matching.CAE_QUALITY_STEPS:g}"
    assert len(baselines.get_codec("cae").encode(rgb, above)) > max_bytes
