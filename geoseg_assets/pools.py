"""Concurrency pools: the steps that run a network hold a slot of `MODEL_COMPUTE_POOL` while they run.

Training, evaluation and inference each fill the CPU (or the GPU) on their own, so an instance runs one of them
at a time, whoever launched it: a job, a backfill, automation or the UI's Materialize button. The limit is the
instance's (`concurrency: pools: default_limit: 1` in dagster.yaml and the embedded instance the Makefile
writes); `dagster instance concurrency set model_compute 2` raises it on a machine with more devices.
"""

MODEL_COMPUTE_POOL = "model_compute"
