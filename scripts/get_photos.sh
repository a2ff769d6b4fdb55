#!/usr/bin/env bash
# Fetch the second evaluation set ("DebPhotos37", see docs/data.md) into DIR.
#
#   scripts/get_photos.sh DIR [--originals ODIR] [--keep-debs]
#
# 37 photographs taken from four Debian 12 (bookworm) wallpaper packages, downloaded with
# `apt-get download` (no root, nothing installed): lomiri-wallpapers-16.04 (14 photos),
# lomiri-wallpapers-20.04 (1), plasma-workspace-wallpapers (10), mate-backgrounds (12).
# The list, with each file's package, path, licence and author, is scripts/photos.sha256.
#
# The originals are JPEGs of 1280x1024 up to 6028x3391 (1.3 to 20 Mpixel, 200 Mpixel in all),
# so every image is RESIZED: decoded by Pillow, converted to RGB, scaled with
# Image.LANCZOS (reducing_gap=None) so that its longer side is 1024 px (the shorter side
# rounded), and saved as PNG DIR/<name>.png. Nothing else is done to the pixels. The
# downscale by 1.25x to 5.9x also removes most of the source JPEG artefacts (quality 70-99).
# --originals ODIR also copies the untouched JPEGs there (keep ODIR outside DIR: the
# project's loaders search folders recursively).
#
# Checks: the sha256 of each original file, and the sha256 of each output's decoded pixels
# (W x H x 3 uint8, row-major; independent of the PNG encoder) against scripts/photos.sha256.
# A pixel mismatch means this Pillow resamples differently from the one that made the list
# (Pillow 13.0.0): results would not be comparable with recorded ones, so it is an error.
#
# Idempotent: when DIR already holds all 37 verified images, nothing is downloaded. The
# .deb files (about 170 MB) go to DIR/.debs and are deleted after a successful run unless
# --keep-debs. Needs apt-get and dpkg-deb (Debian/Ubuntu) with the bookworm archive in the
# apt lists (run `apt-get update` once), and a Python with Pillow ($PYTHON, else the
# repository's .venv, else python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MANIFEST="$ROOT/scripts/photos.sha256"

usage() { echo "usage: $0 DIR [--originals ODIR] [--keep-debs]" >&2; exit 2; }
[ $# -ge 1 ] || usage
DIR=""; ORIG=""; KEEP_DEBS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --originals) [ $# -ge 2 ] || usage; ORIG="$2"; shift 2 ;;
        --keep-debs) KEEP_DEBS=1; shift ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) [ -z "$DIR" ] || usage; DIR="$1"; shift ;;
    esac
done
[ -n "$DIR" ] || usage

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
"$PY" -c "import PIL" 2>/dev/null || { echo "error: $PY has no Pillow (set PYTHON=...)" >&2; exit 1; }

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
if [ -n "$ORIG" ]; then mkdir -p "$ORIG"; ORIG="$(cd "$ORIG" && pwd)"; fi

# The Python half: `check` verifies what DIR holds; `build SRC` makes the images from the
# files extracted under SRC (their paths inside the .debs), verifying both hashes.
run_py() {
"$PY" - "$@" <<'PYEOF'
import hashlib, os, shutil, sys
from PIL import Image, ImageOps

mode, manifest, out = sys.argv[1], sys.argv[2], sys.argv[3]
src = sys.argv[4] if mode == "build" else None
orig_dir = sys.argv[5] if mode == "build" and len(sys.argv) > 5 and sys.argv[5] else None
MAX_SIDE = 1024

rows = []
for line in open(manifest, encoding="utf-8"):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    f = line.split(None, 7)
    rows.append(dict(name=f[0], pkg=f[1], path=f[2], sha=f[3], size=f[4], pix=f[5],
                     lic=f[6], author=f[7]))

def pixel_sha(im):
    return hashlib.sha256(im.tobytes()).hexdigest()

def check_output(r):
    p = os.path.join(out, r["name"] + ".png")
    if not os.path.exists(p):
        return "missing"
    with Image.open(p) as im:
        im = im.convert("RGB")
        size = f"{im.width}x{im.height}"
        if size != r["size"] or pixel_sha(im) != r["pix"]:
            return f"differs ({size})"
    return None

if mode == "check":
    bad = [(r["name"], why) for r in rows if (why := check_output(r))]
    for name, why in bad[:5]:
        print(f"  {name}.png: {why}")
    sys.exit(1 if bad else 0)

errors = 0
for r in rows:
    p = os.path.join(src, r["path"].lstrip("./"))
    data = open(p, "rb").read()
    sha = hashlib.sha256(data).hexdigest()
    if sha != r["sha"]:
        print(f"error: {r['pkg']}:{r['path']}: sha256 {sha}, expected {r['sha']}", file=sys.stderr)
        errors += 1
        continue
    with Image.open(p) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        s = MAX_SIDE / max(w, h)
        size = (round(w * s), round(h * s)) if s < 1 else (w, h)
        if size != (w, h):
            im = im.resize(size, Image.LANCZOS, reducing_gap=None)
    got = f"{im.width}x{im.height}"
    pix = pixel_sha(im)
    if (got, pix) != (r["size"], r["pix"]):
        print(f"error: {r['name']}: resized to {got} pixels sha256 {pix}, expected {r['size']} "
              f"{r['pix']} (Pillow {Image.__version__} resamples differently?)", file=sys.stderr)
        errors += 1
        continue
    dst = os.path.join(out, r["name"] + ".png")
    im.save(dst + ".part", format="PNG")
    os.replace(dst + ".part", dst)
    if orig_dir:
        shutil.copyfile(p, os.path.join(orig_dir, r["name"] + os.path.splitext(p)[1]))
if errors:
    sys.exit(f"{errors} file(s) failed verification (not written; the others were); do not use {out}")

# Credits, as the CC-BY/-SA licences ask (they also apply to the resized copies).
with open(os.path.join(out, "SOURCES.txt"), "w", encoding="utf-8") as f:
    f.write("DebPhotos37: made by scripts/get_photos.sh from Debian 12 packages; each image\n"
            "resized to a longer side of 1024 px (Pillow LANCZOS) from the original JPEG.\n"
            "name\tpackage=version\tpath in package\tlicence\tauthor\n")
    for r in rows:
        f.write(f"{r['name']}.png\t{r['pkg']}\t{r['path']}\t{r['lic']}\t{r['author']}\n")
PYEOF
}

list_images() {
    "$PY" - "$MANIFEST" "$DIR" <<'PYEOF'
import os, sys
n = 0
for line in open(sys.argv[1], encoding="utf-8"):
    if line.strip() and not line.startswith("#"):
        f = line.split(None, 7)
        print(f"  {f[0] + '.png':48s} {f[4]:>9s}  {f[1].split('=')[0]:30s} {f[6]}")
        n += 1
print(f"{n} images in {sys.argv[2]}")
PYEOF
}

if run_py check "$MANIFEST" "$DIR" >/dev/null 2>&1; then
    echo "[photos] $DIR is up to date (all images verified); nothing fetched"
    list_images
    exit 0
fi

DEBS="$DIR/.debs"
mkdir -p "$DEBS"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# package=version -> the paths that it must supply
PKGS="$(grep -v '^#' "$MANIFEST" | awk 'NF {print $2}' | sort -u)"
for pv in $PKGS; do
    pkg="${pv%%=*}"; ver="${pv#*=}"
    deb=""
    for f in "$DEBS/${pkg}"_*.deb; do
        [ -e "$f" ] || continue
        if [ "$(dpkg-deb -f "$f" Package)" = "$pkg" ] && [ "$(dpkg-deb -f "$f" Version)" = "$ver" ]; then
            deb="$f"; break
        fi
    done
    if [ -z "$deb" ]; then
        echo "[photos] apt-get download $pkg=$ver"
        if ! (cd "$DEBS" && apt-get download -q "$pkg=$ver" >/dev/null 2>"$WORK/apt.err"); then
            grep -v '^W: Download is performed unsandboxed' "$WORK/apt.err" >&2 || true
            echo "error: could not download $pkg=$ver from Debian's archive (bookworm);" \
                 "run 'apt-get update' first" >&2
            exit 1
        fi
        for f in "$DEBS/${pkg}"_*.deb; do
            if [ "$(dpkg-deb -f "$f" Version)" = "$ver" ]; then deb="$f"; fi
        done
    else
        echo "[photos] have $(basename "$deb")"
    fi
    [ -n "$deb" ] || { echo "error: no .deb for $pkg=$ver" >&2; exit 1; }
    paths="$(grep -v '^#' "$MANIFEST" | awk -v pv="$pv" '$2 == pv {print $3}')"
    # shellcheck disable=SC2086
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$WORK" $paths
    echo "[photos]   extracted $(echo "$paths" | wc -l) files from $pkg $ver"
done

echo "[photos] verifying originals, resizing to a longer side of 1024 px, writing PNGs"
run_py build "$MANIFEST" "$DIR" "$WORK" "$ORIG"
run_py check "$MANIFEST" "$DIR"
if [ "$KEEP_DEBS" = 0 ]; then rm -rf "$DEBS"; fi
[ -z "$ORIG" ] || echo "[photos] original JPEGs copied to $ORIG"
list_images
