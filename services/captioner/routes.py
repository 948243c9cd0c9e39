"""The captioner on POST /v1/chat/completions: one audio part, no text, OpenAI responses and SSE."""

from __future__ import annotations

import contextlib
import time

from fastapi.responses import JSONResponse, Response

from services.gateway.chat import ChatHandler, ChatRequest, chunk_body, completion_body, jsonl_chunks, new_id, sse
from services.runtime.core.errors import InvalidRequest
from services.runtime.edge import remote
from services.runtime.edge.media import decode_base64, load_audio
from services.runtime.serving.generation import Completion

from .contract import GenParams
from .timeline import Timeline, in_order, windows

ROUTES: tuple[str, ...] = ()  # served through the shared /v1/chat/completions route


def _audio_source(req: ChatRequest) -> tuple[str | None, bytes | None, str]:
    """(url, data, param) of the one audio part; 400 for text, images, several audios or none."""
    found: list[tuple[str | None, bytes | None, str]] = []
    for i, msg in enumerate(req.messages):
        if isinstance(msg.content, str) or msg.content is None:
            if msg.content and msg.content.strip():
                raise InvalidRequest("the captioner takes no text prompt: send one audio part only",
                                     param=f"messages[{i}].content", code="text_not_supported")
            continue
        if msg.role != "user":
            raise InvalidRequest("the captioner takes one user message with one audio part",
                                 param=f"messages[{i}].role", code="invalid_value")
        for j, part in enumerate(msg.content):
            where = f"messages[{i}].content[{j}]"
            if part.type == "text":
                if part.text and part.text.strip():
                    raise InvalidRequest("the captioner takes no text prompt: send one audio part only",
                                         param=where, code="text_not_supported")
            elif part.type == "audio_url":
                url = part.audio_url.get("url") if isinstance(part.audio_url, dict) else part.audio_url
                if not url:
                    raise InvalidRequest("audio_url.url is required", param=where, code="invalid_value")
                found.append((url, None, f"{where}.audio_url"))
            elif part.type == "input_audio":
                data = (part.input_audio or {}).get("data")
                if not data:
                    raise InvalidRequest("input_audio.data (base64) is required", param=where, code="invalid_value")
                found.append((None, data, f"{where}.input_audio"))
            else:
                raise InvalidRequest(f"part type {part.type!r} is not supported by the captioner (audio only)",
                                     param=where, code="unsupported_content")
    if not found:
        raise InvalidRequest("send one audio part (audio_url or input_audio)", param="messages", code="missing_audio")
    if len(found) > 1:
        raise InvalidRequest(f"one audio part per request ({len(found)} given)", param="messages",
                             code="too_many_audio_parts")
    url, data, param = found[0]
    return url, data, param


async def caption_chat(gw, req: ChatRequest) -> Response:
    gw.require("captioner")
    cfg = gw.settings.captioner
    url, b64, param = _audio_source(req)
    data = decode_base64(b64, max_bytes=gw.settings.upload_max_bytes, param=param) if b64 is not None else None
    audio = await load_audio(gw.settings, data=data, url=url, param=param, url_param=param,
                             max_seconds=cfg.max_windowed_seconds if req.caption_windows else cfg.max_audio_seconds,
                             truncate=req.truncate_audio)
    params = GenParams(max_tokens=req.token_limit or cfg.max_tokens,
                       temperature=cfg.temperature if req.temperature is None else req.temperature,
                       top_p=cfg.top_p if req.top_p is None else req.top_p,
                       top_k=cfg.top_k if req.top_k is None else req.top_k, seed=req.seed)
    cid = new_id()
    if req.caption_windows:
        return await _timeline(gw, cfg, req, audio.samples, params, cid)
    if not req.stream:
        out = await remote.call("captioner", lambda: gw.captioner.to_async.complete(audio=audio.samples, params=params),
                                into=Completion)
        return JSONResponse(completion_body(cid, req.model, out))

    body = await remote.open_stream("captioner", gw.captioner.to_async.stream(audio=audio.samples, params=params))
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return sse(jsonl_chunks(cid, req.model, body, include_usage))


async def _timeline(gw, cfg, req: ChatRequest, samples, params: GenParams, cid: str) -> Response:
    """The audio as a timeline of captioned windows (captioner.timeline), whole or window by window."""

    def caption(start: float, end: float, clip):
        async def run():
            out = await remote.call("captioner", lambda: gw.captioner.to_async.complete(audio=clip, params=params),
                                    into=Completion)
            return start, end, out
        return run

    results = in_order([caption(*w) for w in windows(samples, cfg.max_audio_seconds)], cfg.window_concurrency)
    timeline = Timeline()
    if not req.stream:
        text = "".join([timeline.add(*r) async for r in results])
        body = completion_body(cid, req.model, Completion(text=text, finish_reason=timeline.finish_reason,
                                                          usage=timeline.usage))
        body["choices"][0]["message"]["timeline"] = timeline.entries
        return JSONResponse(body)
    # The first window is awaited before the stream opens: its errors (429, 503) keep their status.
    first = await anext(results)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def events():
        created = int(time.time())
        yield chunk_body(cid, req.model, created, {"role": "assistant", "content": ""})
        yield window_chunk(created, timeline.add(*first))
        async with contextlib.aclosing(results):  # a client gone: the windows still queued are cancelled
            async for start, end, out in results:
                yield window_chunk(created, timeline.add(start, end, out))
        yield chunk_body(cid, req.model, created, {}, finish_reason=timeline.finish_reason)
        if include_usage:
            yield chunk_body(cid, req.model, created, {}, usage=timeline.usage.model_dump(), choices=False)

    def window_chunk(created: int, piece: str) -> dict:
        entry = timeline.entries[-1]
        return chunk_body(cid, req.model, created, {"content": piece, "window": {
            k: entry[k] for k in ("index", "start", "end")}})

    return sse(events())


CHAT = ChatHandler(handle=caption_chat)
