"""Realtime transcription over WebSocket in OpenAI's Realtime wire format: `/v1/realtime?intent=transcription`.

The session lives in the gateway. Audio arrives as `input_audio_buffer.append` events (base64 pcm16 at
24 kHz, or G.711 µ-law/A-law at 8 kHz), is resampled to 16 kHz as it comes, and is cut into turns by
server VAD (Silero through onnxruntime: no torch in the gateway) or by the client's `commit`
(services.asr.turns). Each committed turn is one streamed transcription by the ASR service, the same
`stream` API as POST /v1/audio/transcriptions with stream=true, so its text arrives as
`conversation.item.input_audio_transcription.delta` events while it is decoded, then `.completed`.

Both families of OpenAI's clients are answered in their own events: the GA API (`session.update`,
`session.created/updated`, `conversation.item.added`) and the beta one (header `OpenAI-Beta:
realtime=v1` or `transcription_session.update`: `transcription_session.created/updated`,
`conversation.item.created`). The API key is checked at the handshake like every route (header, or the
`openai-insecure-api-key.<key>` subprotocol browsers use; runtime.edge.http), and so are the ASR's
per-client rate limit and the open-session cap (429 before the socket opens).

A client's mistake is an `error` event naming it (type, code, param, the client's event_id) and the
session goes on. Per-session limits: the session's length (an `error` `session_expired`, then close
1000), audio faster than `realtime_audio_rate` × real time beyond a burst (`audio_rate_exceeded`, the
chunk dropped), the longest turn, and at most `realtime_max_pending` turns transcribing at once —
beyond that the socket is not read until one finishes, so a fast client waits on its own sends
(backpressure) instead of queueing unbounded work.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocketDisconnect

from services.gateway.registry import resolve_model
from services.runtime.codecs.audio import Resampler
from services.runtime.codecs.realtime_audio import INPUT_RATES, decode_input
from services.runtime.serving.vad import StreamingVAD
from services.runtime.core.errors import InvalidRequest, QwenError, ServiceUnavailable, TooManyRequests
from services.runtime.core.languages import ASR as ASR_LANGUAGES
from services.runtime.core.logging import get_logger
from services.runtime.edge import remote
from services.runtime.edge.http import KEY_SUBPROTOCOL, deny_websocket

from .contract import TextDelta, TranscribeOptions
from .contract import events as asr_events
from .turns import SAMPLE_RATE, BufferFull, Committed, Started, Stopped, Turns, VADConfig

router = APIRouter()
ROUTES = ("/v1/realtime",)
log = get_logger("realtime")

MAX_APPEND_CHARS = 15 * 1024 * 1024  # OpenAI's cap on one append event's base64 audio
LOGPROBS = "item.input_audio_transcription.logprobs"
GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}


# -- what clients send: both API families, validated strictly (an unknown field is the client's mistake) --

class Transcription(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    language: str | None = None
    prompt: str | None = Field(None, max_length=8000)
    delay: str | None = None  # GA options we accept and do not use (documented)
    keywords: list[str] | None = None
    languages: list[str] | None = None


class TurnDetection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["server_vad"]
    threshold: float | None = Field(None, gt=0, lt=1)
    prefix_padding_ms: int | None = Field(None, ge=0, le=10_000)
    silence_duration_ms: int | None = Field(None, ge=32, le=10_000)
    idle_timeout_ms: int | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


class GAFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: Literal[24000] | None = None


class GAInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: GAFormat | None = None
    transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None
    noise_reduction: dict | None = None


class GAAudio(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: GAInput | None = None


class GASession(BaseModel):
    """GA `session.update`'s session (type transcription)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["transcription"] = "transcription"
    audio: GAAudio | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None


class BetaSession(BaseModel):
    """Beta `transcription_session.update`'s session."""

    model_config = ConfigDict(extra="forbid")

    input_audio_format: Literal["pcm16", "g711_ulaw", "g711_alaw"] | None = None
    input_audio_transcription: Transcription | None = None
    turn_detection: TurnDetection | None = None
    input_audio_noise_reduction: dict | None = None
    include: list[Literal["item.input_audio_transcription.logprobs"]] | None = None
    modalities: list[str] | None = None
    client_secret: dict | None = None


class Config(BaseModel):
    """The session's settings, whichever family set them."""

    format: Literal["pcm16", "g711_ulaw", "g711_alaw"] = "pcm16"
    model: str
    language: str | None = None
    prompt: str = ""
    vad: VADConfig | None = VADConfig()
    logprobs: bool = False

    def merged(self, fmt, transcription: Transcription | None, detection, detection_given: bool,
               include) -> "Config":
        update: dict[str, Any] = {}
        if fmt is not None:
            update["format"] = fmt
        if transcription is not None:
            for name in ("model", "language", "prompt"):
                if name in transcription.model_fields_set:
                    update[name] = getattr(transcription, name) or ("" if name == "prompt" else None)
            if update.get("model") is None:
                update.pop("model", None)
        if detection_given:
            update["vad"] = None if detection is None else VADConfig(
                threshold=detection.threshold if detection.threshold is not None else 0.5,
                prefix_padding_ms=detection.prefix_padding_ms if detection.prefix_padding_ms is not None else 300,
                silence_duration_ms=(detection.silence_duration_ms if detection.silence_duration_ms is not None
                                     else 500))
        if include is not None:
            update["logprobs"] = LOGPROBS in include
        return self.model_copy(update=update)

    def detection(self) -> dict | None:
        if self.vad is None:
            return None
        return {"type": "server_vad", "threshold": self.vad.threshold, "prefix_padding_ms": self.vad.prefix_padding_ms,
                "silence_duration_ms": self.vad.silence_duration_ms}

    def transcription(self) -> dict:
        return {"model": self.model, "language": self.language, "prompt": self.prompt}


class AudioBucket:
    """Seconds of audio a session may still send: refilled at `rate` × real time up to `burst` seconds.
    Per connection and in memory (a session lives on one gateway), so a few lines rather than the shared
    rate-limit store."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst, self.level, self.at = rate, burst, burst, time.monotonic()

    def take(self, seconds: float) -> bool:
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        if seconds > self.level:
            return False
        self.level -= seconds
        return True


def _offered(ws: WebSocket) -> list[str]:
    return list(ws.scope.get("subprotocols") or [])


def _is_beta(ws: WebSocket) -> bool:
    return "realtime=v1" in ws.headers.get("openai-beta", "") or "openai-beta.realtime-v1" in _offered(ws)


def _subprotocol(ws: WebSocket) -> str | None:
    """The subprotocol to accept: `realtime` when offered (browsers fail a handshake that answers none of
    the ones they offered), else the first that does not carry the key."""
    offered = _offered(ws)
    if "realtime" in offered:
        return "realtime"
    return next((p for p in offered if not p.startswith(KEY_SUBPROTOCOL)), None)


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket) -> None:
    gw = ws.app.state.gateway
    refusal: QwenError | None = None
    try:
        if "asr" not in gw.services:
            raise ServiceUnavailable("the asr service is not enabled (QWEN_SERVICES)", code="service_disabled")
        if ws.query_params.get("intent") != "transcription":
            raise InvalidRequest("this server runs realtime transcription sessions only: connect with "
                                 "?intent=transcription", param="intent", code="unsupported_intent")
        if ws.query_params.get("model"):
            resolve_model(gw.settings, "asr", ws.query_params["model"])
        cfg = gw.settings.asr
        if gw.realtime_sessions >= cfg.realtime_max_sessions:
            raise TooManyRequests(f"this gateway has {cfg.realtime_max_sessions} realtime sessions open; try again "
                                  "later", code="too_many_sessions", retry_after=5)
        await gw.rate_limit("asr", ws)
    except QwenError as exc:
        refusal = exc
    if refusal is not None:
        return await deny_websocket(ws.scope, ws.receive, ws.send, refusal)
    await ws.accept(subprotocol=_subprotocol(ws))
    gw.realtime_sessions += 1
    try:
        await Session(gw, ws, beta=_is_beta(ws)).run()
    finally:
        gw.realtime_sessions -= 1


class Session:
    def __init__(self, gw, ws: WebSocket, *, beta: bool):
        self.gw, self.ws, self.beta = gw, ws, beta
        self.limits = gw.settings.asr
        self.id = f"sess_{uuid.uuid4().hex[:24]}"
        self.config = Config(model=ws.query_params.get("model") or gw.settings.asr.model)
        self._send_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(self.limits.realtime_max_pending)
        self._tasks: set[asyncio.Task] = set()
        self._previous: str | None = None  # the last committed item
        self._bucket = AudioBucket(self.limits.realtime_audio_rate, self.limits.realtime_burst_seconds)
        self._reset_audio()

    def _reset_audio(self) -> None:
        self._resampler = Resampler(INPUT_RATES[self.config.format], SAMPLE_RATE)
        vad = StreamingVAD() if self.config.vad is not None else None
        clock = self.turns.total if hasattr(self, "turns") else 0  # the session's clock goes on
        self.turns = Turns(self.config.vad, int(self.limits.realtime_max_turn_seconds * SAMPLE_RATE),
                           StreamingVAD.FRAME, vad.feed if vad else None, origin=clock)

    # -- the loop --

    async def run(self) -> None:
        deadline = time.monotonic() + self.limits.realtime_max_session_seconds
        await self.emit({"type": "transcription_session.created" if self.beta else "session.created",
                         "session": self.session()})
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.receive(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    await self.error(QwenError(
                        f"the session reached its maximum length of {self.limits.realtime_max_session_seconds:.0f} s",
                        status=400, code="session_expired"))
                    await self.ws.close(1000)
                    return
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is None:
                    await self.error(InvalidRequest("send events as JSON text frames", code="invalid_event"))
                    continue
                await self.handle(message["text"])
        except WebSocketDisconnect:
            return
        finally:
            for task in self._tasks:
                task.cancel()

    async def handle(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            return await self.error(InvalidRequest("the event is not valid JSON", code="invalid_json"))
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return await self.error(InvalidRequest("an event is a JSON object with a `type`", param="type",
                                                   code="invalid_event"))
        kind, eid = event["type"], event.get("event_id")
        try:
            if kind in ("session.update", "transcription_session.update"):
                await self.update(event.get("session"), ga=kind == "session.update")
            elif kind == "input_audio_buffer.append":
                await self.append(event.get("audio"))
            elif kind == "input_audio_buffer.commit":
                # what the resampler still holds (its filter's delay) belongs to this turn
                tail, self._resampler = self._resampler.flush(), Resampler(INPUT_RATES[self.config.format],
                                                                           SAMPLE_RATE)
                await self._take(tail)
                committed = self.turns.commit()
                if committed is None:
                    raise InvalidRequest("buffer too small: commit at least 100 ms of audio",
                                         code="input_audio_buffer_commit_empty")
                await self.committed(committed)
            elif kind == "input_audio_buffer.clear":
                self.turns.clear()
                await self.emit({"type": "input_audio_buffer.cleared"})
            else:
                raise InvalidRequest(f"unknown or unsupported event type {kind!r} in a transcription session",
                                     param="type", code="invalid_event")
        except QwenError as exc:
            await self.error(exc, event_id=eid)

    # -- client events --

    async def update(self, session, *, ga: bool) -> None:
        if not isinstance(session, dict):
            raise InvalidRequest("`session` is required: an object", param="session", code="invalid_value")
        try:
            if ga:
                s = GASession.model_validate(session)
                audio_in = s.audio.input if s.audio and s.audio.input else GAInput()
                fmt = GA_FORMATS[audio_in.format.type] if audio_in.format else None
                config = self.config.merged(fmt, audio_in.transcription, audio_in.turn_detection,
                                            "turn_detection" in audio_in.model_fields_set, s.include)
            else:
                b = BetaSession.model_validate(session)
                config = self.config.merged(b.input_audio_format, b.input_audio_transcription, b.turn_detection,
                                            "turn_detection" in b.model_fields_set, b.include)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise InvalidRequest(f"session.{where}: {err['msg']}", param=f"session.{where}",
                                 code="invalid_value") from None
        resolve_model(self.gw.settings, "asr", config.model, param="session.transcription.model")
        if config.language is not None:
            try:
                ASR_LANGUAGES.parse(config.language)
            except ValueError as exc:
                raise InvalidRequest(str(exc), param="session.transcription.language", code="invalid_value") from None
        rebuild = (config.format, config.vad) != (self.config.format, self.config.vad)
        self.config = config
        if rebuild:  # new input rate or turn detection: audio not committed yet is dropped
            self._reset_audio()
        self.beta = self.beta or not ga
        await self.emit({"type": "transcription_session.updated" if not ga else "session.updated",
                         "session": self.session()})

    async def append(self, audio) -> None:
        if not isinstance(audio, str) or not audio:
            raise InvalidRequest("`audio` is required: base64 audio", param="audio", code="invalid_value")
        if len(audio) > MAX_APPEND_CHARS:
            raise InvalidRequest(f"one append carries at most {MAX_APPEND_CHARS} characters of base64",
                                 param="audio", code="audio_too_large")
        try:
            samples = decode_input(base64.b64decode(audio, validate=True), self.config.format)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"`audio` is not base64 {self.config.format}: {exc}", param="audio",
                                 code="invalid_audio") from None
        if not self._bucket.take(len(samples) / INPUT_RATES[self.config.format]):
            raise TooManyRequests(f"audio is arriving faster than {self.limits.realtime_audio_rate:g}× real time; "
                                  "this chunk was dropped", code="audio_rate_exceeded", retry_after=1)
        await self._take(self._resampler.feed(samples))

    async def _take(self, samples) -> None:
        """16 kHz audio into the turns, and the events that causes."""
        try:
            happened = self.turns.feed(samples)
        except BufferFull:
            raise InvalidRequest(f"the buffer holds at most {self.limits.realtime_max_turn_seconds:g} s: commit or "
                                 "clear it; this chunk was dropped", param="audio",
                                 code="input_audio_buffer_full") from None
        for what in happened:
            if isinstance(what, Started):
                await self.emit({"type": "input_audio_buffer.speech_started", "item_id": what.item_id,
                                 "audio_start_ms": what.audio_start_ms})
            elif isinstance(what, Stopped):
                await self.emit({"type": "input_audio_buffer.speech_stopped", "item_id": what.item_id,
                                 "audio_end_ms": what.audio_end_ms})
            elif isinstance(what, Committed):
                await self.committed(what)

    async def committed(self, turn: Committed) -> None:
        """A committed turn: its events, then its transcription (waiting for a slot: backpressure)."""
        previous, self._previous = self._previous, turn.item_id
        await self.emit({"type": "input_audio_buffer.committed", "item_id": turn.item_id,
                         "previous_item_id": previous})
        item = {"id": turn.item_id, "object": "realtime.item", "type": "message", "role": "user",
                "status": "completed", "content": [{"type": "input_audio", "transcript": None}]}
        await self.emit({"type": "conversation.item.created" if self.beta else "conversation.item.added",
                         "previous_item_id": previous, "item": item})
        await self._slots.acquire()
        task = asyncio.create_task(self.transcribe(turn.item_id, turn.audio, self.config))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def transcribe(self, item_id: str, audio, config: Config) -> None:
        base = {"item_id": item_id, "content_index": 0}
        try:
            options = TranscribeOptions(prompt=config.prompt, language=config.language, logprobs=config.logprobs)
            ticket = uuid.uuid4().hex
            asr = self.gw.asr.to_async
            body = await remote.open_stream("asr", asr.stream(audio=audio, options=options, ticket=ticket),
                                            on_leave=lambda: asr.leave(ticket=ticket))
            async for event in asr_events(body):
                if isinstance(event, TextDelta):
                    if event.delta or event.logprobs:
                        out = {"type": "conversation.item.input_audio_transcription.delta", **base,
                               "delta": event.delta}
                        if config.logprobs:
                            out["logprobs"] = [t.model_dump() for t in event.logprobs]
                        await self.emit(out)
                    continue
                usage = {"type": "tokens", "input_tokens": event.input_tokens, "output_tokens": event.output_tokens,
                         "total_tokens": event.input_tokens + event.output_tokens}
                done = {"type": "conversation.item.input_audio_transcription.completed", **base,
                        "transcript": event.transcription.text, "usage": usage}
                if config.logprobs:
                    done["logprobs"] = [t.model_dump() for s in event.transcription.spans for t in s.token_logprobs]
                await self.emit(done)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the turn failed, the session goes on
            err = exc if isinstance(exc, QwenError) else QwenError("transcription failed")
            if not isinstance(exc, QwenError):
                log.error("realtime transcription failed", exc_info=True)
            await self.emit({"type": "conversation.item.input_audio_transcription.failed", **base,
                             "error": err.envelope()["error"]}, quiet=True)
        finally:
            self._slots.release()

    # -- server events --

    def session(self) -> dict:
        c = self.config
        if self.beta:
            return {"id": self.id, "object": "realtime.transcription_session", "input_audio_format": c.format,
                    "input_audio_transcription": c.transcription(), "turn_detection": c.detection(),
                    "input_audio_noise_reduction": None, "include": [LOGPROBS] if c.logprobs else [],
                    "modalities": ["text"]}
        fmt = {v: k for k, v in GA_FORMATS.items()}[c.format]
        return {"type": "transcription", "id": self.id, "object": "realtime.transcription_session",
                "audio": {"input": {"format": {"type": fmt, **({"rate": 24000} if c.format == "pcm16" else {})},
                                    "transcription": c.transcription(), "turn_detection": c.detection(),
                                    "noise_reduction": None}},
                "include": [LOGPROBS] if c.logprobs else []}

    async def error(self, exc: QwenError, event_id: str | None = None) -> None:
        body = exc.envelope()["error"]
        await self.emit({"type": "error", "error": {**body, "event_id": event_id}}, quiet=True)

    async def emit(self, event: dict, *, quiet: bool = False) -> None:
        """Send one server event (with its own event_id). `quiet`: a closed socket is not an error here."""
        text = json.dumps({"event_id": f"event_{uuid.uuid4().hex[:24]}", **event}, ensure_ascii=False)
        try:
            async with self._send_lock:
                await self.ws.send_text(text)
        except Exception:  # noqa: BLE001 - the client is gone
            if not quiet:
                raise WebSocketDisconnect(1006) from None
