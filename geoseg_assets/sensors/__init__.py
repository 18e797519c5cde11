"""The code location's sensors at their tick intervals (`SensorIntervals`, `build_sensors`); each sensor's logic lives
in the submodule of its domain: new_scenes, label_changes, drift, failures."""


from dataclasses import dataclass, fields

import dagster as dg

from geoseg_assets.assets.masks import masks
from geoseg_assets.assets.scenes import scenes
from geoseg_assets.sensors.drift import RETRAINING_JOB, scan_drift_reports
from geoseg_assets.sensors.failures import run_failure_notifier
from geoseg_assets.sensors.label_changes import scan_label_changes
from geoseg_assets.sensors.new_scenes import NEW_SCENE_INTERVAL_S, scan_new_scenes
from resources.drift_policy import DriftPolicy
from resources.label_store import LabelStore
from resources.mlflow_tracking import MlflowTracking
from resources.notifier import Notifier
from resources.scene_sources import SceneSource


@dataclass(frozen=True)
class SensorIntervals:
    """Seconds between two ticks of each sensor (`minimum_interval_seconds`). The defaults suit a deployment;
    `GEOSEG_SENSOR_INTERVALS` (e.g. `drift_sensor=10,new_scene_sensor=5`, read once by definitions.py) shortens
    them where waiting costs more than a tick: tests of the daemon, a demo."""

    new_scene_sensor: int = NEW_SCENE_INTERVAL_S
    label_change_sensor: int = 60
    drift_sensor: int = 300  # drift reports arrive with new scenes: minutes of delay cost nothing
    geoseg_automation_sensor: int = 30

    @classmethod
    def parse(cls, text: str | None, source: str = "GEOSEG_SENSOR_INTERVALS") -> "SensorIntervals":
        """`name=seconds` pairs separated by commas (None or "" = the defaults); a clear error otherwise."""
        names = [f.name for f in fields(cls)]
        values = {}
        for item in filter(None, (part.strip() for part in (text or "").split(","))):
            name, _, seconds = item.partition("=")
            if name.strip() not in names or not seconds.strip().isdigit() or int(seconds) < 1:
                raise ValueError(f"{source}={text!r}: {item!r} is not `<sensor>=<whole seconds >= 1>` for one of "
                                 f"{', '.join(names)}; e.g. {source}=drift_sensor=10,new_scene_sensor=5")
            values[name.strip()] = int(seconds)
        return cls(**values)


def build_sensors(intervals: SensorIntervals = SensorIntervals()) -> list[dg.SensorDefinition]:
    """The code location's sensors, each ticking at its interval in `intervals`."""

    @dg.sensor(
        target=scenes,
        minimum_interval_seconds=intervals.new_scene_sensor,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Scans the scene source; adds new regions as partitions and requests `scenes` for new or replaced "
        "files.",
    )
    def new_scene_sensor(context: dg.SensorEvaluationContext, scene_source: SceneSource) -> dg.SensorResult:
        return scan_new_scenes(context, scene_source)

    @dg.sensor(
        target=masks,
        minimum_interval_seconds=intervals.label_change_sensor,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Watches the label store per region (content fingerprint) and re-runs only the changed regions' "
        "masks.",
    )
    def label_change_sensor(context: dg.SensorEvaluationContext, label_store: LabelStore) -> dg.SensorResult:
        return scan_label_changes(context, label_store)

    @dg.sensor(
        job_name=RETRAINING_JOB,
        minimum_interval_seconds=intervals.drift_sensor,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Reads new `data_drift_report` results; when drift exceeds DriftPolicy in enough partitions (or "
        "one beyond the hard threshold) requests one retraining run (dataset rebuilt with the new labelled dates -> "
        "model -> evaluation -> promotion) per drift event, and notifies. Partitions the training set holds never "
        "count, and no event fires while a retraining run is queued or running. The retraining trains with the "
        "champion's recipe (the model and evaluation config of its training run; DriftPolicy.retraining_recipe).",
    )
    def drift_sensor(context: dg.SensorEvaluationContext, drift_policy: DriftPolicy, notifier: Notifier,
                     mlflow_tracking: MlflowTracking) -> dg.SensorResult:
        return scan_drift_reports(context, drift_policy, notifier, mlflow_tracking)

    automation_sensor = dg.AutomationConditionSensorDefinition(
        "geoseg_automation_sensor",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=intervals.geoseg_automation_sensor,
    )
    return [new_scene_sensor, label_change_sensor, automation_sensor, run_failure_notifier, drift_sensor]


# The sensors at their default intervals, for tests and scripts that evaluate one directly.
new_scene_sensor, label_change_sensor, automation_sensor, _, drift_sensor = build_sensors()
