"""Every codec the evaluation compares, behind one interface, and the measurement of one point.

A codec turns a uint8 RGB image (H, W, 3) and one *setting* (a quality, a target rate, or for
the CAE a model) into the bytes of a whole file, and those bytes back into pixels. The four
baselines go through Pillow, configured as strong as Pillow allows, because a weak baseline is
an unfair one (docs/evaluation.md):

- JPEG: libjpeg-turbo, optimized Huffman tables (`optimize=True`), 4:2:0 chroma subsampling.
- WebP: libwebp, `method=6` (slowest, best; Pillow's default is 4).
- JPEG 2000: OpenJPEG with the irreversible 9/7 wavelet and the colour transform
  (`irreversible=True, mct=1`) in rate mode, written as a raw codestream (.j2k, no JP2 box).
  Pillow's defaults (reversible 5/3 wavelet, no colour transform) are far weaker: on 6 Kodak
  images at 0.30 bpp, MS-SSIM 0.864 instead of 0.930. The setting is the target bpp.
- AVIF: libavif with the AOM encoder, speed 6 (Pillow's default; 0 is slowest), 4:2:0, one
  encoder thread.

`jpeg-default` and `webp-default` are Pillow with nothing but `quality` set, the way
CompressAI made its published Kodak curves: they exist to check our measurements against those
files (docs/results.md), not as baselines.

The CAE codec (`cae`) is the same kind of entry: its settings are model names for
`caeadmm.zoo.load`, one model per operating point; `caeadmm.codec` and `caeadmm.zoo` are
imported only when a CAE point is measured. `cae-refined` is the same models with the latent
of each image refined before coding (caeadmm.refine at its default effort, what `--refine`
alone does; the rate weighed by the model's registered rate_lambda): the same decoder, a
slower encoder.

A variable-rate model's setting names its quality after an "@": `cae:ms-ssim@2.5` (the
registered variable-rate model for MS-SSIM, `caeadmm.zoo.for_metric`, at quality 2.5), and
`MODEL@Q1,Q2,...` lists several, so that `cae:mse@0,1,2,3` is a whole curve of one network.
Without "@" a variable-rate model codes at its default quality.

`parse_codecs("cae:small-k3+small-k6,jpeg,webp:10+50")` turns the command line's codec list
into {codec name: [settings]}; a codec without settings gets its default sweep.
"""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL
from PIL import Image, features

from caeadmm import metrics
from caeadmm.images import load_rgb

Setting = Any  # int quality, float target bpp, or str model name, per codec

AVIF_SPEED = 6


class CodecError(ValueError):
    """Unknown codec, bad setting, or a codec that failed on an image."""


@dataclass(frozen=True)
class Codec:
    """One codec: how to encode and decode, its default sweep and how to read a setting."""

    name: str  # registry key, as written on the command line
    label: str  # display name in tables, plots and JSON
    description: str  # library, version and options, for the JSON `description`
    default_settings: tuple[Setting, ...]
    parse_setting: Callable[[str], Setting]
    encode: Callable[[np.ndarray, Setting], bytes]
    decode: Callable[[bytes, Setting], np.ndarray]
    prepare: Callable[[Setting], Any] | None = None  # untimed set-up, e.g. loading a model

    def __call__(self, rgb: np.ndarray, setting: Setting) -> tuple[bytes, np.ndarray]:
        """Encode then decode: (file bytes, decoded uint8 image)."""
        data = self.encode(rgb, setting)
        return data, self.decode(data, setting)


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"{value} is outside [{low}, {high}]")
        return value

    return parse


def _positive_bpp(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 24.0:
        raise ValueError(f"target bpp {value} is outside (0, 24]")
    return value


def _pillow_encode(rgb: np.ndarray, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    try:
        Image.fromarray(rgb, mode="RGB").save(buffer, format=fmt, **options)
    except (OSError, ValueError) as exc:
        height, width = rgb.shape[:2]
        raise CodecError(f"{fmt} cannot encode a {width}x{height} image: {exc}") from exc
    return buffer.getvalue()


def _pillow_decode(data: bytes, _setting: Setting) -> np.ndarray:
    return load_rgb(data)


def _jpeg_encode(rgb: np.ndarray, quality: int) -> bytes:
    return _pillow_encode(rgb, "JPEG", quality=quality, optimize=True, subsampling="4:2:0")


def _webp_encode(rgb: np.ndarray, quality: int) -> bytes:
    return _pillow_encode(rgb, "WEBP", quality=quality, method=6)


def _pillow_defaults_encode(fmt: str) -> Callable[[np.ndarray, int], bytes]:
    def encode(rgb: np.ndarray, quality: int) -> bytes:
        return _pillow_encode(rgb, fmt, quality=quality)

    return encode


def _jpeg2000_encode(rgb: np.ndarray, target_bpp: float) -> bytes:
    # OpenJPEG's default of 6 resolution levels needs sides of 2^5 px; small images get fewer.
    levels = max(1, min(6, int(np.log2(min(rgb.shape[:2]))) + 1))
    return _pillow_encode(
        rgb, "JPEG2000", irreversible=True, mct=1, no_jp2=True, num_resolutions=levels,
        quality_mode="rates", quality_layers=[24.0 / target_bpp],
    )


def _avif_encode(rgb: np.ndarray, quality: int) -> bytes:
    return _pillow_encode(
        rgb, "AVIF", quality=quality, speed=AVIF_SPEED, subsampling="4:2:0", max_threads=1
    )


def cae_setting_parts(setting: str) -> tuple[str, float | None]:
    """(model spec for zoo.load, quality or None) of a CAE setting "MODEL[@Q]"; MODEL may be
    a metric ("ms-ssim", "mse"), naming that metric's registered variable-rate model."""
    from caeadmm import zoo

    name, at, quality = setting.partition("@")
    if name in zoo.METRICS:
        name = zoo.for_metric(name)
    return name, float(quality) if at else None


def cae_quality_levels(setting: str) -> int:
    """The quality levels of a CAE setting's model (0: a fixed-rate model)."""
    return int(_cae_model(setting).config.quality_levels)


def _cae_model(setting: str) -> Any:
    """The model of a CAE setting, loaded once per process (_load_cae)."""
    return _load_cae(cae_setting_parts(setting)[0])


@functools.lru_cache(maxsize=8)
def _load_cae(name: str) -> Any:
    """Load a CAE model once per process (Ray workers measure many images per model).

    One round trip of a tiny image follows, so that one-time costs (Numba compiling the entropy
    coder, torch's lazy initialisation) do not land in the first measured encode.
    """
    from caeadmm import codec, zoo

    model = zoo.load(name)
    quality = zoo.default_quality(name, model)
    image = np.zeros((8, 8, 3), np.uint8)
    codec.decompress(codec.compress(image, model, quality=quality), model)
    return model


def _cae_quality(setting: str, model: Any) -> float | None:
    """The quality a setting codes at: its "@Q", else the model's default (None: fixed rate)."""
    from caeadmm import zoo

    name, quality = cae_setting_parts(setting)
    return zoo.default_quality(name, model) if quality is None else quality


def _cae_encode(rgb: np.ndarray, setting: str) -> bytes:
    from caeadmm import codec

    model = _cae_model(setting)
    return codec.compress(rgb, model, quality=_cae_quality(setting, model))


def _cae_refined_encode(rgb: np.ndarray, setting: str) -> bytes:
    from caeadmm import codec
    from caeadmm.refine import refinement_for

    model = _cae_model(setting)
    refine = refinement_for(cae_setting_parts(setting)[0])
    return codec.compress(rgb, model, refine=refine,
                                quality=_cae_quality(setting, model))  # fmt: skip


def _cae_decode(data: bytes, setting: str) -> np.ndarray:
    from caeadmm import codec

    return np.asarray(codec.decompress(data, _cae_model(setting)), dtype=np.uint8)


def _cae_setting(text: str) -> str:
    name, at, quality = text.partition("@")
    if not name:
        raise ValueError("empty model name")
    if at:
        float(quality)  # ValueError for a quality that is not a number
    return text


_PILLOW = f"Pillow {PIL.__version__}"

CODECS: dict[str, Codec] = {
    codec.name: codec
    for codec in (
        Codec(
            "jpeg", "JPEG",
            f"JPEG, {_PILLOW}, libjpeg-turbo {features.version('libjpeg_turbo')}, "
            "optimize=True, 4:2:0; setting = quality",
            (3, 5, 8, 10, 15, 20, 30, 40, 50, 60, 70, 80, 90),
            _int_in(0, 100), _jpeg_encode, _pillow_decode,
        ),
        Codec(
            "webp", "WebP",
            f"WebP, {_PILLOW}, libwebp {features.version('webp')}, method=6; setting = quality",
            (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90),
            _int_in(0, 100), _webp_encode, _pillow_decode,
        ),
        Codec(
            "jpeg2000", "JPEG 2000",
            f"JPEG 2000, {_PILLOW}, OpenJPEG {features.version('jpg_2000')}, irreversible 9/7 "
            "wavelet, mct=1, .j2k codestream; setting = target bpp",
            (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0),
            _positive_bpp, _jpeg2000_encode, _pillow_decode,
        ),
        Codec(
            "avif", "AVIF",
            f"AVIF, {_PILLOW}, libavif {features.version('avif')} (AOM), speed={AVIF_SPEED}, "
            "4:2:0, 1 thread; setting = quality",
            (5, 10, 15, 20, 30, 40, 50, 60, 70, 80, 85),
            _int_in(0, 100), _avif_encode, _pillow_decode,
        ),
        Codec(
            "jpeg-default", "JPEG, Pillow defaults",
            f"JPEG, {_PILLOW}, quality only (standard Huffman tables, 4:2:0), as CompressAI's "
            "published jpeg.json; for checking against it, not a baseline",
            (5, 10, 15, 20, 30, 40, 50),
            _int_in(0, 100), _pillow_defaults_encode("JPEG"), _pillow_decode,
        ),
        Codec(
            "webp-default", "WebP, Pillow defaults",
            f"WebP, {_PILLOW}, quality only (method=4), as CompressAI's published webp.json; "
            "for checking against it, not a baseline",
            (5, 10, 15, 20, 25, 30, 40, 50),
            _int_in(0, 100), _pillow_defaults_encode("WEBP"), _pillow_decode,
        ),
        Codec(
            "cae", "CAE-ADMM",
            "CAE-ADMM (caeadmm), whole image, Huffman + run-length coded; setting = model",
            (), _cae_setting, _cae_encode, _cae_decode, prepare=_cae_model,
        ),
        Codec(
            "cae-refined", "CAE-ADMM, refined latent",
            "CAE-ADMM (caeadmm), the latent of each image refined before coding "
            "(caeadmm.refine, `--refine` at its default effort), the same decoder; "
            "setting = model",
            (), _cae_setting, _cae_refined_encode, _cae_decode, prepare=_cae_model,
        ),
    )
}


def get_codec(name: str) -> Codec:
    """The registered codec called `name`; CodecError lists the known ones otherwise."""
    try:
        return CODECS[name]
    except KeyError:
        raise CodecError(f"unknown codec {name!r}; known: {', '.join(CODECS)}") from None


def parse_codecs(spec: str) -> dict[str, list[Setting]]:
    """Parse "name[:s1+s2+...],..." into {name: settings}; a name may repeat (settings add up)."""
    out: dict[str, list[Setting]] = {}
    for item in _items(spec):
        name, _, settings_text = item.partition(":")
        codec = get_codec(name.strip())
        if settings_text:
            try:
                settings = [codec.parse_setting(s) for s in _expand(settings_text.split("+"))]
            except ValueError as exc:
                raise CodecError(f"bad setting in {item!r}: {exc}") from exc
        elif codec.default_settings:
            settings = list(codec.default_settings)
        else:
            raise CodecError(f"codec {name!r} needs settings, e.g. {name}:MODEL")
        chosen = out.setdefault(codec.name, [])
        for setting in settings:
            if setting not in chosen:
                chosen.append(setting)
    if not out:
        raise CodecError("no codec given")
    return out


def _items(spec: str) -> list[str]:
    """The comma-separated items of a codec list, a bare number joined to the item before it
    when that one ends in "@..." (`cae:mse@0,1,2,jpeg` is two items)."""
    items: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if items and "@" in items[-1].rpartition("+")[2] and _is_number(part):
            items[-1] += "," + part
        elif part:
            items.append(part)
    return items


def _expand(settings: list[str]) -> list[str]:
    """"MODEL@Q1,Q2" -> "MODEL@Q1", "MODEL@Q2"; other settings as they are."""
    out = []
    for setting in (s.strip() for s in settings):
        name, at, qualities = setting.partition("@")
        out += [f"{name}@{q.strip()}" for q in qualities.split(",")] if at else [setting]
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def measure(image: str, rgb: np.ndarray, codec_name: str, setting: Setting) -> dict[str, Any]:
    """Encode and decode one image at one setting: one row of the per-image results table."""
    codec = get_codec(codec_name)
    height, width = rgb.shape[:2]
    if codec.prepare is not None:
        codec.prepare(setting)
    start = time.perf_counter()
    data = codec.encode(rgb, setting)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    decoded = codec.decode(data, setting)
    decode_s = time.perf_counter() - start
    if decoded.shape != rgb.shape:
        raise CodecError(
            f"{codec_name} at {setting!r} decoded {image} to {decoded.shape}, not {rgb.shape}"
        )
    return {
        "image": image,
        "codec": codec_name,
        "setting": str(setting),
        "bytes": len(data),
        "bpp": metrics.bpp(len(data), height, width),
        **metrics.quality_metrics(rgb, decoded),
        "encode_s": encode_s,
        "decode_s": decode_s,
        "height": height,
        "width": width,
    }
