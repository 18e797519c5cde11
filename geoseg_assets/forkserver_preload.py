"""What a run's forkserver imports once, so that every step process forked from it starts with the code location,
its resolved repository and Dagster's instance storage already loaded (see geoseg_assets/executors.py). A warm run
worker (geoseg_assets/warm_runs.py) imports it too, before it forks runs.

Without it each step process imported Dagster's storage (SQLAlchemy, Alembic), geopandas and this code location
again and rebuilt the repository: about 2.5 s of CPU per step on this machine. Importing opens no connection and
starts no thread, so forking after it is safe; a module that fails to import here is skipped by the forkserver
and imported by the step as before.
"""

import dagster._core.storage.local_compute_log_manager  # noqa: F401  (the instance's compute logs)
import dagster._core.storage.sqlite_storage  # noqa: F401  (the embedded SQLite instance)
import dagster_postgres  # noqa: F401  (the production instance of dagster.yaml)
import geopandas.io._geoarrow  # noqa: F401  (the tile table, GeoParquet)
import PIL.Image
import pyarrow.dataset  # noqa: F401
import pyarrow.pandas_compat  # noqa: F401
import pyarrow.parquet  # noqa: F401
import rio_cogeo.cogeo  # noqa: F401  (COG validation of every written raster)

from geoseg_assets.definitions import defs

# `get_repository_def` is cached on `defs`: a step resolving its job (ReconstructableJob.get_definition) finds the
# module imported and the repository built, in the memory it inherited from the forkserver.
repository = defs.get_repository_def()

PIL.Image.init()  # the image format plugins, which Pillow loads on the first PNG a process writes (the previews)
