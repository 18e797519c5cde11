"""The free-text options of training and prediction runs as Literal types with their allowed values, importable
without torch so the Dagster configs (loaded by every process that loads the code location) and the pure code
share one list."""

from typing import Literal, get_args

ClassWeighting = Literal["none", "inverse_sqrt", "inverse"]  # CE class weights from train pixel frequencies
CLASS_WEIGHTINGS: tuple[str, ...] = get_args(ClassWeighting)
# The default, by benchmarks/bench_model_quality.py (cross-validated, out-of-fold mIoU over the present classes, seed 0):
# synthetic_hard 0.762 with none vs 0.725 with inverse_sqrt (the plain script: 0.730); on the demo's training set
# inverse_sqrt had reached val mIoU 0.904 vs 0.895 with none (one run, another machine).
DEFAULT_CLASS_WEIGHTING: ClassWeighting = "none"
Norm = Literal["batch", "group"]  # normalization layers: smp's BatchNorm, or GroupNorm for tiny batches
NORMS: tuple[str, ...] = get_args(Norm)
Runtime = Literal["auto", "torch", "onnxruntime"]  # what runs the network in predictions (ml/runtimes.py)
