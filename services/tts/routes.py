"""HTTP routes of the TTS service: POST /v1/audio/speech (OpenAI-compatible), GET /v1/audio/voices.

Everything a client can get wrong is refused before synthesis starts, and before a stream opens.
"""

from __future__ import annotations

import base64
import json

import numpy as np

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from services.gateway.deps import gateway
from services.runtime.edge import remote
from services.runtime.codecs.audio_encode import MEDIA_TYPES, StreamingEncoder, encode_audio
from services.runtime.core.errors import InvalidRequest, NotFound, PayloadTooLarge
from services.runtime.edge.http import read_json_object, validate
from services.runtime.core.languages import TTS_LANGUAGES as LANGUAGES
from services.runtime.core.languages import TTS_MODEL_LANGUAGES as MODEL_LANGUAGES
from services.runtime.core.logging import get_logger

from .engine import VOICES
from .protocol import SpeechRequest

router = APIRouter(tags=["audio"])
log = get_logger("tts")
SAMPLE_RATE = 24000  # Qwen3-TTS 12 Hz codec output
_VOICE_IDS = {v.id for v in VOICES}


def model_language(gw, model: str) -> str | None:
    """The language a model name forces (tts-1-en -> english), None for auto; 404 for unknown models."""
    cfg = gw.settings.tts
    known = {cfg.model, cfg.model.rstrip("/").split("/")[-1], *cfg.aliases}
    if model in known or model.rstrip("/").split("/")[-1] in known:
        return None
    for prefix in ("tts-1-hd-", "tts-1-"):
        if model.startswith(prefix) and model[len(prefix):] in MODEL_LANGUAGES:
            return MODEL_LANGUAGES[model[len(prefix):]]
    valid = sorted(known) + [f"tts-1-{k}" for k in MODEL_LANGUAGES]
    raise NotFound(f"model {model!r} is not served here; use one of: {', '.join(valid)}", param="model",
                   code="model_not_found")


async def _validated(request: Request, gw) -> tuple[SpeechRequest, str | None]:
    req = validate(SpeechRequest, await read_json_object(request))
    language = model_language(gw, req.model)
    if req.language is not None:
        language = req.language.strip().lower()
        if language not in LANGUAGES:
            raise InvalidRequest(f"unknown language {req.language!r}; valid: {', '.join(LANGUAGES)}",
                                 param="language", code="invalid_value")
    if not req.input.strip():
        raise InvalidRequest("input is empty", param="input", code="empty_input")
    limit = gw.settings.tts.max_input_chars
    if len(req.input) > limit:
        raise PayloadTooLarge(f"input is {len(req.input)} characters; the limit is {limit}",
                              param="input", code="input_too_long")
    if req.voice.strip().lower() not in _VOICE_IDS:
        raise InvalidRequest(f"unknown voice {req.voice!r}; valid voices: {', '.join(sorted(_VOICE_IDS))}",
                             param="voice", code="invalid_voice")
    return req, language


@router.post("/v1/audio/speech", summary="Speak text (OpenAI-compatible); streams with stream_format",
             responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()} | {"text/event-stream": {}}}})
async def speech(request: Request, gw=Depends(gateway)) -> Response:
    gw.require("tts")
    req, language = await _validated(request, gw)
    fmt = req.response_format
    args = dict(text=req.input, voice=req.voice, language=language, instructions=req.instructions)
    stream_format = req.stream_format or ("audio" if req.stream else None)
    if stream_format is None:
        out = await remote.call("tts", lambda: gw.tts.to_async.synthesize(**args))
        body = encode_audio(out["audio"], out["sample_rate"], fmt, req.speed)
        return Response(body, media_type=MEDIA_TYPES[fmt])

    # Errors up to the first audio (admission, loading, validation in the model service) keep their
    # status: the stream's header line is read before our response starts.
    pcm = await remote.open_stream("tts", gw.tts.to_async.stream(**args))
    encoder = StreamingEncoder(fmt, SAMPLE_RATE, req.speed)
    if stream_format == "sse":
        return StreamingResponse(_sse(pcm, encoder), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    return StreamingResponse(_audio(pcm, encoder), media_type=MEDIA_TYPES[fmt],
                             headers={"Cache-Control": "no-cache"})


async def _encoded(pcm, encoder: StreamingEncoder):
    """float32 PCM bytes (any chunking) -> encoded bytes as soon as the encoder has them."""
    rest = b""
    try:
        async for chunk in pcm:
            data = rest + chunk
            cut = len(data) - len(data) % 4
            rest = data[cut:]
            if cut:
                out = encoder.feed(np.frombuffer(data[:cut], dtype="<f4"))
                if out:
                    yield out
        tail = encoder.close()
        if tail:
            yield tail
    except Exception:  # noqa: BLE001 - the status is sent already: end the stream, keep the worker
        log.error("stream failed after it started", exc_info=True)


async def _audio(pcm, encoder):
    async for data in _encoded(pcm, encoder):
        yield data


async def _sse(pcm, encoder):
    # OpenAI's speech SSE events: speech.audio.delta (base64 audio), then speech.audio.done.
    async for data in _encoded(pcm, encoder):
        yield f"data: {json.dumps({'type': 'speech.audio.delta', 'audio': base64.b64encode(data).decode()})}\n\n"
    yield f"data: {json.dumps({'type': 'speech.audio.done'})}\n\n"


@router.get("/v1/audio/voices", summary="The voices, their native language and description")
async def voices(gw=Depends(gateway)) -> JSONResponse:
    gw.require("tts")
    return JSONResponse({"object": "list", "data": [
        {"id": v.id, "name": v.name, "language": v.language, "description": v.description} for v in VOICES
    ], "languages": LANGUAGES})


ROUTES = ("/v1/audio/speech", "/v1/audio/voices")
