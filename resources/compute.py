"""ComputeDevice: where networks run (CPU by default, CUDA when present) and how many CPU threads they use."""

from dagster import ConfigurableResource
from pydantic import Field


class ComputeDevice(ConfigurableResource):
    """The torch device for inference (and its CPU thread budget)."""

    device: str = Field(default="auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
    cpu_threads: int | None = Field(default=None, description="torch intra-op threads on CPU (None = torch's default).")

    def torch_device(self):
        """The resolved torch.device; asking for CUDA on a machine without it is an error, not a silent CPU run."""
        import torch

        from geoseg_assets.ml.train import resolve_device

        if self.cpu_threads:
            torch.set_num_threads(int(self.cpu_threads))
        return resolve_device(self.device)
