"""HTTP routes of the aligner: POST /api/v1/align and its task form (submit / status / result)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from services.gateway.deps import gateway
from services.gateway.pipelines import transcribe_align
from services.runtime.edge import remote
from services.runtime.core.errors import InvalidRequest, UnsupportedMedia
from services.runtime.edge.http import form_fields, inline_schema, read_form, read_json_object, validate
from services.runtime.edge.media import audio_bytes, load_audio, read_upload
from services.gateway.tasks import add_task_routes

from . import formats
from .contract import AlignLines, Alignment, check_lyrics
from .review import review_rules
from .separation import fit_length
from .protocol import AlignRequest, AlignResponse, ConvertRequest

router = APIRouter(tags=["alignment"])

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(AlignRequest)},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["audio"],
                    "properties": {
                        "audio": {"type": "string", "format": "binary"},
                        "lyrics": {"type": "string", "description": "JSON array or newline-separated lines; "
                                                                   "omitted: heard by the ASR"},
                        "format": {"type": "string", "enum": list(formats.FORMATS)},
                        "language": {"type": "string"},
                        "metadata": {"type": "string", "description": "JSON object: title, artist, album, by"},
                        "verify": {"type": "boolean", "description": "compare with what the ASR hears"},
                        "separate": {"type": "boolean", "description": "separate the vocals first (Demucs)"},
                    },
                }
            },
        },
    }
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Aligned lyrics in the requested format",
          "content": {"text/plain": {}, "application/json": {"schema": inline_schema(AlignResponse)}}},
}


async def _parse(request: Request, gw) -> tuple[AlignRequest, bytes | None]:
    """JSON or multipart (FastAPI declares one body per route, so this route reads its own)."""
    ctype = request.headers.get("content-type", "")
    settings = gw.settings
    if ctype.startswith("multipart/form-data"):
        upload, form = await read_form(request, file_field="audio", file_required=False, what="an `audio` part")
        fields: dict[str, Any] = form_fields(form, "audio")
        if "lyrics" in fields:
            raw = fields["lyrics"]
            if raw.lstrip().startswith("["):
                try:
                    fields["lyrics"] = json.loads(raw)
                except json.JSONDecodeError:
                    raise InvalidRequest("lyrics: not a valid JSON array", param="lyrics") from None
        if "metadata" in fields:
            try:
                fields["metadata"] = json.loads(fields["metadata"])
            except json.JSONDecodeError:
                raise InvalidRequest("metadata: not valid JSON", param="metadata") from None
        data = None
        if upload is not None:
            data = await read_upload(upload, max_bytes=settings.upload_max_bytes, param="audio")
        payload = fields
    elif ctype.startswith("application/json") or not ctype:
        payload = await read_json_object(request)
        data = None
    else:
        raise UnsupportedMedia("send application/json or multipart/form-data", code="unsupported_content_type")
    return validate(AlignRequest, payload), data


Ctx = tuple[AlignRequest, "bytes | None"]


async def _parse_checked(request: Request, gw=Depends(gateway)) -> Ctx:
    """Everything a client can get wrong is refused here, before any work (or task) starts."""
    await gw.rate_limit("aligner", request)
    req, data = await _parse(request, gw)
    if req.verify and (req.lyrics is None or "asr" not in gw.enabled):
        raise InvalidRequest("verify compares the lyrics with what the ASR hears: it needs lyrics and the ASR "
                             "service (QWEN_SERVICES)", param="verify", code="verify_unavailable")
    if req.separate and not gw.settings.aligner.separator:
        raise InvalidRequest("vocal separation is not enabled here: set QWEN_ALIGNER_SEPARATOR (a Demucs model)",
                             param="separate", code="separation_unavailable")
    if req.lyrics is None:
        if "asr" not in gw.enabled:
            raise InvalidRequest("send the lyrics: without them the ASR service hears the vocals, and it is not "
                                 "enabled here (QWEN_SERVICES)", param="lyrics", code="lyrics_required")
    else:
        check_lyrics(req.lyrics, gw.settings.aligner)
    return req, data


async def _run(gw, ctx: Ctx) -> Alignment:
    req, data = ctx
    data, param = await audio_bytes(gw.settings, data=data, url=req.audio_url, param="audio", url_param="audio_url")
    samples = (await load_audio(gw.settings, data=data, param=param, url_param="audio_url",
                                max_seconds=gw.settings.aligner.max_audio_seconds)).samples
    if req.separate:  # everything below hears the vocals: the aligner, and the ASR of no-lyrics and verify
        encoded = np.frombuffer(data, dtype=np.uint8)
        vocals = await remote.call("aligner", lambda: gw.aligner.to_async.separate(audio=encoded))
        samples = fit_length(np.asarray(vocals, dtype=np.float32).reshape(-1), len(samples))
    if req.lyrics is None:  # no lyrics: heard by the ASR, timed by the aligner
        return await transcribe_align.lyrics_from_audio(gw, samples, req.language, review_rules(gw.settings))
    if req.verify:
        return await transcribe_align.verified(gw, samples, req.lyrics, req.language)
    return await remote.call("aligner", lambda: gw.aligner.to_async.align(
        audio=samples, text=AlignLines(lines=req.lyrics, language=req.language)), into=Alignment)


def _render(ctx: Ctx, result: Alignment) -> Response:
    req = ctx[0]
    if req.format == "json":
        return JSONResponse(result.model_dump(exclude={"chunks"}))  # AlignResponse
    body = formats.render(req.format, result.model_dump()["segments"], language=result.language,
                          duration=result.duration, metadata=req.metadata.model_dump() if req.metadata else None)
    return Response(body, media_type=formats.MEDIA_TYPES[req.format])


@router.post("/api/v1/align", openapi_extra=_BODY_DOC, responses=_RESPONSES,
             summary="Align lyric lines to a song (LRC, enhanced LRC, SRT, VTT, JSON)")
async def align(ctx: Ctx = Depends(_parse_checked), gw=Depends(gateway)) -> Response:
    return _render(ctx, await _run(gw, ctx))


@router.post("/api/v1/align/convert", summary="An alignment (the JSON answer, maybe edited) in another format",
             responses=_RESPONSES)
async def convert(request: Request) -> Response:
    """No model runs: the segments given are written as `format` asks (LRC, TTML, ASS...), so a page or an
    editor gets every format from one alignment."""
    req = validate(ConvertRequest, await read_json_object(request))
    segments = [seg.model_dump() for seg in req.segments]
    if req.format == "json":
        return JSONResponse({"segments": segments, "language": req.language, "duration": req.duration,
                             "review": req.review.model_dump() if req.review else None})
    body = formats.render(req.format, segments, language=req.language, duration=req.duration,
                          metadata=req.metadata.model_dump() if req.metadata else None)
    return Response(body, media_type=formats.MEDIA_TYPES[req.format])


ROUTES = ("/api/v1/align", "/api/v1/align/convert") + add_task_routes(
    router, path="/api/v1/align", kind="align", parse=_parse_checked, run=_run, render=_render,
    openapi_extra=_BODY_DOC)
