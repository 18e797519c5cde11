"""Operations: the real `dagster-webserver` + `dagster-daemon` on a PostgreSQL instance, driven over GraphQL.

What an operator does in the UI, end to end, on the production `dagster.yaml` (storage pointed at a
throwaway database): the asset graph and its checks are listed, the two regions are added as dynamic
partitions, a backfill of scenes -> tiles, masks over 2 regions x 2 dates is launched with the UI's own
mutation (`launchPartitionBackfill`) and run by the daemon through the queued run coordinator. One
partition's landed scene is truncated: that partition fails with the file named, the other three are
materialized in PostgreSQL; the operator repairs the file and re-executes the backfill "from failure"
(`reexecutePartitionBackfill`), which runs exactly that partition; asking again for "only missing /
failed" then launches nothing.
"""

import os
import subprocess
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

from geoseg_assets.run_coordinator import PrewarmingRunCoordinator
from tests.support.paths import BIN, REPO
from tests.support.postgres import PG, dagster_pg_env, throwaway_database
from tests.support.processes import group_alive, start_group, stop_group, tail
from tests.support.webserver import GraphQL, free_port, wait_for_server


REGIONS = ["alpha", "beta"]
DATES = ["2024-06-15", "2024-08-15"]
BACKFILL_ASSETS = ["scenes", "tiles", "masks"]
BROKEN = ("2024-08-15", "beta")  # (date, region) whose landed scene is truncated until the operator repairs it
AUTOMATION_SENSOR = "geoseg_automation_sensor"
BACKFILL_TIMEOUT = 8 * 60

pytestmark = [pytest.mark.slow(minutes=3), pytest.mark.postgres]


# --------------------------------------------------------------------------------------------- helpers

def _production_instance_yaml() -> dict:
    """The repo's dagster.yaml, unchanged (storage from DAGSTER_PG_*, queued runs, run retries), plus run
    monitoring so that a run whose worker dies is failed (and retried) instead of hanging the backfill."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["storage"]["custom"]["class"] == "PooledPostgresStorage", "dagster.yaml should be the Postgres instance"
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= 1 and config["run_retries"]["enabled"]
    return {**config, "run_monitoring": {"enabled": True, "poll_interval_seconds": 5}}


def _land_scenes(landing: Path) -> Path:
    """Every partition's scene in the landing folder, BROKEN's cut to a third of its bytes (a transfer that
    died half way); returns the good copy of that file, kept aside for the repair."""
    from resources.synthetic_source import SyntheticSource

    source = SyntheticSource(cache_dir=str(landing), regions=REGIONS, dates=DATES, width=256, height=256)
    for region in REGIONS:
        for day in DATES:
            source.fetch(region, day)  # writes <landing>/<region>/<date>/scene.tif (labels go to <landing>/labels/)
    broken = landing / BROKEN[1] / BROKEN[0] / "scene.tif"
    good = landing.parent / "good-scene.tif"
    data = broken.read_bytes()
    good.write_bytes(data)
    broken.write_bytes(data[: len(data) // 3])
    return good


def _wait_for_backfill(gql: "GraphQL", backfill_id: str, procs: dict, logs: dict) -> tuple[dict, float]:
    """Poll the backfill as the backfill page does until the daemon has finished it."""
    t0, backfill, last_status = time.time(), None, None
    while time.time() - t0 < BACKFILL_TIMEOUT:
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{tail(logs[name])}"
        backfill = gql(BACKFILL_STATUS, id=backfill_id)["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        runs = sorted(r["status"] for r in backfill["runs"])
        if (backfill["status"], runs) != last_status:
            last_status = (backfill["status"], runs)
            print(f"  {time.time() - t0:6.1f} s  backfill {backfill['status']}, runs {runs}")
        if backfill["status"] not in ("REQUESTED", "CANCELING", "FAILING"):
            break
        time.sleep(2)
    seconds = time.time() - t0
    print(f"backfill {backfill_id}: {backfill['status']} in {seconds:.1f} s wall, {len(backfill['runs'])} runs")
    return backfill, seconds


def _status_counts(backfill: dict) -> dict:
    return {"/".join(s["assetKey"]["path"]): (s["numPartitionsTargeted"], s["numPartitionsMaterialized"],
                                              s["numPartitionsFailed"])
            for s in backfill["assetBackfillData"]["assetBackfillStatuses"]}


def _days(start: str, end: str) -> list[str]:
    first, last = date.fromisoformat(start), date.fromisoformat(end)
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


PARTITION_STATUSES = """
query($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    assetPartitionStatuses {
      __typename
      ... on MultiPartitionStatuses {
        primaryDimensionName
        ranges {
          primaryDimStartKey primaryDimEndKey
          secondaryDim { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions materializingPartitions } }
        }
      }
    }
  }
}"""


def _missing_or_failed(gql: GraphQL, assets: list[str], wanted: list[str]) -> list[str]:
    """The launch dialog's "missing and failed" filter, computed as the UI does it: client-side, from each
    asset's partition health (`assetPartitionStatuses`); a partition is kept when any selected asset lacks
    a successful materialization for it."""
    nodes = gql(PARTITION_STATUSES, keys=[{"path": [a]} for a in assets])["assetNodes"]
    assert len(nodes) == len(assets)
    keep = set()
    for node in nodes:
        statuses = node["assetPartitionStatuses"]
        assert statuses["__typename"] == "MultiPartitionStatuses" and statuses["primaryDimensionName"] == "date"
        done = {f"{day}|{region}"  # date is the primary (time) dimension; keys are "date|region"
                for r in statuses["ranges"]
                for day in _days(r["primaryDimStartKey"], r["primaryDimEndKey"])
                for region in r["secondaryDim"]["materializedPartitions"]}
        keep |= set(wanted) - done
    return sorted(keep)


BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id status numPartitions isAssetBackfill
      error { message }
      runs { id status }
      assetBackfillData { assetBackfillStatuses { ... on AssetPartitionsStatusCounts {
        assetKey { path } numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed } } }
    }
    ... on PythonError { message }
  }
}"""

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionKeysNotFoundError { partitionKeys message }
    ... on PythonError { message stack }
  }
}"""

REEXECUTE_BACKFILL = """
mutation($params: ReexecutionParams!) {
  reexecutePartitionBackfill(reexecutionParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


# ------------------------------------------------------------------------------------------------ test

def test_webserver_and_daemon_backfill_on_postgres(tmp_path, monkeypatch):
    from dagster import AssetKey, DagsterInstance

    from geoseg_assets.definitions import defs
    from geoseg_assets.partitions import partition_key

    asset_graph = defs.resolve_asset_graph()
    expected_assets = {k.to_user_string() for k in asset_graph.get_all_asset_keys()}
    expected_checks = {(k.asset_key.to_user_string(), k.name) for k in asset_graph.asset_check_keys}
    partitions = [str(partition_key(r, d)) for r in REGIONS for d in DATES]
    assert partitions == [f"{d}|{r}" for r in REGIONS for d in DATES]  # dimension values in dimension-name order

    with throwaway_database() as db:
        home, data = tmp_path / "dagster_home", tmp_path / "data"
        home.mkdir()
        (home / "dagster.yaml").write_text(yaml.safe_dump(_production_instance_yaml(), sort_keys=False))
        good_copy = _land_scenes(data / "landing")
        pg_env = dagster_pg_env(db)
        for var, value in pg_env.items():
            monkeypatch.setenv(var, value)
        env = {**os.environ, **pg_env, "DAGSTER_HOME": str(home), "GEOSEG_DATA_DIR": str(data),
               "PYTHONUNBUFFERED": "1"}
        port = free_port()
        logs = {"webserver": tmp_path / "webserver.log", "daemon": tmp_path / "daemon.log"}
        procs: dict[str, subprocess.Popen] = {}
        started = time.time()
        # Create the schema once, before two processes race to create it on an empty database.
        migrate = subprocess.run([str(BIN / "dagster"), "instance", "migrate"], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=120)
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        print(f"\nschema created (dagster instance migrate) in {time.time() - started:.1f} s")
        try:
            procs["webserver"] = start_group([str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port),
                                         "-w", str(REPO / "workspace.yaml")], env, logs["webserver"])
            procs["daemon"] = start_group([str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
                                     env, logs["daemon"])
            wait_for_server(port, procs, logs)
            print(f"webserver + daemon up (/server_info answers) in {time.time() - started:.1f} s")
            gql = GraphQL(port)

            # --- the code location, its asset graph and checks ---------------------------------------
            workspace = gql("""{ workspaceOrError { ... on Workspace { locationEntries {
                name loadStatus locationOrLoadError { __typename ... on RepositoryLocation { repositories { name } }
                                                                ... on PythonError { message } } } } } }""")
            (entry,) = workspace["workspaceOrError"]["locationEntries"]
            assert entry["loadStatus"] == "LOADED" and entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
            location = entry["name"]
            (repository,) = [r["name"] for r in entry["locationOrLoadError"]["repositories"]]
            assert (location, repository) == ("geoseg", "__repository__")
            repo_selector = {"repositoryName": repository, "repositoryLocationName": location}

            nodes = gql("""{ assetNodes { assetKey { path } partitionDefinition { type dimensionTypes { name } }
                             assetChecksOrError { ... on AssetChecks { checks { name } } } } }""")["assetNodes"]
            by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
            assert set(by_key) == expected_assets
            assert {"scenes", "tiles", "masks", "dataset", "model", "model_evaluation", "champion_model", "predictions",
                    "data_quality_report", "data_drift_report", "prediction_drift_report",
                    "model_quality_report"} <= set(by_key)
            checks = {(key, c["name"]) for key, n in by_key.items() for c in n["assetChecksOrError"].get("checks", [])}
            assert checks == expected_checks and ("scenes", "scene_integrity") in checks
            for key in BACKFILL_ASSETS:
                partitioning = by_key[key]["partitionDefinition"]
                assert partitioning["type"] == "MULTIPARTITIONED"
                assert {d["name"] for d in partitioning["dimensionTypes"]} == {"region", "date"}
            assert by_key["dataset"]["partitionDefinition"] is None

            # The webserver reads the instance the daemon writes: queue limits from dagster.yaml, daemon heartbeats.
            instance_info = gql("{ instance { runQueuingSupported runQueueConfig { maxConcurrentRuns } } }")["instance"]
            assert instance_info["runQueuingSupported"]
            assert instance_info["runQueueConfig"]["maxConcurrentRuns"] == _production_instance_yaml()["concurrency"]["runs"]["max_concurrent_runs"]

            # Only the backfill's runs in this test: switch the automation sensor off as an operator would in the
            # UI (its reactions to the new scenes, e.g. data_quality_report, are tested in test_automation.py).
            sensor = gql("""query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) {
                            __typename ... on Sensor { sensorState { id status } } } }""",
                         s={**repo_selector, "sensorName": AUTOMATION_SENSOR})["sensorOrError"]
            assert sensor["__typename"] == "Sensor", sensor
            stopped = gql("""mutation($id: String) { stopSensor(id: $id) { __typename
                             ... on StopSensorMutationResult { instigationState { status } } ... on PythonError { message } } }""",
                          id=sensor["sensorState"]["id"])["stopSensor"]
            assert stopped.get("instigationState", {}).get("status") == "STOPPED", stopped

            # --- the region partitions ----------------------------------------------------------------
            for region in REGIONS:
                added = gql("""mutation($repo: RepositorySelector!, $name: String!, $key: String!) {
                                 addDynamicPartition(repositorySelector: $repo, partitionsDefName: $name, partitionKey: $key) {
                                   __typename ... on AddDynamicPartitionSuccess { partitionKey }
                                   ... on PythonError { message } ... on UnauthorizedError { message } } }""",
                            repo=repo_selector, name="region", key=region)["addDynamicPartition"]
                assert added == {"__typename": "AddDynamicPartitionSuccess", "partitionKey": region}, added

            # Nothing is materialized yet: "missing and failed" selects every requested partition.
            assert _missing_or_failed(gql, BACKFILL_ASSETS, partitions) == sorted(partitions)

            # --- the backfill, run by the daemon -----------------------------------------------------------
            t0 = time.time()
            launched = gql(LAUNCH_BACKFILL, params={
                "assetSelection": [{"path": [a]} for a in BACKFILL_ASSETS], "partitionNames": partitions,
                "title": "ops test: imagery 2 regions x 2 dates"})["launchPartitionBackfill"]
            assert launched["__typename"] == "LaunchBackfillSuccess", launched
            backfill_id = launched["backfillId"]
            backfill, backfill_seconds = _wait_for_backfill(gql, backfill_id, procs, logs)
            broken_key = "|".join(BROKEN)
            # The truncated scene fails its partition (bad input: no run retry) and only it: the other three
            # partitions are materialized, the backfill ends COMPLETED_FAILED, and the failure names the file.
            assert backfill["status"] == "COMPLETED_FAILED", (
                f"backfill {backfill['status']} after {backfill_seconds:.0f} s: {backfill}\n{tail(logs['daemon'])}")
            assert backfill["isAssetBackfill"] and backfill["error"] is None
            statuses = sorted(r["status"] for r in backfill["runs"])
            assert statuses == ["FAILURE"] + ["SUCCESS"] * (len(partitions) - 1), backfill["runs"]
            assert _status_counts(backfill) == {k: (len(partitions), len(partitions) - 1, 1) for k in BACKFILL_ASSETS}
            assert _missing_or_failed(gql, BACKFILL_ASSETS, partitions) == [broken_key]
            instance = DagsterInstance.from_config(str(home))
            try:
                (failed_run,) = [instance.get_run_by_id(r["id"]) for r in backfill["runs"] if r["status"] == "FAILURE"]
                assert failed_run.tags["dagster/partition"] == broken_key
                errors = [e.dagster_event.event_specific_data.error.message
                          for e in instance.all_logs(failed_run.run_id) if e.dagster_event and e.dagster_event.is_step_failure]
            finally:
                instance.dispose()
            assert errors and str(data / "landing" / BROKEN[1] / BROKEN[0] / "scene.tif") in errors[0], errors
            print(f"failed partition {broken_key}: {errors[0].strip().splitlines()[0][:200]}")

            # --- the operator repairs the file, then "Re-execute -> From failure" on the backfill page ------------
            (data / "landing" / BROKEN[1] / BROKEN[0] / "scene.tif").write_bytes(good_copy.read_bytes())
            rerun = gql(REEXECUTE_BACKFILL, params={"parentRunId": backfill_id, "strategy": "FROM_FAILURE"})
            rerun = rerun["reexecutePartitionBackfill"]
            assert rerun["__typename"] == "LaunchBackfillSuccess", rerun
            retry, retry_seconds = _wait_for_backfill(gql, rerun["backfillId"], procs, logs)
            assert retry["status"] == "COMPLETED_SUCCESS", (retry, tail(logs["daemon"]))
            assert [r["status"] for r in retry["runs"]] == ["SUCCESS"], retry["runs"]  # only the failed partition
            assert _status_counts(retry) == {k: (1, 1, 0) for k in BACKFILL_ASSETS}
            backfill_id = rerun["backfillId"]
            backfill = {**retry, "runs": backfill["runs"] + retry["runs"]}

            # The webserver sees the daemon's heartbeats (both on the same PostgreSQL instance).
            daemons = gql("{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }")
            daemons = {d["daemonType"]: d for d in daemons["instance"]["daemonHealth"]["allDaemonStatuses"]}
            assert {"BACKFILL", "QUEUED_RUN_COORDINATOR", "SENSOR", "MONITORING"} <= set(daemons), daemons
            assert all(d["healthy"] for d in daemons.values() if d["required"]), daemons

            # --- the materializations are in PostgreSQL ------------------------------------------------------
            instance = DagsterInstance.from_config(str(home))
            try:
                assert isinstance(instance.run_storage, PostgresRunStorage)
                assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
                assert isinstance(instance.run_coordinator, PrewarmingRunCoordinator)  # a QueuedRunCoordinator
                assert sorted(instance.get_dynamic_partitions("region")) == REGIONS
                for key in BACKFILL_ASSETS:
                    assert instance.get_materialized_partitions(AssetKey(key)) == set(partitions), key
                runs_before = instance.get_runs_count()
                backfills_before = len(instance.get_backfills())
                assert runs_before == len(backfill["runs"])
            finally:
                instance.dispose()
            import psycopg2

            with psycopg2.connect(dbname=db, **PG) as conn, conn.cursor() as cur:
                cur.execute("SELECT asset_key, count(DISTINCT partition) FROM event_logs "
                            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' GROUP BY asset_key ORDER BY asset_key")
                assert {AssetKey.from_db_string(k).to_user_string(): n for k, n in cur.fetchall()} == {k: len(partitions) for k in BACKFILL_ASSETS}
            conn.close()

            # --- "only missing / failed" again launches nothing -----------------------------------------------
            # 1. Launch dialog, "missing and failed" filter over the same selection: no partition left to launch
            #    (the UI disables Launch on an empty selection, so no backfill is submitted).
            assert _missing_or_failed(gql, BACKFILL_ASSETS, partitions) == []
            # 2. Backfill page, "Re-execute -> From failure": refused, there is no missing materialization.
            retried = gql(REEXECUTE_BACKFILL, params={"parentRunId": backfill_id, "strategy": "FROM_FAILURE"})
            retried = retried["reexecutePartitionBackfill"]
            assert retried["__typename"] == "PythonError" and "no missing materializations" in retried["message"], retried
            instance = DagsterInstance.from_config(str(home))
            try:
                assert instance.get_runs_count() == runs_before
                assert len(instance.get_backfills()) == backfills_before
            finally:
                instance.dispose()
        finally:
            stopping = time.time()
            for name, proc in procs.items():
                stop_group(proc)
            print(f"webserver + daemon stopped in {time.time() - stopping:.1f} s")
        for name, proc in procs.items():
            assert proc.returncode is not None, f"{name} still running"
            assert not group_alive(proc.pid), f"{name}: processes of its group are still running"
        print(f"total {time.time() - started:.1f} s")
