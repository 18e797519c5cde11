"""ML data: normalization by hand, spectral indices, mask-aligned augmentation, class-id mapping with
the ignore id kept, shard reading, and loaders that are reproducible for a seed."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg_assets.geo.classmap import IGNORE_ID as IGNORE_INDEX
from geoseg_assets.ml.augment import Augment
from geoseg_assets.ml.data import make_loaders
from geoseg_assets.ml.normalize import Normalizer
from geoseg_assets.ml.sampling import set_epoch
from geoseg_assets.ml.shard_dataset import ShardDataset
from geoseg_assets.ml.indices import compute_indices, index_names
from tests.support.partitions import make_partition
from tests.support.shard_datasets import BANDS, CLASSES, write_dataset, write_manifest

# Mean reflectance x 10000 per class (B, G, R, NIR), like geo/synthetic.py: separable per pixel.
IGNORE = 255


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "ds")


def test_normalization_equals_hand_computation_and_indices_are_appended():
    mean, std = [500.0, 750.0, 670.0, 2200.0], [220.0, 225.0, 367.0, 834.0]
    norm = Normalizer(tuple(BANDS), tuple(mean), tuple(std), ("NDVI", "ndwi"))
    raw = np.random.default_rng(0).integers(0, 5000, size=(2, 4, 8, 8)).astype(np.uint16)
    out = norm.prepare(torch.from_numpy(raw.astype(np.int32)))
    assert out.dtype == torch.float32 and out.shape == (2, 6, 8, 8)
    expected = (raw.astype(np.float64) - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(out[:, :4].numpy(), expected, rtol=1e-5, atol=1e-5)
    nir, red, green = (raw[:, i].astype(np.float64) for i in (3, 2, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = np.where(nir + red > 0, (nir - red) / (nir + red), 0.0)
    np.testing.assert_allclose(out[:, 4].numpy(), ndvi, rtol=1e-5, atol=1e-6)
    # numpy input, a single (C, H, W) image, and a round trip through the checkpoint form give the same
    assert torch.allclose(norm.prepare(raw[0]), out[0])
    assert Normalizer.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm
    assert norm.in_channels == 6 and norm.channel_names == [*BANDS, "NDVI", "NDWI"]
    with pytest.raises(ValueError, match="4 bands"):
        norm.prepare(torch.zeros(1, 3, 8, 8))


def test_indices_of_known_values_and_safe_division():
    # pixel 0: NIR 0.5, R 0.1, G 0.2; pixel 1: all zero (nodata) -> 0, never nan
    x = torch.tensor([[[0.05, 0.0]], [[0.2, 0.0]], [[0.1, 0.0]], [[0.5, 0.0]]])  # (C=4, H=1, W=2)
    out = compute_indices(x, BANDS, ["NDVI", "NDWI"])
    assert out.shape == (2, 1, 2)
    assert out[0, 0, 0].item() == pytest.approx((0.5 - 0.1) / 0.6)
    assert out[1, 0, 0].item() == pytest.approx((0.2 - 0.5) / 0.7)
    assert out[:, 0, 1].tolist() == [0.0, 0.0] and torch.isfinite(out).all()
    # named bands are found wherever they are and under aliases
    swapped = compute_indices(x.flip(0)[None], ["nir", "red", "green", "blue"], ["ndvi"])
    assert swapped[0, 0, 0, 0].item() == pytest.approx((0.5 - 0.1) / 0.6)
    assert index_names(BANDS) == ["NDVI", "NDWI"]
    assert set(index_names(["G", "R", "NIR", "SWIR1", "SWIR2"])) == {"NDVI", "NDWI", "MNDWI", "NDBI", "NBR"}


def test_missing_band_or_unknown_index_is_a_clear_error():
    x = torch.ones(1, 4, 2, 2)
    with pytest.raises(ValueError, match="NDBI needs band 'SWIR1'") as err:
        compute_indices(x, BANDS, ["NDVI", "NDBI"])
    assert "['B', 'G', 'R', 'NIR']" in str(err.value)
    with pytest.raises(ValueError, match="needs band 'NIR'"):
        Normalizer(("B", "G", "R"), (0.0,) * 3, (1.0,) * 3, ("NDVI",))
    with pytest.raises(ValueError, match="unknown spectral index 'EVI'.*NDVI"):
        compute_indices(x, BANDS, ["EVI"])


def test_augmentation_moves_image_and_mask_together():
    size, crop = 16, 12
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = torch.stack([rows, cols]).float()
    mask = rows * size + cols  # unique per pixel
    aug = Augment(crop=crop)
    seen = set()
    for seed in range(40):
        img, msk = aug(image, mask, torch.Generator().manual_seed(seed))
        assert img.shape == (2, crop, crop) and msk.shape == (crop, crop)
        assert torch.equal(img[0].long() * size + img[1].long(), msk)  # every pixel still has its label
        # a rigid move of a crop: neighbours stay neighbours
        steps = (img[:, 1:, :] - img[:, :-1, :]).abs().sum(0)
        assert (steps == 1).all()
        corner = (int(msk[0, 0]), int(msk[0, 1]), int(msk[1, 0]))
        seen.add(corner)
    # flips/rotations and crop offsets really vary (8 orientations x several offsets)
    assert len(seen) > 20
    # the same generator seed gives the same result
    a = aug(image, mask, torch.Generator().manual_seed(7))
    b = aug(image, mask, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_dataset_augmentation_keeps_labels_on_their_pixels(tmp_path):
    root = write_dataset(tmp_path / "coords", coords=True, counts={"train": 4, "val": 1, "test": 1})
    train, _, _, info = make_loaders(root, batch_size=2, crop=16, seed=3)
    norm = info.normalizer
    mean, std = torch.tensor(norm.mean)[:2, None, None], torch.tensor(norm.std)[:2, None, None]
    ids = torch.tensor(info.class_ids)
    oriented = set()
    for epoch in (1, 2):
        set_epoch(train, epoch)
        for x, y in train:
            assert x.shape == (2, 4, 16, 16) and y.shape == (2, 16, 16) and y.dtype == torch.int64
            rc = (x[:, :2] * std + mean).round().long() - 1  # back to each pixel's (row, col)
            row, col = rc[:, 0], rc[:, 1]
            assert (row >= 0).all() and (row < 32).all()
            for b in range(2):
                labelled = y[b] != IGNORE_INDEX
                assert ((col[b] < 4) == ~labelled).all()  # the ignored strip moved with the pixels
                # the label each pixel had where it came from (tile index unknown: it is one of 3 shifts)
                fits = [torch.equal(y[b][labelled], ((row[b] // 4 + 2 * (col[b] // 4) + i) % 3)[labelled])
                        for i in range(3)]
                assert any(fits)
                oriented.add((int(row[b, 0, 0] - row[b, 0, 1]), int(col[b, 0, 0] - col[b, 0, 1])))
    assert len(oriented) > 1  # augmentation did something
    assert ids.tolist() == [1, 4, 6]


def test_class_ids_map_to_contiguous_indices_and_ignore_stays(dataset):
    ds = ShardDataset(dataset, "val")
    assert ds.class_ids == (1, 4, 6) and ds.class_names == ("water", "built_up", "bare")
    for i in range(len(ds)):
        raw_image, raw_mask = ds.raw(i)
        image, mask = ds[i]
        assert image.dtype == torch.float32 and mask.dtype == torch.int64
        for idx, cid in enumerate(ds.class_ids):
            assert torch.equal(mask == idx, torch.from_numpy(raw_mask == cid))
        assert torch.equal(mask == IGNORE_INDEX, torch.from_numpy(raw_mask == IGNORE))
        assert (raw_mask == IGNORE).any() and set(mask.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}
        assert torch.allclose(image, ds.normalizer.prepare(torch.from_numpy(raw_image.astype(np.float32))))


def test_shard_dataset_reads_every_tile_across_shards(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    ds = ShardDataset(dataset, "train")
    assert len(ds) == 8 and len(manifest["splits"]["train"]["shards"]) == 3
    for i, tile in enumerate(manifest["splits"]["train"]["tiles"]):
        shard = manifest["splits"]["train"]["shards"][tile["shard"]]
        np.testing.assert_array_equal(ds.raw(i)[0], np.load(dataset / shard["images"])[tile["offset"]])
        np.testing.assert_array_equal(ds.raw(i)[1], np.load(dataset / shard["masks"])[tile["offset"]])
    with pytest.raises(IndexError):
        ds.raw(8)


def _batches(loader, epoch):
    set_epoch(loader, epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loaders_are_deterministic_for_a_seed(dataset):
    a = make_loaders(dataset, batch_size=3, indices=("NDVI",), crop=16, seed=0)
    b = make_loaders(dataset, batch_size=3, indices=("NDVI",), crop=16, seed=0)
    c = make_loaders(dataset, batch_size=3, indices=("NDVI",), crop=16, seed=1)
    info = a[3]
    assert info.in_channels == 5 and info.num_classes == 3 and info.split_sizes == {"train": 8, "val": 4, "test": 3}
    assert len(a[0]) == 8  # 8 tiles, but at least 8 batches of 3 crops per epoch (MIN_STEPS_PER_EPOCH)
    first = _batches(a[0], 1)
    assert all(x.shape == (3, 5, 16, 16) for x, _ in first)
    for x, y in first:
        assert torch.isfinite(x).all()
    same = _batches(b[0], 1)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(first, same))
    assert not torch.equal(first[0][0], _batches(a[0], 2)[0][0])  # another epoch, another draw
    assert not torch.equal(first[0][0], _batches(c[0], 1)[0][0])  # another seed, another draw
    assert torch.equal(_batches(a[0], 2)[1][1], _batches(b[0], 2)[1][1])
    # val/test: whole tiles in manifest order, no augmentation, same whatever the seed or epoch
    val_a, val_c = _batches(a[1], 1), _batches(c[1], 5)
    assert [x.shape for x, _ in val_a] == [(3, 5, 32, 32), (1, 5, 32, 32)]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(val_a, val_c))
    ds = ShardDataset(dataset, "val", info.normalizer)
    assert torch.equal(val_a[0][1][0], ds[0][1]) and torch.equal(val_a[0][0][2], ds[2][0])
    with pytest.raises(ValueError, match="crop"):
        make_loaders(dataset, batch_size=2, crop=0)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        make_loaders(dataset, batch_size=2, samples_per_epoch=0)


def test_reads_a_dataset_built_by_the_pipeline(tmp_path):
    from geoseg_assets.geo.dataset import build_dataset
    from geoseg_assets.geo.synthetic import BAND_NAMES, CLASSES as SYN_CLASSES

    parts = [make_partition(tmp_path, "alpha", d, width=256, height=256) for d in ("2024-04-15", "2024-06-15")]
    classes = {k: v for k, v in SYN_CLASSES.items() if k != "bare"}  # too small to hold bare soil
    summary = build_dataset(parts, tmp_path / "ds", classes, list(BAND_NAMES), block_size_m=1280.0)
    train, val, _, info = make_loaders(summary.out_dir, batch_size=2, indices=("NDVI", "NDWI"), seed=0)
    assert info.class_ids == tuple(sorted(classes.values())) and info.in_channels == 6
    assert info.split_sizes["val"] > 0 and info.tile_shape == (128, 128)
    x, y = next(iter(val))
    assert x.shape[1:] == (6, 128, 128) and torch.isfinite(x).all()
    assert set(y.unique().tolist()) <= {*range(len(classes)), IGNORE_INDEX}
    raw_image, raw_mask = val.dataset.raw(0)  # uint16 pixels as the pipeline stored them
    assert raw_image.dtype == np.uint16
    assert torch.allclose(x[0], info.normalizer.prepare(raw_image))
    assert torch.equal(y[0] == IGNORE_INDEX, torch.from_numpy(raw_mask == 255))


def write_mosaic_dataset(root: Path, tile: int = 32) -> Path:
    """A 3 x 3-tile scene put into a dataset as the pipeline does (tile positions in the manifest): bands
    0/1 hold each pixel's scene row/col + 1, the mask is a function of (row, col); the left two tile
    columns are train, the right one val (two tiles) and test (one)."""
    ids = sorted(CLASSES.values())
    size = 3 * tile
    rows, cols = np.mgrid[0:size, 0:size]
    scene = np.stack([rows + 1, cols + 1, np.full_like(rows, 500), np.full_like(rows, 900)]).astype(np.uint16)
    truth = np.asarray(ids, dtype=np.uint8)[(rows // 4 + 2 * (cols // 4)) % len(ids)]
    layout = {"train": [(r, c) for c in (0, tile) for r in (0, tile, 2 * tile)],
              "val": [(0, 2 * tile), (tile, 2 * tile)], "test": [(2 * tile, 2 * tile)]}
    root.mkdir(parents=True, exist_ok=True)
    splits, class_px = {}, {}
    for split, places in layout.items():
        images = np.stack([scene[:, r:r + tile, c:c + tile] for r, c in places])
        masks = np.stack([truth[r:r + tile, c:c + tile] for r, c in places])
        names = {k: f"{k}-{split}-00000.npy" for k in ("images", "masks")}
        np.save(root / names["images"], images)
        np.save(root / names["masks"], masks)
        splits[split] = {"shards": [{**names, "count": len(places)}], "tile_count": len(places), "tiles": [
            {"tile_id": f"t_{r}_{c}", "region": "r", "date": "d", "shard": 0, "offset": i, "row": r, "col": c,
             "width": tile, "height": tile, "labelled_fraction": 1.0} for i, (r, c) in enumerate(places)]}
        counts = np.bincount(masks.ravel(), minlength=256)
        class_px[split] = {"pixels": {n: int(counts[cid]) for n, cid in CLASSES.items()}, "ignored_pixels": 0}
    train = np.concatenate([scene[:, r:r + tile, c:c + tile].reshape(4, -1) for r, c in layout["train"]], axis=1)
    return write_manifest(root, tile, CLASSES, train.astype(np.float64), class_px, splits)


def test_train_crops_span_neighbouring_tiles_and_never_read_another_split(tmp_path):
    root = write_mosaic_dataset(tmp_path / "mosaic")
    train, _, _, info = make_loaders(root, batch_size=4, crop=48, seed=2, augment=False, samples_per_epoch=40)
    mean, std = torch.tensor(info.normalizer.mean)[:2, None, None], torch.tensor(info.normalizer.std)[:2, None, None]
    lut = torch.tensor(sorted(CLASSES.values()))
    crossings, samples = 0, 0
    set_epoch(train, 1)
    for x, y in train:
        assert x.shape == (4, 4, 48, 48)
        for b in range(4):
            samples += 1
            labelled = y[b] != IGNORE_INDEX
            assert labelled.any()
            rc = (x[b, :2] * std + mean).round().long() - 1
            row, col = rc[0][labelled], rc[1][labelled]
            assert (col < 64).all()  # only train tiles' pixels carry labels ...
            assert (x[b][:, ~labelled] == 0).all()  # ... and the rest is the train mean, never val/test pixels
            expected = (row // 4 + 2 * (col // 4)) % 3
            assert torch.equal(y[b][labelled], expected)  # every label sits on its own pixel
            grid_rows = torch.arange(48)[:, None].expand(48, 48)[labelled]
            assert len(set((row - grid_rows).tolist())) == 1  # rows are contiguous: one window of the scene
            crossings += int(((row < 32).any() & (row >= 32).any()) or ((col < 32).any() & (col >= 32).any()))
    assert samples == 40 and crossings > 10  # most 48 px crops of 32 px tiles span a tile border


def test_crops_per_epoch_do_not_depend_on_the_tile_count(tmp_path, dataset):
    small = write_mosaic_dataset(tmp_path / "mosaic")  # 6 train tiles
    for root, tiles in ((small, 6), (dataset, 8)):
        train, _, _, info = make_loaders(root, batch_size=4, crop=16, samples_per_epoch=24)
        assert info.split_sizes["train"] == tiles
        set_epoch(train, 1)
        assert len(train) == 6 and sum(x.shape[0] for x, _ in train) == 24
        default, _, _, _ = make_loaders(root, batch_size=4, crop=16)
        assert len(default) == 8  # at least 8 batches by default, whatever the tile count


def test_crop_context_shows_other_splits_pixels_but_never_their_labels(tmp_path):
    root = write_mosaic_dataset(tmp_path / "mosaic")
    train, _, _, info = make_loaders(root, batch_size=4, crop=48, seed=2, augment=False, samples_per_epoch=40,
                                     context=True)
    mean, std = torch.tensor(info.normalizer.mean)[:2, None, None], torch.tensor(info.normalizer.std)[:2, None, None]
    shown = 0
    set_epoch(train, 1)
    for x, y in train:
        for b in range(4):
            rc = (x[b, :2] * std + mean).round().long() - 1
            labelled = y[b] != IGNORE_INDEX
            assert (rc[1][labelled] < 64).all()  # labels come from train tiles only
            context = (rc[1] >= 64) & (rc[1] < 96)  # pixels of the val/test column, at their true coordinates
            shown += int(context.sum())
            assert not labelled[context].any()
    assert shown > 0
