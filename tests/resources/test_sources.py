"""Scene source adapters: landing folder, STAC catalog and synthetic behind one interface."""

import datetime as dt
import json

import pystac
import pytest

from resources.landing_source import LandingFolderSource
from resources.stac_source import StacCatalogSource
from resources.synthetic_source import SyntheticSource
from tests.support.rasters import random_scene, write_tif


def test_landing_folder_scan_groups_files_and_reports_bad_folders(landing):
    write_tif(landing / "alpha" / "2024-06-15" / "a.tif", random_scene(seed=1))
    write_tif(landing / "alpha" / "2024-06-15" / "b.tif", random_scene(seed=2))
    write_tif(landing / "beta" / "2024-07-01" / "x.tif", random_scene(seed=3))
    write_tif(landing / "beta" / "not-a-date" / "x.tif", random_scene(seed=3))
    write_tif(landing / "bad region" / "2024-07-01" / "x.tif", random_scene(seed=3))
    (landing / "alpha" / "2024-06-15" / "notes.txt").write_text("ignored")
    scan = LandingFolderSource(root=str(landing)).scan()
    assert [(r.region, r.date, len(r.paths)) for r in scan.refs] == [("alpha", "2024-06-15", 2), ("beta", "2024-07-01", 1)]
    assert len(scan.problems) == 2
    assert any("bad region" in p and "unsafe region" in p for p in scan.problems)
    assert any("not-a-date" in p and "YYYY-MM-DD" in p for p in scan.problems)


def test_fingerprint_follows_content_not_timestamps(landing):
    path = write_tif(landing / "alpha" / "2024-06-15" / "a.tif", random_scene(seed=1))
    source = LandingFolderSource(root=str(landing))
    cache: dict = {}
    first = source.scan(cache).refs[0]
    assert cache[str(path)][2] == first.sha256[0]
    path.touch()  # same bytes, new mtime: re-hashed, same fingerprint
    assert source.scan(cache).refs[0].fingerprint == first.fingerprint
    write_tif(path, random_scene(seed=9))
    assert source.scan(cache).refs[0].fingerprint != first.fingerprint


def test_region_sidecar_declares_the_product(landing):
    (landing / "pucallpa").mkdir()
    (landing / "pucallpa" / "region.json").write_text(json.dumps({"band_names": ["SWIR1", "NIR", "R", "G"], "dtype": "uint8"}))
    source = LandingFolderSource(root=str(landing))
    assert source.spec_for("pucallpa").band_names == ("SWIR1", "NIR", "R", "G")
    assert source.spec_for("pucallpa").dtype == "uint8"
    assert source.spec_for("alpha").band_names == ("B", "G", "R", "NIR")


def test_fetch_missing_partition_names_the_folder(landing):
    with pytest.raises(FileNotFoundError, match=str(landing / "alpha" / "2024-06-15")):
        LandingFolderSource(root=str(landing)).fetch("alpha", "2024-06-15")


def test_stac_catalog_source(tmp_path):
    root = tmp_path / "stac"
    catalog = pystac.Catalog(id="scenes", description="test catalog")
    tifs = {}
    for region, day, seed in [("alpha", 15, 1), ("beta", 16, 2)]:
        tif = write_tif(root / "data" / f"{region}.tif", random_scene(seed=seed))
        tifs[region] = tif
        item = pystac.Item(id=f"{region}-{day}", geometry=None, bbox=None,
                           datetime=dt.datetime(2024, 6, day, 10, 30), properties={"region": region})
        item.add_asset("image", pystac.Asset(href=str(tif), media_type=pystac.MediaType.COG))
        catalog.add_item(item)
    orphan = pystac.Item(id="no-region", geometry=None, bbox=None, datetime=dt.datetime(2024, 6, 1), properties={})
    orphan.add_asset("image", pystac.Asset(href=str(tifs["alpha"]), media_type=pystac.MediaType.GEOTIFF))
    catalog.add_item(orphan)
    catalog.normalize_hrefs(str(root))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)

    source = StacCatalogSource(catalog_path=str(root / "catalog.json"))
    scan = source.scan()
    assert [(r.region, r.date, r.paths) for r in scan.refs] == [
        ("alpha", "2024-06-15", (str(tifs["alpha"]),)),
        ("beta", "2024-06-16", (str(tifs["beta"]),)),
    ]
    assert len(scan.problems) == 1 and "no-region" in scan.problems[0]
    assert source.fetch("beta", "2024-06-16").paths == (str(tifs["beta"]),)


def test_synthetic_source_fetch_generates_scene_and_labels(tmp_path):
    source = SyntheticSource(cache_dir=str(tmp_path), regions=["alpha"], dates=["2024-06-15"], width=256, height=256)
    ref = source.scan().refs[0]
    assert not (tmp_path / "alpha" / "2024-06-15" / "scene.tif").exists()  # scanning is free
    fetched = source.fetch("alpha", "2024-06-15")
    assert fetched.fingerprint == ref.fingerprint
    assert (tmp_path / "alpha" / "2024-06-15" / "scene.tif").exists()
    assert (tmp_path / "labels" / "alpha.gpkg").exists()
    with pytest.raises(FileNotFoundError):
        source.fetch("gamma", "2024-06-15")
