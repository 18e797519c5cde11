"""Landing from object storage (issue 19, item 2): `BucketLandingSource` scans `s3://<bucket>/<prefix>/<region>/<date>/`
on a real S3-protocol server (moto's standalone server on 127.0.0.1) as the landing folder is scanned: the same
fingerprints for the same bytes, a region.json honoured, a VRT or a misnamed date skipped with the reason while the
good scenes are requested, unchanged objects never downloaded twice, a replaced object re-requested; and `scenes`
turns a bucket scene into the same COG as the same file landed in a folder."""

import hashlib
import json

import dagster as dg
import numpy as np
import pytest
import rasterio

from geoseg_assets.geo.errors import SceneError
from geoseg_assets.partitions import partition_key
from resources.bucket_landing_source import BucketLandingSource
from resources.data_store import DataStore
from resources.landing_source import LandingFolderSource
from tests.support.pipeline import land, materialize_partition
from tests.support.rasters import random_scene, write_tif
from tests.support.sensors import tick

VRT = b'<VRTDataset rasterXSize="1" rasterYSize="1"><VRTRasterBand band="1"><SimpleSource><SourceFilename>' \
      b'/etc/passwd</SourceFilename></SimpleSource></VRTRasterBand></VRTDataset>'


def put(s3, bucket: str, key: str, body: bytes) -> None:
    s3.client().put_object(Bucket=bucket, Key=key, Body=body)


def test_a_bucket_is_scanned_like_the_landing_folder_and_bad_objects_are_skipped(s3_env, tmp_path, instance):
    s3, bucket = s3_env, s3_env.new_bucket()
    alpha = write_tif(tmp_path / "alpha.tif", random_scene(seed=1)).read_bytes()
    beta = write_tif(tmp_path / "beta.tif", random_scene(bands=3, seed=2, dtype="uint8")).read_bytes()
    put(s3, bucket, "landing/alpha/2024-06-01/scene.tif", alpha)
    put(s3, bucket, "landing/beta/1985-07-14/scene.tif", beta)
    put(s3, bucket, "landing/beta/region.json", json.dumps({"band_names": ["R", "G", "B"], "dtype": "uint8"}).encode())
    put(s3, bucket, "landing/gamma/2024-06-01/scene.tif", VRT)  # a VRT under a .tif name
    put(s3, bucket, "landing/alpha/June-1/scene.tif", alpha)  # not a date
    put(s3, bucket, "elsewhere/delta/2024-06-01/scene.tif", alpha)  # outside the landing prefix
    put(s3, bucket, "landing/alpha//2024-06-02/scene.tif", alpha)  # would share a cached copy with alpha/2024-06-02
    cache = tmp_path / "cache"
    source = BucketLandingSource(url=f"s3://{bucket}/landing/", cache_dir=str(cache))

    result = tick(instance, source, None)
    requested = sorted(r.partition_key for r in result.run_requests)
    assert requested == sorted(str(partition_key(r, d)) for r, d in (("alpha", "2024-06-01"), ("beta", "1985-07-14")))
    scan = source.scan()
    problems = "\n".join(scan.problems)
    assert f"s3://{bucket}/landing/gamma/2024-06-01/" in problems and "is not a GeoTIFF" in problems
    assert f"s3://{bucket}/landing/alpha/June-1/scene.tif" in problems and "YYYY-MM-DD" in problems
    assert f"s3://{bucket}/landing/alpha//2024-06-02/scene.tif: skipped, the key has an empty" in problems
    assert len(scan.problems) == 3 and "delta" not in problems
    assert not (cache / bucket / "landing" / "gamma" / "2024-06-01" / "scene.tif").exists()  # 4 bytes read, no more
    assert source.spec_for("beta").band_names == ("R", "G", "B")  # region.json from the bucket

    # The same bytes under the same name land with the same fingerprint from a folder as from the bucket.
    folder = LandingFolderSource(root=str(tmp_path / "landing"))
    land(tmp_path / "landing", "alpha", "2024-06-01", tmp_path / "alpha.tif", name="scene.tif")
    by_region = {ref.region: ref for ref in scan.refs}
    assert by_region["alpha"].fingerprint == folder.fetch("alpha", "2024-06-01").fingerprint
    assert by_region["alpha"].sha256 == (hashlib.sha256(alpha).hexdigest(),)

    # Next tick: nothing new, nothing downloaded again; then a replaced object is requested again.
    copy = cache / bucket / "landing" / "alpha" / "2024-06-01" / "scene.tif"
    downloaded = copy.stat().st_mtime_ns
    again = tick(instance, source, result.cursor)
    assert again.run_requests == [] and copy.stat().st_mtime_ns == downloaded
    put(s3, bucket, "landing/alpha/2024-06-01/scene.tif", write_tif(tmp_path / "new.tif", random_scene(seed=3)).read_bytes())
    replaced = tick(instance, source, again.cursor)
    assert [r.partition_key for r in replaced.run_requests] == [str(partition_key("alpha", "2024-06-01"))]

    # An object replaced between the listing and the download: the listed version is asked for, and refused.
    key = "landing/beta/1985-07-14/scene.tif"
    listed = source._objects("beta/1985-07-14/")[key]
    put(s3, bucket, key, alpha)
    with pytest.raises(SceneError, match=rf"s3://{bucket}/{key}: was replaced or removed while it was being read"):
        source._download(key, *listed, check_tiff=True)


def test_scenes_writes_the_same_cog_from_a_bucket_as_from_a_folder(s3_env, tmp_path, instance):
    s3, bucket = s3_env, s3_env.new_bucket()
    scene = write_tif(tmp_path / "scene.tif", random_scene(seed=4))
    put(s3, bucket, "alpha/2024-06-01/scene.tif", scene.read_bytes())
    land(tmp_path / "landing", "alpha", "2024-06-01", scene)
    sources = {"bucket": BucketLandingSource(url=f"s3://{bucket}", cache_dir=str(tmp_path / "cache")),
               "folder": LandingFolderSource(root=str(tmp_path / "landing"))}
    pixels, records = {}, {}
    for name, source in sources.items():
        store = DataStore(root=str(tmp_path / name / "store"))
        assert materialize_partition(instance, {"data_store": store, "scene_source": source}, "alpha", "2024-06-01",
                                     selection=[dg.AssetKey("scenes")]).success
        dims = {"region": "alpha", "date": "2024-06-01"}
        with rasterio.open(store.path("scenes", dims, "scene.tif")) as src:
            pixels[name] = src.read()
        records[name] = store.scene_record(dims)
    assert np.array_equal(pixels["bucket"], pixels["folder"])
    assert records["bucket"]["fingerprint"] == records["folder"]["fingerprint"]
    assert records["bucket"]["source_sha256"] == records["folder"]["source_sha256"]


def test_an_unreachable_store_or_a_bad_url_is_a_problem_of_the_tick_not_a_crash(s3_env, tmp_path, monkeypatch,
                                                                                instance):
    from tests.support.webserver import free_port

    bad = BucketLandingSource(url="https://not-s3/landing", cache_dir=str(tmp_path / "cache"))
    assert "is not s3://<bucket>/<prefix>" in bad.scan().problems[0]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    down = BucketLandingSource(url="s3://imagery/landing", cache_dir=str(tmp_path / "cache"))
    result = tick(instance, down, None)
    assert result.run_requests == []
    assert "s3://imagery/landing/: cannot list the landing bucket (Could not connect" in result.skip_reason.skip_message


def test_a_stac_catalog_with_assets_in_a_bucket_lands_them_from_the_allowed_buckets_only(s3_env, tmp_path, instance):
    """`StacCatalogSource` with `s3://` item assets (issue 19, item 2): the objects of allowed buckets are copied into
    the cache once per version and `scenes` writes the same COG as from the bytes on disk; an asset in a bucket not
    allowed, a missing object and a VRT are skipped with the reason while the good scenes are requested."""
    import datetime as dt

    import pystac

    from resources.stac_source import StacCatalogSource

    s3, bucket, other = s3_env, s3_env.new_bucket(), s3_env.new_bucket()
    scene = write_tif(tmp_path / "scene.tif", random_scene(seed=5))
    put(s3, bucket, "imagery/alpha-2024-06-01.tif", scene.read_bytes())
    put(s3, bucket, "imagery/gamma.tif", VRT)
    put(s3, other, "imagery/beta.tif", scene.read_bytes())
    catalog = pystac.Catalog(id="remote", description="items whose GeoTIFFs are in buckets")
    for item_id, region, href in [("alpha", "alpha", f"s3://{bucket}/imagery/alpha-2024-06-01.tif"),
                                  ("beta", "beta", f"s3://{other}/imagery/beta.tif"),
                                  ("gamma", "gamma", f"s3://{bucket}/imagery/gamma.tif"),
                                  ("delta", "delta", f"s3://{bucket}/imagery/none.tif")]:
        item = pystac.Item(id=item_id, geometry=None, bbox=None, datetime=dt.datetime(2024, 6, 1, 10),
                           properties={"region": region})
        item.add_asset("image", pystac.Asset(href=href, media_type=pystac.MediaType.COG,
                                             extra_fields={"raster:bands": [{"nodata": 0}]}))
        catalog.add_item(item)
    catalog.normalize_hrefs(str(tmp_path / "stac"))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    cache = tmp_path / "cache"
    source = StacCatalogSource(catalog_path=str(tmp_path / "stac" / "catalog.json"), allowed_buckets=[bucket],
                               cache_dir=str(cache))

    scan = source.scan()
    copy = cache / bucket / "imagery" / "alpha-2024-06-01.tif"
    assert [(r.region, r.date, r.paths) for r in scan.refs] == [("alpha", "2024-06-01", (str(copy),))]
    assert scan.refs[0].sha256 == (hashlib.sha256(scene.read_bytes()).hexdigest(),) and scan.refs[0].nodata == 0
    problems = "\n".join(scan.problems)
    assert f"s3://{other}/imagery/beta.tif is in bucket {other!r}, which allowed_buckets ({bucket}) does not name" \
        in problems
    assert f"s3://{bucket}/imagery/gamma.tif: is not a GeoTIFF" in problems
    assert f"s3://{bucket}/imagery/none.tif: does not exist" in problems and len(scan.problems) == 3
    assert not (cache / other).exists() and not (cache / bucket / "imagery" / "gamma.tif").exists()
    downloaded = copy.stat().st_mtime_ns
    assert source.scan().refs == scan.refs and copy.stat().st_mtime_ns == downloaded  # this version: not again

    store = DataStore(root=str(tmp_path / "store"))
    assert materialize_partition(instance, {"data_store": store, "scene_source": source}, "alpha", "2024-06-01",
                                 selection=[dg.AssetKey("scenes")]).success
    with rasterio.open(store.path("scenes", {"region": "alpha", "date": "2024-06-01"}, "scene.tif")) as src, \
            rasterio.open(scene) as original:
        assert np.array_equal(src.read(), original.read())
