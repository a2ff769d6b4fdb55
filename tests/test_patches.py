"""caeadmm.patches: crop positions, padding, rows, decoding the patch column, flips, split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caeadmm.patches import (
    PATCH_SCHEMA,
    ImageTooSmallError,
    PatchSpec,
    crop_positions,
    cut_patches,
    pad_to_patch,
    patch_array,
    random_flips,
    split_sources,
)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"patch_size": 0},
        {"mode": "tiles"},
        {"crops": 0},
        {"stride": 0},
        {"small": "crop"},
    ],
)
def test_spec_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        PatchSpec(**kwargs)


def test_random_positions_depend_only_on_seed_and_source():
    spec = PatchSpec(patch_size=8, crops=5, seed=3)
    a = crop_positions(100, 80, spec, "a.png")
    assert np.array_equal(a, crop_positions(100, 80, spec, "a.png"))
    assert not np.array_equal(a, crop_positions(100, 80, PatchSpec(8, crops=5, seed=4), "a.png"))
    assert not np.array_equal(a, crop_positions(100, 80, spec, "b.png"))


@settings(max_examples=60, deadline=None)
@given(
    p=st.integers(1, 9),
    extra_h=st.integers(0, 12),
    extra_w=st.integers(0, 12),
    crops=st.integers(1, 40),
)
def test_random_positions_are_distinct_in_bounds_and_capped(p, extra_h, extra_w, crops):
    h, w = p + extra_h, p + extra_w
    pos = crop_positions(h, w, PatchSpec(patch_size=p, crops=crops), "x")
    assert pos.shape == (min(crops, (extra_h + 1) * (extra_w + 1)), 2)
    assert len({tuple(c) for c in pos}) == len(pos)
    assert (pos >= 0).all() and (pos[:, 0] <= h - p).all() and (pos[:, 1] <= w - p).all()


def test_grid_positions_tile_from_the_corner_and_drop_the_border():
    pos = crop_positions(20, 35, PatchSpec(patch_size=10, mode="grid"), "x")
    assert pos.tolist() == [[0, 0], [0, 10], [0, 20], [10, 0], [10, 10], [10, 20]]
    strided = crop_positions(12, 12, PatchSpec(patch_size=10, mode="grid", stride=1), "x")
    assert strided.tolist() == [[y, x] for y in range(3) for x in range(3)]


def test_positions_refuse_an_unpadded_small_image():
    with pytest.raises(ValueError, match="pad it first"):
        crop_positions(5, 20, PatchSpec(patch_size=8), "x")


def test_pad_reflects_at_bottom_right_and_keeps_the_source_at_top_left():
    img = _image(3, 5)
    padded = pad_to_patch(img, 8)
    assert padded.shape == (8, 8, 3)
    assert np.array_equal(padded[:3, :5], img)
    assert np.array_equal(padded[3, :5], img[1])  # reflect: row 3 mirrors row 1 about row 2
    assert np.array_equal(padded[:3, 5], img[:, 3])
    assert pad_to_patch(img, 3) is img  # big enough in both directions: untouched


def test_pad_of_a_single_pixel_repeats_it():
    img = np.array([[[1, 2, 3]]], np.uint8)
    padded = pad_to_patch(img, 4)
    assert padded.shape == (4, 4, 3)
    assert (padded == [1, 2, 3]).all()


def test_cut_rows_hold_the_exact_crops():
    img = _image(30, 41)
    spec = PatchSpec(patch_size=8, crops=6, seed=1)
    table = cut_patches(img, "s.png", spec)
    assert table.schema == PATCH_SCHEMA
    assert table.num_rows == 6
    for row in table.to_pylist():
        x, y = row["x"], row["y"]
        assert row["patch"] == img[y : y + 8, x : x + 8].tobytes()
        assert (row["height"], row["width"], row["source"]) == (8, 8, "s.png")


def test_cut_pads_a_small_image_or_refuses_it():
    img = _image(5, 9)  # 5 rows, 9 columns, patch 8: padded to 8x9, two positions
    table = cut_patches(img, "s", PatchSpec(patch_size=8, crops=4))
    assert sorted(zip(table["y"].to_pylist(), table["x"].to_pylist(), strict=True)) == [
        (0, 0),
        (0, 1),
    ]
    padded = np.pad(img, ((0, 3), (0, 0), (0, 0)), mode="reflect")
    assert table["patch"][0].as_py() == padded[:8, table["x"][0].as_py() :][:, :8].tobytes()
    with pytest.raises(ImageTooSmallError, match="9x5 < 8x8"):
        cut_patches(img, "s", PatchSpec(patch_size=8, small="skip"))


def test_patch_array_views_the_column_even_when_sliced_or_large():
    img = _image(20, 20)
    table = cut_patches(img, "s", PatchSpec(patch_size=4, mode="grid"))
    arr = patch_array(table["patch"], 4)
    assert arr.shape == (25, 4, 4, 3) and arr.dtype == np.uint8
    for i, row in enumerate(table.to_pylist()):
        assert np.array_equal(arr[i], img[row["y"] : row["y"] + 4, row["x"] : row["x"] + 4])
    sliced = table["patch"].combine_chunks().slice(7, 5)
    assert np.array_equal(patch_array(sliced, 4), arr[7:12])
    large = table["patch"].cast(pa.large_binary())
    assert np.array_equal(patch_array(large, 4), arr)
    assert patch_array(pa.array([], pa.binary()), 4).shape == (0, 4, 4, 3)


@pytest.mark.parametrize("values", [[b"x" * 47], [b"x" * 48, None]])
def test_patch_array_rejects_wrong_lengths_and_nulls(values):
    with pytest.raises(ValueError):
        patch_array(pa.array(values, pa.binary()), 4)


def test_random_flips_give_one_of_the_four_flips_and_all_of_them_occur():
    images = _image(64 * 5, 5).reshape(64, 5, 5, 3)
    out = random_flips(images, "hv", np.random.default_rng(0))
    kinds = set()
    for src, got in zip(images, out, strict=True):
        variants = [src, src[:, ::-1], src[::-1], src[::-1, ::-1]]
        matches = [i for i, v in enumerate(variants) if np.array_equal(v, got)]
        assert matches
        kinds.add(matches[0])
    assert kinds == {0, 1, 2, 3}
    only_h = random_flips(images, "h", np.random.default_rng(0))
    assert all(
        np.array_equal(s, g) or np.array_equal(s[:, ::-1], g)
        for s, g in zip(images, only_h, strict=True)
    )
    assert np.array_equal(random_flips(images, "", np.random.default_rng(0)), images)


def test_split_is_disjoint_deterministic_and_exact():
    sources = [f"img{i}.png" for i in range(40)]
    train, val = split_sources(sources, 0.1, seed=0)
    assert len(val) == 4 and len(train) == 36
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(sources)
    assert split_sources(reversed(sources), 0.1, seed=0) == (train, val)
    assert split_sources(sources, 0.1, seed=1)[1] != val


def test_split_edges():
    assert split_sources(["a", "b", "c"], 0.0) == (["a", "b", "c"], [])
    assert split_sources(["a"], 0.5) == (["a"], [])  # one image cannot be in both parts
    train, val = split_sources(["a", "b"], 0.01)  # tiny fraction still gives val one image
    assert len(train) == len(val) == 1
    train, val = split_sources(["a", "b"], 0.99)  # and train keeps one
    assert len(train) == len(val) == 1
    with pytest.raises(ValueError):
        split_sources(["a"], 1.0)
