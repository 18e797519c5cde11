"""DVC remote and MLflow artifacts on an object store (issue 19, item 3), against a real S3-protocol server
(moto's standalone server, its own process on 127.0.0.1): the production profile's `GEOSEG_DVC_REMOTE=s3://...`
pushes a dataset that a fresh clone gets back byte for byte with plain `dvc pull`; an `mlflow server
--artifacts-destination s3://...` holds the registered model's files, which the trainer logs and a predictor
loads through the server without any credential of its own, and a tampered object is refused. Credentials and
the endpoint come from AWS's standard variables only: no config file the project writes holds them."""


import dagster as dg
import pytest
import torch

from geoseg_assets.definitions import profile_resources
from geoseg_assets.ml.model_artifact import ModelArtifactError
from resources.dvc_store import DvcError, DvcStore
from resources.mlflow_tracking import CHAMPION, MODEL_ARTIFACT_DIR, MlflowTracking
from tests.support.models import SPEC, tiny_model
from tests.support.mlflow_server import mlflow_server as running_mlflow_server
from tests.support.repos import DATASET, digests, dvc, git, new_git_repo, write_npy_dataset
from tests.support.s3 import CREDENTIALS
from tests.support.webserver import free_port

AWS_VARS = (*CREDENTIALS, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE", "MLFLOW_S3_ENDPOINT_URL")


def test_the_production_dvc_remote_on_s3_gives_a_fresh_clone_the_same_bytes(s3_env, tmp_path, monkeypatch):
    s3, bucket = s3_env, s3_env.new_bucket()
    remote = f"s3://{bucket}/geoseg/dvc"
    monkeypatch.setenv("GEOSEG_DVC_REMOTE", remote)
    repo = new_git_repo(tmp_path / "repo")
    write_npy_dataset(repo / DATASET)
    with dg.build_resources({"dvc": profile_resources("production", tmp_path, repo)["dvc"]}) as built:
        assert built.dvc.remote_url == remote
        version = built.dvc.commit("dataset")  # dvc commit + dvc push to the bucket
    before = digests(repo / DATASET)
    md5 = version.md5.removesuffix(".dir")
    keys = s3.keys(bucket, "geoseg/dvc/")
    assert f"geoseg/dvc/files/md5/{md5[:2]}/{md5[2:]}.dir" in keys
    assert len(keys) == len(before) + 1  # every file's object and the folder listing, under the prefix only
    config_local = (repo / ".dvc" / "config.local").read_text()
    assert remote in config_local
    assert not any(v in config_local for v in CREDENTIALS.values()) and s3.endpoint not in config_local
    assert remote not in (repo / ".dvc" / "config").read_text()  # the committed config names no machine's store

    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "track the dataset")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / DATASET).exists()
    # A teammate's clone: the same remote in its config.local, then plain `dvc pull` (verify is on: every object
    # is re-hashed against dvc.lock).
    dvc(clone, "remote", "add", "--local", "-f", "-d", "local", remote)
    dvc(clone, "pull", "dataset")
    assert digests(clone / DATASET) == before


def test_a_missing_bucket_or_an_unreachable_store_fails_the_push_naming_the_fix(s3_env, tmp_path, monkeypatch):
    """The dvc error and the fix, raised before anything is recorded as pushed; the dataset stays as it was."""
    repo = new_git_repo(tmp_path / "repo")
    write_npy_dataset(repo / DATASET)
    before = digests(repo / DATASET)
    with pytest.raises(DvcError, match=r"(?s)dvc push.*NoSuchBucket.*Fix: the bucket of remote_url does not exist"):
        DvcStore(repo_dir=str(repo), remote_url="s3://geoseg-no-such-bucket/dvc").commit("dataset")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(DvcError, match=r"(?s)dvc push.*Could not connect.*Fix: the object store is not reachable"):
        DvcStore(repo_dir=str(repo), remote_url=f"s3://{s3_env.new_bucket()}/dvc").commit("dataset")
    assert digests(repo / DATASET) == before


@pytest.fixture
def mlflow_server(s3, tmp_path, monkeypatch):
    """`mlflow server` with its runs in SQLite and its artifacts in a fresh bucket; only the server has the
    store's credentials (the clients in this process have none). (URL, bucket)."""
    bucket = s3.new_bucket()
    with running_mlflow_server(s3, bucket, tmp_path) as url:
        for var in AWS_VARS:
            monkeypatch.delenv(var, raising=False)
        yield url, bucket


def test_a_model_round_trips_through_an_mlflow_server_whose_artifacts_live_on_s3(s3, mlflow_server):
    url, bucket = mlflow_server
    tracking = MlflowTracking(tracking_uri=url)
    model = tiny_model(0)
    with tracking.run("object-store", {"geoseg.dataset_version": "abc.dir"}) as run:
        run_id = run.info.run_id
        uri, sha = tracking.log_model(model, SPEC)
        tracking.log_dict(run_id, {"bands": ["B", "G", "R", "NIR"]}, "preprocessing.json")
    version = tracking.register(uri, run_id, sha)
    tracking.set_alias(CHAMPION, version)

    keys = s3.keys(bucket, "mlflow/")
    stored = {k.split("/artifacts/", 1)[1] for k in keys}
    assert {f"{MODEL_ARTIFACT_DIR}/weights.safetensors", f"{MODEL_ARTIFACT_DIR}/architecture.json",
            "preprocessing.json"} <= stored, keys
    assert all(k.startswith("mlflow/") and f"/{run_id}/artifacts/" in k for k in keys)

    # A predictor (another client, no credentials) loads the champion through the server: the same network.
    loaded = MlflowTracking(tracking_uri=url).load(CHAMPION)
    x = torch.randn(2, SPEC.in_channels, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert tracking.read_json_artifact(run_id, "preprocessing.json") == {"bands": ["B", "G", "R", "NIR"]}

    # Someone with write access to the bucket swaps the weights: the registered checksum refuses them.
    (weights,) = [k for k in keys if k.endswith(f"{MODEL_ARTIFACT_DIR}/weights.safetensors")]
    s3.client().put_object(Bucket=bucket, Key=weights, Body=b"not the registered weights")
    with pytest.raises(ModelArtifactError, match=f"v{version}"):
        tracking.load_version(version)
