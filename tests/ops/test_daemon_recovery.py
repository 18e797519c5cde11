"""Operations: `dagster-daemon` alone on the production instance (the repo's dagster.yaml, storage on a
throwaway PostgreSQL database, data under a temp GEOSEG_DATA_DIR), no webserver; the harness, an operator's
earlier work (labels, a training set, a champion) and the daemon, is tests/support/daemon.py.

SIGKILL of the daemon's process group while an imagery_job run executes kills the daemon, the code server
and the warm run worker it spawned and, as the warm worker's child, the run worker. With the repo's
dagster.yaml unchanged (its `HealthCheckedRunLauncher` with warm run workers), the restarted daemon's run
monitoring finds the worker process gone, fails the run saying which pid, and run retries re-execute it to
success: no run is lost.

SIGKILL of only the code server mid-run, with runs launched through it (warm run workers off): the run worker
survives it and finishes the run; run monitoring, asking the worker process rather than the dead server, must
not fail it, and no retry is launched.
"""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from geoseg_assets.run_launcher import RUN_WORKER_TAG, WARM
from tests.support.daemon import (
    AUTOMATION_SENSOR,
    RECOVERY_TIMEOUT,
    REGION,
    SCENE_SENSOR,
    SETUP_DATE,
    all_runs,
    assert_no_run_lost,
    describe_group,
    describe_runs,
    group_processes,
    latest_materialization,
    launch_imagery_run,
    materializations,
    parent_pid,
    sensor_state,
    wait_all_finished,
    wait_for_a_step,
    wait_until_quiet,
)
from tests.support.paths import REPO
from tests.support.processes import group_alive, stop_group

pytestmark = [pytest.mark.slow(minutes=5), pytest.mark.postgres]

KILL_DATE = "2024-08-15"

IMAGERY_STEPS = {"scenes", "scenes_scene_integrity", "tiles", "tiles_tile_stats_sanity", "masks",
                 "masks_label_geometries_valid"}  # imagery_job's steps

def test_killing_the_daemon_mid_run_loses_no_run(ops):
    """SIGKILL of the daemon's process group mid-run: with the repo's dagster.yaml unchanged (its
    HealthCheckedRunLauncher, warm run workers on), the restarted daemon's run monitoring finds the run's worker
    process gone, fails the run saying so, and run retries re-execute it to success."""
    from dagster import DagsterEventType, DagsterRunStatus

    from geoseg_assets.partitions import partition_key

    instance, partition = ops.instance, str(partition_key(REGION, KILL_DATE))
    assert ops.config["run_launcher"] == {"module": "geoseg_assets.run_launcher", "class": "HealthCheckedRunLauncher",
                                          "config": {"warm_run_workers": True}}
    assert (ops.home / "dagster.yaml").read_text() == (REPO / "dagster.yaml").read_text()
    t_start = time.time()
    # Only this test's run: the new-scene sensor off (stored state, as the UI's switch does), the scene landed,
    # imagery_job submitted to the run queue as the launchpad does; the daemon dequeues it and launches it
    # through its code server.
    state = sensor_state(instance, SCENE_SENSOR)
    if state is not None:
        instance.stop_sensor(state.instigator_origin_id, state.selector_id, None)
    if REGION not in instance.get_dynamic_partitions("region"):  # this test alone: the sensor never ran
        instance.add_dynamic_partitions("region", [REGION])
    run_id = launch_imagery_run(ops, KILL_DATE)
    print(f"\nimagery_job {run_id[:8]} submitted for {partition} in {time.time() - t_start:.1f} s")

    # Wait until it executes (a step started), then SIGKILL the daemon's whole process group: the daemon, the
    # code server and the warm run worker it spawned and, as the warm worker's child, the run worker.
    run, worker = wait_for_a_step(ops, run_id)
    pgid = ops.daemon.pid
    print(f"SIGKILL to daemon group {pgid}: run {run.status.value}, worker pid {worker}, steps started "
          f"{[e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_START)]}, processes:\n"
          + describe_group(pgid))
    t_kill = time.time()
    os.killpg(pgid, signal.SIGKILL)
    ops.daemon.wait(timeout=30)
    while group_alive(pgid) and time.time() - t_kill < 30:
        time.sleep(0.2)
    assert not group_alive(pgid), "processes of the killed group survived"
    assert not Path(f"/proc/{worker}").exists(), f"run worker {worker} survived the kill"

    # The same instance, configuration untouched: the restarted daemon's first run-monitoring pass (at start, then
    # every poll_interval_seconds) finds the recorded worker process gone and fails the run; run retries
    # re-execute it from failure.
    ops.start_daemon()
    t_restart = time.time()
    print(f"daemon restarted {t_restart - t_kill:.1f} s after the kill")
    last = None
    while True:
        ops.check_daemon()
        runs = all_runs(instance)
        group = [r for r in runs if r.run_id == run_id or r.tags.get("dagster/root_run_id") == run_id]
        state = [(r.run_id[:8], r.status.value) for r in group]
        if state != last:
            last = state
            print(f"  {time.time() - t_restart:6.1f} s after the restart: {state}")
        if any(r.status == DagsterRunStatus.SUCCESS for r in group) and all(r.is_finished for r in runs):
            break
        assert time.time() - t_restart < RECOVERY_TIMEOUT, (
            f"no successful run for {partition} {RECOVERY_TIMEOUT} s after the restart:\n{describe_runs(instance)}\n"
            f"{ops.tail()}")
        time.sleep(1)
    t_recovered = time.time()

    killed = instance.get_run_by_id(run_id)
    failure = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    failure_message = failure[-1].message if failure else None
    print(f"killed run {run_id[:8]}: {killed.status.value}: {failure_message!r}")
    for r in group:
        if r.run_id != run_id:
            print(f"  retry {r.run_id} ({r.tags.get('dagster/retry_number')}. retry, parent {r.parent_run_id[:8]}): "
                  f"{r.status.value}, steps {sorted(e.step_key for e in instance.all_logs(r.run_id, of_type=DagsterEventType.STEP_SUCCESS))}")
    assert killed.status == DagsterRunStatus.FAILURE, killed.status
    assert len(failure) == 1, [e.message for e in failure]
    assert failure_message and "Detected run worker status FAILED" in failure_message, failure_message
    assert f"run worker process (pid {worker})" in failure_message and "is gone" in failure_message, failure_message
    assert killed.tags.get(RUN_WORKER_TAG) == WARM and "forked from a warm worker" in failure_message, failure_message
    assert killed.tags.get("dagster/will_retry") == "true", killed.tags
    successes = [r for r in group if r.status == DagsterRunStatus.SUCCESS]
    assert len(successes) == 1 and successes[0].parent_run_id == run_id, describe_runs(instance)
    assert successes[0].tags.get("dagster/retry_number") == "1"
    # The retry re-executes from failure: exactly the steps the killed run had not finished (a step that ended
    # before the kill, e.g. `scenes`, is not run twice), and each asset's partition was materialized by the run that
    # finished its step. Automation may follow up too: once the killed run is marked failed and before its retry
    # plans the steps, nothing is in progress for the partition, so its fresh `scenes` lets automation request the
    # downstream assets once more (a later materialization, by the automation sensor's run).
    retry_id = successes[0].run_id
    finished = {e.step_key for e in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS)}
    retried = {e.step_key for e in instance.all_logs(retry_id, of_type=DagsterEventType.STEP_START)}
    print(f"steps finished before the kill {sorted(finished)}, run by the retry {sorted(retried)}")
    assert retried and not finished & retried and finished | retried == IMAGERY_STEPS, (finished, retried)
    for asset in ("scenes", "tiles", "masks"):
        run_ids = [r.run_id for r in materializations(instance, asset, partition)]  # newest first
        by = run_id if asset in finished else retry_id
        assert by in run_ids, (asset, by, run_ids)
        newer = set(run_ids[:run_ids.index(by)])
        assert all(instance.get_run_by_id(r).tags.get("dagster/sensor_name") == AUTOMATION_SENSOR for r in newer), (
            asset, describe_runs(instance))

    # No run lost anywhere in the instance: every run ended, and each failure has a successful retry.
    print(describe_runs(instance))
    assert_no_run_lost(instance)
    t_failed = failure[-1].timestamp
    print(f"recovery: run failed {t_failed - t_restart:.1f} s after the restart ({t_failed - t_kill:.1f} s after the "
          f"kill), retry succeeded and all runs ended {t_recovered - t_restart:.1f} s after the restart; "
          f"test wall time {time.time() - t_start:.1f} s")

# A run-monitoring pass every second instead of the repo's 30 s in this test's copy of dagster.yaml, so that
# monitoring looks at the run several times while its worker runs on without the code server; with 30 s it might
# look once or never, and the test would not show that monitoring leaves it alone.
CODE_SERVER_TEST_POLL_S = 1

# Monitoring passes the run must get, its worker alive without a code server, before it may go on. It is held by
# the model_compute pool set to 0 slots (`dagster instance concurrency set`, as an operator pauses inference): its
# `predictions` step waits for a slot, the worker idle, however fast or loaded the machine. Sizing a scene so that
# the run outlived the kill did not hold: 256² ended 1 s after it, and automation's follow-up of a 2048² scene took
# over 300 s of a loaded 2-core CI machine.
HELD_PASSES = 3


def test_killing_the_code_server_mid_run_fails_no_run(ops):
    """SIGKILL of only the code server (`dagster api grpc`, the daemon's child) while a run executes: the run
    worker, a child of that server, survives it (measured: it is re-parented and runs on), writes its events
    straight to the instance and ends the run SUCCESS. Run monitoring, asking the worker process rather than the
    dead code server, must not fail it, and no retry is launched."""
    from dagster import DagsterEventType, DagsterRunStatus

    from geoseg_assets.partitions import partition_key
    from geoseg_assets.pools import MODEL_COMPUTE_POOL

    # The prediction run is of the partition the operator's earlier work left with imagery (tests/support/daemon.py).
    instance, partition = ops.instance, str(partition_key(REGION, SETUP_DATE))
    t_start = time.time()
    # The run queue holds a run whose every first step waits for a pool slot, unless `op_granularity_run_buffer`
    # lets that many runs start and wait at the pool instead.
    pools = {**ops.config["concurrency"]["pools"], "op_granularity_run_buffer": 1}
    # Runs launched through the code server (warm run workers off), the path this test is about; a run outliving
    # its warm worker is tests/ops/test_warm_runs.py's.
    launcher = {**ops.config["run_launcher"], "config": {"warm_run_workers": False}}
    config = {**ops.config, "run_monitoring": {**ops.config["run_monitoring"],
                                               "poll_interval_seconds": CODE_SERVER_TEST_POLL_S},
              "concurrency": {**ops.config["concurrency"], "pools": pools}, "run_launcher": launcher}
    wait_until_quiet(ops)  # restart the daemon between runs, not during one (it would kill it)
    stop_group(ops.daemon)
    (ops.home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        ops.start_daemon()
        state = sensor_state(instance, SCENE_SENSOR)
        if state is not None:
            instance.stop_sensor(state.instigator_origin_id, state.selector_id, None)
        if REGION not in instance.get_dynamic_partitions("region"):
            instance.add_dynamic_partitions("region", [REGION])
        assert latest_materialization(instance, "tiles", partition) is not None, describe_runs(instance)
        before = {r.run_id for r in all_runs(instance)}

        ops.cli("instance", "concurrency", "set", MODEL_COMPUTE_POOL, "0")
        try:
            ops.cli("job", "launch", "-w", str(REPO / "workspace.yaml"), "-j", "prediction_job",
                    "--tags", json.dumps({"dagster/partition": partition}))
            (run_id,) = {r.run_id for r in all_runs(instance, job_name="prediction_job") if r.run_id not in before}
            print(f"\nprediction_job {run_id[:8]} submitted for {partition} in {time.time() - t_start:.1f} s")
            run, worker = wait_for_a_step(ops, run_id, pool=MODEL_COMPUTE_POOL)

            # The code server that launched the run: the daemon's `dagster api grpc` child listening where the
            # run's `.dagster/grpc_info` tag says.
            server = json.loads(run.tags[".dagster/grpc_info"])
            listen = ["--socket", server["socket"]] if "socket" in server else ["--port", str(server["port"])]
            servers = [pid for pid, argv in group_processes(ops.daemon.pid).items()
                       if "api" in argv and "grpc" in argv and any(argv[i:i + 2] == listen for i in range(len(argv)))]
            print(f"code server(s) of run {run_id[:8]} ({server}): {servers}, worker pid {worker}, processes:\n"
                  + describe_group(ops.daemon.pid))
            assert len(servers) == 1, servers
            assert parent_pid(worker) == servers[0], "the run worker is not the code server's child"
            log = ops.daemon_logs[-1]
            offset = len(log.read_bytes())
            t_kill = time.time()
            os.kill(servers[0], signal.SIGKILL)
            while Path(f"/proc/{servers[0]}").exists() and time.time() - t_kill < 30:
                time.sleep(0.1)

            # Monitoring looks at the held run HELD_PASSES times with its code server gone; the run stays STARTED.
            while (checks := log.read_bytes()[offset:].decode(errors="replace").count(f"Checking run {run_id}")) \
                    < HELD_PASSES:
                ops.check_daemon()
                assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED, (
                    f"run ended while its step waited for a slot:\n{describe_runs(instance)}\n{ops.tail()}")
                assert time.time() - t_kill < RECOVERY_TIMEOUT, f"monitoring checked the run {checks} times\n{ops.tail()}"
                time.sleep(0.5)
            held = instance.get_run_by_id(run_id).status
            alive = Path(f"/proc/{worker}").exists()
            print(f"SIGKILL to code server {servers[0]}: {checks} monitoring passes in {time.time() - t_kill:.1f} s, "
                  f"run {held.value}, worker {worker} {f'alive, parent now {parent_pid(worker)}' if alive else 'gone'}")
        finally:
            ops.cli("instance", "concurrency", "set", MODEL_COMPUTE_POOL, "1")  # dagster.yaml's default_limit
        t_release = time.time()

        last = None
        while not instance.get_run_by_id(run_id).is_finished:
            ops.check_daemon()
            state = (instance.get_run_by_id(run_id).status.value, Path(f"/proc/{worker}").exists())
            if state != last:
                last = state
                print(f"  {time.time() - t_release:6.1f} s after the slot: run {state[0]}, worker alive {state[1]}")
            assert time.time() - t_release < RECOVERY_TIMEOUT, f"run not ended:\n{describe_runs(instance)}\n{ops.tail()}"
            time.sleep(0.5)
        t_end = time.time()
        time.sleep(CODE_SERVER_TEST_POLL_S + 2)  # a monitoring pass after the end, should one still act on it
        ops.check_daemon()
    finally:
        (ops.home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())  # the repo's, as before

    run = instance.get_run_by_id(run_id)
    after_kill = log.read_bytes()[offset:].decode(errors="replace")
    checks = after_kill.count(f"Checking run {run_id}")
    verdicts = [line for line in after_kill.splitlines() if "Detected run worker status" in line and run_id in line]
    failures = [e.message for e in instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)]
    retries = [r.run_id for r in all_runs(instance) if r.tags.get("dagster/root_run_id") == run_id]
    print(f"run {run_id[:8]} {run.status.value} {t_end - t_kill:.1f} s after the code server's kill; run monitoring "
          f"checked it {checks} times meanwhile (every {CODE_SERVER_TEST_POLL_S} s), verdicts {verdicts}, "
          f"failures {failures}, retries {retries}")
    assert held == DagsterRunStatus.STARTED and alive, f"the run worker {worker} died with its code server"
    assert run.status == DagsterRunStatus.SUCCESS, (run.status, failures, describe_runs(instance))
    assert not failures and not retries and not verdicts, (failures, retries, verdicts)
    record = latest_materialization(instance, "predictions", partition)
    assert record is not None and record.run_id == run_id, record

    # The daemon carries on without the code server it had: its workspace refresh (every 60 s) starts a new one,
    # through which automation launches the partition's follow-up run (the prediction drift report), and nothing
    # is lost.
    while not (follow_ups := [r for r in all_runs(instance) if r.run_id not in before and r.run_id != run_id
                              and r.tags.get("dagster/sensor_name") == AUTOMATION_SENSOR
                              and r.tags.get("dagster/partition") == partition and r.is_finished]):
        ops.check_daemon()
        assert time.time() - t_end < RECOVERY_TIMEOUT, (
            f"no follow-up run for {partition}:\n{describe_runs(instance)}\n{ops.tail()}")
        time.sleep(1)
    follow_up_server = json.loads(follow_ups[0].tags.get(".dagster/grpc_info", "{}"))
    print(f"automation's follow-up run {follow_ups[0].run_id[:8]} {follow_ups[0].status.value} "
          f"{time.time() - t_end:.1f} s after the run's end, launched through code server {follow_up_server}")
    assert all(r.status == DagsterRunStatus.SUCCESS for r in follow_ups), describe_runs(instance)
    assert follow_up_server and follow_up_server != server, (follow_up_server, server)  # a new code server
    wait_all_finished(ops, t_end, RECOVERY_TIMEOUT)
    new_runs = [r for r in all_runs(instance) if r.run_id not in before]
    print("runs since the launch:\n" + "\n".join(f"  {r.run_id[:8]} {r.status.value} {r.tags.get('dagster/partition')}"
                                                 for r in new_runs))
    print("daemon process group now:\n" + describe_group(ops.daemon.pid))
    assert_no_run_lost(instance)
    print(f"code server kill test wall time {time.time() - t_start:.1f} s")
