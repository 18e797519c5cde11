"""The free-text options of training and prediction runs as Literal types with their allowed values, importable
without torch so the Dagster configs (loaded by every process that loads the code location) and the pure code
share one list."""

from typing import Literal, get_args

ClassWeighting = Literal["none", "inverse_sqrt", "inverse"]  # CE class weights from train pixel frequencies
CLASS_WEIGHTINGS: tuple[str, ...] = get_args(ClassWeighting)
Norm = Literal["batch", "group"]  # normalization layers: smp's BatchNorm, or GroupNorm for tiny batches
NORMS: tuple[str, ...] = get_args(Norm)
Runtime = Literal["auto", "torch", "onnxruntime"]  # what runs the network in predictions (ml/runtimes.py)
