"""HTTP routes of the aligner: POST /api/v1/align and its task form (submit / status / result)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from services.runtime import remote
from services.runtime.errors import InvalidRequest, QwenError, Unprocessable
from services.runtime.http import validation_error
from services.runtime.media import load_audio, read_upload

from . import formats
from .protocol import AlignRequest, AlignResponse, TaskAccepted

router = APIRouter(tags=["alignment"])

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": AlignRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["audio", "lyrics"],
                    "properties": {
                        "audio": {"type": "string", "format": "binary"},
                        "lyrics": {"type": "string", "description": "JSON array or newline-separated lines"},
                        "format": {"type": "string", "enum": list(formats.FORMATS)},
                        "language": {"type": "string"},
                        "metadata": {"type": "string", "description": "JSON object: title, artist, album, by"},
                    },
                }
            },
        },
    }
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Aligned lyrics in the requested format",
          "content": {"text/plain": {}, "application/json": {"schema": AlignResponse.model_json_schema()}}},
}


def gateway(request: Request):
    return request.app.state.gateway


async def _parse(request: Request) -> tuple[AlignRequest, bytes | None]:
    ctype = request.headers.get("content-type", "")
    settings = gateway(request).settings
    if ctype.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception:
            raise InvalidRequest("malformed multipart body", code="invalid_multipart") from None
        upload = form.get("audio")
        fields: dict[str, Any] = {k: v for k, v in form.items() if k != "audio" and isinstance(v, str)}
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
        if upload is not None and not isinstance(upload, str):
            data = await read_upload(upload, max_bytes=settings.upload_max_bytes, param="audio")
        payload = fields
    elif ctype.startswith("application/json") or not ctype:
        try:
            payload = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidRequest("request body is not valid JSON", code="invalid_json") from None
        if not isinstance(payload, dict):
            raise InvalidRequest("request body must be a JSON object", code="invalid_json")
        data = None
    else:
        raise QwenError("send application/json or multipart/form-data", status=415, code="unsupported_content_type")
    try:
        req = AlignRequest.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc) from None
    return req, data


def _check_lyrics(req: AlignRequest, gw) -> None:
    cfg = gw.settings.aligner
    if not any(line.strip() for line in req.lyrics):
        raise Unprocessable("lyrics are empty", param="lyrics", code="empty_lyrics")
    if len(req.lyrics) > cfg.max_lines:
        raise QwenError(f"lyrics have {len(req.lyrics)} lines; the limit is {cfg.max_lines}", status=413,
                        param="lyrics", code="lyrics_too_long")
    if sum(len(line) for line in req.lyrics) > cfg.max_lyrics_chars:
        raise QwenError(f"lyrics exceed {cfg.max_lyrics_chars} characters", status=413, param="lyrics",
                        code="lyrics_too_long")


async def _align(gw, req: AlignRequest, data: bytes | None) -> dict:
    gw.require("aligner")
    audio = await load_audio(gw.settings, data=data, url=req.audio_url, param="audio", url_param="audio_url",
                             max_seconds=gw.settings.aligner.max_audio_seconds)
    result = await remote.call("aligner", gw.aligner.to_async.align(
        audio=audio.samples, lines=req.lyrics, language=req.language))
    return result


def _render(req: AlignRequest, result: dict) -> Response:
    segments = result["segments"]
    if req.format == "json":
        return JSONResponse({"segments": segments, "language": result["language"], "duration": result["duration"]})
    body = formats.render(req.format, segments, language=result["language"], duration=result["duration"],
                          metadata=req.metadata.model_dump() if req.metadata else None)
    return Response(body, media_type=formats.MEDIA_TYPES[req.format])


@router.post("/api/v1/align", openapi_extra=_BODY_DOC, responses=_RESPONSES,
             summary="Align lyric lines to a song (LRC, enhanced LRC, SRT, VTT, JSON)")
async def align(request: Request, gw=Depends(gateway)) -> Response:
    req, data = await _parse(request)
    _check_lyrics(req, gw)
    return _render(req, await _align(gw, req, data))


@router.post("/api/v1/align/tasks", status_code=202, openapi_extra=_BODY_DOC, response_model=TaskAccepted,
             summary="Submit an alignment as a task; it runs even if the client disconnects")
async def submit_align(request: Request, gw=Depends(gateway)) -> JSONResponse:
    req, data = await _parse(request)
    _check_lyrics(req, gw)
    gw.require("aligner")

    async def work():
        return req, await _align(gw, req, data)

    task = gw.tasks.submit("align", work)
    base = f"/api/v1/align/tasks/{task.id}"
    body = TaskAccepted(task_id=task.id, status=task.status, status_url=base, result_url=f"{base}/result")
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": base})


@router.get("/api/v1/align/tasks/{task_id}", summary="Status of an alignment task")
async def align_status(task_id: str, gw=Depends(gateway)) -> JSONResponse:
    return JSONResponse(gw.tasks.get(task_id).describe())


@router.get("/api/v1/align/tasks/{task_id}/result", summary="Result of an alignment task")
async def align_result(task_id: str, gw=Depends(gateway)) -> Response:
    task = gw.tasks.get(task_id)
    if task.status == "failed" and task.error is not None:
        raise task.error
    if task.status != "succeeded":
        raise QwenError(f"task is {task.status}; poll {f'/api/v1/align/tasks/{task_id}'}", status=409,
                        code="task_not_finished")
    req, result = task.result
    return _render(req, result)


ROUTES = ("/api/v1/align", "/api/v1/align/tasks", "/api/v1/align/tasks/*")
