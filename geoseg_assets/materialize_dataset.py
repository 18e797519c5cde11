"""The command of dvc.yaml's `dataset` stage: materialize the `dataset` asset through Dagster.

`dvc repro` runs it (with the repo lock held, so the asset must not call dvc itself: DVC commits the
output to dvc.lock afterwards). Run it as `python -m geoseg_assets.materialize_dataset` from the
repository root with the project's venv active.
"""

import sys

import dagster as dg

from geoseg_assets.assets.datasets import dataset
from geoseg_assets.definitions import defs


def main() -> int:
    job = dg.define_asset_job("dvc_repro_dataset", selection=[dataset.key])
    resolved = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("dvc_repro_dataset")
    result = resolved.execute_in_process(
        instance=dg.DagsterInstance.get(),
        run_config=dg.RunConfig(ops={"dataset": {"config": {"version_with_dvc": False}}}),
        raise_on_error=False,
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
