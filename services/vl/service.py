"""The VL model service (Qwen2.5-VL): replicas for concurrent generations, micro-batching of the
prompts and images of concurrent requests into one generate, bounded queue (429 + Retry-After)."""

from __future__ import annotations

import contextlib
import threading
from typing import AsyncGenerator

import bentoml

from services.runtime.core.errors import InvalidRequest, ServiceUnavailable
from services.runtime.core.settings import get_settings
from services.runtime.edge.remote import guarded
from services.runtime.serving.generation import Delta
from services.runtime.serving.modelservice import ModelService, resources, thread_envs, traffic
from services.runtime.serving.streams import ThreadStream

from .contract import VisionItem, VisionResult, VisionResults
from .engine import AdapterUnavailable, VisionLanguageEngine, VLItem

_CFG = get_settings().vl


class VisionService(ModelService[VisionLanguageEngine]):
    """Shared by `vl` and `diagram`: generate (batched), stream, status."""

    def engine_concurrency(self, device: str) -> int:
        return self.cfg.max_concurrency  # one model replica per concurrent generation (vLLM: batches at once)

    def batch_size(self, device: str) -> int:
        if self.backend_for(device) == "vllm":
            return self.cfg.vllm_max_num_seqs  # vLLM batches every generation it is given at each step
        return super().batch_size(device)

    def _run_batch(self, items: list[VLItem]) -> list[VisionResult]:
        return self.handle.get().generate_batch(items)

    def check_items(self, items: list[VisionItem]) -> None:
        """What only the model service can judge, refused before queueing: the adapter asked for, and a
        constraint xgrammar cannot compile."""
        engine = self.handle.get()
        for item in items:
            if item.constraint is not None:
                try:
                    item.constraint.check()
                except ValueError as exc:
                    raise InvalidRequest(str(exc), param="response_format", code="invalid_constraint") from None
            try:
                engine.resolve_adapter(item.adapter)
            except AdapterUnavailable as exc:
                # Configured but its weights do not fit the base model (health: degraded, with the reason):
                # not the client's mistake, and nothing else is served in its place.
                raise ServiceUnavailable(str(exc), param="adapter", code="adapter_unavailable") from None
            except ValueError as exc:
                raise InvalidRequest(str(exc), param="adapter", code="unknown_adapter") from None

    async def _generate(self, items: list[VisionItem]) -> list[VisionResult]:
        self.check_items(items)
        return await self.scheduler.run([VLItem.decode(item) for item in items])

    async def _stream(self, item: VisionItem) -> AsyncGenerator[bytes, None]:
        async def lines(engine: VisionLanguageEngine, decoded: VLItem):
            cancel = threading.Event()
            pieces = ThreadStream(lambda emit: engine.stream(decoded, emit, cancel), cancel)
            async with contextlib.aclosing(aiter(pieces)) as it:  # closed (generation stopped) when this one is
                async for piece in it:
                    yield Delta(text=piece).line()
            assert pieces.result is not None
            yield Delta(finish_reason=pieces.result.finish_reason, usage=pieces.result.usage).line()

        def prepare(_engine) -> VLItem:
            self.check_items([item])
            return VLItem.decode(item)

        async for data in self.guarded_stream(prepare, lines):
            yield data


@bentoml.service(
    name="vl",
    traffic=traffic(_CFG),
    # 3B in bf16 ~7.5 GB per replica; two replicas + activations fit one 24 GB L4.
    resources=resources("2", "16Gi", gpu=1, gpu_type="nvidia-l4"),
    envs=thread_envs(),
)
class VL(VisionService):
    key = "vl"

    def load_engine(self, path: str, device: str, dtype: str) -> VisionLanguageEngine:
        if self.backend_for(device) == "vllm":
            from .vllm_backend import VLLMVisionEngine

            return VLLMVisionEngine.start(self.cfg, self.key, path, dtype,
                                          gpus=self.placement.gpus if self.placement else None)
        return VisionLanguageEngine.load(path, device, dtype, model_class="Qwen2_5_VLForConditionalGeneration",
                                         replicas=self.cfg.max_concurrency, threads=self.settings.torch_threads,
                                         image_pixels=self.cfg.image_pixels)

    @bentoml.api
    async def status(self) -> dict:
        return self.status_info()

    @bentoml.api
    async def backend_metrics(self) -> str:
        """The backend's own Prometheus text (vLLM's), merged into the gateway's /metrics."""
        return await self.engine_metrics()

    @bentoml.api
    @guarded("vl")
    async def generate(self, requests: list[VisionItem]) -> dict:
        return VisionResults(results=await self._generate(requests)).model_dump()

    @bentoml.api
    async def stream(self, request: VisionItem) -> AsyncGenerator[bytes, None]:
        async for chunk in self._stream(request):
            yield chunk
