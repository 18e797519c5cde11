"""`make demo`, then `make ui`, as a new user does: the demo's runs are ordinary runs of the workspace's code location
and its sensors resume where the demo stopped.

The real demo (`python -m geoseg_assets.demo`, a quick training budget) runs on the embedded instance the Makefile
writes (SQLite) in a throwaway git + DVC repository. Then `dg dev` (webserver + daemon, what `make ui` runs) serves it: switching
`new_scene_sensor` on (the UI's `startSensor` mutation) beside the automation sensor (on by default) requests no
run in two ticks of each. Then, in Debian's chromium driven by playwright, with the geoseg viewer started as
`make ui` starts it: the prediction's "viewer" metadata link opens its map, whose scene and prediction tiles load
(HTTP 200, PNG) and whose legend lists the classes; the data drift report opens from its "report" metadata link;
and "Re-execute all" on a demo run's page in the Dagster UI runs it again, successfully. Before, the demo's
in-process runs had no code-location origin: re-execution raised a CheckError, and the sensor requested all 8
scenes again.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.support.paths import BIN, REPO
from tests.support.processes import start_group, stop_group, tail
from tests.support.repos import new_project_repo
from tests.support.webserver import GraphQL, free_port, wait_for_server

pytestmark = pytest.mark.slow(minutes=3)

# 2 steps, no ONNX export (predictions then run in torch): the test is about the runs, not the model.
QUICK_TRAINING = {"model": {"epochs": 1, "max_steps_per_epoch": 2, "export_onnx": False},
                  "model_evaluation": {"min_miou": 0.0}}
TICK_SECONDS = 3
LOCATION = {"repositoryName": "__repository__", "repositoryLocationName": "geoseg"}
SENSORS = ("new_scene_sensor", "geoseg_automation_sensor")
RUN_TIMEOUT = 180
CHROMIUM = "/usr/bin/chromium"  # Debian's, installed by `make browser`

SENSOR_STATE = """query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { __typename
    ... on Sensor { sensorState { id status ticks(limit: 10) { status runIds timestamp } } } } }"""
START_SENSOR = """mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename
    ... on Sensor { sensorState { status } } ... on PythonError { message } } }"""
ASSET_NODES = "{ assetNodes { assetKey { path } groupName partitionDefinition { description } } }"
LATEST_METADATA = """query($key: AssetKeyInput!, $partition: String!) { assetOrError(assetKey: $key) {
    ... on Asset { assetMaterializations(partitions: [$partition], limit: 1) {
    metadataEntries { label ... on UrlMetadataEntry { url } } } } } }"""
LATEST_METADATA_UNPARTITIONED = """query($key: AssetKeyInput!) { assetOrError(assetKey: $key) {
    ... on Asset { assetMaterializations(limit: 1) { metadataEntries { label ... on UrlMetadataEntry { url } } } } } }"""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["water", "forest", "cropland", "built_up", "road", "bare"]  # the built-in class map the demo uses
PARTITION = "2024-04-15|alpha"
RUN = """query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status parentRunId pipelineName
    tags { key value } } } }"""


def _metadata_url(gql: GraphQL, asset: str, label: str, partition: str | None = PARTITION) -> str:
    """The URL of the `label` entry of the asset's latest materialization of `partition` (None: an unpartitioned
    asset), as the UI shows it."""
    if partition is None:
        (materialization,) = gql(LATEST_METADATA_UNPARTITIONED, key={"path": [asset]})["assetOrError"][
            "assetMaterializations"]
    else:
        (materialization,) = gql(LATEST_METADATA, key={"path": [asset]}, partition=partition)["assetOrError"][
            "assetMaterializations"]
    return next(e["url"] for e in materialization["metadataEntries"] if e["label"] == label)


def _ticks_since(gql: GraphQL, sensor: str, since: float) -> list[dict]:
    state = gql(SENSOR_STATE, s={**LOCATION, "sensorName": sensor})["sensorOrError"]["sensorState"]
    return [t for t in state["ticks"] if t["timestamp"] >= since and t["status"] != "STARTED"]


def test_after_the_demo_sensors_request_nothing_and_a_demo_run_re_executes_from_the_ui(tmp_path):
    import dagster as dg
    from playwright.sync_api import sync_playwright

    from geoseg_assets.definitions import defs

    repo = new_project_repo(tmp_path, ignore="/data/\n/*.log\n")
    data, home = tmp_path / "data", tmp_path / "data" / "dagster_home"
    subprocess.run(["make", "-s", f"{home}/dagster.yaml", f"DATA={data}"], cwd=REPO, check=True)
    port, viewer_port = free_port(), free_port()
    viewer_url = f"http://127.0.0.1:{viewer_port}"
    env = {**os.environ, "DAGSTER_HOME": str(home), "GEOSEG_DATA_DIR": str(data), "GEOSEG_DVC_REPO": str(repo),
           "GEOSEG_VIEWER_URL": viewer_url, "PYTHONUNBUFFERED": "1",
           "GEOSEG_SENSOR_INTERVALS": ",".join(f"{name}={TICK_SECONDS}" for name in SENSORS)}

    t0 = time.time()
    demo = subprocess.run([sys.executable, "-m", "geoseg_assets.demo", "--training-config",
                           json.dumps(QUICK_TRAINING)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    print(f"\ndemo in {time.time() - t0:.0f} s:\n{demo.stdout[-3000:]}")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "DEBUG" not in demo.stdout and "0 failed" in demo.stdout
    # The real Landsat pair is another product than the champion's: skipped with its reason, the runs green.
    skipped = [line for line in demo.stdout.splitlines() if "predictions" in line and "skipped: [bands]" in line]
    assert len(skipped) == 2 and all(line.split()[0] == "ok" for line in skipped), demo.stdout
    # The STAC catalog of the demo's outputs: 8 scenes (6 synthetic, the Landsat pair), 6 predictions, all valid.
    from geoseg_assets.geo.stac_validation import validate_catalog

    catalog = json.loads((data / "store" / "stac" / "scenes" / "collection.json").read_text())
    assert len([link for link in catalog["links"] if link["rel"] == "item"]) == 8
    predictions = json.loads((data / "store" / "stac" / "predictions" / "collection.json").read_text())
    assert len([link for link in predictions["links"] if link["rel"] == "item"]) == 6
    assert validate_catalog(data / "store" / "stac") == []

    with dg.DagsterInstance.from_config(str(home)) as instance:
        demo_runs = instance.get_runs()
        assert demo_runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in demo_runs)
        # Every run carries the code location's origin, so the UI can re-execute it and lists it on its job's page.
        assert all(r.remote_job_origin is not None and r.remote_job_origin.location_name == "geoseg"
                   for r in demo_runs)
        scene_runs = [r for r in demo_runs if r.tags.get("dagster/sensor_name") == "new_scene_sensor"]
        assert len(scene_runs) == 8 and all(r.tags.get("dagster/run_key") for r in scene_runs)
        prediction = next(r for r in demo_runs if r.job_name == "prediction_job"
                          and r.tags.get("dagster/partition") == PARTITION)
        materializations_before = len(instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("predictions"), asset_partitions=[PARTITION]),
            limit=100).records)

    # What `make ui` starts: `dg dev` in the project's virtualenv and the viewer.
    logs = {"dagster dev": tmp_path / "dg-dev.log", "viewer": tmp_path / "viewer.log"}
    procs = {"dagster dev": start_group([str(BIN / "dg"), "dev", "-h", "127.0.0.1", "-p", str(port)],
                                        {**env, "VIRTUAL_ENV": str(BIN.parent)}, logs["dagster dev"]),
             "viewer": start_group([sys.executable, "-m", "geoseg_assets.viewer", "--port", str(viewer_port)], env,
                                   logs["viewer"])}
    try:
        wait_for_server(port, procs, logs)
        wait_for_server(viewer_port, procs, logs, path="/")
        gql = GraphQL(port)
        # The UI lists the code location's asset graph, grouped and partitioned as defined.
        nodes = {"/".join(n["assetKey"]["path"]): n for n in gql(ASSET_NODES)["assetNodes"]}
        assert set(nodes) == {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
        assert nodes["tiles"]["groupName"] == "imagery" and nodes["data_drift_report"]["groupName"] == "monitoring"
        assert "region" in nodes["scenes"]["partitionDefinition"]["description"]
        started = gql(START_SENSOR, s={**LOCATION, "sensorName": "new_scene_sensor"})["startSensor"]
        assert started == {"__typename": "Sensor", "sensorState": {"status": "RUNNING"}}, started
        since = time.time()
        deadline = since + 120
        while time.time() < deadline:
            ticks = {name: _ticks_since(gql, name, since) for name in SENSORS}
            if all(len(t) >= 2 for t in ticks.values()):
                break
            assert procs["dagster dev"].poll() is None, tail(logs["dagster dev"])
            time.sleep(1)
        assert all(len(t) >= 2 for t in ticks.values()), f"{ticks}\n{tail(logs['dagster dev'])}"
        # Two ticks of each, nothing requested: the demo's cursor and run keys stand for what it did.
        assert [t for ts in ticks.values() for t in ts if t["runIds"]] == [], ticks
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert len(instance.get_runs()) == len(demo_runs)

        # The STAC catalog by URL, as QGIS or STAC Browser open it: pystac crawls it over HTTP from the viewer, and
        # GDAL reads a prediction COG it lists by HTTP ranges, pixel for pixel the file in the store.
        import pystac
        import rasterio

        catalog_link = _metadata_url(gql, "stac_catalog", "catalog_url", partition=None)
        assert catalog_link == f"{viewer_url}/store/stac/catalog.json"
        items = {item.id: item for item in pystac.Catalog.from_file(catalog_link).get_items(recursive=True)}
        href = items["prediction-alpha-2024-04-15"].assets["data"].get_absolute_href()
        assert href.startswith(viewer_url)
        with rasterio.open(f"/vsicurl/{href}") as remote, \
                rasterio.open(data / "store/predictions/region=alpha/date=2024-04-15/classes.tif") as local:
            assert (remote.read() == local.read()).all()

        map_link = _metadata_url(gql, "predictions", "viewer")
        assert map_link == f"{viewer_url}/map/alpha/2024-04-15"
        report_link = _metadata_url(gql, "data_drift_report", "report")
        assert report_link == f"{viewer_url}/reports/data_drift/alpha/2024-04-15"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            tiles: list = []
            page.on("response", lambda r: tiles.append(r) if "/tiles/" in r.url else None)
            assert page.goto(map_link).ok
            page.wait_for_load_state("networkidle")
            assert tiles and all(r.status in (200, 204) for r in tiles), [(r.url, r.status) for r in tiles]
            for layer in ("scene", "prediction"):
                bodies = [r.body() for r in tiles if f"/tiles/{layer}/alpha/2024-04-15/" in r.url and r.status == 200]
                assert bodies and all(b.startswith(PNG_SIGNATURE) and len(b) > 100 for b in bodies), layer
            legend = page.locator("#legend li").all_inner_texts()
            assert [text.split(" (")[0] for text in legend] == CLASSES, legend
            page.screenshot(path=str(tmp_path / "viewer.png"))

            report = page.goto(report_link)
            assert report.ok and report.headers["content-type"].startswith("text/html")
            page.get_by_text("Dataset Drift").first.wait_for(timeout=60_000)  # the Evidently report rendered

            # "Re-execute all" on the demo prediction run's page in the Dagster UI.
            page.goto(f"http://127.0.0.1:{port}/runs/{prediction.run_id}")
            page.locator("button", has_text="Re-execute all").first.click(timeout=60_000)
            page.wait_for_url(lambda url: prediction.run_id not in url, timeout=60_000)
            run_id = page.url.rstrip("/").rsplit("/", 1)[-1]
            browser.close()
        deadline = time.time() + RUN_TIMEOUT
        while time.time() < deadline:
            run = gql(RUN, id=run_id)["runOrError"]
            if run["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(1)
        assert run["status"] == "SUCCESS", f"{run}\n{tail(logs['dagster dev'])}"
        assert run["parentRunId"] == prediction.run_id and run["pipelineName"] == "prediction_job"
        assert {"key": "dagster/partition", "value": PARTITION} in run["tags"]
        with dg.DagsterInstance.from_config(str(home)) as instance:
            after = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("predictions"), asset_partitions=[PARTITION]),
                limit=100).records
            assert len(after) == materializations_before + 1
            assert after[0].run_id == run_id
    finally:
        for proc in procs.values():
            stop_group(proc)
