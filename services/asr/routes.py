"""HTTP route of the ASR service: POST /v1/audio/transcriptions (OpenAI-compatible)."""

from __future__ import annotations

import re
import unicodedata

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from services.gateway.deps import gateway
from services.runtime.edge import remote
from services.runtime.core.errors import InvalidRequest, NotFound
from services.runtime.edge.http import inline_schema, read_form, validate
from services.runtime.core.languages import ALIGNER as ALIGNER_LANGUAGES
from services.runtime.edge.media import load_audio, read_upload
from services.runtime.codecs.subtitles import to_srt, to_vtt
from services.gateway.tasks import add_task_routes

from .protocol import Segment, TranscriptionRequest, TranscriptionVerbose, Word

router = APIRouter(tags=["audio"])

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["file", "model"],
            "properties": {
                "file": {"type": "string", "format": "binary"},
                **{k: v for k, v in inline_schema(TranscriptionRequest)["properties"].items() if k != "stream"},
            },
        }}},
    }
}
# Sentence ends: Latin punctuation followed by a space, or CJK punctuation.
_SENTENCE = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])")


def resolve_model(gw, name: str) -> None:
    cfg = gw.settings.asr
    known = {cfg.model, cfg.model.rstrip("/").split("/")[-1], *cfg.aliases}
    if name not in known and name.rstrip("/").split("/")[-1] not in known:
        raise NotFound(f"model {name!r} is not served here; use one of: {', '.join(sorted(known))}",
                       param="model", code="model_not_found")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


async def _parse(request: Request, gw) -> tuple[TranscriptionRequest, bytes]:
    upload, form = await read_form(request, file_field="file", file_required=True, what="the audio as a `file` part")
    fields: dict = {}
    for key, value in form.multi_items():
        if key == "file" or not isinstance(value, str):
            continue
        if key in ("timestamp_granularities[]", "timestamp_granularities"):
            fields.setdefault("timestamp_granularities", []).append(value)
        else:
            fields[key] = value
    req = validate(TranscriptionRequest, fields)
    if violation := req.openai_rule_violation():
        raise InvalidRequest(violation[1], param=violation[0], code="invalid_value")
    resolve_model(gw, req.model)
    data = await read_upload(upload, max_bytes=gw.settings.upload_max_bytes, param="file")
    return req, data


Ctx = tuple[TranscriptionRequest, bytes]


async def _parse_checked(request: Request, gw) -> Ctx:
    gw.require("asr")
    return await _parse(request, gw)


async def _run(gw, ctx: Ctx) -> dict:
    req, data = ctx
    audio = await load_audio(gw.settings, data=data, param="file", url_param="file",
                             max_seconds=gw.settings.asr.max_audio_seconds)
    result = await remote.call("asr", lambda: gw.asr.to_async.transcribe(
        audio=audio.samples, prompt=req.prompt or "", language=req.language))
    if req.response_format in ("json", "text"):
        return {**result, "segments": [], "words": []}
    segments, words = await _timed(gw, audio.samples, result, "word" in req.timestamp_granularities)
    return {**result, "segments": segments, "words": words}


def _render(ctx: Ctx, out: dict) -> Response:
    req = ctx[0]
    fmt = req.response_format
    if fmt == "json":
        return JSONResponse({"text": out["text"]})
    if fmt == "text":
        return PlainTextResponse(out["text"] + "\n")
    if fmt == "srt":
        return Response(to_srt(out["segments"]), media_type="application/x-subrip; charset=utf-8")
    if fmt == "vtt":
        return Response(to_vtt(out["segments"]), media_type="text/vtt; charset=utf-8")
    grans = req.timestamp_granularities
    body = TranscriptionVerbose(
        language=(out["language"] or "unknown").lower(),
        duration=out["duration"],
        text=out["text"],
        segments=[Segment(id=i, seek=int(s["start"] * 100), start=s["start"], end=s["end"], text=s["text"],
                          temperature=req.temperature) for i, s in enumerate(out["segments"])]
        if (not grans or "segment" in grans) else None,
        words=[Word(**w) for w in out["words"]] if "word" in grans else None,
    )
    return JSONResponse(body.model_dump(exclude_none=True))


@router.post("/v1/audio/transcriptions", openapi_extra=_BODY_DOC, summary="Transcribe audio (OpenAI-compatible)")
async def transcriptions(request: Request, gw=Depends(gateway)) -> Response:
    ctx = await _parse_checked(request, gw)
    return _render(ctx, await _run(gw, ctx))


def has_words(text: str) -> bool:
    """Whether `text` holds a unit the forced aligner can time. Its unit splitter (qwen_asr's
    Qwen3ForceAlignProcessor, every language) keeps letters, digits (Unicode L* and N*) and apostrophes
    and drops everything else: a transcript without any (noise or music written as punctuation) has no
    word to time."""
    return any(ch == "'" or unicodedata.category(ch)[0] in "LN" for ch in text)


async def _timed(gw, samples, result: dict, want_words: bool) -> tuple[list[dict], list[dict]]:
    """Sentence segments (and words) timed by the forced-aligner service, window by window; without
    the aligner, one segment per ASR window.

    Words are [] only when the transcript has no word (`has_words`); then the aligner is not asked. Any
    error of the aligner is the request's error: a failed timing never becomes an empty word list."""
    spans = [s for s in result["spans"] if s["text"]]
    windows = [{"start": s["start"], "end": s["end"], "text": s["text"]} for s in spans]
    if "aligner" not in gw.enabled:
        if want_words:
            raise InvalidRequest("word timestamps need the aligner service, which is not enabled (QWEN_SERVICES)",
                                 param="timestamp_granularities", code="timestamps_unavailable")
        return windows, []
    if not any(has_words(s["text"]) for s in spans):
        return windows, []
    aligned = await remote.call("aligner", lambda: gw.aligner.to_async.align_spans(
        audio=samples,
        spans=[{"start": s["start"], "end": s["end"], "lines": split_sentences(s["text"])} for s in spans],
        language=ALIGNER_LANGUAGES.code(result["language"]),  # None: the aligner detects it
    ))
    segments = [{"start": s["start"], "end": s["end"], "text": s["text"]} for s in aligned["segments"]]
    words = [{"word": w["text"], "start": w["start"], "end": w["end"]}
             for s in aligned["segments"] for w in s["words"]]
    return segments, words

ROUTES = ("/v1/audio/transcriptions",) + add_task_routes(
    router, path="/v1/audio/transcriptions", kind="transcription", parse=_parse_checked, run=_run,
    render=_render, openapi_extra=_BODY_DOC)
