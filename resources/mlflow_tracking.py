"""MlflowTracking: the experiment tracker and model registry (local SQLite store by default).

Embedded default: `sqlite:///<data>/mlflow/mlflow.db` with artifacts under `<data>/mlflow/artifacts`.
Production: point `tracking_uri` at an MLflow server (Postgres backend store). Models are
registered under one name; the alias `challenger` marks the newest candidate and `champion` the
model that predicts. A version is weights-only (safetensors + JSON architecture) with its checksum
recorded in the registry, so a tampered artifact store cannot run code in a prediction.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import ConfigurableResource, Failure
from pydantic import Field

from geoseg_assets.ml.model_artifact import ModelArtifactError

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT_DIR = "model"
PREPROCESSING_FILE = "preprocessing.json"  # run artifact: bands, normalization, indices, classes, training grid
ONNX_DIR, ONNX_FILE = "onnx", "model.onnx"  # run artifact: the ONNX export of the logged weights (optional)
SHA_TAG = "geoseg.weights_sha256"  # model-version tag: digest of the weights-only model folder


class MlflowTracking(ConfigurableResource):
    """Where runs, metrics, artifacts and registered models live."""

    tracking_uri: str = Field(description="MLflow tracking URI, e.g. sqlite:///data/mlflow/mlflow.db or http://mlflow:5000.")
    artifact_location: str | None = Field(default=None, description="Artifact root for a new experiment (local stores).")
    experiment: str = Field(default="geoseg", description="Experiment that holds the training runs.")
    model_name: str = Field(default="geoseg-segmenter", description="Registered model name.")
    ui_url: str | None = Field(default=None, description="MLflow UI showing this store (`make ui` starts one at "
                               "http://127.0.0.1:5000 for the embedded store); model metadata links to its run pages. "
                               "None: the tracking URI when it is an http(s) server, else no link.")

    def run_page(self, run_id: str) -> str | None:
        """URL of the run's page in the MLflow UI (`ui_url`, else an http(s) tracking server), None without one."""
        base = self.ui_url or (self.tracking_uri if self.tracking_uri.startswith(("http://", "https://")) else None)
        if base is None:
            return None
        experiment_id = self.client().get_run(run_id).info.experiment_id
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def client(self, create: bool = False):
        """An MlflowClient on the store. A local SQLite store that does not exist is created only when
        `create` (a training run starts); a read never creates one, since MLflow would silently answer
        from a new empty registry after the old one was deleted or moved."""
        from mlflow import MlflowClient

        if self.missing_store_note() and not create:
            raise Failure(self.missing_store_note(), allow_retries=False)
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def check_writable(self) -> None:
        """Fail before training when the local store or artifact folder cannot be written (a read-only mount,
        permissions): otherwise hours of training end in a raw sqlite or OSError when the run is logged."""
        import os

        db, artifacts = self.sqlite_path(), Path(self.artifact_location) if self.artifact_location else None
        local = [db, db.parent] if db is not None else []  # SQLite writes a journal next to the database
        if artifacts is not None:
            local.append(artifacts if artifacts.exists() else artifacts.parent)
        for target in local:
            if target.exists() and not os.access(target, os.W_OK):
                raise Failure(f"the MLflow store {target} is read-only (a read-only mount or missing write permission); "
                              "training would fail when it logs the run. Fix: make it writable for this user, or point "
                              "tracking_uri / artifact_location at a writable store", allow_retries=False)

    def missing_store_note(self) -> str:
        """Why a local SQLite store cannot answer (it does not exist), or "" when it exists or is a server."""
        store = self.sqlite_path()
        if store is None or store.is_file():
            return ""
        return (f"the MLflow store {store} does not exist: no model was trained with tracking_uri {self.tracking_uri} "
                "yet (run training_job), or it was deleted or moved (restore it from a backup, or point tracking_uri "
                "at it; training again starts an empty registry)")

    def sqlite_path(self) -> Path | None:
        """The database file of a `sqlite:///` tracking URI, else None."""
        return Path(self.tracking_uri.removeprefix("sqlite:///")) if self.tracking_uri.startswith("sqlite:///") else None

    def experiment_id(self) -> str:
        client = self.client(create=True)
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = None
        if self.artifact_location:
            Path(self.artifact_location).mkdir(parents=True, exist_ok=True)
            location = Path(self.artifact_location).resolve().as_uri()
        return client.create_experiment(self.experiment, artifact_location=location)

    @contextmanager
    def run(self, run_name: str, tags: dict[str, str]) -> Iterator[object]:
        """A new MLflow run in the project's experiment, active while the block runs (the only place the
        process-wide tracking URI is set: MLflow's run context needs it); log to it by its run id."""
        import mlflow

        if self.sqlite_path() is not None:
            self.sqlite_path().parent.mkdir(parents=True, exist_ok=True)
        self.check_writable()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        with mlflow.start_run(experiment_id=self.experiment_id(), run_name=run_name, tags=tags) as active:
            yield active

    # ---- logging to a run named by its id (bound to this store, whatever run is active) ----

    def log_params(self, run_id: str, params: dict) -> None:
        """Log parameters to a run (values as text, as MLflow stores them)."""
        from mlflow.entities import Param

        self.client().log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])

    def log_metrics(self, run_id: str, metrics: dict, step: int | None = None) -> None:
        """Log metrics to a run at `step` (0 when None), all with one timestamp."""
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        self.client().log_batch(run_id, metrics=[Metric(key, value, now, step or 0) for key, value in metrics.items()])

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client().set_tag(run_id, key, value)

    def log_dict(self, run_id: str, dictionary, artifact_file: str) -> None:
        """Log a dict (or list) as a JSON artifact of a run."""
        self.client().log_dict(run_id, dictionary, artifact_file)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        """Copy a local file into a run's artifacts (under `artifact_path`)."""
        self.client().log_artifact(run_id, local_path, artifact_path)

    def log_png(self, run_id: str, png: bytes, artifact_file: str) -> None:
        """Log PNG bytes as an image artifact of a run."""
        import io

        from PIL import Image

        self.client().log_image(run_id, Image.open(io.BytesIO(png)), artifact_file)

    def log_model(self, model, spec, run_id: str | None = None) -> tuple[str, str]:
        """Log `model` to a run (None: the active one) as weights-only files (`model/weights.safetensors` +
        `model/architecture.json`, see `geoseg_assets.ml.model_artifact`); returns (artifact URI, sha256)."""
        import tempfile

        import mlflow

        from geoseg_assets.ml.model_artifact import save_model

        run_id = run_id or mlflow.active_run().info.run_id
        client = self.client()
        with tempfile.TemporaryDirectory() as tmp:
            sha = save_model(model, spec, Path(tmp) / MODEL_ARTIFACT_DIR)
            client.log_artifacts(run_id, str(Path(tmp) / MODEL_ARTIFACT_DIR), MODEL_ARTIFACT_DIR)
        return f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT_DIR}", sha

    def read_json_artifact(self, run_id: str, path: str) -> dict:
        """A JSON artifact of a run."""
        import json
        import tempfile

        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self.client().download_artifacts(run_id, path, tmp)
                return json.loads(Path(local).read_text())
            except (MlflowException, OSError, ValueError) as exc:
                raise Failure(f"MLflow run {run_id}: its artifact {path} cannot be read from the artifact store ({exc}); "
                              "restore the run's artifacts, or re-run training_job", allow_retries=False) from exc

    def optional_artifact(self, run_id: str, path: str, dst_dir: str) -> Path | None:
        """A run's artifact downloaded into `dst_dir`, or None when the run has no such file (an optional
        artifact: the caller has a way without it)."""
        from mlflow.exceptions import MlflowException

        try:
            return Path(self.client().download_artifacts(run_id, path, dst_dir))
        except (MlflowException, OSError):
            return None

    def register(self, artifact_uri: str, run_id: str, sha256: str, alias: str = CHALLENGER) -> str:
        """Register the logged model folder as a new version recording its checksum (`SHA_TAG`), and point
        `alias` at it; returns the version."""
        from mlflow.exceptions import MlflowException

        client = self.client(create=True)
        try:
            client.get_registered_model(self.model_name)
        except MlflowException:
            client.create_registered_model(self.model_name)
        version = client.create_model_version(self.model_name, artifact_uri, run_id=run_id, tags={SHA_TAG: sha256}).version
        client.set_registered_model_alias(self.model_name, alias, version)
        return str(version)

    def alias_version(self, alias: str):
        """The ModelVersion an alias points at, or None."""
        from mlflow.exceptions import MlflowException

        if self.missing_store_note():
            return None  # no registry, no alias; asking must not create an empty one
        try:
            return self.client().get_model_version_by_alias(self.model_name, alias)
        except MlflowException:
            return None

    def model_version(self, version: str, name: str | None = None):
        """A registered ModelVersion of `name` (default: this model), or None when the registry has no such version."""
        from mlflow.exceptions import MlflowException

        if self.missing_store_note():
            return None
        try:
            return self.client().get_model_version(name or self.model_name, str(version))
        except MlflowException:
            return None

    def run_tags(self, run_id: str) -> dict[str, str]:
        """The tags of an MLflow run (lineage: dataset version, git commit, Dagster run id)."""
        return dict(self.client().get_run(run_id).data.tags)

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of every metric of an MLflow run."""
        return self.client().get_run(run_id).data.metrics

    def no_alias_failure(self, alias: str, fix: str) -> Failure:
        """The non-retryable failure of an asset that needs `alias` and finds none, saying why when the
        store itself is missing (a deleted database reads as "no model", never as an empty new registry)."""
        note = self.missing_store_note()
        return Failure(f"{self.model_name} has no `{alias}` version: {fix}" + (f"; {note}" if note else ""),
                       allow_retries=False)

    def set_alias(self, alias: str, version: str) -> None:
        self.client().set_registered_model_alias(self.model_name, alias, version)

    def model_uri(self, alias: str) -> str:
        return f"models:/{self.model_name}@{alias}"

    def load(self, alias: str = CHAMPION):
        """The torch model an alias points at."""
        version = self.alias_version(alias)
        if version is None:
            raise ModelArtifactError(f"{self.model_name} has no `{alias}` version; run training_job first")
        return self._load(version)

    def load_version(self, version: str):
        """The torch model of one registered version (resolve an alias once, then load by version, so
        an alias moved meanwhile cannot mix two models in one run)."""
        return self._load(self.client().get_model_version(self.model_name, version))

    def _load(self, version):
        """Download the version's folder and rebuild the network from weights only, after checking the
        folder against the checksum recorded at registration (never unpickles anything)."""
        import tempfile

        import mlflow
        from mlflow.exceptions import MlflowException

        from geoseg_assets.ml.model_artifact import load_model

        label = f"{self.model_name} v{version.version}"
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=tmp,
                                                            tracking_uri=self.tracking_uri)
            except (MlflowException, OSError) as exc:
                raise ModelArtifactError(f"{label}: cannot download its model files from {version.source}: {exc}; "
                                         "check the artifact store, or re-run training_job") from exc
            return load_model(Path(local), (version.tags or {}).get(SHA_TAG), label)


def load_registered(tracking: MlflowTracking, version: str):
    """`tracking.load_version` for an asset: a missing, altered or pre-safetensors artifact is a
    non-retryable Failure naming the version and the fix (retrying cannot repair the bytes)."""

    try:
        return tracking.load_version(version)
    except ModelArtifactError as exc:
        raise Failure(str(exc), allow_retries=False, metadata={"model_name": tracking.model_name,
                                                               "model_version": version}) from exc
