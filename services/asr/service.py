"""The ASR model service: owns Qwen3-ASR, its queue and batching; windows long audio at quiet points.

The gateway decodes the audio once and calls `transcribe(audio, prompt, language)`; it gets the text,
the language and the window spans (start, end, text), which it can pass to the aligner for timestamps.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np

from services.runtime.chunking import plan_chunks
from services.runtime.device import place
from services.runtime.errors import InvalidRequest, PayloadTooLarge
from services.runtime.lifecycle import ModelHandle
from services.runtime.logging import configure as configure_logging
from services.runtime.remote import guarded
from services.runtime.scheduler import Scheduler
from services.runtime.settings import get_settings

from .engine import SAMPLE_RATE, ASRItem, ASRResult, QwenASREngine
from .languages import NAME_TO_ISO, NO_SPACE, parse_language

_S = get_settings()
_CFG = _S.asr


@bentoml.service(
    name="asr",
    traffic={"timeout": _CFG.timeout + 30, "max_concurrency": _CFG.max_concurrency * 8 + _CFG.max_queue + 8},
    # 1.7B: ~3.9 GB bf16 on GPU (the seed's T4 held it at 45% of 15 GB next to TTS).
    resources={"cpu": "2", "memory": "8Gi"},
    envs=[{"name": "OMP_NUM_THREADS", "value": os.environ.get("OMP_NUM_THREADS", "2")}],
)
class ASR:
    def __init__(self) -> None:
        configure_logging(_S.log_level, _S.log_json)
        self.cfg = _CFG
        model_id = "tiny:asr" if _S.models == "tiny" else _CFG.model
        self.model_id = model_id
        self.handle: ModelHandle[QwenASREngine] = ModelHandle("asr", model_id)
        # vLLM batches on its own: our scheduler then just hands it bigger batches, one call at a time.
        self.scheduler = Scheduler(
            "asr", model_id, self._run_batch,
            max_batch_size=_CFG.max_batch_size or 1, batch_wait_ms=_CFG.batch_wait_ms,
            max_concurrency=1 if _CFG.backend == "transformers" else _CFG.max_concurrency,
            max_queue=_CFG.max_queue, timeout=_CFG.timeout,
        )
        self.handle.start(self._load, lambda engine: engine.warmup())

    def _load(self) -> QwenASREngine:
        from services.runtime.sources import resolve_model_path

        device, dtype = place(_S, "asr", self.handle)
        if _CFG.backend == "vllm":
            self.scheduler.max_batch_size = _CFG.max_batch_size or 32
        else:
            self.scheduler.max_batch_size = _S.batch_size_for("asr", device)
        path = resolve_model_path(_S, "asr", _CFG.model, _CFG.revision)
        vllm_kwargs = {"gpu_memory_utilization": _CFG.vllm_gpu_memory_utilization,
                       "max_model_len": _CFG.vllm_max_model_len}
        return QwenASREngine.load(path, backend=_CFG.backend, device=device, dtype=dtype,
                                  max_new_tokens=_CFG.max_new_tokens, threads=_S.torch_threads,
                                  vllm_kwargs=vllm_kwargs)

    def _run_batch(self, items: list[ASRItem]) -> list[ASRResult]:
        return self.handle.get().transcribe(items)

    def __is_ready__(self) -> bool:
        return self.handle.ready

    @bentoml.api
    async def status(self) -> dict:
        return {**self.handle.info(), "backend": self.cfg.backend, "concurrency_limit": self.scheduler.max_concurrency,
                "queue_depth": self.scheduler.queue_depth}

    @bentoml.api
    @guarded("asr")
    async def transcribe(self, audio: np.ndarray, prompt: str = "", language: str | None = None) -> dict:
        self.handle.get()
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        duration = len(audio) / SAMPLE_RATE
        if duration > self.cfg.max_audio_seconds:
            raise PayloadTooLarge(f"audio is {duration:.0f}s; the limit is {self.cfg.max_audio_seconds:.0f}s",
                                  param="file", code="audio_too_long")
        try:
            lang = parse_language(language)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="language", code="unsupported_language") from None
        chunks = plan_chunks(audio, SAMPLE_RATE, self.cfg.window_seconds)
        items = [ASRItem(audio[c.start : c.end], prompt or "", lang) for c in chunks]
        results = await self.scheduler.run(items)
        detected = lang or _majority([r.language for r in results]) or ""
        sep = "" if detected in NO_SPACE else " "
        spans = [
            {"start": round(c.start / SAMPLE_RATE, 3), "end": round(c.end / SAMPLE_RATE, 3), "text": r.text}
            for c, r in zip(chunks, results)
        ]
        return {
            "text": sep.join(s["text"] for s in spans if s["text"]),
            "language": detected,
            "duration": round(duration, 3),
            "spans": spans,
        }


def _majority(values: list[str]) -> str | None:
    values = [v for v in values if v in NAME_TO_ISO]  # anything else is not a language the model knows
    return max(set(values), key=values.count) if values else None
