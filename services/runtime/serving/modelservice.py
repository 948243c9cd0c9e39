"""What every model service shares: background loading on the right device, the scheduler, readiness.

A model service subclasses `ModelService`, sets `key`, implements `load_engine` and `_run_batch`, and
adds its own `@bentoml.api` methods (plus `status`, which returns `status_info()`). A service whose engine
batches on its own (TTS: its decode loop) sets `scheduled = False`: it gets no scheduler and reports its
own limits in `status_info()`.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Generic, TypeVar

from services.runtime.serving.device import TORCH, VLLM_SERVER, Placement, place, resolve_device
from services.runtime.serving.lifecycle import ModelHandle
from services.runtime.core.logging import configure as configure_logging
from services.runtime.serving.scheduler import Scheduler
from services.runtime.core.settings import ServiceSettings, get_settings
from services.runtime.serving.vllm_server import check_command, uses_vllm

E = TypeVar("E")


def traffic(cfg: ServiceSettings, running: int | None = None) -> dict:
    # The scheduler does admission (429 + Retry-After) below this; BentoML's own cap only backstops it:
    # it must stay above what may run (`running`, default max_concurrency x 8) plus the queue.
    # BentoML's client in the gateway waits this long too: a little past the scheduler's own deadline, so
    # a slow model answers with the service's 504 and a hung process with the gateway's.
    running = running if running is not None else cfg.max_concurrency * 8
    return {"timeout": cfg.timeout + min(30.0, max(2.0, cfg.timeout / 10)),
            "max_concurrency": running + cfg.max_queue + 8}


def resources(cpu: str, memory: str, *, gpu: int = 0, gpu_type: str | None = None) -> dict:
    """A service's declared resources. GPUs are declared only when building the CUDA Bento
    (QWEN_BENTO_TARGET=cuda, set by `make bento-cuda`): the same source also builds the CPU Bento and
    serves on CPU/MPS, where a GPU request would be wrong."""
    out: dict = {"cpu": cpu, "memory": memory}
    if gpu and os.environ.get("QWEN_BENTO_TARGET") == "cuda":
        out["gpu"] = gpu
        if gpu_type:
            out["gpu_type"] = gpu_type
    return out


def thread_envs() -> list[dict]:
    # BentoML sets no OMP_NUM_THREADS: every model process would take all cores.
    return [{"name": "OMP_NUM_THREADS", "value": os.environ.get("OMP_NUM_THREADS", "2")}]


class ModelService(Generic[E]):
    key: ClassVar[str]
    scheduled: ClassVar[bool] = True  # admission + micro-batching by the shared Scheduler
    placement: Placement | None = None  # set by _load (device, dtype, a vLLM engine's GPUs)

    def __init__(self) -> None:
        s = self.settings = get_settings()
        configure_logging(s.log_level, s.log_json)
        self.cfg = s.service(self.key)
        self.model_id = f"tiny:{self.key}" if s.models == "tiny" else self.cfg.model
        self.handle: ModelHandle[E] = ModelHandle(self.key, self.model_id)
        self.scheduler = Scheduler(
            self.key, self.model_id, self._run_batch,
            max_batch_size=self.cfg.max_batch_size or 1, batch_wait_ms=self.cfg.batch_wait_ms,
            max_concurrency=self.cfg.max_concurrency, max_queue=self.cfg.max_queue, timeout=self.cfg.timeout,
        ) if self.scheduled else None
        self.handle.start(self._load, self.warmup)

    # -- overridable --------------------------------------------------------------------------------
    def engine_concurrency(self, device: str) -> int:
        """Calls the engine on `device` runs at once (the scheduler's limit, set once placed)."""
        return self.cfg.max_concurrency

    def batch_size(self, device: str) -> int:
        return self.settings.batch_size_for(self.key, device)

    def load_engine(self, path: str, device: str, dtype: str) -> E:
        raise NotImplementedError

    def backend_for(self, device: str) -> str:
        """What serves the model on `device`: "vllm" (a server child from the engine environment, for the
        services whose settings have a `backend`: runtime.serving.vllm_server.uses_vllm) or "transformers"
        (this process)."""
        return "vllm" if uses_vllm(self.cfg, device, self.settings) else "transformers"

    def engine_kind(self, device: str) -> str:
        """What runs the model on `device`: device.TORCH (this process) or VLLM_SERVER (a child);
        placement differs (runtime.serving.device.place)."""
        return VLLM_SERVER if self.backend_for(device) == "vllm" else TORCH

    def check_settings(self) -> None:
        """Refuse (raise) settings this model cannot serve, before anything is fetched or placed: the
        load fails with the reason in /health. A vLLM backend that cannot start here (no engine
        environment) is refused now, not after the weights are downloaded."""
        if self.backend_for(resolve_device(self.settings.device_for(self.key))) == "vllm":
            check_command(self.cfg, self.key)

    def warmup(self, engine: E) -> None:
        engine.warmup()  # type: ignore[attr-defined]

    def _run_batch(self, items: list[Any]) -> list[Any]:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------
    def _load(self) -> E:
        from services.runtime.serving.sources import resolve_model_path

        self.check_settings()
        self.placement = place(self.settings, self.key, self.handle, self.engine_kind)
        device, dtype = self.placement.device, self.placement.dtype
        if self.scheduler is not None:
            self.scheduler.max_batch_size = self.batch_size(device)
            self.scheduler.max_concurrency = self.engine_concurrency(device)
        # A hub download logs huggingface_hub's progress bars; /health shows the phase meanwhile.
        self.handle.phase = "fetching weights"
        path = resolve_model_path(self.settings, self.key, self.cfg.model, self.cfg.revision,
                                  report=lambda text: setattr(self.handle, "phase", text))
        self.handle.phase = "loading"
        return self.load_engine(path, device, dtype)

    async def guarded_stream(self, prepare, body, header=None):
        """A streamed API with the header protocol of runtime.edge.remote: `prepare(engine)` validates (its
        QwenError becomes the header, so the gateway answers with its status), then one scheduler slot is
        held while `body(engine, prepared)` yields the bytes. `header(engine)`: a contract model whose
        fields the OK header line carries."""
        from services.runtime.core.errors import QwenError
        from services.runtime.edge.remote import stream_error, stream_ok

        try:
            engine = self.handle.get()
            prepared = prepare(engine)
            ok = stream_ok(header(engine) if header is not None else None)
            slot = self.scheduler.slot()
            await slot.__aenter__()
        except QwenError as exc:
            yield stream_error(exc)
            return
        try:
            yield ok
            async for chunk in body(engine, prepared):
                yield chunk
        finally:
            await slot.__aexit__(None, None, None)

    def _engine_state(self) -> str | None:
        """A loaded engine's own state, when it has one: a vLLM child (runtime.serving.vllm_server) can die
        and restart after the model loaded, and its state then wins over the handle's 'ready'."""
        engine = self.handle.engine
        return None if engine is None else getattr(engine, "state", None)

    def __is_ready__(self) -> bool:
        return self.handle.ready and self._engine_state() in (None, "ready")

    async def engine_metrics(self) -> str:
        """The engine's own Prometheus text (a vLLM child's `vllm:*`), '' when it has none or is not loaded;
        a service exposes it as its `backend_metrics` API, which the gateway merges into /metrics."""
        engine = self.handle.engine
        if not self.handle.ready or engine is None or not hasattr(engine, "metrics_text"):
            return ""
        return await engine.metrics_text()

    # The keys every status_info() has (a service may add its own), for the status the gateway writes itself
    # when a service is unreachable.
    STATUS_KEYS = ("status", "phase", "model", "device", "dtype", "load_seconds", "error", "concurrency_limit",
                   "max_batch_size", "queue_limit", "queue_depth")

    def status_info(self) -> dict:
        self._record_gpu_memory()
        info = self.handle.info()
        engine = self.handle.engine
        if engine is not None:
            info["backend"] = getattr(engine, "backend", "transformers")
            if (state := self._engine_state()) is not None:
                info["status"] = state
            if callable(getattr(engine, "info", None)):  # a vLLM child: pid, port, restarts, last error
                info["engine"] = engine.info()
        sch = self.scheduler
        if sch is None:
            return info
        return {**info, "concurrency_limit": sch.max_concurrency, "max_batch_size": sch.max_batch_size,
                "queue_limit": sch.max_queue, "queue_depth": sch.queue_depth}

    def _record_gpu_memory(self) -> None:
        """GPU memory of this process as metrics (the seed's counters), refreshed on every status call."""
        device = self.handle.device or ""
        # A vLLM engine's memory is not torch's in this process (and its GPU may be renumbered).
        if not device.startswith("cuda") or (self.placement is not None and self.placement.gpus):
            return
        import torch

        from services.runtime.core.metrics import metrics

        index = int(device.split(":", 1)[1]) if ":" in device else 0
        m = metrics().gpu_memory
        m.labels(self.key, "allocated").set(torch.cuda.memory_allocated(index))
        m.labels(self.key, "reserved").set(torch.cuda.memory_reserved(index))
