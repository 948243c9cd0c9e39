"""Prometheus metrics of the suite, created on first use.

BentoML sets PROMETHEUS_MULTIPROC_DIR in each worker after service modules are imported, and serves every
process's samples on /metrics; creating the metric objects lazily (from service __init__ or a request)
makes them land in that multi-process store. Gauges sum over live processes.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)


@functools.lru_cache(maxsize=1)
def metrics() -> SimpleNamespace:
    from prometheus_client import Counter, Gauge, Histogram

    return SimpleNamespace(
        requests=Counter("qwen_requests", "HTTP requests by route and status", ["route", "method", "status"]),
        latency=Histogram(
            "qwen_request_duration_seconds", "HTTP request latency", ["route", "method"], buckets=LATENCY_BUCKETS
        ),
        in_flight=Gauge("qwen_requests_in_flight", "HTTP requests being served", ["route"], multiprocess_mode="livesum"),
        queue_depth=Gauge(
            "qwen_queue_depth", "requests waiting for a model slot", ["service"], multiprocess_mode="livesum"
        ),
        active=Gauge("qwen_inference_active", "inferences running", ["service"], multiprocess_mode="livesum"),
        rejected=Counter("qwen_rejected", "requests refused by admission control", ["service", "reason"]),
        batch_size=Histogram("qwen_batch_size", "items per engine call (TTS: rows per decode step)", ["service"],
                             buckets=BATCH_BUCKETS),
        truncated=Counter("qwen_generation_truncated", "generations cut at their length cap", ["service"]),
        first_audio=Histogram("qwen_first_audio_seconds", "time from admission to a stream's first audio",
                              ["service"], buckets=LATENCY_BUCKETS),
        inference=Histogram(
            "qwen_inference_seconds", "engine time per call", ["service", "model"], buckets=LATENCY_BUCKETS
        ),
        load_seconds=Gauge("qwen_model_load_seconds", "model load + warm-up time", ["service", "model"],
                           multiprocess_mode="max"),
        model_ready=Gauge("qwen_model_ready", "1 when the model is ready", ["service", "model"],
                          multiprocess_mode="max"),
        adapter_requests=Counter("qwen_adapter_requests", "generations per LoRA adapter", ["service", "adapter"]),
        gpu_memory=Gauge("qwen_gpu_memory_bytes", "GPU memory of a model process", ["service", "kind"],
                         multiprocess_mode="livesum"),
    )
