"""Background model loading with per-model state: loading -> ready | failed(+reason).

Loading in a service's __init__ would block the worker (probes hang); loading from on_startup does not
happen for in-process dependencies. So each service starts a `ModelHandle` thread from __init__, and
its readiness and /health state read the handle. transformers' lazy imports are not thread-safe on
first use (six loader threads in one process failed with `cannot import name` here): every loader runs
under one process-wide lock.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Generic, TypeVar

from services.runtime.core.errors import ServiceUnavailable
from services.runtime.core.logging import get_logger
from services.runtime.core.metrics import metrics

log = get_logger("lifecycle")

E = TypeVar("E")

MODEL_IMPORT_LOCK = threading.Lock()


class ModelHandle(Generic[E]):
    def __init__(self, service: str, model: str):
        self.service = service
        self.model = model
        self.state = "loading"
        self.error: str | None = None
        self.device: str | None = None
        self.dtype: str | None = None
        self.load_seconds: float | None = None
        # What loading is doing now (shown in /health while loading): fetching weights | loading | warming up
        self.phase: str | None = "starting"
        self._engine: E | None = None
        self._started = time.monotonic()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self, loader: Callable[[], E], warmup: Callable[[E], None] | None = None) -> None:
        """Load (then warm up) in a daemon thread; state becomes ready or failed."""

        def run() -> None:
            t0 = time.perf_counter()
            try:
                with MODEL_IMPORT_LOCK:
                    engine = loader()
                if warmup is not None:
                    self.phase = "warming up"
                    warmup(engine)
            except BaseException as exc:  # noqa: BLE001 - any failure is a state, not a crash
                self.state = "failed"
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("model failed to load", extra={"service": self.service, "model": self.model,
                                                         "error": self.error}, exc_info=True)
                self._ready.set()
                return
            self._engine = engine
            self.load_seconds = time.perf_counter() - t0
            self.phase = None
            self.state = "ready"
            m = metrics()
            m.load_seconds.labels(self.service, self.model).set(self.load_seconds)
            m.model_ready.labels(self.service, self.model).set(1)
            log.info("model ready", extra={"service": self.service, "model": self.model,
                                           "device": self.device, "dtype": self.dtype,
                                           "load_seconds": round(self.load_seconds, 3)})
            self._ready.set()

        metrics().model_ready.labels(self.service, self.model).set(0)
        log.info("loading model", extra={"service": self.service, "model": self.model})
        self._thread = threading.Thread(target=run, name=f"load-{self.service}", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def engine(self) -> E | None:
        """The loaded engine, None until ready (get() answers 503 instead)."""
        return self._engine if self.state == "ready" else None

    def wait(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self.ready

    def get(self) -> E:
        if self.state == "ready":
            assert self._engine is not None
            return self._engine
        if self.state == "failed":
            raise ServiceUnavailable(f"{self.service} model failed to load: {self.error}", code="model_failed",
                                     retry_after=60)
        waited = time.monotonic() - self._started
        raise ServiceUnavailable(f"{self.service} model is loading ({waited:.0f}s so far)", retry_after=5)

    def info(self) -> dict:
        return {
            "status": self.state,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
            "phase": self.phase if self.state == "loading" else None,
            "error": self.error,
        }
