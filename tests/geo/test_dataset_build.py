"""Dataset build: leakage-free spatial splits, shards equal to the COG pixels, reproducible bytes,
train-only normalization stats, class counts, and clear errors that leave an earlier dataset intact."""

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from shapely.geometry import box

from geoseg_assets.geo import dataset as dataset_mod
from geoseg_assets.geo.dataset import DatasetError, build_dataset
from geoseg_assets.geo.dataset_inputs import PartitionInput
from geoseg_assets.geo.dataset_layout import SPLITS
from geoseg_assets.geo.splits import assign_blocks, split_blocks
from geoseg_assets.geo.synthetic import BAND_NAMES, CLASSES
from tests.support.partitions import TILE, make_partition, write_mask_cog

IGNORE = 255
REGIONS = {"alpha": 0.0, "beta": 0.4}  # region -> nodata margin (beta's left 40 % is nodata)
DATES = ("2024-04-15", "2024-06-15")
BLOCK_M = 2560.0  # 256 px at 10 m: a block holds about 2 x 2 tiles
PER_SHARD = 10
BUILD = dict(block_size_m=BLOCK_M, tiles_per_shard=PER_SHARD, seed=0)


def dir_hashes(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def tile_splits(manifest: dict) -> dict[tuple[str, str, str], str]:
    return {(t["region"], t["date"], t["tile_id"]): s for s in SPLITS for t in manifest["splits"][s]["tiles"]}


def load_split(out: Path, manifest: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    shards = manifest["splits"][split]["shards"]
    images = np.concatenate([np.load(out / s["images"]) for s in shards])
    masks = np.concatenate([np.load(out / s["masks"]) for s in shards])
    return images, masks


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[PartitionInput]:
    root = tmp_path_factory.mktemp("inputs")
    return [make_partition(root, r, d, margin=m) for r, m in REGIONS.items() for d in DATES]


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "dataset"
    summary = build_dataset(inputs, out, CLASSES, list(BAND_NAMES), **BUILD)
    manifest = json.loads(Path(summary.manifest_path).read_text())
    return summary, manifest, out


def test_splits_share_no_tile_no_block_and_no_place(built, inputs):
    summary, manifest, _ = built
    splits = tile_splits(manifest)
    assert all(summary.tile_counts[s] > 0 for s in SPLITS)
    assert summary.tile_counts == manifest["tile_counts"] == {s: len(manifest["splits"][s]["tiles"]) for s in SPLITS}
    ids = {s: [t["tile_id"] for t in manifest["splits"][s]["tiles"]] for s in SPLITS}
    assert sum(len(v) for v in ids.values()) == len(set().union(*map(set, ids.values())))
    blocks = {s: {t["block"] for t in manifest["splits"][s]["tiles"]} for s in SPLITS}
    assert not (blocks["train"] & blocks["val"] or blocks["train"] & blocks["test"] or blocks["val"] & blocks["test"])

    # Independently of the recorded block ids: tiles in different splits never share a grid cell
    # or a pixel, and one place (region, row, col) at both dates lands in one split.
    geoms = {(p.region, p.date, t.tile_id): t.geometry for p in inputs for t in p.tiles.itertuples()}
    keys = sorted(splits)
    cells = {k: (k[0], *np.floor(np.array(geoms[k].centroid.coords[0]) / BLOCK_M).astype(int)) for k in keys}
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if a[0] == b[0] and splits[a] != splits[b]:
                assert cells[a] != cells[b], (a, b)
                assert geoms[a].intersection(geoms[b]).area == 0, (a, b)
    places: dict[tuple, set] = {}
    for t in (t for s in SPLITS for t in manifest["splits"][s]["tiles"]):
        split = splits[(t["region"], t["date"], t["tile_id"])]
        places.setdefault((t["region"], t["row"], t["col"]), set()).add((t["date"], split))
    assert all(len({split for _, split in v}) == 1 for v in places.values())
    assert sum(len(v) == len(DATES) for v in places.values()) == len(places)  # every place is kept at both dates


def test_selection_keeps_exactly_the_labelled_tiles(built, inputs):
    summary, manifest, _ = built
    selected = set(tile_splits(manifest))
    expected = set()
    for p in inputs:
        with rasterio.open(p.mask_path) as src:
            mask = src.read(1)
        for t in p.tiles.itertuples():
            block = mask[t.row : t.row + t.height, t.col : t.col + t.width]
            if (block != IGNORE).mean() >= 0.5:
                expected.add((p.region, p.date, t.tile_id))
    assert selected == expected
    assert summary.dropped_tiles == sum(len(p.tiles) for p in inputs) - len(expected) > 0


def test_rebuild_is_byte_identical_and_seed_changes_the_split(built, inputs, tmp_path):
    _, manifest, out = built
    reference = dir_hashes(out)
    assert "manifest.json" in reference and len(reference) > 2 * len(SPLITS) + 1  # several shards per split
    again = tmp_path / "again"
    build_dataset(inputs, again, CLASSES, list(BAND_NAMES), **BUILD)
    assert dir_hashes(again) == reference
    build_dataset(inputs, again, CLASSES, list(BAND_NAMES), **BUILD)  # replacing an existing dataset
    assert dir_hashes(again) == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temp folders left behind

    other = build_dataset(inputs, tmp_path / "seed1", CLASSES, list(BAND_NAMES), **{**BUILD, "seed": 1})
    assert tile_splits(json.loads(Path(other.manifest_path).read_text())) != tile_splits(manifest)


def test_shards_equal_the_cog_pixels(built, inputs):
    _, manifest, out = built
    parts = {(p.region, p.date): p for p in inputs}
    rng = np.random.default_rng(0)
    for s in SPLITS:
        entry = manifest["splits"][s]
        assert [sh["count"] for sh in entry["shards"]] == [
            min(PER_SHARD, entry["tile_count"] - i) for i in range(0, entry["tile_count"], PER_SHARD)
        ]
        tiles = entry["tiles"]
        order = [(t["region"], t["date"], t["tile_id"]) for t in tiles]
        assert order == sorted(order)
        for i in sorted({0, len(tiles) - 1, *rng.integers(0, len(tiles), 3).tolist()}):
            t = tiles[i]
            shard = entry["shards"][t["shard"]]
            assert i == t["shard"] * PER_SHARD + t["offset"]
            image = np.load(out / shard["images"], mmap_mode="r")
            mask = np.load(out / shard["masks"], mmap_mode="r")
            assert image.dtype == np.uint16 and image.shape[1:] == (len(BAND_NAMES), TILE, TILE)
            assert mask.dtype == np.uint8 and mask.shape[1:] == (TILE, TILE)
            p = parts[(t["region"], t["date"])]
            win = rasterio.windows.Window(t["col"], t["row"], t["width"], t["height"])
            with rasterio.open(p.scene_path) as src, rasterio.open(p.mask_path) as msk:
                np.testing.assert_array_equal(image[t["offset"]], src.read(window=win))
                np.testing.assert_array_equal(mask[t["offset"]], msk.read(1, window=win))


def test_norm_stats_equal_numpy_over_valid_train_pixels(built):
    summary, manifest, out = built
    images, masks = load_split(out, manifest, "train")
    valid = (masks != IGNORE) & (images != 0).all(axis=1)  # synthetic nodata is 0
    pixels = np.moveaxis(images, 1, 0)[:, valid].astype(np.float64)
    assert manifest["norm"]["pixels"] == valid.sum() > 0
    np.testing.assert_allclose(manifest["norm"]["mean"], pixels.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(manifest["norm"]["std"], pixels.std(axis=1), rtol=1e-10)
    np.testing.assert_allclose(summary.norm_mean, pixels.mean(axis=1), rtol=1e-12)


def test_class_distribution_equals_bincount_of_shard_masks(built):
    summary, manifest, out = built
    for s in SPLITS:
        _, masks = load_split(out, manifest, s)
        counts = np.bincount(masks.ravel(), minlength=256)
        dist = manifest["class_distribution"][s]
        assert dist["pixels"] == {name: int(counts[cid]) for name, cid in CLASSES.items()} == summary.class_pixels[s]
        assert dist["ignored_pixels"] == counts[IGNORE]
        assert counts.sum() == counts[IGNORE] + sum(dist["pixels"].values())
        labelled = sum(dist["pixels"].values())
        assert dist["share"] == pytest.approx({name: counts[cid] / labelled for name, cid in CLASSES.items()})
    assert all(p["scene_sha256"] for p in manifest["partitions"])
    assert manifest["class_map"] == {"classes": CLASSES, "ignore_id": IGNORE}
    assert manifest["band_names"] == list(BAND_NAMES) and manifest["seed"] == 0


def test_overlapping_tiles_share_a_split_and_edge_tiles_are_padded(tmp_path):
    # Overlap 32 chains every tile of a region to its neighbours, so each region is one block;
    # the third scene is smaller than a tile, so its only tile is padded.
    parts = [make_partition(tmp_path, r, DATES[0], width=w, height=h, overlap=32)
             for r, w, h in (("alpha", 256, 256), ("beta", 256, 256), ("gamma", 112, 96))]
    classes = {k: v for k, v in CLASSES.items() if k != "bare"}  # too small to hold bare soil
    summary = build_dataset(parts, tmp_path / "ds", classes, list(BAND_NAMES), block_size_m=BLOCK_M)
    manifest = json.loads(Path(summary.manifest_path).read_text())
    splits = tile_splits(manifest)
    frame = gpd.GeoDataFrame(
        [{"key": (p.region, p.date, t.tile_id), "region": p.region, "geometry": t.geometry}
         for p in parts for t in p.tiles.itertuples() if (p.region, p.date, t.tile_id) in splits],
        geometry="geometry", crs=parts[0].tiles.crs,
    )
    pairs = [(a, b) for a, b in zip(*shapely.STRtree(frame.geometry.values).query(frame.geometry.values, predicate="overlaps"))
             if a < b and frame.region[a] == frame.region[b]]
    assert pairs
    assert all(splits[frame.key[a]] == splits[frame.key[b]] for a, b in pairs)
    assert sum(summary.block_counts.values()) == 3

    (gamma,) = [(s, t) for s in SPLITS for t in manifest["splits"][s]["tiles"] if t["region"] == "gamma"]
    split, t = gamma
    assert (t["width"], t["height"]) == (112, 96)
    shard = manifest["splits"][split]["shards"][t["shard"]]
    image = np.load(tmp_path / "ds" / shard["images"])[t["offset"]]
    mask = np.load(tmp_path / "ds" / shard["masks"])[t["offset"]]
    with rasterio.open(parts[2].scene_path) as src, rasterio.open(parts[2].mask_path) as msk:
        np.testing.assert_array_equal(image[:, :96, :112], src.read())
        np.testing.assert_array_equal(mask[:96, :112], msk.read(1))
    assert image.shape == (4, TILE, TILE) and not image[:, 96:, :].any() and not image[:, :, 112:].any()
    assert (mask[96:, :] == IGNORE).all() and (mask[:, 112:] == IGNORE).all()


def test_assign_blocks_merges_overlaps_only_within_a_region_and_across_dates():
    rows = [
        ("a", "d1", box(0, 0, 100, 100)),      # cell a:0:0
        ("a", "d1", box(100, 0, 200, 100)),    # cell a:1:0, only touches the first -> own block
        ("a", "d1", box(150, 100, 250, 200)),  # cell a:2:1, overlaps nothing
        ("a", "d1", box(280, 0, 380, 100)),    # cell a:3:0 ...
        ("a", "d1", box(350, 0, 450, 100)),    # ... cell a:4:0, overlaps the previous -> merged
        ("a", "d2", box(0, 0, 100, 100)),      # same place, other date -> same block as the first
        ("b", "d1", box(0, 0, 100, 100)),      # same coordinates, other region -> own block
    ]
    tiles = gpd.GeoDataFrame([{"region": r, "date": d, "width": 10, "height": 10, "geometry": g} for r, d, g in rows],
                             geometry="geometry", crs="EPSG:32633")
    blocks = assign_blocks(tiles, 100.0).tolist()
    assert blocks == ["a:0:0", "a:1:0", "a:2:1", "a:3:0", "a:3:0", "a:0:0", "b:0:0"]


def test_split_blocks_is_deterministic_and_fills_every_split():
    counts = {f"r:{i}:0": 4 + i % 3 for i in range(20)}
    first = split_blocks(counts, seed=3)
    assert first == split_blocks(dict(reversed(list(counts.items()))), seed=3)
    assert first != split_blocks(counts, seed=4)
    tiles = {s: sum(counts[b] for b, v in first.items() if v == s) for s in SPLITS}
    total = sum(counts.values())
    assert abs(tiles["train"] / total - 0.7) < 0.1 and all(tiles[s] > 0 for s in SPLITS)
    three = split_blocks({"x": 100, "y": 1, "z": 1}, seed=0)
    assert sorted(three.values()) == sorted(SPLITS)


def test_bad_inputs_name_the_files_and_leave_the_dataset_intact(inputs, tmp_path, monkeypatch):
    alpha = [p for p in inputs if p.region == "alpha"]
    out = tmp_path / "dataset"
    build_dataset(alpha, out, CLASSES, list(BAND_NAMES), **BUILD)
    before = dir_hashes(out)

    with rasterio.open(alpha[0].scene_path) as src:
        crs, transform = src.crs, src.transform
        labels = np.full((src.height, src.width), 3, dtype=np.uint8)
    shifted = write_mask_cog(labels, crs, transform * rasterio.Affine.translation(1, 0), tmp_path / "shifted_mask.tif")
    bad = [replace(alpha[0], mask_path=str(shifted)), alpha[1]]
    with pytest.raises(DatasetError, match="not on the grid") as err:
        build_dataset(bad, out, CLASSES, list(BAND_NAMES), **BUILD)
    assert str(shifted) in str(err.value) and alpha[0].scene_path in str(err.value)

    unlabelled = write_mask_cog(np.full_like(labels, IGNORE), crs, transform, tmp_path / "empty_mask.tif")
    with pytest.raises(DatasetError, match="no tile has a labelled fraction") as err:
        build_dataset([replace(alpha[0], mask_path=str(unlabelled))], out, CLASSES,
                      list(BAND_NAMES), **BUILD)
    assert str(unlabelled) in str(err.value) and "Fix:" in str(err.value)

    with pytest.raises(DatasetError, match=r"\['snow'\]"):
        build_dataset(alpha, out, {**CLASSES, "snow": 9}, list(BAND_NAMES), **BUILD)

    def broken_manifest(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dataset_mod, "write_manifest", broken_manifest)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(alpha, out, CLASSES, list(BAND_NAMES), **{**BUILD, "seed": 5})
    assert dir_hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "empty_mask.tif", "shifted_mask.tif"]
