"""The VL model service (Qwen2.5-VL): replicas for concurrent generations, micro-batching of the
prompts and images of concurrent requests into one generate, bounded queue (429 + Retry-After)."""

from __future__ import annotations

import threading
from typing import AsyncGenerator

import bentoml

from services.runtime.edge import remote
from services.runtime.core.errors import InvalidRequest, ServiceUnavailable
from services.runtime.codecs.images import from_wire
from services.runtime.serving.modelservice import ModelService, resources, thread_envs, traffic
from services.runtime.edge.remote import guarded
from services.runtime.core.settings import get_settings

from .engine import AdapterUnavailable, VisionLanguageEngine, VLItem, VLResult

_CFG = get_settings().vl


def to_items(requests: list[dict]) -> list[VLItem]:
    """Wire dicts (images as base64 PNG: runtime.codecs.images.to_wire) -> engine items."""
    return [VLItem(messages=r["messages"], images=[from_wire(a) for a in r["images"]],
                   max_new_tokens=int(r["max_new_tokens"]), temperature=float(r.get("temperature") or 0.0),
                   top_p=r.get("top_p"), top_k=r.get("top_k"), adapter=r.get("adapter")) for r in requests]


def result_dict(r: VLResult) -> dict:
    return {"text": r.text, "finish_reason": r.finish_reason, "adapter": r.adapter,
            "generate_seconds": round(r.generate_seconds, 4),
            "usage": {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                      "total_tokens": r.prompt_tokens + r.completion_tokens}}


class VisionService(ModelService[VisionLanguageEngine]):
    """Shared by `vl` and `diagram`: generate (batched), stream, status."""

    model_class: str = ""

    def engine_concurrency(self, device: str) -> int:
        return self.cfg.max_concurrency  # one model replica per concurrent generation

    def _run_batch(self, items: list[VLItem]) -> list[VLResult]:
        return self.handle.get().generate_batch(items)

    def check_adapters(self, requests: list[dict]) -> None:
        engine = self.handle.get()
        for r in requests:
            try:
                engine.resolve_adapter(r.get("adapter"))
            except AdapterUnavailable as exc:
                # Configured but its weights do not fit the base model (health: degraded, with the reason):
                # not the client's mistake, and nothing else is served in its place.
                raise ServiceUnavailable(str(exc), param="adapter", code="adapter_unavailable") from None
            except ValueError as exc:
                raise InvalidRequest(str(exc), param="adapter", code="unknown_adapter") from None

    async def _generate(self, requests: list[dict]) -> list[dict]:
        self.check_adapters(requests)
        results = await self.scheduler.run(to_items(requests))
        return [result_dict(r) for r in results]

    async def _stream(self, request: dict) -> AsyncGenerator[bytes, None]:
        import json

        async def lines(engine, item: VLItem):
            cancel = threading.Event()
            holder: dict = {}

            def pieces():
                holder["result"] = yield from engine.stream(item, cancel)

            async for piece in remote.relay_thread_iterator(pieces, cancel):
                yield json.dumps({"text": piece}, ensure_ascii=False).encode() + b"\n"
            r = holder.get("result")
            if r is not None:
                yield json.dumps({"finish_reason": r.finish_reason, "usage": result_dict(r)["usage"]}).encode() + b"\n"

        def prepare(_engine) -> VLItem:
            self.check_adapters([request])
            return to_items([request])[0]

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
        return VisionLanguageEngine.load(path, device, dtype, model_class="Qwen2_5_VLForConditionalGeneration",
                                         replicas=self.cfg.max_concurrency, threads=self.settings.torch_threads,
                                         image_pixels=self.cfg.image_pixels)

    @bentoml.api
    async def status(self) -> dict:
        return self.status_info()

    @bentoml.api
    @guarded("vl")
    async def generate(self, requests: list[dict]) -> dict:
        return {"results": await self._generate(requests)}

    @bentoml.api
    async def stream(self, request: dict) -> AsyncGenerator[bytes, None]:
        async for chunk in self._stream(request):
            yield chunk
