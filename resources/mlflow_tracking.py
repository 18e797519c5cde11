"""MlflowTracking: the experiment tracker and model registry (local SQLite store by default).

Embedded default: `sqlite:///<data>/mlflow/mlflow.db` with artifacts under `<data>/mlflow/artifacts`.
Production: point `tracking_uri` at an MLflow server (Postgres backend store). Models are
registered under one name; the alias `challenger` marks the newest candidate and `champion` the
model that predicts.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

CHAMPION = "champion"
CHALLENGER = "challenger"


class MlflowTracking(ConfigurableResource):
    """Where runs, metrics, artifacts and registered models live."""

    tracking_uri: str = Field(description="MLflow tracking URI, e.g. sqlite:///data/mlflow/mlflow.db or http://mlflow:5000.")
    artifact_location: str | None = Field(default=None, description="Artifact root for a new experiment (local stores).")
    experiment: str = Field(default="geoseg", description="Experiment that holds the training runs.")
    model_name: str = Field(default="geoseg-segmenter", description="Registered model name.")

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment_id(self) -> str:
        client = self.client()
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
        """An active MLflow run in the project's experiment (fluent API bound to this tracking URI)."""
        import mlflow

        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        with mlflow.start_run(experiment_id=self.experiment_id(), run_name=run_name, tags=tags) as active:
            yield active

    def log_model(self, model, input_example):
        """Log a torch model to the active run (MLflow 3 `name=` API). Pickle serialization keeps a plain
        nn.Module (any batch size); the default torch.export program is pinned to the example's shape."""
        import mlflow

        return mlflow.pytorch.log_model(model, name="model", input_example=input_example, serialization_format="pickle")

    def log_png(self, png: bytes, artifact_file: str) -> None:
        """Log PNG bytes as an image artifact of the active run."""
        import io

        import mlflow
        from PIL import Image

        mlflow.log_image(Image.open(io.BytesIO(png)), artifact_file)

    def read_json_artifact(self, run_id: str, path: str) -> dict:
        """A JSON artifact of a run."""
        import json
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            local = self.client().download_artifacts(run_id, path, tmp)
            return json.loads(Path(local).read_text())

    def register(self, model_uri: str, alias: str = CHALLENGER) -> str:
        """Register a logged model as a new version and point `alias` at it; returns the version."""
        import mlflow

        mlflow.set_registry_uri(self.tracking_uri)
        version = mlflow.register_model(model_uri, self.model_name).version
        self.client().set_registered_model_alias(self.model_name, alias, version)
        return str(version)

    def alias_version(self, alias: str):
        """The ModelVersion an alias points at, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client().get_model_version_by_alias(self.model_name, alias)
        except MlflowException:
            return None

    def set_alias(self, alias: str, version: str) -> None:
        self.client().set_registered_model_alias(self.model_name, alias, version)

    def model_uri(self, alias: str) -> str:
        return f"models:/{self.model_name}@{alias}"

    def load(self, alias: str = CHAMPION):
        """The torch model an alias points at."""
        return self._load(self.model_uri(alias))

    def load_version(self, version: str):
        """The torch model of one registered version (resolve an alias once, then load by version, so
        an alias moved meanwhile cannot mix two models in one run)."""
        return self._load(f"models:/{self.model_name}/{version}")

    def _load(self, uri: str):
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return mlflow.pytorch.load_model(uri, map_location="cpu")
