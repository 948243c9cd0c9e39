"""HTTP route of the ASR service: POST /v1/audio/transcriptions (OpenAI-compatible) and its task form."""

from __future__ import annotations

import json
import uuid

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from services.gateway.deps import gateway
from services.gateway.pipelines import transcribe_align
from services.gateway.registry import resolve_model
from services.gateway.tasks import add_task_routes
from services.runtime.codecs.subtitles import to_srt, to_vtt
from services.runtime.core.errors import InvalidRequest
from services.runtime.edge.http import FormRoute
from services.runtime.edge.media import load_audio, read_upload
from services.runtime.core.logging import get_logger
from services.runtime.edge import remote
from services.runtime.serving import vad

from . import realtime
from .contract import TextDelta, TranscribeOptions
from .contract import events as asr_events
from .protocol import Segment, TranscriptionRequest, TranscriptionVerbose, Word, compression_ratio, segment_tokens

router = APIRouter(tags=["audio"], route_class=FormRoute)
router.include_router(realtime.router)  # WebSocket /v1/realtime?intent=transcription
log = get_logger("asr")

Ctx = tuple[TranscriptionRequest, bytes]


async def _parse(request: Request, req: Annotated[TranscriptionRequest, Form(media_type="multipart/form-data")],
                 gw=Depends(gateway)) -> Ctx:
    """Everything a client can get wrong is refused here, before any work (or task) starts."""
    if req.file is None:
        raise InvalidRequest("`file` is required (the audio as a `file` part)", param="file", code="missing_file")
    if violation := req.openai_rule_violation():
        raise InvalidRequest(violation[1], param=violation[0], code="invalid_value")
    req.vad()  # a malformed chunking_strategy is a 400 here
    resolve_model(gw.settings, "asr", req.model)
    await gw.rate_limit("asr", request)
    transcribe_align.check(gw, words="word" in req.timestamp_granularities)
    return req, await read_upload(req.file, max_bytes=gw.settings.upload_max_bytes, param="file")


async def _parse_task(ctx: Ctx = Depends(_parse)) -> Ctx:
    """The task form: the same form, but its result is whole (fetched later), so it does not stream."""
    if ctx[0].stream:
        raise InvalidRequest("stream=true is for POST /v1/audio/transcriptions; a task's result is whole",
                             param="stream", code="invalid_value")
    return ctx


async def _run(gw, ctx: Ctx) -> transcribe_align.Transcript:
    req, data = ctx
    audio = await load_audio(gw.settings, data=data, param="file", url_param="file",
                             max_seconds=gw.settings.asr.max_audio_seconds)
    return await transcribe_align.transcribe(
        gw, audio.samples, _options(req),
        timed=req.response_format not in ("json", "text"), words="word" in req.timestamp_granularities)


def _options(req: TranscriptionRequest) -> TranscribeOptions:
    """What the ASR service is asked, from the form (already validated by _parse)."""
    use_vad, threshold = req.vad()
    return TranscribeOptions(prompt=req.prompt or "", language=req.language,
                             statistics=req.response_format == "verbose_json", logprobs="logprobs" in req.include,
                             vad=use_vad, vad_threshold=threshold)


def _logprobs(result) -> list[dict]:
    """OpenAI's `logprobs` of a transcription: every window's tokens in order (empty on the vLLM backend)."""
    return [t.model_dump() for span in result.spans for t in span.token_logprobs]


def _render(ctx: Ctx, out: transcribe_align.Transcript) -> Response:
    req = ctx[0]
    fmt, result = req.response_format, out.transcription
    if fmt == "json":
        body = {"text": result.text}
        if "logprobs" in req.include:
            body["logprobs"] = _logprobs(result)
        return JSONResponse(body)
    if fmt == "text":
        return PlainTextResponse(result.text + "\n")
    segments = [s.model_dump() for s in out.segments]
    if fmt == "srt":
        return Response(to_srt(segments), media_type="application/x-subrip; charset=utf-8")
    if fmt == "vtt":
        return Response(to_vtt(segments), media_type="text/vtt; charset=utf-8")
    grans = req.timestamp_granularities
    speech = vad.unpack(result.speech)
    body = TranscriptionVerbose(
        language=(result.language or "unknown").lower(),
        duration=result.duration,
        text=result.text,
        segments=[_segment(i, s, src, result, speech, req.temperature)
                  for i, (s, src) in enumerate(zip(out.segments, out.sources))]
        if (not grans or "segment" in grans) else None,
        words=[Word(word=w.text, start=w.start, end=w.end) for w in out.words] if "word" in grans else None,
    )
    return JSONResponse(body.model_dump(exclude_none=True))


def _segment(i: int, seg, source: tuple[int, int, int], result, speech, temperature: float) -> Segment:
    """One verbose_json segment with its statistics (protocol.Segment says where each comes from)."""
    span = result.spans[source[0]]
    tokens, avg_logprob = segment_tokens(span.tokens, span.logprobs, span.token_ends, source[1], source[2])
    return Segment(id=i, seek=int(seg.start * 100), start=seg.start, end=seg.end, text=seg.text, tokens=tokens,
                   temperature=temperature, avg_logprob=avg_logprob,
                   compression_ratio=round(compression_ratio(seg.text), 4),
                   no_speech_prob=vad.no_speech_prob(speech, seg.start, seg.end))


@router.post("/v1/audio/transcriptions", summary="Transcribe audio (OpenAI-compatible)")
async def transcriptions(ctx: Ctx = Depends(_parse), gw=Depends(gateway)) -> Response:
    if ctx[0].stream:
        return await _stream(gw, ctx)
    return _render(ctx, await _run(gw, ctx))


async def _stream(gw, ctx: Ctx) -> Response:
    """stream=true (json, text): OpenAI's transcription SSE — `transcript.text.delta` as the text is decoded
    (token by token within a window, windows in order), then `transcript.text.done` with the whole text and
    usage in tokens. Errors before the first event (validation, admission, loading) keep their status."""
    req, data = ctx
    audio = await load_audio(gw.settings, data=data, param="file", url_param="file",
                             max_seconds=gw.settings.asr.max_audio_seconds)
    options = _options(req)
    ticket = uuid.uuid4().hex  # names this stream in the service's `leave` when our client goes early
    body = await remote.open_stream("asr", gw.asr.to_async.stream(audio=audio.samples, options=options, ticket=ticket),
                                    on_leave=lambda: gw.asr.to_async.leave(ticket=ticket))

    async def sse():
        try:
            async for event in asr_events(body):
                if isinstance(event, TextDelta):
                    out = {"type": "transcript.text.delta", "delta": event.delta}
                    if options.logprobs:
                        out["logprobs"] = [t.model_dump() for t in event.logprobs]
                else:
                    usage = {"type": "tokens", "input_tokens": event.input_tokens,
                             "output_tokens": event.output_tokens,
                             "total_tokens": event.input_tokens + event.output_tokens}
                    out = {"type": "transcript.text.done", "text": event.transcription.text, "usage": usage}
                    if options.logprobs:
                        out["logprobs"] = _logprobs(event.transcription)
                yield f"data: {json.dumps(out, ensure_ascii=False)}\n\n"
        except Exception:  # noqa: BLE001 - the status is sent: end the stream, keep the worker
            log.error("transcription stream failed after it started", exc_info=True)

    return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


ROUTES = ("/v1/audio/transcriptions",) + realtime.ROUTES + add_task_routes(
    router, path="/v1/audio/transcriptions", kind="transcription", parse=_parse_task, run=_run, render=_render)
