"""The TTS model service: owns Qwen3-TTS and its decode loop, where every request — streamed or not —
joins the running batch at the next frame (services.tts.batching), and admission in front of it.

It takes and returns the messages of services.tts.contract: float32 PCM with its rate (the codec's, 24 kHz)
and how the generation finished. Encoding, speed and the wire format are the gateway's.

Admission: at most `max_batch_size` requests generate at once (QWEN_TTS_MAX_BATCH_SIZE, and the token
budget QWEN_TTS_MAX_BATCH_FRAMES); up to `max_queue` more wait for a row; beyond that a 429 whose
Retry-After grows with the queue and the recent request time. A client that goes away frees its row
within one step.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncGenerator

import bentoml
import numpy as np

from services.runtime.core.errors import InvalidRequest, QwenError, TooManyRequests
from services.runtime.core.logging import get_logger
from services.runtime.core.metrics import metrics
from services.runtime.core.settings import get_settings
from services.runtime.edge.remote import guarded, stream_error, stream_ok
from services.runtime.serving.modelservice import ModelService, resources, thread_envs, traffic
from services.runtime.serving.scheduler import retry_after_seconds
from services.runtime.serving.streams import Channel, Listeners

from .contract import Finish, Speech, StreamHeader, Utterance, pack_audio, pack_finish
from .engine import Finished, QwenTTSEngine, SpeechItem

_CFG = get_settings().tts
log = get_logger("tts")


@bentoml.service(
    name="tts",
    traffic=traffic(_CFG, running=_CFG.max_batch_size or 16),  # rows of the decode loop (16 on CUDA)
    # 1.7B talker + codec: ~3.9 GB bf16 (the seed shared one T4 with the ASR at 45% each).
    resources=resources("2", "8Gi", gpu=1, gpu_type="nvidia-tesla-t4"),
    envs=thread_envs(),
)
class TTS(ModelService[QwenTTSEngine]):
    key = "tts"
    scheduled = False  # the decode loop batches; admission is `_admit`
    _inflight = 0
    _ewma_seconds = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._listeners = Listeners()  # open streams by the gateway's ticket: `leave` cancels one

    def batch_size(self, device: str) -> int:
        return self.cfg.max_batch_size or (16 if device.startswith("cuda") else 8)

    def load_engine(self, path: str, device: str, dtype: str) -> QwenTTSEngine:
        engine = QwenTTSEngine.load(path, device, dtype, threads=self.settings.torch_threads,
                                    chunk_frames=self.cfg.stream_chunk_frames,
                                    first_chunk_frames=self.cfg.stream_first_chunk_frames,
                                    context_frames=self.cfg.stream_context_frames,
                                    max_batch_frames=self.cfg.max_batch_frames,
                                    max_batch_size=self.batch_size(device),
                                    batch_wait_ms=self.cfg.batch_wait_ms)
        m = metrics()
        engine.loop.on_step = lambda rows: m.batch_size.labels(self.key).observe(rows)
        log.info("tts generation settings", extra={
            "sampling": engine.sampling, "max_batch_size": engine.loop.max_batch_size,
            "max_batch_frames": engine.max_batch_frames,
            "kv_cache_gib": round(engine.max_batch_frames * engine.bytes_per_frame / 2**30, 2),
            "codec_receptive_frames": engine.receptive_frames, "stream_context_frames": engine.context_frames})
        return engine

    def _item(self, engine: QwenTTSEngine, utterance: Utterance) -> SpeechItem:
        u = utterance.checked(self.cfg.max_input_chars)
        # Capped by the text, the setting and the engine (whose limit includes the memory budget).
        frames = min(self.cfg.max_frames, engine.max_frames_limit, int(50 + self.cfg.frames_per_char * len(u.text)))
        try:
            return engine.check(SpeechItem(u.text, u.voice, u.language, u.instructions, max(2, frames)))
        except ValueError as exc:
            raise InvalidRequest(str(exc), code="invalid_value") from None

    def _admit(self, engine: QwenTTSEngine) -> None:
        """429 when every row is taken and the queue is full."""
        rows = engine.loop.max_batch_size
        if self._inflight >= rows + self.cfg.max_queue:
            metrics().rejected.labels(self.key, "queue_full").inc()
            raise TooManyRequests(
                f"tts is at capacity ({rows} generating, {self._inflight - rows} queued); retry later",
                retry_after=retry_after_seconds(self._inflight - rows, rows, 1, self._ewma_seconds))

    async def _speak(self, utterance: Utterance, stream: bool, ticket: str = "") -> tuple[QwenTTSEngine, Channel]:
        """Checks, admission, then the request in the loop: a Channel of audio arrays, ending with the
        engine's Finished (or its error). Leaving the channel early cancels the request."""
        engine = self.handle.get()
        item = self._item(engine, utterance)
        self._admit(engine)
        channel: Channel = Channel()
        self._inflight += 1
        t0 = time.perf_counter()
        m = metrics()
        m.active.labels(self.key).inc()

        def done(fin: Finished, error: BaseException | None) -> None:
            channel.close(error=error, result=fin)

        def finished() -> None:
            self._inflight -= 1
            m.active.labels(self.key).dec()
            dt = time.perf_counter() - t0
            self._ewma_seconds = 0.8 * self._ewma_seconds + 0.2 * dt
            m.inference.labels(self.key, self.model_id).observe(dt)
            fin = channel.result
            if isinstance(fin, Finished) and fin.truncated:
                m.truncated.labels(self.key).inc()
                log.warning("speech cut at its frame cap", extra={"frames": fin.frames})

        channel.on_close(finished)
        self._listeners.add(ticket, channel)
        try:
            # Counted as preparing from here, not from when a worker thread picks the call up: requests that
            # arrive together (more than the default executor's threads) start in one step.
            with engine.loop.preparing() as preparing:
                await asyncio.to_thread(engine.start, item, channel.emit, done, stream=stream, cancel=channel.cancel,
                                        preparing=preparing)
        except ValueError as exc:
            channel.close()
            raise InvalidRequest(str(exc), code="invalid_value") from None
        except BaseException:
            channel.close()
            raise
        return engine, channel

    def status_info(self) -> dict:
        """The loop's limits in the shape every service reports: `max_batch_size` rows generate at once,
        `queue_limit` more wait, `queue_depth` are waiting now."""
        rows = self.batch_size(self.handle.device or "cpu")
        return {**super().status_info(), "concurrency_limit": 1, "max_batch_size": rows,
                "queue_limit": self.cfg.max_queue, "queue_depth": max(0, self._inflight - rows)}

    @staticmethod
    def _finish(fin: Finished) -> Finish:
        return Finish(finish_reason="length" if fin.truncated else "stop", input_tokens=fin.prompt_tokens,
                      output_tokens=fin.frames)

    @bentoml.api
    async def status(self) -> dict:
        return self.status_info()

    @bentoml.api
    @guarded("tts")
    async def synthesize(self, utterance: Utterance) -> dict:
        engine, channel = await self._speak(utterance, stream=False)
        try:
            audio = [a async for a in channel]
        finally:
            channel.leave()
        samples = audio[0] if audio else np.zeros(0, np.float32)
        return Speech(audio=samples, sample_rate=engine.sample_rate,
                      finish=self._finish(channel.result)).model_dump(mode="json")

    @bentoml.api
    async def leave(self, ticket: str) -> bool:
        """The caller's client left the stream opened with this ticket: it leaves the batch within one step.
        False when no such stream is open (it ended already)."""
        return self._listeners.leave(ticket)

    @bentoml.api
    async def stream(self, utterance: Utterance, ticket: str = "") -> AsyncGenerator[bytes, None]:
        """Header line (remote.stream_ok with a StreamHeader, or the error), then records (contract.records):
        float32 little-endian PCM as it is generated, and the Finish last. Errors up to the first audio
        (validation, admission 429, loading 503) are the header, so the gateway keeps their status."""
        try:
            engine, channel = await self._speak(utterance, stream=True, ticket=ticket)
        except QwenError as exc:
            yield stream_error(exc)
            return
        t0 = time.perf_counter()
        first = True
        try:
            yield stream_ok(StreamHeader(sample_rate=engine.sample_rate))
            async for chunk in channel:
                if first:
                    metrics().first_audio.labels(self.key).observe(time.perf_counter() - t0)
                    first = False
                yield pack_audio(chunk)
            yield pack_finish(self._finish(channel.result))
        finally:
            channel.leave()  # the client went away early: the request leaves the batch
