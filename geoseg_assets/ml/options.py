"""The free-text options of training and prediction runs as Literal types with their allowed values, importable
without torch so the Dagster configs (loaded by every process that loads the code location) and the pure code
share one list."""

from typing import Literal, get_args

ClassWeighting = Literal["none", "inverse_sqrt", "inverse"]  # CE class weights from train pixel frequencies
CLASS_WEIGHTINGS: tuple[str, ...] = get_args(ClassWeighting)
# The default, by benchmarks/bench_model_quality.py (cross-validated, out-of-fold mIoU over the present classes, seed 0):
# none 0.762 / inverse_sqrt 0.725 on synthetic_hard, 0.563 / 0.580 on SpaceNet, against the plain script's 0.730 and
# 0.549: only none is at least the plain script on both. On the demo's training set (one run each, so a few points of
# float-path noise): best val / test 0.889 / 0.887 with none and 0.920 / 0.916 with inverse_sqrt on 2 threads,
# 0.871 / 0.892 and 0.889 / 0.882 on one.
DEFAULT_CLASS_WEIGHTING: ClassWeighting = "none"
Norm = Literal["batch", "group"]  # normalization layers: smp's BatchNorm, or GroupNorm for tiny batches
NORMS: tuple[str, ...] = get_args(Norm)
Runtime = Literal["auto", "torch", "onnxruntime"]  # what runs the network in predictions (ml/runtimes.py)
