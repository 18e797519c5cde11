"""`make demo`: stage a demo landing folder, let the new-scene sensor pick it up, materialize it.

Stages 2 synthetic regions x 3 dates (with ground-truth labels) and the bundled real Landsat pair
of Pucallpa, evaluates `new_scene_sensor` against the instance in $DAGSTER_HOME (SQLite by
default), adds the region partitions it asks for and materializes every asset for every requested
partition, then prints where the outputs are and how to open the UI.
"""

import json
import shutil
import sys
import time
from pathlib import Path

import dagster as dg

from geoseg_assets.definitions import REPO_ROOT, default_data_dir, defs
from geoseg_assets.partitions import region_partitions
from geoseg_assets.sensors import new_scene_sensor
from resources.scene_sources import REGION_SPEC_FILE, SyntheticSource

REAL_SCENES = {  # region -> {date: bundled file}
    "pucallpa": {
        "2010-07-01": REPO_ROOT / "tests/data/landsat_drift/pucallpa_2010.tif",
        "2020-07-01": REPO_ROOT / "tests/data/landsat_drift/pucallpa_2020.tif",
    }
}
REAL_SPECS = {"pucallpa": {"band_names": ["SWIR1", "NIR", "R", "G"], "dtype": "uint8"}}


def stage_landing(landing: Path) -> None:
    """Fill the landing folder: synthetic scenes + labels, and the bundled real scenes."""
    synthetic = SyntheticSource(cache_dir=str(landing), nodata_margin=0.03)
    for ref in synthetic.scan().refs:
        synthetic.fetch(ref.region, ref.date)
    for region, by_date in REAL_SCENES.items():
        for date, src in by_date.items():
            dst = landing / region / date / src.name
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        (landing / region / REGION_SPEC_FILE).write_text(json.dumps(REAL_SPECS[region]))


def main() -> int:
    data_dir = default_data_dir()
    landing = data_dir / "landing"
    started = time.time()
    stage_landing(landing)

    instance = dg.DagsterInstance.get()
    resources = defs.resources
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = new_scene_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(region_partitions.name, list(request.partition_keys))
    job = defs.resolve_job_def("imagery_job")
    failures = []
    for request in result.run_requests:
        run = job.execute_in_process(
            partition_key=request.partition_key, instance=instance, tags=request.tags, raise_on_error=False
        )
        status = "ok" if run.success else "FAILED"
        print(f"  {status:6} scenes + tiles  {request.partition_key}  run {run.run_id[:8]}")
        if not run.success:
            failures.append(request.partition_key)

    store = Path(resources["data_store"].root)
    print(f"\nDemo finished in {time.time() - started:.0f}s: {len(result.run_requests)} partitions, {len(failures)} failed.")
    print(f"  landing folder : {landing}")
    print(f"  outputs        : {store}  (scenes/, tiles/ by region=/date=)")
    print(f"  Dagster home   : {instance.root_directory}")
    print("  open the UI    : make ui   -> http://127.0.0.1:3000")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
