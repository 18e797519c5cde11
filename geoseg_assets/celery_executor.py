"""Scale-out on Celery: the imagery and prediction jobs with every step executed by a Celery worker.

The launcher (``dagster job launch``, the run launcher, ``execute_job``) orchestrates the run and
submits one Celery task per step to the queue ``dagster``; any number of workers on any number of
machines execute them. Workers and launcher must share

- the broker: ``redis://127.0.0.1:6379/0`` by default, else ``$GEOSEG_CELERY_BROKER`` (read when a
  run starts), else the run config (see below);
- a persistent Dagster instance (PostgreSQL, see ``dagster.yaml``): the worker reads the run and
  writes the step events there;
- the code (this repository, same version) and the data: with the production profile's
  ``GEOSEG_STORE_URL`` and ``GEOSEG_LANDING_URL`` the outputs and the landed scenes are in an object
  store and workers share no disk (each keeps only caches under its own data root); with the folder
  ``DataStore`` and landing folder, those must be the same paths on every worker (one host, or a
  shared volume). The assets return no values, so Dagster's IO-manager storage holds nothing.

Start a worker (repository root as working directory, same ``DAGSTER_HOME``)::

    printf 'execution:\\n  config:\\n    broker: redis://127.0.0.1:6379/0\\n    backend: redis://127.0.0.1:6379/0\\n' > celery.yaml
    dagster-celery worker start -A dagster_celery.app -y celery.yaml -n geoseg -- --concurrency=2

Override broker/backend per run (launchpad or run config YAML); ``{env: VAR}`` reads a variable::

    execution:
      config:
        broker: {env: GEOSEG_CELERY_BROKER}
        backend: redis://redis.internal:6379/0
"""

from __future__ import annotations

import os

import dagster as dg
from dagster_celery import celery_executor
from dagster_celery.executor import CELERY_CONFIG

from geoseg_assets.assets.masks import masks
from geoseg_assets.assets.predictions import predictions
from geoseg_assets.assets.scenes import scenes
from geoseg_assets.assets.tiles import tiles

BROKER_ENV = "GEOSEG_CELERY_BROKER"
BACKEND_ENV = "GEOSEG_CELERY_BACKEND"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def resolve_urls(broker: str | None = None, backend: str | None = None) -> tuple[str, str]:
    """(broker, backend): the given values, else $GEOSEG_CELERY_BROKER / $GEOSEG_CELERY_BACKEND, else
    the local Redis; the backend defaults to the broker."""
    broker = broker or os.environ.get(BROKER_ENV) or DEFAULT_BROKER
    return broker, backend or os.environ.get(BACKEND_ENV) or broker


@dg.configured(
    celery_executor,
    config_schema={
        "broker": dg.Field(dg.Noneable(dg.StringSource), is_required=False,
                           description=f"Celery broker URL. Default: ${BROKER_ENV}, else {DEFAULT_BROKER}."),
        "backend": dg.Field(dg.Noneable(dg.StringSource), is_required=False,
                            description=f"Celery result backend URL. Default: ${BACKEND_ENV}, else the broker."),
        "include": CELERY_CONFIG["include"],
        "config_source": CELERY_CONFIG["config_source"],
        "retries": CELERY_CONFIG["retries"],
    },
)
def geoseg_celery_executor(config: dict) -> dict:
    """dagster_celery's executor on the local Redis broker; broker and backend come from the run
    config when given, else from $GEOSEG_CELERY_BROKER / $GEOSEG_CELERY_BACKEND, else Redis DB 0."""
    broker, backend = resolve_urls(config.get("broker"), config.get("backend"))
    resolved = {"broker": broker, "backend": backend, "retries": config["retries"]}
    for key in ("include", "config_source"):
        if config.get(key) is not None:
            resolved[key] = config[key]
    return resolved


celery_imagery_job = dg.define_asset_job(
    "celery_imagery_job",
    selection=dg.AssetSelection.assets(scenes, tiles, masks),
    executor_def=geoseg_celery_executor,
    description="imagery_job (scenes -> tiles and masks, with their checks) with every step executed by a "
    "Celery worker (`dagster-celery worker start -A dagster_celery.app`); needs a PostgreSQL instance.",
)


celery_prediction_job = dg.define_asset_job(
    "celery_prediction_job",
    selection=dg.AssetSelection.assets(predictions),
    executor_def=geoseg_celery_executor,
    description="prediction_job (the champion's map of the selected partitions) with the step executed by a Celery "
    "worker; with outputs in an object store (GEOSEG_STORE_URL) and an MLflow server, the worker needs no shared "
    "disk. Needs a PostgreSQL instance.",
)
