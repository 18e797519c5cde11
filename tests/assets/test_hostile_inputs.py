"""Hostile files through the landing folder, the sensor and the imagery job: each case builds its own
hostile input, and asserts that the message names the input and the fix, that GDAL never follows what
the file references (a local HTTP server must see no request), that the partition's earlier outputs are
byte-identical, and that good scenes of the same tick still run."""

import http.server
import shutil
import threading
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from geoseg_assets.geo.errors import SceneError
from geoseg_assets.geo.scene_checks import check_landed_file
from geoseg_assets.geo.scene_io import sha256_file
from tests.support.pipeline import import_truth, materialize_partition, with_test_resources
from tests.support.postgres import PG, throwaway_database
from tests.support.rasters import random_scene, write_tif
from tests.support.runs import failure_text
from tests.support.sensors import tick

BAD = {"region": "alpha", "date": "2024-06-15"}
GOOD = {"region": "beta", "date": "2024-06-15"}


@pytest.fixture
def http_server():
    """A local HTTP server on 127.0.0.1 serving a real GeoTIFF; `.requests` lists every path asked for."""
    requests: list[str] = []
    payload = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(payload.get("body", b""))

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.requests = requests
    server.payload = payload
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def labelled_alpha(instance, tmp_path, synthetic_source, store):
    """A GeoPackage label store holding region alpha's truth, with alpha's first scene materialized."""
    from resources.geopackage_labels import GeoPackageLabelStore

    label_store = GeoPackageLabelStore(path=str(tmp_path / "labels.gpkg"))
    resources = with_test_resources({"data_store": store, "scene_source": synthetic_source, "label_store": label_store})
    assert materialize_partition(instance, resources, "alpha", "2024-04-15").success
    import_truth("alpha", synthetic_source, resources)
    return resources, label_store


def vrt_xml(source: str, width=400, height=300, bands=4) -> str:
    """A VRT exposing `source` (a path, or /vsicurl/<url>) as a 4-band uint16 raster."""
    band = ''.join(
        f'<VRTRasterBand dataType="UInt16" band="{b}"><SimpleSource><SourceFilename relativeToVRT="0">{source}'
        f'</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>' for b in range(1, bands + 1))
    return (f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>EPSG:32633</SRS>'
            f'<GeoTransform>500000, 10, 0, 5000000, 0, -10</GeoTransform>{band}</VRTDataset>')


def _remote_vrt(path: Path, ctx) -> None:
    ctx["server"].payload["body"] = write_tif(ctx["tmp"] / "served.tif", random_scene(seed=9)).read_bytes()
    path.write_text(vrt_xml(f"/vsicurl/{ctx['server'].url}/secret.tif"))


def _local_vrt(path: Path, ctx) -> None:
    secret = write_tif(ctx["tmp"] / "outside" / "secret.tif", random_scene(seed=8))
    path.write_text(vrt_xml(str(secret)))


def _xml_with_bom(path: Path, ctx) -> None:
    path.write_bytes(b"\xef\xbb\xbf" + vrt_xml(f"/vsicurl/{ctx['server'].url}/bom.tif").encode())


def _png_named_tif(path: Path, ctx) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(path, format="PNG")


def _symlink_out_of_landing(path: Path, ctx) -> None:
    path.symlink_to(write_tif(ctx["tmp"] / "outside" / "private.tif", random_scene(seed=7)))


def _gdal_vsi_name(path: Path, ctx) -> None:
    """A file whose content is the name of a GDAL virtual file system path (GDAL may follow such text)."""
    path.write_text(f"/vsicurl/{ctx['server'].url}/name.tif")


HOSTILE = {
    "vrt_remote_reference": (_remote_vrt, "is not a GeoTIFF", "gdal_translate -of COG"),
    "vrt_local_file_reference": (_local_vrt, "is not a GeoTIFF", "gdal_translate -of COG"),
    "xml_with_byte_order_mark": (_xml_with_bom, "is not a GeoTIFF", "gdal_translate -of COG"),
    "png_named_tif": (_png_named_tif, "is not a GeoTIFF", "gdal_translate -of COG"),
    "vsi_path_as_content": (_gdal_vsi_name, "is not a GeoTIFF", "gdal_translate -of COG"),
    "symlink_out_of_landing": (_symlink_out_of_landing, "outside the landing folder", "copy the file into the landing folder"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_landing_file_is_skipped_by_the_tick_refused_by_the_run_and_changes_nothing(instance, 
        case, landing, landing_source, store, tmp_path, http_server, capfd):
    resources = {"data_store": store, "scene_source": landing_source}
    folder = landing / BAD["region"] / BAD["date"]
    write_tif(folder / "scene.tif", random_scene(seed=1))
    assert materialize_partition(instance, resources, **BAD).success
    outputs = sorted(p for p in (store.partition_dir("scenes"), store.partition_dir("tiles")) for p in p.rglob("*")
                     if p.is_file())
    before = {p: sha256_file(p) for p in outputs}

    shutil.rmtree(folder)
    folder.mkdir(parents=True)
    hostile = folder / "scene.tif"
    make, problem, fix = HOSTILE[case]
    make(hostile, {"tmp": tmp_path, "server": http_server})
    write_tif(landing / GOOD["region"] / GOOD["date"] / "scene.tif", random_scene(seed=2))

    result = tick(instance, landing_source, None)  # the tick requests the good scene and names the bad one
    assert [str(r.partition_key) for r in result.run_requests] == [f"{GOOD['date']}|{GOOD['region']}"]
    log = capfd.readouterr().err
    assert f"{hostile}" in log and problem in log and fix in log

    run = materialize_partition(instance, resources, **BAD, raise_on_error=False)  # a run launched by hand
    assert not run.success
    message = failure_text(run)
    assert str(hostile) in message and problem in message and fix in message
    assert not [e for e in run.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert {p: sha256_file(p) for p in outputs} == before
    assert http_server.requests == [], "GDAL followed a reference in a landed file"
    assert materialize_partition(instance, resources, **GOOD).success  # unrelated partitions still run


def test_a_symlink_inside_the_landing_folder_is_a_scene(landing, landing_source):
    """Linking within the landing root (e.g. one file filed under two dates on purpose) stays allowed."""
    real = write_tif(landing / "store-of-files" / "x.tif", random_scene(seed=3))
    (landing / "alpha" / "2024-06-15").mkdir(parents=True)
    (landing / "alpha" / "2024-06-15" / "scene.tif").symlink_to(real)
    scan = landing_source.scan()
    assert [(r.region, r.date) for r in scan.refs] == [("alpha", "2024-06-15")] and scan.problems == []


@pytest.mark.parametrize("name", ["/vsicurl/http://127.0.0.1:9/x.tif", "https://example.invalid/x.tif",
                                  "/vsizip//tmp/x.zip/x.tif", "s3://bucket/x.tif"])
def test_virtual_and_remote_paths_are_refused_before_gdal(name):
    with pytest.raises(SceneError, match="virtual or remote path.*Fix: download or copy the GeoTIFF"):
        check_landed_file(name)


def test_a_stac_item_pointing_at_a_vrt_is_skipped_naming_the_item(tmp_path, http_server):
    import pystac

    from resources.stac_source import StacCatalogSource

    catalog = pystac.Catalog("c", "hostile")
    for name, make in (("good", lambda p: write_tif(p, random_scene(seed=4))),
                       ("evil", lambda p: p.write_text(vrt_xml(f"/vsicurl/{http_server.url}/stac.tif")))):
        path = tmp_path / f"{name}.tif"
        make(path)
        item = pystac.Item(name, None, None, __import__("datetime").datetime(2024, 6, 15), {"region": name})
        item.add_asset("image", pystac.Asset(str(path), media_type=pystac.MediaType.GEOTIFF))
        catalog.add_item(item)
    catalog.normalize_and_save(str(tmp_path / "stac"), pystac.CatalogType.ABSOLUTE_PUBLISHED)
    scan = StacCatalogSource(catalog_path=str(tmp_path / "stac" / "catalog.json")).scan()
    assert [r.region for r in scan.refs] == ["good"]
    assert len(scan.problems) == 1 and "item 'evil'" in scan.problems[0] and "is not a GeoTIFF" in scan.problems[0]
    assert http_server.requests == []


def test_a_failure_after_the_first_file_of_a_multi_file_output_keeps_every_earlier_file(instance, 
        landing, landing_source, store):
    """`tiles` writes a table and its preview; when the second cannot be published (its path became a
    folder), the table already renamed gets its earlier bytes back and the run fails naming the path."""
    resources = {"data_store": store, "scene_source": landing_source}
    write_tif(landing / BAD["region"] / BAD["date"] / "scene.tif", random_scene(seed=1))
    assert materialize_partition(instance, resources, **BAD).success
    table = store.path("tiles", BAD, "tiles.parquet")
    preview = store.path("tiles", BAD, "grid.png")
    before = sha256_file(table)
    preview.unlink()
    preview.mkdir()
    (preview / "keep.txt").write_text("an operator's folder where the preview should be")
    write_tif(landing / BAD["region"] / BAD["date"] / "scene.tif", random_scene(seed=5, height=256, width=256))

    run = materialize_partition(instance, resources, **BAD, raise_on_error=False)
    assert not run.success
    assert str(preview) in failure_text(run)
    assert sha256_file(table) == before, "tiles.parquet was replaced by a step that failed"
    assert (preview / "keep.txt").exists()
    assert not [p.name for p in table.parent.iterdir() if p.name.startswith(".")], "temp files left behind"


def _distant_mosaic(folder: Path) -> list[Path]:
    """Two 64 px tiles 600 km apart: a few KB of files, a 60064 x 60064 px (3.6 Gpx) output grid."""
    from rasterio.transform import from_origin

    return [write_tif(folder / "a.tif", random_scene(height=64, width=64, seed=1)),
            write_tif(folder / "b.tif", random_scene(height=64, width=64, seed=2),
                      transform=from_origin(500000 + 600_000, 5000000 - 600_000, 10, 10))]


def _sparse_giant(folder: Path) -> list[Path]:
    """A sparse GeoTIFF declaring 100000 x 100000 px (no block written: a few KB on disk)."""
    import rasterio
    from rasterio.transform import from_origin

    path = folder / "giant.tif"
    with rasterio.open(path, "w", driver="GTiff", width=100_000, height=100_000, count=4, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10), tiled=True,
                       blockxsize=512, blockysize=512, sparse_ok=True, nodata=0):
        pass
    return [path]


@pytest.mark.parametrize("make,expected", [(_distant_mosaic, "mosaicking/reprojecting 2 file(s) gives a 60064 x 60064 px grid"),
                                           (_sparse_giant, "is 100000 x 100000 px")], ids=["distant_mosaic", "sparse_giant"])
def test_an_oversized_output_grid_is_refused_before_any_pixel_is_read(instance, make, expected, landing, landing_source, store):
    resources = {"data_store": store, "scene_source": landing_source}
    folder = landing / BAD["region"] / BAD["date"]
    write_tif(folder / "scene.tif", random_scene(seed=1))
    assert materialize_partition(instance, resources, **BAD).success
    cog = store.path("scenes", BAD, "scene.tif")
    before = sha256_file(cog)
    shutil.rmtree(folder)
    folder.mkdir(parents=True)
    files = make(folder)
    assert sum(f.stat().st_size for f in files) < 1 << 20

    run = materialize_partition(instance, resources, **BAD, raise_on_error=False)
    assert not run.success
    message = failure_text(run)
    assert all(str(f) in message for f in files) and expected in message
    assert "above the limit of 1,000 Mpx" in message and "max_scene_pixels" in message
    assert not [e for e in run.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert sha256_file(cog) == before
    assert not list(Path(store.root, ".tmp").glob("*.stage.tif")), "work started on the oversized grid"


def _truncated_store(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _overwritten_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4096:12288] = b"\xa5" * 8192  # pages of the SQLite b-trees scribbled over
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncated_store, _overwritten_pages], ids=["truncated", "overwritten_pages"])
def test_an_import_into_a_damaged_geopackage_is_refused_and_keeps_the_file(instance, damage, tmp_path, synthetic_source, store):
    """replace=True into a damaged store used to report success and write a store holding only that region."""
    from geoseg_assets.assets.masks import ImportLabelsConfig, import_labels_job
    from geoseg_assets.definitions import build_defs
    from resources.geopackage_labels import GeoPackageLabelStore

    label_store = GeoPackageLabelStore(path=str(tmp_path / "labels.gpkg"))
    resources = with_test_resources({"data_store": store, "scene_source": synthetic_source, "label_store": label_store})
    for region in ("alpha", "beta"):
        assert materialize_partition(instance, resources, region, "2024-04-15").success
        import_truth(region, synthetic_source, resources)
    gpkg = Path(label_store.path)
    damage(gpkg)
    damaged = sha256_file(gpkg)

    job = build_defs(resources).resolve_job_def(import_labels_job.name)
    config = ImportLabelsConfig(path=str(synthetic_source.labels_path("alpha")), region="alpha",
                                class_column="class_name", replace=True)
    result = job.execute_in_process(instance=instance, raise_on_error=False,
                                    run_config=dg.RunConfig(ops={"import_labels": config}))
    assert not result.success
    message = failure_text(result)
    assert str(gpkg) in message and ("damaged" in message or "cannot be read" in message)
    assert "restore labels.gpkg from a backup" in message and "left as it is" in message
    assert sha256_file(gpkg) == damaged, "the damaged store was rewritten"
    assert not [p for p in gpkg.parent.iterdir() if p.name.startswith(".labels")], "temp files left behind"


REGION_JSON = {
    "truncated_json": ('{"band_names": ["B", "G", "R", "N"', "is not valid JSON"),
    "a_list": ('[["B", "G", "R", "N"]]', "holds a JSON list, not an object"),
    "band_names_as_a_string": ('{"band_names": "B,G,R,N"}', "`band_names`: Input should be a valid list"),
    "band_names_of_numbers": ('{"band_names": [1, 2, 3, 4]}', "`band_names.0`: Input should be a valid string"),
    "duplicate_band_names": ('{"band_names": ["B", "B", "R", "N"]}', "must be distinct, non-empty names"),
    "misspelt_key": ('{"band_names": ["B", "G", "R", "N"], "nodata_value": 0}', "unknown key(s) ['nodata_value']"),
    "unknown_dtype": ('{"band_names": ["B", "G", "R", "N"], "dtype": "uint12"}', "`dtype` 'uint12' is not one of"),
    "nodata_as_text": ('{"band_names": ["B", "G", "R", "N"], "nodata": "zero"}', "`nodata`: Input should be a valid number"),
    "nodata_out_of_range": ('{"band_names": ["B", "G", "R", "N"], "dtype": "uint16", "nodata": -1}', "-1"),
}


@pytest.mark.parametrize("case", sorted(REGION_JSON))
def test_a_malformed_region_json_fails_the_run_naming_the_file_and_the_fix(instance, case, landing, landing_source, store):
    resources = {"data_store": store, "scene_source": landing_source}
    write_tif(landing / BAD["region"] / BAD["date"] / "scene.tif", random_scene(seed=1))
    write_tif(landing / GOOD["region"] / GOOD["date"] / "scene.tif", random_scene(seed=2))
    assert materialize_partition(instance, resources, **BAD).success
    cog = store.path("scenes", BAD, "scene.tif")
    before = sha256_file(cog)
    spec_file = landing / BAD["region"] / "region.json"
    text, expected = REGION_JSON[case]
    spec_file.write_text(text)

    run = materialize_partition(instance, resources, **BAD, raise_on_error=False)
    assert not run.success
    message = failure_text(run)
    assert str(spec_file) in message and expected in message and "Fix:" in message
    assert not [e for e in run.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert sha256_file(cog) == before
    assert materialize_partition(instance, resources, **GOOD).success  # another region is not affected


def test_infinite_values_in_a_float_scene_are_refused_naming_the_band(instance, landing, landing_source, store):
    resources = {"data_store": store, "scene_source": landing_source}
    (landing / BAD["region"]).mkdir()
    (landing / BAD["region"] / "region.json").write_text('{"band_names": ["B", "G", "R", "N"], "dtype": "float32"}')
    data = random_scene(seed=1).astype("float32") / 4000
    path = write_tif(landing / BAD["region"] / BAD["date"] / "scene.tif", data, nodata=None)
    assert materialize_partition(instance, resources, **BAD).success
    cog = store.path("scenes", BAD, "scene.tif")
    before = sha256_file(cog)
    data[2, 100:110, 200] = np.inf  # NDVI-style division by zero in band 3
    data[2, 50, 50] = -np.inf
    write_tif(path, data, nodata=None)

    run = materialize_partition(instance, resources, **BAD, raise_on_error=False)
    assert not run.success
    message = failure_text(run)
    assert str(path) in message and "band 3 holds 11 +/-inf value(s)" in message and "nodata" in message
    assert sha256_file(cog) == before


@pytest.mark.parametrize("dates,expected", [
    (("2024-06-01", "2024-01-01"), "valid_from 2024-06-01 is after valid_to 2024-01-01: the labels would never be "
                                   "valid on any date; swap the two dates"),
    (("2024/06/01", None), "valid_from '2024/06/01' is not a date written YYYY-MM-DD"),
    ((None, "20240601"), "valid_to '20240601' is not a date written YYYY-MM-DD"),
], ids=["from_after_to", "slashes", "compact"])
def test_an_impossible_label_validity_window_is_refused_and_the_store_is_unchanged(instance, dates, expected, tmp_path,
                                                                                   synthetic_source, store):
    from geoseg_assets.assets.masks import ImportLabelsConfig, import_labels_job
    from geoseg_assets.definitions import build_defs

    resources, label_store = labelled_alpha(instance, tmp_path, synthetic_source, store)
    before = sha256_file(label_store.path)
    config = ImportLabelsConfig(path=str(synthetic_source.labels_path("alpha")), region="alpha",
                                class_column="class_name", valid_from=dates[0], valid_to=dates[1])
    result = build_defs(resources).resolve_job_def(import_labels_job.name).execute_in_process(
        instance=instance, raise_on_error=False, run_config=dg.RunConfig(ops={"import_labels": config}))
    assert not result.success and expected in failure_text(result)
    assert sha256_file(label_store.path) == before


def test_overlapping_labels_of_different_classes_are_imported_with_a_warning_saying_which_wins(tmp_path, capfd):
    import geopandas as gpd
    from shapely.geometry import box

    from geoseg_assets.geo.classmap import DEFAULT_CLASS_MAP
    from geoseg_assets.geo.labels import prepare_labels

    names = DEFAULT_CLASS_MAP.names
    frame = gpd.GeoDataFrame({"class": [names[0], names[1], names[1]]},
                             geometry=[box(0, 0, 100, 100), box(50, 50, 150, 150), box(100, 0, 200, 50)],
                             crs="EPSG:32633")  # 1 and 2 share 50 x 50; 1 and 3 only touch along an edge
    _, report = prepare_labels(frame, "labels.geojson", DEFAULT_CLASS_MAP, "EPSG:32633")
    assert report.overlaps == 1
    assert report.overlap_note.startswith("labels.geojson: 1 pair(s) of features of different classes overlap (2500.0")
    assert f"the later feature wins (here {names[1]!r})" in report.overlap_note


def test_identical_scenes_landed_under_two_dates_both_run_with_a_warning_naming_them(instance, landing, landing_source, capfd):
    first = write_tif(landing / "alpha" / "2024-06-15" / "scene.tif", random_scene(seed=1))
    copy = landing / "alpha" / "2024-07-15" / "scene.tif"
    copy.parent.mkdir(parents=True)
    shutil.copy(first, copy)
    write_tif(landing / "alpha" / "2024-08-15" / "scene.tif", random_scene(seed=2))
    result = tick(instance, landing_source, None)
    assert sorted(str(r.partition_key) for r in result.run_requests) == [
        "2024-06-15|alpha", "2024-07-15|alpha", "2024-08-15|alpha"]
    log = capfd.readouterr().err
    assert (f"{first}, {copy}: identical bytes landed under 2 dates of region 'alpha' (2024-06-15, 2024-07-15); "
            "a scene has one acquisition date" in log)
    assert "2024-08-15" not in log.split("identical bytes")[1].split("\n")[0]


def test_temp_files_of_a_killed_run_are_removed_by_the_next_run_and_fresh_ones_are_kept(instance, landing, landing_source, store):
    import os
    import time

    resources = {"data_store": store, "scene_source": landing_source}
    write_tif(landing / BAD["region"] / BAD["date"] / "scene.tif", random_scene(seed=1))
    assert materialize_partition(instance, resources, **BAD).success
    folder = store.partition_dir("scenes", BAD)
    stale = [folder / ".scene.k1ll3d.tif", folder / ".scene.tif.4242.cog.tif", Path(store.root) / ".tmp" / "dataset-deadbeef"]
    stale[2].mkdir(parents=True, exist_ok=True)
    (stale[2] / "part.npy").write_bytes(b"\0" * 1024)
    for path in stale[:2]:
        path.write_bytes(b"half a COG")
    hours_ago = time.time() - 2 * 3600
    for path in [stale[2] / "part.npy", *stale]:
        os.utime(path, (hours_ago, hours_ago))
    live = folder / ".scene.writing-now.tif"  # another run's file in progress: recent, kept
    live.write_bytes(b"in progress")

    assert materialize_partition(instance, resources, **BAD).success
    assert [p for p in stale if p.exists()] == []
    assert live.exists()


def test_a_stale_partition_is_left_out_of_the_dataset_by_name_and_the_others_build(instance, tmp_path):
    """alpha's scene is replaced after its mask was made (the mask now describes other pixels): the dataset
    leaves alpha out with a warning naming it and the fix, records it in the metadata, and builds from beta."""
    import json

    from geoseg_assets.definitions import build_defs
    from resources.data_store import DataStore
    from resources.geopackage_labels import GeoPackageLabelStore
    from resources.synthetic_source import SyntheticSource

    def source(shift):
        return SyntheticSource(cache_dir=str(tmp_path / f"synthetic-{shift}"), regions=["alpha", "beta"],
                               dates=["2024-04-15"], width=1024, height=1024, brightness_shifts={"2024-04-15": shift})

    store = DataStore(root=str(tmp_path / "store"))
    resources = with_test_resources({"data_store": store, "scene_source": source(0.0),
                                     "label_store": GeoPackageLabelStore(path=str(tmp_path / "labels.gpkg"))})
    for region in ("alpha", "beta"):
        assert materialize_partition(instance, resources, region, "2024-04-15").success
        import_truth(region, resources["scene_source"], resources)
        assert materialize_partition(instance, resources, region, "2024-04-15").success
    replaced = {**resources, "scene_source": source(0.3)}
    assert materialize_partition(instance, replaced, "alpha", "2024-04-15", selection=[dg.AssetKey("scenes")]).success

    result = build_defs(resources).resolve_job_def("dataset_job").execute_in_process(
        instance=instance, run_config=dg.RunConfig(ops={"dataset": {"config": {
            "version_with_dvc": False, "block_size_m": 2560.0}}}))
    assert result.success
    meta = result.asset_materializations_for_node("dataset")[0].metadata
    left_out = meta["partitions_left_out"].value
    assert list(left_out) == ["2024-04-15|alpha"] and "made from scene" in left_out["2024-04-15|alpha"]
    assert meta["partitions"].value == ["beta/2024-04-15"]
    manifest = json.loads((store.partition_dir("dataset") / "manifest.json").read_text())
    assert {p["region"] for p in manifest["partitions"]} == {"beta"}
    warnings = [e.user_message for e in instance.all_logs(result.run_id) if "left out of the dataset" in e.user_message]
    assert warnings and "re-materialize scenes, tiles and masks of 2024-04-15|alpha" in warnings[0]


@pytest.fixture
def small_disk(tmp_path):
    """A real 16 MiB tmpfs (needs the mount capability, which root in this CI has)."""
    import subprocess

    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_says_no_space_left_on_device_and_keeps_the_earlier_outputs(instance, small_disk, landing, landing_source):
    from resources.data_store import DataStore

    store = DataStore(root=str(small_disk / "store"))
    resources = {"data_store": store, "scene_source": landing_source}
    write_tif(landing / BAD["region"] / BAD["date"] / "scene.tif", random_scene(height=64, width=64, seed=1))
    assert materialize_partition(instance, resources, **BAD).success
    cog = store.path("scenes", BAD, "scene.tif")
    before = sha256_file(cog)
    write_tif(landing / BAD["region"] / BAD["date"] / "scene.tif", random_scene(height=2048, width=2048, seed=2))  # 32 MiB

    run = materialize_partition(instance, resources, **BAD, raise_on_error=False)
    assert not run.success
    message = failure_text(run)
    assert f"no space left on device under {cog.parent}" in message and "every earlier output was kept" in message
    assert "move the data root" in message
    assert not [e for e in run.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert sha256_file(cog) == before
    assert not [p.name for p in cog.parent.iterdir() if p.name.startswith(".")], "temp files left on the full disk"


@pytest.mark.parametrize("table", ["1labels", "geo-labels", "public.labels", "Labels", "select", "x" * 54, "labels;drop"])
def test_postgis_table_names_that_sql_would_misread_are_refused_at_config_time(table):
    """These passed the old path-component validator and failed (or worse) as unquoted SQL."""
    from resources.postgis_labels import PostgisLabelStore

    with pytest.raises(Exception, match=f"table {table!r} is not a plain SQL identifier.*e.g. labels or geoseg_labels"):
        PostgisLabelStore(table=table)


def test_the_longest_allowed_postgis_table_name_creates_its_table_and_indexes():
    import psycopg2

    from resources.postgis_labels import PostgisLabelStore

    name = "l" * 53
    with throwaway_database() as db:
        PostgisLabelStore(dbname=db, table=name).ensure_schema()
        with psycopg2.connect(dbname=db, **PG) as conn, conn.cursor() as cur:
            cur.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s ORDER BY indexname", (name,))
            indexes = [r[0] for r in cur.fetchall()]
        conn.close()
    assert f"{name}_geom_gist" in indexes and f"{name}_region" in indexes


def _broken_link(folder: Path) -> Path:
    path = folder / "scene.tif"
    path.symlink_to(folder / "gone.tif")
    return path


def _named_pipe(folder: Path) -> Path:
    import os

    path = folder / "scene.tif"
    os.mkfifo(path)  # opening it would block the sensor forever
    return path


def _folder_named_tif(folder: Path) -> Path:
    path = folder / "scene.tif"
    path.mkdir()
    return path


@pytest.mark.parametrize("make,what", [(_broken_link, "a broken link"), (_named_pipe, "a pipe, socket or device"),
                                       (_folder_named_tif, "a folder")], ids=["broken_link", "named_pipe", "folder"])
def test_an_unreadable_landing_entry_is_skipped_by_name_and_the_good_scenes_of_the_tick_run(instance, make, what, landing,
                                                                                            landing_source, capfd):
    folder = landing / BAD["region"] / BAD["date"]
    folder.mkdir(parents=True)
    bad = make(folder)
    write_tif(landing / GOOD["region"] / GOOD["date"] / "scene.tif", random_scene(seed=2))
    result = tick(instance, landing_source, None)
    assert [str(r.partition_key) for r in result.run_requests] == [f"{GOOD['date']}|{GOOD['region']}"]
    log = capfd.readouterr().err
    assert f"{bad}: is not a regular file ({what}). Fix: replace it by the GeoTIFF file itself" in log


def test_a_file_that_changes_while_the_tick_reads_it_is_skipped_and_picked_up_once_settled(instance, landing, landing_source):
    """A copy in progress: the tick hashes a file that keeps growing; it is skipped with the reason, the other
    scene is requested, and the next tick after the copy ends requests it."""
    import threading

    growing = write_tif(landing / BAD["region"] / BAD["date"] / "scene.tif", random_scene(seed=1))
    with open(growing, "ab") as fh:
        fh.write(b"\0" * (96 << 20))  # ~100 MB to hash: the writer below appends while it is read
    write_tif(landing / GOOD["region"] / GOOD["date"] / "scene.tif", random_scene(seed=2))
    stop = threading.Event()

    def keep_appending():  # like a copy under way: a few MB/s, so the file stays ~100 MB (unbounded, it grew to GBs)
        with open(growing, "ab") as fh:
            while not stop.wait(0.001):
                fh.write(b"\0" * 4096)
                fh.flush()

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        scan = landing_source.scan()
    finally:
        stop.set()
        writer.join()
    assert [(r.region, r.date) for r in scan.refs] == [(GOOD["region"], GOOD["date"])]
    assert len(scan.problems) == 1 and f"{growing}: changed while it was being read" in scan.problems[0]
    assert {(r.region, r.date) for r in landing_source.scan().refs} == {(BAD["region"], BAD["date"]),
                                                                        (GOOD["region"], GOOD["date"])}


def test_one_tick_with_a_future_date_an_unreadable_file_and_a_vrt_still_requests_every_good_scene(instance, 
        landing, landing_source, http_server, capfd):
    import datetime as dt

    future = (dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=30)).isoformat()
    write_tif(landing / "alpha" / future / "scene.tif", random_scene(seed=1))
    (landing / "alpha" / "2024-05-01").mkdir(parents=True)
    _broken_link(landing / "alpha" / "2024-05-01")
    (landing / "alpha" / "2024-05-02").mkdir(parents=True)
    (landing / "alpha" / "2024-05-02" / "scene.tif").write_text(vrt_xml(f"/vsicurl/{http_server.url}/tick.tif"))
    good = [("alpha", "2024-06-15"), ("beta", "2024-06-15"), ("gamma", "1984-03-16")]
    for i, (region, date) in enumerate(good):
        write_tif(landing / region / date / "scene.tif", random_scene(seed=10 + i))
    result = tick(instance, landing_source, None)
    assert sorted(str(r.partition_key) for r in result.run_requests) == sorted(f"{d}|{r}" for r, d in good)
    log = capfd.readouterr().err
    assert "is in the future" in log and "a broken link" in log and "is not a GeoTIFF" in log
    assert http_server.requests == []


@pytest.mark.parametrize("sidecar", ["scene.tif.ovr", "scene.tif.msk"])
def test_a_vrt_sidecar_next_to_a_good_geotiff_is_never_followed(instance, sidecar, landing, landing_source, store, http_server):
    """GDAL looks for external overviews (`.ovr`) and masks (`.msk`) next to a file and opens them with any
    driver: a VRT there made it request URLs while the COG was written. Landed files are read without sidecars."""
    resources = {"data_store": store, "scene_source": landing_source}
    folder = landing / BAD["region"] / BAD["date"]
    write_tif(folder / "scene.tif", random_scene(height=1024, width=1024, seed=1))
    (folder / sidecar).write_text(vrt_xml(f"/vsicurl/{http_server.url}/sidecar.tif", width=512, height=512))
    run = materialize_partition(instance, resources, **BAD)
    assert run.success
    assert http_server.requests == [], "GDAL followed a sidecar of a landed file"
    meta = run.asset_materializations_for_node("scenes")[0].metadata
    assert meta["nodata_fraction"].value == 0.0 and meta["width"].value == 1024


def _ogr_vrt_labels(path: Path, server) -> None:
    path.write_text(f'<OGRVRTDataSource><OGRVRTLayer name="l"><SrcDataSource>/vsicurl/{server.url}/labels.csv'
                    '</SrcDataSource><GeometryType>wkbPolygon</GeometryType></OGRVRTLayer></OGRVRTDataSource>')


@pytest.mark.parametrize("name,make,expected", [
    ("labels.geojson", _ogr_vrt_labels, "is not a .geojson file"),
    ("labels.gpkg", _ogr_vrt_labels, "is not a .gpkg file"),
    ("labels.vrt", _ogr_vrt_labels, "has the suffix '.vrt'"),
], ids=["vrt_as_geojson", "vrt_as_gpkg", "vrt_suffix"])
def test_a_label_file_that_is_an_ogr_vrt_is_refused_before_gdal_and_the_store_is_unchanged(instance, 
        name, make, expected, tmp_path, synthetic_source, store, http_server):
    from geoseg_assets.assets.masks import ImportLabelsConfig, import_labels_job
    from geoseg_assets.definitions import build_defs

    resources, label_store = labelled_alpha(instance, tmp_path, synthetic_source, store)
    before = sha256_file(label_store.path)
    hostile = tmp_path / "incoming" / name
    hostile.parent.mkdir()
    make(hostile, http_server)
    result = build_defs(resources).resolve_job_def(import_labels_job.name).execute_in_process(
        instance=instance, raise_on_error=False, run_config=dg.RunConfig(ops={"import_labels": ImportLabelsConfig(
            path=str(hostile), region="alpha", class_column="class_name")}))
    assert not result.success
    message = failure_text(result)
    assert str(hostile) in message and expected in message and "ogr2ogr" in message
    assert http_server.requests == [] and sha256_file(label_store.path) == before
