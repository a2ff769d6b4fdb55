"""Ship a trained model inside the package: export, register, and record a reference stream.

    python scripts/ship_model.py NAME CHECKPOINT --operating-point "ratio 0.75, C=32" \
        --kodak EVAL_DIR|BPP,PSNR,MS_SSIM [--default]
    python scripts/ship_model.py NAME CHECKPOINT --operating-point "..." --metric ms-ssim \
        --kodak EVAL_DIR --photos EVAL_DIR [--default-quality Q] [--default]

A variable-rate model (docs/variable-rate.md) is registered with the metric `--metric` picks
it for, the rate weights of its lowest and top quality, its figures at every evaluated quality
on Kodak and on the second set (`caeadmm eval ... --codecs cae:CHECKPOINT@Q1,Q2,...`), and
the quality `compress` uses by default (`--default-quality`; else the one nearest 0.25 bpp on
Kodak); its reference stream is coded at that quality.

Writes caeadmm/models/NAME.pt (inference-only: config, weights, mask), adds or replaces its
entry in caeadmm/models/registry.json (file, sha256, fingerprint, operating point, the
training checkpoint's rate_lambda for a rate-aware model and its distortion weights where they
are not the default mix (latent refinement minimizes that loss), the
Kodak figures of `caeadmm eval $KODAK --codecs cae:CHECKPOINT -o EVAL_DIR`, read from that
folder's cae.json or given as numbers, which `caeadmm models` shows; a new entry goes in
Kodak bpp order), and compresses tests/data/reference.png with it into tests/data/NAME.cae
and its decoding tests/data/NAME.png, which tests/test_shipped_models.py checks on every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from caeadmm import codec
from caeadmm.checkpoint import export_model, load_checkpoint, load_model
from caeadmm.config import DISTORTION_WEIGHTS, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "caeadmm" / "models"
TEST_DATA = ROOT / "tests" / "data"
MAX_BYTES = 10 * 1024 * 1024


def _kodak(text: str) -> dict[str, float]:
    """Kodak figures from a `caeadmm eval` folder of one cae point, or typed as numbers."""
    results = Path(text) / "cae.json"
    if results.is_file():
        points = json.loads(results.read_text())["results"]
        if len(points["bpp"]) != 1:
            raise argparse.ArgumentTypeError(
                f"{results} has {len(points['bpp'])} CAE points; evaluate the model alone"
            )
        bpp, psnr, ms_ssim = (points[k][0] for k in ("bpp", "psnr-rgb", "ms-ssim-rgb"))
    else:
        try:
            bpp, psnr, ms_ssim = (float(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a `caeadmm eval` output folder or BPP,PSNR,MS_SSIM, got {text!r}"
            ) from None
    return {"bpp": round(bpp, 4), "psnr": round(psnr, 2), "ms_ssim": round(ms_ssim, 4)}


def _points(folder: Path) -> list[dict[str, float]]:
    """A variable-rate model's figures per quality from a `caeadmm eval` folder of its
    settings MODEL@Q alone: [{"quality", "bpp", "psnr", "ms_ssim"}], by quality."""
    summary = pd.read_csv(folder / "summary.csv")
    summary = summary[summary["codec"] == "cae"]
    points = [
        {"quality": float(str(row.setting).rpartition("@")[2]), "bpp": round(row.bpp, 4),
         "psnr": round(row.psnr, 2), "ms_ssim": round(row.ms_ssim, 4)}
        for row in summary.itertuples()
    ]
    if not points or any("@" not in str(s) for s in summary["setting"]):
        raise SystemExit(f"{folder}: expected the model's settings MODEL@Q alone")
    return sorted(points, key=lambda p: p["quality"])


def _register(models: list[dict], entry: dict) -> list[dict]:
    """`models` with `entry` in place of the one of its name, or else inserted before the first
    model of a higher Kodak bpp."""
    if entry["name"] in [m["name"] for m in models]:
        return [entry if m["name"] == entry["name"] else m for m in models]
    kodak = entry["kodak"]
    bpp = kodak[0]["bpp"] if isinstance(kodak, list) else kodak["bpp"]
    higher = [i for i, m in enumerate(models)
              if isinstance(m.get("kodak"), dict) and m["kodak"]["bpp"] > bpp]
    at = higher[0] if higher else len(models)
    return [*models[:at], entry, *models[at:]]


def _training_config(checkpoint: Path) -> dict:
    """The training config in `checkpoint`, else in the run's checkpoint.pt beside an
    exported model.pt; empty when neither records one."""
    for path in (checkpoint, checkpoint.with_name("checkpoint.pt")):
        if path.is_file():
            config = load_checkpoint(path).get("config")
            if config:
                return config
    return {}


def _distortion(config: dict) -> dict[str, float] | None:
    """The distortion weights of a training config where they are not the default mix (what
    the registry records for latent refinement); None for the default."""
    default = TrainConfig()
    weights = {name: float(config.get(name, getattr(default, name))) for name in DISTORTION_WEIGHTS}
    return None if all(w == getattr(default, n) for n, w in weights.items()) else weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("checkpoint")
    parser.add_argument("--operating-point", required=True)
    parser.add_argument("--kodak", required=True,
                        help="the `caeadmm eval` output folder of the model alone on Kodak, or "
                             "its mean bpp,PSNR,MS-SSIM there (a variable-rate model: the folder)")
    parser.add_argument("--photos", type=Path,
                        help="variable-rate models: the `caeadmm eval` folder on the second set")
    parser.add_argument("--metric", choices=("ms-ssim", "mse"),
                        help="variable-rate models: the metric it was trained for")
    parser.add_argument("--default-quality", type=float,
                        help="variable-rate models: the quality compress uses by default "
                             "(default: the one nearest 0.25 bpp on Kodak)")
    parser.add_argument("--default", action="store_true", help="make it the default model")
    parser.add_argument("--rate-lambda", type=float,
                        help="the rate term's weight it was trained with (default: read from the "
                             "training checkpoint, or the run's checkpoint.pt beside model.pt)")
    args = parser.parse_args()

    out = export_model(args.checkpoint, MODELS / f"{args.name}.pt")
    if out.stat().st_size > MAX_BYTES:
        raise SystemExit(f"{out} is {out.stat().st_size} bytes, over the 10 MB limit")
    model = load_model(out)
    entry = {
        "name": args.name,
        "file": out.name,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "fingerprint": model.fingerprint().hex(),
        "operating_point": args.operating_point,
    }
    config = _training_config(Path(args.checkpoint))
    quality = None
    if model.config.quality_levels:
        if not args.metric or not args.photos:
            raise SystemExit("a variable-rate model needs --metric and --photos")
        entry["metric"] = args.metric
        entry["kodak"] = _points(Path(args.kodak))
        entry["photos"] = _points(args.photos)
        entry["photos_images"] = int(pd.read_csv(args.photos / "per_image.csv")["image"].nunique())
        quality = args.default_quality
        if quality is None:
            quality = min(entry["kodak"], key=lambda p: abs(p["bpp"] - 0.25))["quality"]
        entry["default_quality"] = quality
        entry["rate_lambda_max"] = float(config.get("rate_lambda_max", 0.0))
    else:
        entry["kodak"] = _kodak(args.kodak)
    rate_lambda = args.rate_lambda
    if rate_lambda is None:
        rate_lambda = float(config.get("rate_lambda", 0.0))
    if rate_lambda > 0:
        entry["rate_lambda"] = rate_lambda
    distortion = _distortion(config)
    if distortion:
        entry["distortion"] = distortion
    registry_file = MODELS / "registry.json"
    registry = json.loads(registry_file.read_text())
    registry["models"] = _register(registry["models"], entry)
    if args.default or registry.get("default") is None:
        registry["default"] = args.name
    registry_file.write_text(json.dumps(registry, indent=2) + "\n")

    image = np.asarray(Image.open(TEST_DATA / "reference.png").convert("RGB"))
    stream = codec.compress(image, model, quality=quality)
    (TEST_DATA / f"{args.name}.cae").write_bytes(stream)
    Image.fromarray(codec.decompress(stream, model)).save(TEST_DATA / f"{args.name}.png")
    bpp = 8 * len(stream) / (image.shape[0] * image.shape[1])
    print(f"shipped {args.name}: {out.stat().st_size} bytes, reference stream {bpp:.3f} bpp")


if __name__ == "__main__":
    main()
