"""Resource profiles of the code location: `GEOSEG_RESOURCES=production` wires PostGIS labels, an MLflow
server URI and a shared DVC remote from environment variables, resolved by Dagster at run time."""

import dagster as dg
import psycopg2
import pytest

from geoseg_assets.definitions import RESOURCE_PROFILES, profile_resources
from resources.catalog import SCENE_COG
from resources.geopackage_labels import GeoPackageLabelStore
from resources.postgis_labels import PostgisLabelStore
from tests.support.postgres import PG, throwaway_database

PRODUCTION_VARS = ("GEOSEG_PG_HOST", "GEOSEG_PG_PORT", "GEOSEG_PG_USER", "GEOSEG_PG_PASSWORD", "GEOSEG_PG_DB",
                   "MLFLOW_TRACKING_URI", "GEOSEG_DVC_REMOTE")


def test_an_unknown_profile_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="GEOSEG_RESOURCES='prod' .* embedded, production"):
        profile_resources("prod", tmp_path)
    assert sorted(RESOURCE_PROFILES) == ["embedded", "production"]
    assert isinstance(profile_resources("embedded", tmp_path)["label_store"], GeoPackageLabelStore)


@pytest.mark.postgres
def test_production_profile_reads_its_connections_from_the_environment(tmp_path, monkeypatch):
    resources = profile_resources("production", tmp_path)
    for var in PRODUCTION_VARS:
        monkeypatch.delenv(var, raising=False)
    # Nothing set: using the label store fails and names the variable to set.
    with pytest.raises(Exception, match="GEOSEG_PG_HOST"):
        with dg.build_resources({"label_store": resources["label_store"]}):
            pass

    with throwaway_database() as db:
        env = {"GEOSEG_PG_HOST": PG["host"], "GEOSEG_PG_PORT": str(PG["port"]), "GEOSEG_PG_USER": PG["user"],
               "GEOSEG_PG_PASSWORD": "", "GEOSEG_PG_DB": db,
               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "GEOSEG_DVC_REMOTE": str(tmp_path / "remote")}
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        wanted = {k: resources[k] for k in ("label_store", "mlflow_tracking", "dvc")}
        with dg.build_resources(wanted) as built:
            assert isinstance(built.label_store, PostgisLabelStore)
            assert (built.label_store.host, built.label_store.port, built.label_store.dbname) == (PG["host"], PG["port"], db)
            built.label_store.ensure_schema()  # PostGIS extension, table and indexes in that database
            assert built.mlflow_tracking.tracking_uri == env["MLFLOW_TRACKING_URI"]
            assert built.dvc.remote_url == env["GEOSEG_DVC_REMOTE"]
        with psycopg2.connect(dbname=db, **PG) as conn, conn.cursor() as cur:
            cur.execute("SELECT f_geometry_column FROM geometry_columns WHERE f_table_name = 'labels'")
            assert cur.fetchall() == [("geom",)]


def test_production_profile_lands_from_a_bucket_when_geoseg_landing_url_is_set(tmp_path, monkeypatch):
    from resources.bucket_landing_source import BucketLandingSource
    from resources.landing_source import LandingFolderSource

    monkeypatch.delenv("GEOSEG_LANDING_URL", raising=False)
    assert isinstance(profile_resources("production", tmp_path)["scene_source"], LandingFolderSource)
    monkeypatch.setenv("GEOSEG_LANDING_URL", "s3://imagery/landing")
    source = profile_resources("production", tmp_path)["scene_source"]
    with dg.build_resources({"scene_source": source}) as built:
        assert isinstance(built.scene_source, BucketLandingSource)
        assert built.scene_source.location() == "s3://imagery/landing/"
        assert built.scene_source.cache_dir == str(tmp_path / "landing-cache")


def test_production_profile_keeps_outputs_in_a_bucket_when_geoseg_store_url_is_set(tmp_path, monkeypatch):
    from resources.data_store import DataStore
    from resources.object_data_store import ObjectDataStore

    for var in ("GEOSEG_STORE_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    assert type(profile_resources("production", tmp_path)["data_store"]) is DataStore
    monkeypatch.setenv("GEOSEG_STORE_URL", "s3://geoseg-outputs/prod")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    store = profile_resources("production", tmp_path)["data_store"]
    with dg.build_resources({"data_store": store}) as built:
        assert isinstance(built.data_store, ObjectDataStore)
        assert built.data_store.location() == "s3://geoseg-outputs/prod"
        assert built.data_store.endpoint_url == "http://127.0.0.1:9000"
        assert built.data_store.root == str(tmp_path / "store-cache")  # caches only
        assert str(built.data_store.file(SCENE_COG, {"region": "a", "date": "2024-01-01"})) == \
            "/vsis3/geoseg-outputs/prod/scenes/region=a/date=2024-01-01/scene.tif"
