"""OpenAI chat completions, written once: request/response models, SSE chunks, and the one
POST /v1/chat/completions route, which hands each request to the service that serves its `model`.

A service's routes module exposes `CHAT = ChatHandler(...)`; the gateway registers it for its service, and
the route picks the service by the names the registry gives it (registry.model_key). Handlers validate the
messages for their model (the captioner takes one audio part, the VL model images and text) and return a
Response (JSON or a stream).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.gateway.deps import gateway
from services.gateway.registry import model_key
from services.diagram.tables import table_columns, table_constraint
from services.runtime.core.errors import InvalidRequest
from services.runtime.core.logging import get_logger
from services.runtime.edge import remote
from services.runtime.edge.http import read_json_object, validate
from services.runtime.serving.generation import Completion, Constraint, Delta

log = get_logger("chat")


class ContentPart(BaseModel):
    """One part of a message: text, image_url, audio_url or input_audio (others are refused by handlers)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    image_url: dict | str | None = None
    audio_url: dict | str | None = None
    input_audio: dict | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    """OpenAI's response_format.json_schema."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format (text, json_object, json_schema), and `table`, an extension: a markdown
    table with `columns` (default: the diagram model's configured ones), held to its grammar."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema", "table"]
    json_schema: JSONSchemaFormat | None = None
    columns: list[str] | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> "ResponseFormat":
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only there")
        if self.columns is not None and self.type != "table":
            raise ValueError("columns go with type table")
        return self

    def constraint(self, default_columns: list[str] | None) -> Constraint | None:
        """The decoding constraint it asks for (None: free text). A schema-less json_schema or json_object
        is any JSON object."""
        if self.type == "text":
            return None
        if self.type == "table":
            return table_constraint(self.columns_for(default_columns))
        schema = (self.json_schema.schema_ if self.json_schema else None) or {"type": "object"}
        return Constraint(kind="json_schema", spec=json.dumps(schema))

    def columns_for(self, default_columns: list[str] | None) -> list[str]:
        return table_columns(self.columns, default_columns, "response_format.columns")


class ChatRequest(BaseModel):
    """OpenAI's fields in OpenAI's order; `top_k`, `truncate_audio` and `caption_windows` are extensions."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1, description="only 1 is supported")
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    truncate_audio: bool = Field(False, description="captioner: cut audio to the limit instead of a 413")
    caption_windows: bool = Field(False, description="captioner: audio past the limit as a timeline of "
                                                     "windows, one caption each")
    response_format: ResponseFormat | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


@dataclass
class ChatHandler:
    handle: Callable[[Any, ChatRequest], Awaitable[Response]]  # (gateway, request) -> Response
    structured: bool = False  # takes response_format json_object / json_schema / table


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion_body(cid: str, model: str, out: Completion) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text, "refusal": None},
                     "finish_reason": out.finish_reason, "logprobs": None}],
        "usage": out.usage.model_dump(),
    }


def chunk_body(cid: str, model: str, created: int, delta: dict, finish_reason: str | None = None,
               usage: dict | None = None, choices: bool = True) -> dict:
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                         "logprobs": None}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    return body


def sse(events: AsyncIterator[dict]) -> StreamingResponse:
    """OpenAI's SSE framing: `data: {json}` per chunk, then `data: [DONE]`."""

    async def gen():
        try:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        except Exception:  # noqa: BLE001 - the status is sent: end the stream cleanly, keep the worker
            log.error("chat stream failed after it started", exc_info=True)
        yield "data: [DONE]\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def jsonl_chunks(cid: str, model: str, body: AsyncIterator[bytes], include_usage: bool) -> AsyncIterator[dict]:
    """A model service's stream of Delta lines (runtime.serving.generation) as OpenAI chunks: the role
    first, content deltas, the finish chunk, then usage (when asked) with no choices."""

    async def events():
        created = int(time.time())
        yield chunk_body(cid, model, created, {"role": "assistant", "content": ""})
        usage = None
        async for line in remote.lines(body):
            delta = Delta.model_validate_json(line)
            if delta.text:
                yield chunk_body(cid, model, created, {"content": delta.text})
            if delta.finish_reason is not None:
                usage = delta.usage
                yield chunk_body(cid, model, created, {}, finish_reason=delta.finish_reason)
        if include_usage and usage is not None:
            yield chunk_body(cid, model, created, {}, usage=usage.model_dump(), choices=False)

    return events()


def make_router(settings, handlers: dict[str, ChatHandler]) -> APIRouter:
    """The /v1/chat/completions route over `handlers` (service key -> handler), dispatched by the names the
    registry gives each service."""
    router = APIRouter(tags=["chat"])

    @router.post("/v1/chat/completions", summary="Chat completions (OpenAI-compatible), routed by model")
    async def chat(request: Request, gw=Depends(gateway)) -> Response:
        req = validate(ChatRequest, await read_json_object(request))
        key = model_key(settings, handlers, req.model)
        fmt = req.response_format
        if fmt is not None and fmt.type != "text" and not handlers[key].structured:
            raise InvalidRequest(f"response_format {fmt.type!r} is not supported for model {req.model!r} (text only)",
                                 param="response_format", code="unsupported_parameter")
        await gw.rate_limit(key, request)  # the model's per-client limit, whatever the door
        return await handlers[key].handle(gw, req)

    return router
