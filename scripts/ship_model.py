"""Ship a trained model inside the package: export, register, and record a reference stream.

    python scripts/ship_model.py NAME CHECKPOINT --operating-point "ratio 0.75, C=32" \
        --kodak BPP,PSNR,MS_SSIM [--default]

Writes caeadmm/models/NAME.pt (inference-only: config, weights, mask), adds or replaces its
entry in caeadmm/models/registry.json (file, sha256, fingerprint, operating point, and the
Kodak figures of `caeadmm eval $KODAK --codecs cae:CHECKPOINT`, which `caeadmm models`
shows), and compresses tests/data/reference.png with it into tests/data/NAME.cae and its decoding
tests/data/NAME.png, which tests/test_shipped_models.py checks on every run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from caeadmm import image_codec
from caeadmm.checkpoint import export_model, load_model

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "caeadmm" / "models"
TEST_DATA = ROOT / "tests" / "data"
MAX_BYTES = 10 * 1024 * 1024


def _kodak(text: str) -> dict[str, float]:
    try:
        bpp, psnr, ms_ssim = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BPP,PSNR,MS_SSIM, got {text!r}") from None
    return {"bpp": bpp, "psnr": psnr, "ms_ssim": ms_ssim}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("checkpoint")
    parser.add_argument("--operating-point", required=True)
    parser.add_argument("--kodak", type=_kodak, required=True,
                        help="mean bpp,PSNR,MS-SSIM on Kodak (a `caeadmm eval` summary's cae row)")
    parser.add_argument("--default", action="store_true", help="make it the default model")
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
    registry_file = MODELS / "registry.json"
    registry = json.loads(registry_file.read_text())
    registry["models"] = [m for m in registry["models"] if m["name"] != args.name] + [entry]
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
