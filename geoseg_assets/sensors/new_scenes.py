"""New-scene sensor logic: landed scenes become region partitions and `scenes` runs, once per file content."""


import datetime as dt
import json

import dagster as dg

from geoseg_assets.partitions import DATE_START, partition_key, region_partitions
from resources.scene_sources import SceneSource

FINGERPRINT_TAG = "geoseg/scene_fingerprint"


def date_problem(ref, today: dt.date) -> str | None:
    """Why a scene's date has no partition (before DATE_START, or after `today`), with the fix; None if it has one.

    A future date is a misnamed folder (or a clock off by days): requesting it would fail the whole tick,
    since its partition does not exist yet, so the file is skipped and the other scenes still run.
    """
    date = dt.date.fromisoformat(ref.date)
    if date < dt.date.fromisoformat(DATE_START):
        return (f"{ref.paths[0]}: skipped, date {ref.date} is before the first date partition {DATE_START} "
                f"(Landsat 1's launch): rename the date folder to the acquisition date")
    if date > today:
        return (f"{ref.paths[0]}: skipped, the date folder {ref.date} is in the future (today is {today} UTC): "
                f"rename it to the acquisition date")
    return None


def plan_scene_runs(scan, cursor: dict, known_regions: set[str], today: dt.date | None = None):
    """Pure planning step: which regions to add and which partitions to (re)run.

    `cursor["seen"]` maps partition key -> fingerprint of the content last requested; a partition
    is requested again only when its fingerprint changes (a replaced file), never for the same bytes.
    Scenes dated outside DATE_START..`today` (default: today in UTC, the date partitions' last day) are
    skipped with a problem naming the file and the fix; a skipped future date runs once renamed, or on its day.
    """
    seen: dict[str, str] = dict(cursor.get("seen", {}))
    today = today or dt.datetime.now(dt.timezone.utc).date()
    problems = list(scan.problems)
    new_regions: list[str] = []
    requests: list[dg.RunRequest] = []
    for ref in scan.refs:
        problem = date_problem(ref, today)
        if problem is not None:
            problems.append(problem)
            continue
        if ref.region not in known_regions and ref.region not in new_regions:
            new_regions.append(ref.region)
        key = partition_key(ref.region, ref.date)
        if seen.get(str(key)) == ref.fingerprint:
            continue
        seen[str(key)] = ref.fingerprint
        requests.append(
            dg.RunRequest(
                run_key=f"{key}:{ref.fingerprint}",
                partition_key=key,
                tags={FINGERPRINT_TAG: ref.fingerprint},
            )
        )
    problems.extend(duplicate_scene_problems(scan.refs))
    return new_regions, requests, seen, problems


def duplicate_scene_problems(refs) -> list[str]:
    """A warning per set of identical files landed under several dates of one region (a copy filed under
    the wrong date would train and predict as if it were another acquisition); each still runs."""
    dates: dict[tuple[str, str], list] = {}
    for ref in refs:
        dates.setdefault((ref.region, ref.fingerprint), []).append(ref)
    return [f"{', '.join(p for r in same for p in r.paths)}: identical bytes landed under {len(same)} dates of region "
            f"{region!r} ({', '.join(r.date for r in same)}); a scene has one acquisition date: remove the copies "
            "filed under a wrong date"
            for (region, _), same in sorted(dates.items()) if len(same) > 1]


# A steady-state tick over 10,000 landed files takes ~0.5 s (benchmarks/bench_backfill.py), so a 30 s
# interval costs little and halves the wait between a scene landing and its run.
NEW_SCENE_INTERVAL_S = 30


def scan_new_scenes(context: dg.SensorEvaluationContext, scene_source: SceneSource) -> dg.SensorResult:
    """new_scene_sensor's tick: add new regions, request `scenes` for new or replaced files."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    digests = cursor.get("digests", {})
    scan = scene_source.scan(digest_cache=digests)
    known = set(context.instance.get_dynamic_partitions(region_partitions.name))
    new_regions, requests, seen, problems = plan_scene_runs(scan, cursor, known)
    for problem in problems:
        context.log.warning(problem)
    present = {p for ref in scan.refs for p in ref.paths}
    digests = {p: v for p, v in digests.items() if p in present}
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[region_partitions.build_add_request(new_regions)] if new_regions else [],
        cursor=json.dumps({"seen": seen, "digests": digests}, sort_keys=True),
        skip_reason=None if requests else dg.SkipReason(
            f"no new or changed scenes in {scene_source.location()}"
            + (f"; {len(problems)} skipped: " + "; ".join(problems[:3]) if problems else "")),
    )
