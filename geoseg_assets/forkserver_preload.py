"""What a run's forkserver imports once, so that every step process forked from it starts with the code location,
its resolved repository and Dagster's instance storage already loaded (see geoseg_assets/executors.py).

Without it each step process imported Dagster's storage (SQLAlchemy, Alembic), geopandas and this code location
again and rebuilt the repository: about 2.5 s of CPU per step on this machine. Importing opens no connection and
starts no thread, so forking after it is safe; a module that fails to import here is skipped by the forkserver
and imported by the step as before.
"""

import dagster._core.storage.local_compute_log_manager  # noqa: F401  (the instance's compute logs)
import dagster._core.storage.sqlite_storage  # noqa: F401  (the embedded SQLite instance)
import dagster_postgres  # noqa: F401  (the production instance of dagster.yaml)

from geoseg_assets.definitions import defs

# `get_repository_def` is cached on `defs`: a step resolving its job (ReconstructableJob.get_definition) finds the
# module imported and the repository built, in the memory it inherited from the forkserver.
repository = defs.get_repository_def()
