"""The shard preparation job (caeadmm.distributed.prepare) on a real (local) Ray over a corpus of
good and bad files, and reading the shards back through Ray Data (caeadmm.distributed.shards)."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import threading
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from caeadmm.images import load_rgb
from caeadmm.patches import PatchSpec, split_sources

ray = pytest.importorskip("ray")
prepare = pytest.importorskip("caeadmm.distributed.prepare")
reader = pytest.importorskip("caeadmm.distributed.shards")
torch = pytest.importorskip("torch")

P = 16
SPEC = PatchSpec(patch_size=P, crops=3, seed=7)
REPO = Path(__file__).resolve().parents[1]

# name -> patches expected with SPEC (3 random crops, 16x16, small images padded)
GOOD = {
    "cmyk.jpg": 3,
    "gray16.png": 3,
    "palette.png": 3,
    "gray.png": 3,
    "tiny.png": 1,  # 1x1, padded to 16x16: one position
    "rotated.jpg": 3,
    "narrow.png": 2,  # 10x17, padded to 16x17: two positions
    "anim.gif": 3,
    "sub/deep.bmp": 3,
}
# name -> start of the reason
BAD = {
    "truncated.jpg": "corrupt or truncated image",
    "text.jpg": "not an image Pillow can identify",
    "empty.png": "empty file (0 bytes)",
    "bomb.png": "decompression bomb",
    "damaged.avif": "corrupt or truncated image",  # Pillow raises RuntimeError for this one
    "missing.jpg": "unreadable: not found",  # named by the path list, never created
}


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_corpus(root: Path) -> tuple[Path, Path]:
    """A folder of good and bad images, and a path list beside it; returns both."""
    corpus = root / "corpus"
    (corpus / "sub").mkdir(parents=True)
    Image.fromarray(_noise(30, 40, 1)).convert("CMYK").save(corpus / "cmyk.jpg", quality=95)
    gray16 = np.random.default_rng(2).integers(0, 65536, (21, 33), dtype=np.uint16)
    Image.fromarray(gray16).save(corpus / "gray16.png")
    palette = Image.fromarray(_noise(24, 20, 3)).quantize(8)
    palette.save(corpus / "palette.png", transparency=0)
    Image.fromarray(_noise(40, 17, 4)[..., 0]).save(corpus / "gray.png")
    Image.fromarray(_noise(1, 1, 5)).save(corpus / "tiny.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 wide x 24 high; shown rotated to 24 wide x 40 high
    Image.fromarray(_noise(24, 40, 6)).save(corpus / "rotated.jpg", exif=exif, quality=95)
    Image.fromarray(_noise(10, 17, 7)).save(corpus / "narrow.png")
    frames = [Image.fromarray(_noise(18, 18, s)) for s in (8, 9)]
    frames[0].save(corpus / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(_noise(20, 20, 10)).save(corpus / "sub" / "deep.bmp")
    jpeg = io.BytesIO()
    Image.fromarray(_noise(64, 64, 11)).save(jpeg, "JPEG")
    (corpus / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (corpus / "damaged.avif").write_bytes(_avif_without_its_image())
    (corpus / "text.jpg").write_text("this is not a JPEG")
    (corpus / "empty.png").write_bytes(b"")
    Image.new("1", (10000, 9000)).save(corpus / "bomb.png")  # 90 Mpixels, 11 kB
    (corpus / "notes.txt").write_text("not an image extension: never listed")
    path_list = root / "list.txt"
    # tiny.png is named twice (folder and list) and must be read once
    path_list.write_text(f"# extra inputs\n{corpus / 'tiny.png'}\ncorpus/missing.jpg\n\n")
    return corpus, path_list


def _avif_without_its_image() -> bytes:
    """An AVIF whose primary-item box ('pitm') names an item that does not exist."""
    encoded = io.BytesIO()
    Image.fromarray(_noise(24, 32, 12)).save(encoded, "AVIF")
    data = bytearray(encoded.getvalue())
    item_id = data.index(b"pitm") + 8  # after the tag: 4 bytes version+flags, then the id
    data[item_id : item_id + 2] = b"\x7f\x7f"
    return bytes(data)


def read_rows(shards_dir: Path) -> list[dict]:
    manifest = json.loads((shards_dir / "_manifest.json").read_text())
    tables = [pq.read_table(shards_dir / shard["path"]) for shard in manifest["shards"]]
    return [row for table in tables for row in table.to_pylist()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def shards(ray_local, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "p16"
    manifest = prepare.prepare_patches(
        [str(p) for p in corpus], str(out), SPEC, rows_per_shard=5, files_per_task=2,
        progress=False,
    )
    return out, manifest


def test_manifest_counts_and_rejects(shards, corpus):
    out, manifest = shards
    corpus_dir = corpus[0]
    assert manifest["counts"] == {
        "files": len(GOOD) + len(BAD),
        "images": len(GOOD),
        "rejected": len(BAD),
        "patches": sum(GOOD.values()),
        "shards": len(manifest["shards"]),
    }
    assert manifest["sources"] == {str(corpus_dir / n): k for n, k in sorted(GOOD.items())}
    reasons = {Path(r["path"]).name: r["reason"] for r in manifest["rejected"]}
    assert set(reasons) == set(BAD)
    for name, start in BAD.items():
        assert reasons[name].startswith(start), (name, reasons[name])
    assert (manifest["patch_size"], manifest["seed"], manifest["mode"]) == (P, 7, "random")
    assert json.loads((out / "_manifest.json").read_text()) == manifest


def test_shards_are_complete_and_hold_exact_crops(shards, corpus):
    out, manifest = shards
    on_disk = sorted(p.name for p in out.iterdir())
    assert on_disk == sorted([s["path"] for s in manifest["shards"]] + ["_manifest.json"])
    sizes = [s["rows"] for s in manifest["shards"]]
    assert max(sizes) <= 5 and sum(sizes) == sum(GOOD.values())
    for shard in manifest["shards"]:
        assert pq.read_metadata(out / shard["path"]).num_rows == shard["rows"]
    rows = read_rows(out)
    decoded = {source: load_rgb(source) for source in manifest["sources"]}
    _check_decoding_rules(corpus[0], decoded)
    for row in rows:
        image = decoded[row["source"]]
        pad_h, pad_w = max(0, P - image.shape[0]), max(0, P - image.shape[1])
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")
        x, y = row["x"], row["y"]
        assert row["patch"] == image[y : y + P, x : x + P].tobytes()
        assert (row["height"], row["width"]) == (P, P)
    assert Counter(r["source"] for r in rows) == Counter(manifest["sources"])


def _check_decoding_rules(corpus: Path, decoded: dict[str, np.ndarray]) -> None:
    """The sources were decoded by load_rgb's rules: EXIF rotation, 16 bits / 257, alpha
    over white."""
    assert decoded[str(corpus / "rotated.jpg")].shape == (40, 24, 3)
    gray16 = np.asarray(Image.open(corpus / "gray16.png"), dtype=np.float64)
    assert np.array_equal(decoded[str(corpus / "gray16.png")][..., 1], np.rint(gray16 / 257))
    palette = Image.open(corpus / "palette.png")
    transparent = np.asarray(palette) == palette.info["transparency"]
    assert transparent.any() and (decoded[str(corpus / "palette.png")][transparent] == 255).all()


def test_same_seed_gives_identical_shards(shards, corpus, tmp_path):
    out, manifest = shards
    inputs = [str(p) for p in corpus]
    again = prepare.prepare_patches(
        inputs, str(tmp_path / "a"), SPEC, rows_per_shard=5, files_per_task=2, progress=False
    )
    assert again["shards"] == manifest["shards"]
    for shard in manifest["shards"]:
        assert (tmp_path / "a" / shard["path"]).read_bytes() == (out / shard["path"]).read_bytes()
    # Another task layout: the same rows in the same order, only the shard boundaries move.
    prepare.prepare_patches(
        inputs, str(tmp_path / "b"), SPEC, rows_per_shard=5, files_per_task=5, progress=False
    )
    assert read_rows(tmp_path / "b") == read_rows(out)


def test_different_seed_gives_different_crops(shards, corpus, tmp_path):
    out, manifest = shards
    spec = PatchSpec(patch_size=P, crops=3, seed=8)
    other = prepare.prepare_patches(
        [str(p) for p in corpus], str(tmp_path), spec, compression="zstd", progress=False
    )
    assert other["sources"] == manifest["sources"]  # same images, same count per image

    def crops(rows):
        return {(r["source"], r["x"], r["y"]) for r in rows}

    assert crops(read_rows(tmp_path)) != crops(read_rows(out))


def test_output_must_be_empty_unless_overwritten(shards, corpus, tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(reader.ShardError, match="not empty"):
        prepare.prepare_patches([str(corpus[0])], str(tmp_path), SPEC, progress=False)
    prepare.prepare_patches([str(corpus[0])], str(tmp_path), SPEC, overwrite=True, progress=False)
    assert not (tmp_path / "old.txt").exists()
    assert (tmp_path / "_manifest.json").exists()


def test_bad_arguments_and_incomplete_folders_are_refused(ray_local, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(reader.ShardError, match="no image files"):
        prepare.prepare_patches([str(tmp_path / "empty")], str(tmp_path / "out"), progress=False)
    with pytest.raises(reader.ShardError, match="compression"):
        prepare.prepare_patches([str(tmp_path)], str(tmp_path / "out"), compression="bogus")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "part-00000.parquet").write_bytes(b"PAR1")
    with pytest.raises(reader.ShardError, match="did not finish"):
        reader.read_patches(str(tmp_path / "half"))


def test_job_grid_mode_skipping_small_images(ray_local, corpus, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("prepare_data", REPO / "jobs/prepare_data.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    args = [str(corpus[0]), "--out", str(tmp_path), "--patch-size", "16", "--grid"]
    assert job.main([*args, "--small", "skip", "--no-progress"]) == 0
    manifest = reader.load_manifest(str(tmp_path))
    # 16x16 tiles from the corner: cmyk 40x30 -> 2x1, gray16 33x21 -> 2x1, palette 20x24 -> 1,
    # gray 17x40 -> 1x2, rotated 24x40 -> 1x2, anim 18x18 -> 1, deep 20x20 -> 1.
    assert sum(manifest["sources"].values()) == 2 + 2 + 1 + 2 + 2 + 1 + 1
    reasons = {Path(r["path"]).name: r["reason"] for r in manifest["rejected"]}
    assert reasons["tiny.png"].startswith("smaller than the patch size: 1x1")
    assert reasons["narrow.png"].startswith("smaller than the patch size: 17x10")
    printed = capsys.readouterr().out
    assert "7 images cut into 11 patches" in printed and "rejected" in printed
    assert job.main([*args, "--no-progress"]) == 2  # output not empty, no --overwrite


def _keys(batch) -> list[tuple[str, int, int]]:
    """(source, x, y) of each row of a batch: a patch's identity."""
    columns = (batch["source"].tolist(), batch["x"].tolist(), batch["y"].tolist())
    return list(zip(*columns, strict=True))


def test_reading_yields_every_patch_once_per_epoch_with_two_read_workers(shards):
    out, manifest = shards
    train, val = reader.read_patches(str(out), val_fraction=0.25, concurrency=2)
    expected = Counter((r["source"], r["x"], r["y"]) for r in read_rows(out))
    for _epoch in range(2):
        seen = Counter()
        for ds in (train, val):
            for batch in ds.iter_batches(batch_size=4):
                seen.update(_keys(batch))
        assert seen == expected
    read_tasks = re.search(r"MapBatches\(_read_row_groups\): (\d+) tasks", train.stats())
    assert int(read_tasks.group(1)) == len(manifest["shards"])  # a row group per tiny shard


def test_a_shard_of_several_row_groups_is_read_whole(ray_local, corpus, tmp_path):
    spec = PatchSpec(patch_size=P, mode="grid", stride=1)  # 40x30 image: 25 x 15 = 375 tiles
    manifest = prepare.prepare_patches(
        [str(corpus[0] / "cmyk.jpg")], str(tmp_path), spec, rows_per_shard=1000, progress=False
    )
    assert [s["rows"] for s in manifest["shards"]] == [375]
    assert pq.read_metadata(tmp_path / "part-00000.parquet").num_row_groups == 2
    train, _ = reader.read_patches(str(tmp_path), val_fraction=0.0)
    seen = Counter(k for batch in train.iter_batches(batch_size=100) for k in _keys(batch))
    assert seen == Counter((r["source"], r["x"], r["y"]) for r in read_rows(tmp_path))
    read_tasks = re.search(r"MapBatches\(_read_row_groups\): (\d+) tasks", train.stats())
    assert int(read_tasks.group(1)) == 2
    # A manifest from before "row_group_rows" was recorded: the footers say the same.
    del manifest["row_group_rows"]
    (tmp_path / "_manifest.json").write_text(json.dumps(manifest))
    train, _ = reader.read_patches(str(tmp_path), val_fraction=0.0)
    assert Counter(k for batch in train.iter_batches(batch_size=100) for k in _keys(batch)) == seen


def test_a_single_row_group_is_read_without_a_concurrency_warning(ray_local, corpus, tmp_path):
    # One row group, a read concurrency of 2: Ray Data warns about a limit it cannot reach
    # (seen in every small job's log) unless the limit is capped at the number of row groups.
    prepare.prepare_patches([str(corpus[0] / "cmyk.jpg")], str(tmp_path), SPEC, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, _ = reader.read_patches(str(tmp_path), val_fraction=0.0, concurrency=2)
        assert sum(len(b["x"]) for b in train.iter_batches(batch_size=4)) == SPEC.crops
    assert not [w for w in caught if "concurrent tasks" in str(w.message)]


def test_two_training_workers_share_an_epoch_without_overlap(shards):
    out, manifest = shards
    train, _ = reader.read_patches(str(out), val_fraction=0.25, concurrency=2)
    train_sources = set(split_sources(manifest["sources"], 0.25)[0])
    expected = Counter((r["source"], r["x"], r["y"]) for r in read_rows(out))
    expected = Counter({k: n for k, n in expected.items() if k[0] in train_sources})
    splits = train.streaming_split(2, equal=False)
    seen: list[Counter] = [Counter(), Counter()]

    def consume(i: int) -> None:
        for batch in splits[i].iter_batches(batch_size=2):
            seen[i].update(_keys(batch))

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert seen[0] + seen[1] == expected
    assert not set(seen[0]) & set(seen[1])


def test_split_by_source_flips_only_training_and_batches_are_nchw_floats(shards):
    out, manifest = shards
    stored = {(r["source"], r["x"], r["y"]): r["patch"] for r in read_rows(out)}
    train, val = reader.read_patches(str(out), val_fraction=0.25, seed=0)
    train_rows, val_rows = train.take_all(), val.take_all()
    train_src = {r["source"] for r in train_rows}
    val_src = {r["source"] for r in val_rows}
    assert train_src.isdisjoint(val_src)
    assert train_src | val_src == set(manifest["sources"])
    assert sorted(val_src) == split_sources(manifest["sources"], 0.25, seed=0)[1]
    for row in val_rows:
        assert row["image"].tobytes() == stored[(row["source"], row["x"], row["y"])]
    flipped = 0
    for row in train_rows:
        src = np.frombuffer(stored[(row["source"], row["x"], row["y"])], np.uint8)
        src = src.reshape(P, P, 3)
        variants = [src, src[:, ::-1], src[::-1], src[::-1, ::-1]]
        assert any(np.array_equal(row["image"], v) for v in variants)
        flipped += not np.array_equal(row["image"], src)
    assert flipped > 0

    batches = list(reader.iter_patch_batches(val, batch_size=4))
    assert [len(b) for b in batches[:-1]] == [4] * (len(batches) - 1)
    tensor = torch.cat(batches)
    assert tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert tuple(tensor.shape) == (len(val_rows), 3, P, P)
    as_bytes = np.rint(tensor.numpy().transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    assert sorted(a.tobytes() for a in as_bytes) == sorted(r["image"].tobytes() for r in val_rows)
    assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0


def test_a_worker_holding_all_but_half_a_cpu_is_still_fed(shards):
    """On the 4-logical-CPU cluster a training worker takes 3.5 CPUs; 0.25-CPU read tasks
    still run beside it (with 1-CPU read tasks this hangs)."""
    out, manifest = shards
    train, _ = reader.read_patches(str(out), val_fraction=0.25)
    shard = train.streaming_split(1)[0]
    train_sources = split_sources(manifest["sources"], 0.25)[0]
    n_train = sum(manifest["sources"][s] for s in train_sources)

    @ray.remote(num_cpus=3.5)
    def training_worker(shard) -> int:
        epochs = (reader.iter_patch_batches(shard, 4, shuffle_buffer=8) for _ in range(2))
        return sum(len(batch) for epoch in epochs for batch in epoch)

    assert ray.get(training_worker.remote(shard), timeout=120) == 2 * n_train
