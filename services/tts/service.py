"""The TTS model service: owns Qwen3-TTS, one generation at a time per instance (the talker keeps
per-call module state), batching of concurrent non-streamed requests, and frame-level streaming.

It returns float32 PCM at 24 kHz; encoding, speed and the wire format are the gateway's.
"""

from __future__ import annotations

import os
import threading
from typing import AsyncGenerator

import bentoml
import numpy as np

from services.runtime import remote
from services.runtime.device import place
from services.runtime.errors import InvalidRequest, QwenError
from services.runtime.lifecycle import ModelHandle
from services.runtime.logging import configure as configure_logging
from services.runtime.remote import guarded
from services.runtime.scheduler import Scheduler
from services.runtime.settings import get_settings

from .engine import QwenTTSEngine, SpeechItem

_S = get_settings()
_CFG = _S.tts


@bentoml.service(
    name="tts",
    traffic={"timeout": _CFG.timeout + 30, "max_concurrency": _CFG.max_concurrency * 8 + _CFG.max_queue + 8},
    # 1.7B talker + codec: ~3.9 GB bf16 (the seed's T4 held it at 45% next to the ASR).
    resources={"cpu": "2", "memory": "8Gi"},
    envs=[{"name": "OMP_NUM_THREADS", "value": os.environ.get("OMP_NUM_THREADS", "2")}],
)
class TTS:
    def __init__(self) -> None:
        configure_logging(_S.log_level, _S.log_json)
        self.cfg = _CFG
        model_id = "tiny:tts" if _S.models == "tiny" else _CFG.model
        self.handle: ModelHandle[QwenTTSEngine] = ModelHandle("tts", model_id)
        self.scheduler = Scheduler(
            "tts", model_id, self._run_batch,
            max_batch_size=_CFG.max_batch_size or 1, batch_wait_ms=_CFG.batch_wait_ms,
            max_concurrency=_CFG.max_concurrency, max_queue=_CFG.max_queue, timeout=_CFG.timeout,
        )
        self.handle.start(self._load, lambda engine: engine.warmup())

    def _load(self) -> QwenTTSEngine:
        from services.runtime.sources import resolve_model_path

        device, dtype = place(_S, "tts", self.handle)
        self.scheduler.max_batch_size = _S.batch_size_for("tts", device)
        path = resolve_model_path(_S, "tts", _CFG.model, _CFG.revision)
        return QwenTTSEngine.load(path, device, dtype, threads=_S.torch_threads,
                                  chunk_frames=_CFG.stream_chunk_frames,
                                  first_chunk_frames=_CFG.stream_first_chunk_frames)

    def _run_batch(self, items: list[SpeechItem]) -> list[np.ndarray]:
        return self.handle.get().synthesize_batch(items)

    def __is_ready__(self) -> bool:
        return self.handle.ready

    def _item(self, text: str, voice: str, language: str | None, instructions: str | None) -> SpeechItem:
        engine = self.handle.get()
        frames = min(self.cfg.max_frames, int(50 + self.cfg.frames_per_char * len(text)))
        try:
            return engine.check(SpeechItem(text, voice, language, instructions, max(2, frames)))
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="invalid_value") from None

    @bentoml.api
    async def status(self) -> dict:
        return {**self.handle.info(), "concurrency_limit": self.scheduler.max_concurrency,
                "queue_depth": self.scheduler.queue_depth,
                "sample_rate": self.handle.get().sample_rate if self.handle.ready else None}

    @bentoml.api
    @guarded("tts")
    async def synthesize(self, text: str, voice: str, language: str | None = None,
                         instructions: str | None = None) -> dict:
        item = self._item(text, voice, language, instructions)
        (audio,) = await self.scheduler.run([item])
        return {"audio": np.asarray(audio, dtype=np.float32), "sample_rate": self.handle.get().sample_rate}

    @bentoml.api
    async def stream(self, text: str, voice: str, language: str | None = None,
                     instructions: str | None = None) -> AsyncGenerator[bytes, None]:
        """Header line (remote.STREAM_OK or an error), then float32 little-endian PCM as it is generated."""
        try:
            item = self._item(text, voice, language, instructions)
            slot = self.scheduler.slot()
            await slot.__aenter__()
        except QwenError as exc:
            yield remote.stream_error(exc)
            return
        try:
            yield remote.STREAM_OK
            engine = self.handle.get()
            cancel = threading.Event()

            def frames():
                return engine.stream(item.text, item.voice, item.language, item.instructions, item.max_frames,
                                     cancel)

            async for chunk in remote.relay_thread_iterator(frames, cancel):
                yield np.asarray(chunk, dtype="<f4").tobytes()
        finally:
            await slot.__aexit__(None, None, None)
