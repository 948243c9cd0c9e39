"""The captioner model service: owns the engine (in-process thinker, or a managed vLLM subprocess),
admission (no batching in front of either: transformers must not batch clips, vLLM batches itself).
"""

from __future__ import annotations

from typing import AsyncGenerator

import bentoml
import numpy as np

from services.runtime.core.settings import get_settings
from services.runtime.edge.remote import guarded
from services.runtime.serving.modelservice import ModelService, resources, thread_envs, traffic

from .contract import GenParams
from .engine import CaptionEngine, TransformersCaptionEngine

_CFG = get_settings().captioner


@bentoml.service(
    name="captioner",
    traffic=traffic(_CFG),
    # 30B MoE in bf16 is ~62 GB of weights plus KV cache for 8 x 32k tokens: 2x80 GB with tensor
    # parallelism, as the seed ran it (2xH100). This process is light; vLLM holds the GPUs.
    resources=resources("4", "16Gi", gpu=2, gpu_type="nvidia-h100-80gb"),
    envs=thread_envs(),
)
class Captioner(ModelService[CaptionEngine]):
    key = "captioner"

    def batch_size(self, device: str) -> int:
        return 1

    def engine_concurrency(self, device: str) -> int:
        # vLLM schedules max_num_seqs at once and queues the rest itself (admission stays ours); the
        # thinker runs one generation at a time.
        return self.cfg.vllm_max_num_seqs if self.backend_for(device) == "vllm" else 1

    def load_engine(self, path: str, device: str, dtype: str) -> CaptionEngine:
        if self.backend_for(device) == "vllm":
            from .vllm_backend import VLLMCaptionEngine

            gpus = self.placement.gpus if self.placement else None
            return VLLMCaptionEngine.start(self.cfg, path, dtype, gpus=gpus)
        return TransformersCaptionEngine.load(path, device, dtype, max_model_len=self.cfg.max_model_len,
                                              threads=self.settings.torch_threads)

    def _run_batch(self, items):  # every call goes through scheduler.slot(): never batched
        raise RuntimeError("the captioner is not batched")

    @bentoml.api
    async def status(self) -> dict:
        return self.status_info()

    @bentoml.api
    @guarded("captioner")
    async def complete(self, audio: np.ndarray, params: GenParams) -> dict:
        engine = self.handle.get()
        async with self.scheduler.slot():
            return (await engine.complete(np.asarray(audio, dtype=np.float32), params)).model_dump()

    @bentoml.api
    async def stream(self, audio: np.ndarray, params: GenParams) -> AsyncGenerator[bytes, None]:
        """Header line, then one Delta line per piece: {"text"} ... {"finish_reason", "usage"}."""

        async def lines(engine: CaptionEngine, _prepared):
            async for delta in engine.stream(np.asarray(audio, dtype=np.float32), params):
                yield delta.line()

        async for data in self.guarded_stream(lambda _e: None, lines):
            yield data

    @bentoml.api
    async def backend_metrics(self) -> str:
        """The backend's own Prometheus text (vLLM's), merged into the gateway's /metrics."""
        return await self.engine_metrics()
