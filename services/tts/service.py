"""The TTS model service: owns Qwen3-TTS, one generation at a time per instance (the talker keeps
per-call module state), batching of concurrent non-streamed requests, and frame-level streaming.

It returns float32 PCM at 24 kHz; encoding, speed and the wire format are the gateway's.
"""

from __future__ import annotations

import threading
from typing import AsyncGenerator

import bentoml
import numpy as np

from services.runtime.edge import remote
from services.runtime.core.errors import InvalidRequest
from services.runtime.core.logging import get_logger
from services.runtime.serving.modelservice import ModelService, resources, thread_envs, traffic
from services.runtime.edge.remote import guarded
from services.runtime.core.settings import get_settings

from .engine import QwenTTSEngine, SpeechItem

_CFG = get_settings().tts
log = get_logger("tts")


@bentoml.service(
    name="tts",
    traffic=traffic(_CFG),
    # 1.7B talker + codec: ~3.9 GB bf16 (the seed shared one T4 with the ASR at 45% each).
    resources=resources("2", "8Gi", gpu=1, gpu_type="nvidia-tesla-t4"),
    envs=thread_envs(),
)
class TTS(ModelService[QwenTTSEngine]):
    key = "tts"

    def load_engine(self, path: str, device: str, dtype: str) -> QwenTTSEngine:
        engine = QwenTTSEngine.load(path, device, dtype, threads=self.settings.torch_threads,
                                    chunk_frames=self.cfg.stream_chunk_frames,
                                    first_chunk_frames=self.cfg.stream_first_chunk_frames,
                                    context_frames=self.cfg.stream_context_frames,
                                    max_batch_frames=self.cfg.max_batch_frames)
        log.info("tts generation settings", extra={
            "sampling": engine.sampling, "max_batch_frames": engine.max_batch_frames,
            "max_batch_frames_gib": round(engine.max_batch_frames * engine.bytes_per_frame / 2**30, 2),
            "codec_receptive_frames": engine.receptive_frames, "stream_context_frames": engine.context_frames})
        return engine

    def _run_batch(self, items: list[SpeechItem]) -> list[np.ndarray]:
        return self.handle.get().synthesize_batch(items)

    def _item(self, text: str, voice: str, language: str | None, instructions: str | None) -> SpeechItem:
        engine = self.handle.get()
        # Capped by the text, the setting and the engine (whose limit includes the memory budget).
        frames = min(self.cfg.max_frames, engine.max_frames_limit, int(50 + self.cfg.frames_per_char * len(text)))
        try:
            return engine.check(SpeechItem(text, voice, language, instructions, max(2, frames)))
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="invalid_value") from None

    @bentoml.api
    async def status(self) -> dict:
        return self.status_info()

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

        async def pcm(engine, item: SpeechItem):
            cancel = threading.Event()

            def frames():
                return engine.stream(item.text, item.voice, item.language, item.instructions, item.max_frames,
                                     cancel)

            async for chunk in remote.relay_thread_iterator(frames, cancel):
                yield np.asarray(chunk, dtype="<f4").tobytes()

        async for data in self.guarded_stream(lambda _e: self._item(text, voice, language, instructions), pcm):
            yield data
