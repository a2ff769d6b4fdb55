"""Ship a trained model inside the package: export, register, and record a reference stream.

    python scripts/ship_model.py NAME CHECKPOINT --operating-point "ratio 0.75, C=32" \
        --kodak EVAL_DIR|BPP,PSNR,MS_SSIM [--default]

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
from PIL import Image

from caeadmm import image_codec
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


def _register(models: list[dict], entry: dict) -> list[dict]:
    """`models` with `entry` in place of the one of its name, or else inserted before the first
    model of a higher Kodak bpp."""
    if entry["name"] in [m["name"] for m in models]:
        return [entry if m["name"] == entry["name"] else m for m in models]
    bpp = entry["kodak"]["bpp"]
    higher = [i for i, m in enumerate(models) if m.get("kodak", {}).get("bpp", 0) > bpp]
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
    parser.add_argument("--kodak", type=_kodak, required=True,
                        help="the `caeadmm eval` output folder of the model alone on Kodak, or "
                             "its mean bpp,PSNR,MS-SSIM there")
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
        "kodak": args.kodak,
    }
    config = _training_config(Path(args.checkpoint))
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
    stream = image_codec.compress(image, model)
    (TEST_DATA / f"{args.name}.cae").write_bytes(stream)
    Image.fromarray(image_codec.decompress(stream, model)).save(TEST_DATA / f"{args.name}.png")
    bpp = 8 * len(stream) / (image.shape[0] * image.shape[1])
    print(f"shipped {args.name}: {out.stat().st_size} bytes, reference stream {bpp:.3f} bpp")


if __name__ == "__main__":
    main()
