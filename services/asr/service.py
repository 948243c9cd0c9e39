"""The ASR model service: owns Qwen3-ASR, its queue and batching; windows long audio where nobody speaks
(voice activity), and decodes only the windows where someone does.

The gateway decodes the audio once and calls `transcribe(audio, TranscribeOptions)`; it gets a
`Transcription` (services/asr/contract.py): the text, the language and the window spans (start, end, text),
which it can pass to the aligner for timestamps (services/gateway/pipelines/transcribe_align.py).
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import AsyncGenerator

import bentoml
import numpy as np

from services.runtime.codecs.chunking import Chunk, plan_chunks
from services.runtime.serving.device import resolve_device
from services.runtime.codecs.audio import check_duration
from services.runtime.core.errors import InvalidRequest, QwenError
from services.runtime.core.languages import ASR as LANGUAGES
from services.runtime.core.languages import word_separator
from services.runtime.core.logging import get_logger
from services.runtime.serving import vad
from services.runtime.serving.modelservice import ModelService, resources, thread_envs, traffic
from services.runtime.edge.remote import guarded, stream_error, stream_ok
from services.runtime.serving.streams import Channel, InOrder, Listeners
from services.runtime.core.settings import get_settings

from .budget import check_budget, effective_max_new_tokens
from .contract import Span, StreamDone, TextDelta, TokenLogprob, TranscribeOptions, Transcription
from .engine import SAMPLE_RATE, ASREngine, ASRItem, ASRResult, QwenASREngine

_CFG = get_settings().asr
log = get_logger("asr")


@bentoml.service(
    name="asr",
    traffic=traffic(_CFG),
    # 1.7B: ~3.9 GB bf16 (the seed ran it at 45% of one 16 GB T4, next to the TTS).
    resources=resources("2", "8Gi", gpu=1, gpu_type="nvidia-tesla-t4"),
    envs=thread_envs(),
)
class ASR(ModelService[ASREngine]):
    key = "asr"

    def __init__(self) -> None:
        super().__init__()
        self._listeners = Listeners()  # open streams by the gateway's ticket: `leave` cancels one

    def batch_size(self, device: str) -> int:
        if self.backend_for(device) == "vllm":
            return self.cfg.max_batch_size or 32  # vLLM batches on its own: hand it big batches
        return super().batch_size(device)

    def warmup(self, engine) -> None:
        super().warmup(engine)
        if self.cfg.vad:
            vad.voice_activity()  # its model, loaded now rather than by the first request

    def check_settings(self) -> None:
        super().check_settings()
        vllm = self.backend_for(resolve_device(self.settings.device_for(self.key))) == "vllm"
        for warning in check_budget(self.cfg, vllm=vllm):
            log.warning(warning)

    def load_engine(self, path: str, device: str, dtype: str):
        cfg = self.cfg
        if self.backend_for(device) == "vllm":
            from .vllm_backend import VLLMASREngine

            return VLLMASREngine.start(cfg, path, dtype, max_new_tokens=effective_max_new_tokens(cfg),
                                       gpus=self.placement.gpus if self.placement else None)
        return QwenASREngine.load(path, device=device, dtype=dtype, max_new_tokens=effective_max_new_tokens(cfg),
                                  threads=self.settings.torch_threads)

    def _run_batch(self, items: list[ASRItem]) -> list[ASRResult]:
        """One engine call for windows of several requests; a streamed request's windows hand their text
        to its relay as it is decoded, and say when they are done."""
        streamed = [it.on_text for it in items]
        on_text = (lambda i, piece, tokens: streamed[i] and streamed[i](piece, tokens)) if any(streamed) else None
        results = self.handle.get().transcribe(items, on_text=on_text)
        for item in items:
            if item.on_end is not None:
                item.on_end()
        return results

    @bentoml.api
    async def status(self) -> dict:
        return self.status_info()

    @bentoml.api
    async def backend_metrics(self) -> str:
        """The backend's own Prometheus text (vLLM's), merged into the gateway's /metrics."""
        return await self.engine_metrics()

    async def _plan(self, audio: np.ndarray, options: TranscribeOptions) -> "_Plan":
        """Checks (prompt length, duration, language), then the audio's windows and the engine items of those
        to decode (with voice activity: the windows where someone speaks)."""
        engine = self.handle.get()
        prompt = options.prompt
        # Checked before batching: an over-long prompt would otherwise fail (vLLM) or slow every
        # window batched beside it.
        if prompt and engine.count_tokens(prompt) > self.cfg.max_prompt_tokens:
            raise InvalidRequest(f"prompt is longer than {self.cfg.max_prompt_tokens} tokens", param="prompt",
                                 code="prompt_too_long")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        check_duration(len(audio) / SAMPLE_RATE, self.cfg.max_audio_seconds, param="audio")
        try:
            lang = LANGUAGES.parse(options.language)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="language", code="unsupported_language") from None
        use_vad = self.cfg.vad if options.vad is None else options.vad
        if use_vad:
            self.scheduler.admit(1)  # a full queue refuses before voice activity runs over the whole file
        probs = await asyncio.to_thread(vad.voice_activity().speech_probs, audio) if use_vad else None
        chunks, decoded = plan_windows(audio, self.cfg.window_seconds, probs,
                                       options.vad_threshold or self.cfg.vad_threshold)
        items = [ASRItem(audio[c.start : c.end], prompt, lang) for c, d in zip(chunks, decoded) if d]
        return _Plan(audio, chunks, decoded, items, lang, probs)

    async def _transcribe(self, plan: "_Plan", options: TranscribeOptions) -> tuple[Transcription, list[ASRResult]]:
        engine = self.handle.get()
        audio, chunks, lang = plan.audio, plan.chunks, plan.language
        # Voice activity, when the windows were not planned with it, runs beside the model (its own small
        # CPU model, ~0.7 s per minute of audio on one thread).
        speech = None
        if options.statistics and plan.speech is None:
            speech = asyncio.ensure_future(asyncio.to_thread(vad.voice_activity().speech_probs, audio))
        try:
            decoded = iter(await self.scheduler.run(plan.items))
        except BaseException:
            if speech is not None:
                speech.cancel()
            raise
        results = [next(decoded) if d else ASRResult(language="", text="") for d in plan.decoded]
        probs = plan.speech if speech is None else await speech
        detected = lang or _majority([r.language for r in results]) or ""
        spans = [Span(start=round(c.start / SAMPLE_RATE, 3), end=round(c.end / SAMPLE_RATE, 3), text=r.text,
                      decoded=d)
                 for c, r, d in zip(chunks, results, plan.decoded)]
        if options.statistics or options.logprobs:
            def token_details() -> None:
                for span, r in zip(spans, results):
                    if not r.tokens:
                        continue
                    if options.statistics:
                        span.tokens, span.logprobs = list(r.tokens), [round(x, 5) for x in r.logprobs]
                        span.token_ends = engine.token_ends(r.tokens, r.text)
                    if options.logprobs:
                        span.token_logprobs = token_logprobs(engine, r.tokens, r.logprobs)

            await asyncio.to_thread(token_details)
        text = word_separator(detected).join(s.text for s in spans if s.text)
        return Transcription(text=text, language=detected, duration=round(len(audio) / SAMPLE_RATE, 3), spans=spans,
                             speech=vad.pack(probs) if options.statistics and probs is not None else ""), results

    @bentoml.api
    @guarded("asr")
    async def transcribe(self, audio: np.ndarray, options: TranscribeOptions) -> dict:
        transcription, _ = await self._transcribe(await self._plan(audio, options), options)
        return transcription.model_dump()

    @bentoml.api
    async def leave(self, ticket: str) -> bool:
        """The caller's client left the stream opened with this ticket: its windows not started are dropped
        (a running batch finishes for the other requests in it). False when no such stream is open."""
        return self._listeners.leave(ticket)

    @bentoml.api
    async def stream(self, audio: np.ndarray, options: TranscribeOptions, ticket: str = ""
                     ) -> AsyncGenerator[bytes, None]:
        """Header line (remote.stream_ok, or the error: validation and admission keep their status), then
        contract lines: `TextDelta`s as the windows' text is decoded, in window order (a window's pieces
        wait until the windows before it are done), the separator between windows as a delta of its own,
        and `StreamDone` last. `ticket`: the caller's name for this stream in `leave`."""
        try:
            plan = await self._plan(audio, options)
        except QwenError as exc:
            yield stream_error(exc)
            return
        channel: Channel = Channel()
        relay = InOrder(channel.emit, len(plan.items),
                        separator=TextDelta(delta=word_separator(plan.language) if plan.language else " "))
        engine = self.handle.get()

        def delta(k: int, piece: str, tokens: list[tuple[int, float]]) -> None:
            logprobs = token_logprobs(engine, [t for t, _ in tokens], [lp for _, lp in tokens]) \
                if options.logprobs else []
            if piece or logprobs:
                relay.piece(k, TextDelta(delta=piece, logprobs=logprobs))

        for k, item in enumerate(plan.items):
            item.on_text, item.on_end = functools.partial(delta, k), functools.partial(relay.finish, k)
        work = asyncio.ensure_future(self._transcribe(plan, options))
        await asyncio.sleep(0)  # the scheduler admits (or refuses: 429) before its first await
        if work.done() and work.exception() is not None:
            exc = work.exception()
            yield stream_error(exc if isinstance(exc, QwenError) else QwenError(f"asr failed: {type(exc).__name__}"))
            return
        work.add_done_callback(lambda t: channel.close(error=None if t.cancelled() else t.exception()))
        self._listeners.add(ticket, channel, on_leave=work.cancel)
        try:
            yield stream_ok()
            async for piece in channel:
                yield piece.line()
            if work.cancelled():  # the caller left (`leave`)
                return
            transcription, results = work.result()
            yield StreamDone(transcription=transcription, input_tokens=sum(r.input_tokens for r in results),
                             output_tokens=sum(r.output_tokens for r in results)).line()
        except Exception:  # noqa: BLE001 - the status is sent: end the stream; the gateway ends its own
            log.error("transcription stream failed after it started", exc_info=True)
        finally:
            if not work.done():
                work.cancel()  # the caller left: windows not started are dropped


def plan_windows(audio: np.ndarray, window_seconds: float, speech: np.ndarray | None, threshold: float
                 ) -> tuple[list[Chunk], list[bool]]:
    """The windows of `audio` (16 kHz) and, per window, whether to decode it. With voice activity (`speech`,
    runtime.serving.vad's probabilities): cut where nobody speaks, and decode only windows with speech."""
    chunks = plan_chunks(audio, SAMPLE_RATE, window_seconds,
                         speech=(speech, vad.FRAME_SECONDS) if speech is not None else None)
    decoded = [speech is None or vad.has_speech(speech, c.start / SAMPLE_RATE, c.end / SAMPLE_RATE, threshold)
               for c in chunks]
    return chunks, decoded


def token_logprobs(engine, tokens: list[int], logprobs: list[float]) -> list[TokenLogprob]:
    """OpenAI's logprobs entries of tokens: each one's text, log-probability and own bytes."""
    return [TokenLogprob(token=b.decode("utf-8", errors="replace"), logprob=round(lp, 5), bytes=list(b))
            for b, lp in zip(engine.token_bytes(tokens), logprobs)]


@dataclass
class _Plan:
    audio: np.ndarray
    chunks: list[Chunk]
    decoded: list[bool]  # per chunk: decode it (voice activity heard speech, or was not asked)
    items: list[ASRItem]  # the engine items of the chunks to decode, in order
    language: str | None  # forced language (package name)
    speech: np.ndarray | None  # voice activity, when it planned the windows


def _majority(values: list[str]) -> str | None:
    values = [v for v in values if v in LANGUAGES]  # anything else is not a language the model knows
    return max(set(values), key=values.count) if values else None
