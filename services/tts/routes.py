"""HTTP routes of the TTS service: POST /v1/audio/speech (OpenAI-compatible), GET /v1/audio/voices.

Everything a client can get wrong is refused before synthesis starts, and before a stream opens.
"""

from __future__ import annotations

import base64
import json
import uuid

import numpy as np

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from services.gateway.deps import gateway
from services.gateway.pipelines import speech_words, transcribe_align
from services.gateway.registry import resolve_model
from services.runtime.edge import remote
from services.runtime.codecs.audio_encode import MEDIA_TYPES, StreamingEncoder, encode_audio
from services.runtime.core.errors import InvalidRequest
from services.runtime.edge.http import read_json_object, validate
from services.runtime.core.languages import TTS_LANGUAGES as LANGUAGES
from services.runtime.core.languages import TTS_MODEL_LANGUAGES as MODEL_LANGUAGES
from services.runtime.core.logging import get_logger
from services.runtime.core.settings import Settings

from .contract import Finish, Speech, StreamHeader, Utterance, records
from .protocol import SpeechRequest
from .voices import VOICES

router = APIRouter(tags=["audio"])
log = get_logger("tts")
# How a non-streamed synthesis ended: "stop" (the model's end of speech) or "length" (its frame cap: the
# audio is cut). Streamed as SSE: the speech.audio.done event's `finish_reason`.
FINISH_HEADER = "X-Finish-Reason"


def model_language(settings: Settings, model: str) -> str | None:
    """The language a model name forces (tts-1-en -> english), None for auto; 404 for unknown models."""
    resolve_model(settings, "tts", model)
    for prefix in ("tts-1-hd-", "tts-1-"):
        if model.startswith(prefix) and model[len(prefix):] in MODEL_LANGUAGES:
            return MODEL_LANGUAGES[model[len(prefix):]]
    return None


async def _validated(request: Request, gw) -> tuple[SpeechRequest, Utterance]:
    req = validate(SpeechRequest, await read_json_object(request))
    language = model_language(gw.settings, req.model)
    utterance = Utterance(text=req.input, voice=req.voice, instructions=req.instructions,
                          language=req.language if req.language is not None else language)
    return req, utterance.checked(gw.settings.tts.max_input_chars)


@router.post("/v1/audio/speech", summary="Speak text (OpenAI-compatible); streams with stream_format",
             responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()} | {"text/event-stream": {}}}})
async def speech(request: Request, gw=Depends(gateway)) -> Response:
    gw.require("tts")
    await gw.rate_limit("tts", request)
    req, utterance = await _validated(request, gw)
    fmt = req.response_format
    stream_format = req.stream_format or ("audio" if req.stream else None)
    if req.timestamps:
        transcribe_align.check(gw, words=True, param="timestamps")  # before anything is synthesized
        if stream_format == "audio":
            raise InvalidRequest("timestamps need stream_format sse (words as events) or a whole answer (JSON); a "
                                 "raw audio stream has no place for them", param="timestamps", code="invalid_value")
    if stream_format is None:
        out = await remote.call("tts", lambda: gw.tts.to_async.synthesize(utterance=utterance), into=Speech)
        body = encode_audio(out.audio, out.sample_rate, fmt, req.speed)
        headers = {FINISH_HEADER: out.finish.finish_reason}
        if not req.timestamps:
            return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)
        seconds = len(out.audio) / out.sample_rate
        words = await speech_words.time_words(gw, out.audio, out.sample_rate,
                                              [(0.0, seconds, speech_words.sentences(utterance.text))],
                                              utterance.language, speed=req.speed)
        return JSONResponse({"audio": base64.b64encode(body).decode(), "response_format": fmt,
                             "duration": round(seconds / req.speed, 3), "finish_reason": out.finish.finish_reason,
                             "words": words}, headers=headers)

    texts = speech_words.sentences(utterance.text) if req.timestamps else [utterance.text]
    # Errors up to the first audio (admission, loading, validation in the model service) keep their
    # status: the stream's header line is read before our response starts.
    head, pcm = await _open(gw, utterance.model_copy(update={"text": texts[0]}))
    encoder = StreamingEncoder(fmt, head.sample_rate, req.speed)
    if req.timestamps:
        return StreamingResponse(_sse_timed(gw, utterance, texts, pcm, encoder, head.sample_rate, req.speed),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    if stream_format == "sse":
        return StreamingResponse(_sse(pcm, encoder), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return StreamingResponse(_audio(pcm, encoder), media_type=MEDIA_TYPES[fmt],
                             headers={"Cache-Control": "no-cache"})


async def _open(gw, utterance: Utterance):
    """One synthesis stream: (its header, its body), errors raised before any byte is sent."""
    ticket = uuid.uuid4().hex  # names this stream in the service's `leave` when our client goes early
    return await remote.open_stream("tts", gw.tts.to_async.stream(utterance=utterance, ticket=ticket),
                                    into=StreamHeader, on_leave=lambda: gw.tts.to_async.leave(ticket=ticket))


async def _encoded(body, encoder: StreamingEncoder):
    """The service's records -> encoded bytes as soon as the encoder has them, then the Finish (None when
    the stream broke after it started: the status is sent already, so it just ends; the worker keeps
    serving)."""
    finish = None
    try:
        async for record in records(body):
            if isinstance(record, Finish):
                finish = record
                continue
            out = encoder.feed(np.frombuffer(record, dtype="<f4"))
            if out:
                yield out
        tail = encoder.close()
        if tail:
            yield tail
    except Exception:  # noqa: BLE001
        log.error("stream failed after it started", exc_info=True)
        return
    if finish is not None:
        yield finish


async def _audio(body, encoder):
    # A raw audio stream has no place for the finish reason once it has started: a stream cut at its
    # frame cap shows in qwen_generation_truncated_total and the service's log.
    async for data in _encoded(body, encoder):
        if not isinstance(data, Finish):
            yield data


def _event(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _delta(data: bytes) -> str:
    return _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})


def _done(finish: Finish) -> str:
    # speech.audio.done with usage (input: the talker's prompt tokens, output: 80 ms frames);
    # `finish_reason` is our extension.
    usage = {"input_tokens": finish.input_tokens, "output_tokens": finish.output_tokens,
             "total_tokens": finish.input_tokens + finish.output_tokens}
    return _event({"type": "speech.audio.done", "usage": usage, "finish_reason": finish.finish_reason})


async def _sse(body, encoder):
    # OpenAI's speech SSE events: speech.audio.delta (base64 audio), then speech.audio.done.
    async for data in _encoded(body, encoder):
        if isinstance(data, Finish):
            yield _done(data)
            return
        yield _delta(data)


async def _sse_timed(gw, utterance: Utterance, texts: list[str], first, encoder: StreamingEncoder, rate: int,
                     speed: float):
    """The SSE stream with word timings (pipelines.speech_words): the sentences synthesized one after the
    other into one encoder; each finished sentence's words timed in a task while the next one streams, sent
    as `speech.audio.words` events in order; speech.audio.done sums the sentences' usage (`length` if any
    was cut). A failure after the start ends the stream without speech.audio.done (logged)."""
    import asyncio

    pending: list[asyncio.Task] = []  # timings of finished sentences, in order
    offset, totals, reason, sent = 0.0, [0, 0], "stop", 0

    def words_event(words: list[dict]) -> str:
        nonlocal sent
        sent += 1
        return _event({"type": "speech.audio.words", "sentence": sent - 1, "words": words})

    try:
        for i, text in enumerate(texts):
            body = first if i == 0 else (await _open(gw, utterance.model_copy(update={"text": text})))[1]
            chunks: list[np.ndarray] = []
            async for record in records(body):
                if isinstance(record, Finish):
                    totals = [totals[0] + record.input_tokens, totals[1] + record.output_tokens]
                    reason = "length" if record.finish_reason == "length" else reason
                    continue
                chunks.append(np.frombuffer(record, dtype="<f4"))
                out = encoder.feed(chunks[-1])
                if out:
                    yield _delta(out)
                while pending and pending[0].done():
                    yield words_event(pending.pop(0).result())
            audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
            seconds = len(audio) / rate
            pending.append(asyncio.ensure_future(speech_words.time_words(
                gw, audio, rate, [(0.0, seconds, [text])], utterance.language, offset=offset, speed=speed)))
            offset += seconds / speed
        tail = encoder.close()
        if tail:
            yield _delta(tail)
        while pending:
            yield words_event(await pending.pop(0))
    except Exception:  # noqa: BLE001 - the status is sent: end the stream, keep the worker
        log.error("timed speech stream failed after it started", exc_info=True)
        return
    finally:
        for task in pending:
            task.cancel()
    yield _done(Finish(finish_reason=reason, input_tokens=totals[0], output_tokens=totals[1]))


@router.get("/v1/audio/voices", summary="The voices, their native language and description")
async def voices(gw=Depends(gateway)) -> JSONResponse:
    gw.require("tts")
    return JSONResponse({"object": "list", "data": [
        {"id": v.id, "name": v.name, "language": v.language, "description": v.description} for v in VOICES
    ], "languages": LANGUAGES})


ROUTES = ("/v1/audio/speech", "/v1/audio/voices")
