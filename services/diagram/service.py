"""The diagram model service: Qwen3-VL with LoRA adapters chosen per request (peft multi-adapter).

Adapters come from QWEN_DIAGRAM_ADAPTERS: each entry an adapter folder (adapter_config.json +
adapter_model.safetensors) or a folder of such folders. A missing or broken entry is a loud warning and
a `degraded` health state — the base model still serves — never a crash. An adapter whose weights do not
fit the base model (another architecture, other target modules or key prefixes) is not served: requests
for it (or, when it is the default, requests naming none) are a 503 `adapter_unavailable` with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncGenerator

import bentoml

from services.runtime.core.logging import get_logger
from services.runtime.core.metrics import metrics
from services.runtime.serving.modelservice import resources, thread_envs, traffic
from services.runtime.edge.remote import guarded
from services.runtime.core.settings import get_settings
from services.vl.contract import VisionItem, VisionResults
from services.vl.engine import VisionLanguageEngine
from services.vl.service import VisionService

from .contract import SeedStats

_CFG = get_settings().diagram
log = get_logger("diagram")


def discover_adapters(entries: list[str]) -> tuple[dict[str, str], list[str]]:
    """name -> folder for every adapter found, and a problem list for what was not."""
    found: dict[str, str] = {}
    problems: list[str] = []
    for entry in entries:
        p = Path(entry).expanduser()
        if (p / "adapter_config.json").is_file():
            candidates = [p]
        elif p.is_dir():
            candidates = sorted(c for c in p.iterdir() if (c / "adapter_config.json").is_file())
            if not candidates:
                problems.append(f"{entry}: no adapter_config.json in it or its subfolders")
        else:
            problems.append(f"{entry}: no such folder")
            candidates = []
        for c in candidates:
            if not any((c / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
                problems.append(f"{c}: adapter weights missing")
                continue
            found.setdefault(c.name, str(c))
    return found, problems


@bentoml.service(
    name="diagram",
    traffic=traffic(_CFG),
    # 2B in bf16 ~4.5 GB + LoRA adapters (MBs): one 24 GB L4 with room for batches.
    resources=resources("2", "8Gi", gpu=1, gpu_type="nvidia-l4"),
    envs=thread_envs(),
)
class Diagram(VisionService):
    key = "diagram"

    def __init__(self) -> None:
        self.stats = {"inference_count": 0, "total_inference_time": 0.0}
        self.problems: list[str] = []
        super().__init__()

    def load_engine(self, path: str, device: str, dtype: str) -> VisionLanguageEngine:
        from services.runtime.serving.sources import resolve_model_path

        entries = list(self.cfg.adapters)
        if self.settings.models == "tiny" and not entries:
            # The tiny checkpoint ships two adapters next to the base model (adapters/default, adapters/alt).
            entries = [str(Path(resolve_model_path(self.settings, "diagram", self.cfg.model)) / "adapters")]
        adapters, self.problems = discover_adapters(entries)
        for problem in self.problems:
            log.warning("LoRA adapter not loaded: serving without it", extra={"problem": problem})
        if not adapters:
            log.warning("no LoRA adapter loaded: the base model serves every request (health: degraded)")
        if self.backend_for(device) == "vllm":
            from services.vl.vllm_backend import VLLMVisionEngine

            if self.cfg.merge_single_adapter:
                log.info("QWEN_DIAGRAM_MERGE_SINGLE_ADAPTER does not apply on vLLM (LoRA per request costs nothing)")
            return VLLMVisionEngine.start(self.cfg, self.key, path, dtype, adapters=adapters,
                                          configured_default=self.cfg.default_adapter,
                                          gpus=self.placement.gpus if self.placement else None)
        engine = VisionLanguageEngine.load(path, device, dtype, model_class="Qwen3VLForConditionalGeneration",
                                           replicas=self.cfg.max_concurrency, adapters=adapters,
                                           default_adapter=self.cfg.default_adapter,
                                           merge_single=self.cfg.merge_single_adapter,
                                           threads=self.settings.torch_threads, image_pixels=self.cfg.image_pixels)
        for name, reason in engine.failed.items():
            log.warning("LoRA adapter not served", extra={"adapter": name, "problem": reason})
        return engine

    def adapter_problems(self) -> list[str]:
        """Why the service is degraded (empty: it is not): adapters not found, or found but not served."""
        if not self.handle.ready:
            return []
        engine = self.handle.get()
        problems = self.problems + [f"adapter {name!r} not served: {reason}" for name, reason in engine.failed.items()]
        return problems or ([] if engine.adapters else ["no LoRA adapter loaded"])

    @bentoml.api
    async def status(self) -> dict:
        info = self.status_info()
        problems = self.adapter_problems()
        if problems:
            info["status"] = "degraded"
            info["error"] = "; ".join(problems)
        if self.handle.ready:
            engine = self.handle.get()
            info["adapters"] = engine.adapters
            info["failed_adapters"] = engine.failed
            info["default_adapter"] = engine.default_adapter
        return info

    @bentoml.api
    async def backend_metrics(self) -> str:
        """The backend's own Prometheus text (vLLM's), merged into the gateway's /metrics."""
        return await self.engine_metrics()

    @bentoml.api
    @guarded("diagram")
    async def generate(self, requests: list[VisionItem]) -> dict:
        out = await self._generate(requests)
        m = metrics()
        for r in out:
            self.stats["inference_count"] += 1
            self.stats["total_inference_time"] += r.generate_seconds
            m.adapter_requests.labels("diagram", r.adapter or "base").inc()
        return VisionResults(results=out).model_dump()

    @bentoml.api
    async def stream(self, request: VisionItem) -> AsyncGenerator[bytes, None]:
        async for chunk in self._stream(request):
            yield chunk

    @bentoml.api
    async def seed_stats(self) -> dict:
        """The seed's JSON counters (GET /infer/stats); the same figures are Prometheus metrics."""
        n, total = self.stats["inference_count"], self.stats["total_inference_time"]
        gpu = {}
        try:
            import torch

            if torch.cuda.is_available():
                gpu = {"gpu_memory_allocated_gb": round(torch.cuda.memory_allocated() / 2**30, 3),
                       "gpu_memory_reserved_gb": round(torch.cuda.memory_reserved() / 2**30, 3)}
        except ImportError:
            pass
        return SeedStats(inference_count=n, total_inference_time=round(total, 3),
                         avg_inference_time=round(total / n, 3) if n else 0.0, model_load_time=self.handle.load_seconds,
                         **gpu).model_dump(exclude_unset=True)
