"""What the diagram model service answers beyond the vision API it shares with `vl` (services.vl.contract):
the seed's JSON counters (GET /infer/stats)."""

from __future__ import annotations

from pydantic import BaseModel


class SeedStats(BaseModel):
    """The GPU figures are given only on CUDA: dumped with `exclude_unset`, they are absent elsewhere."""

    inference_count: int
    total_inference_time: float
    avg_inference_time: float
    model_load_time: float | None
    gpu_memory_allocated_gb: float | None = None
    gpu_memory_reserved_gb: float | None = None
