"""HTTP routes of the VL service: POST /generate (the seed's multipart API) and its chat handler
(POST /v1/chat/completions with OpenAI text and image_url parts)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.chat import ChatHandler, ChatRequest, completion_body, jsonl_chunks, new_id, sse
from services.gateway.deps import gateway
from services.runtime.codecs.images import to_wire
from services.runtime.core.errors import InvalidRequest, PayloadTooLarge
from services.runtime.edge import remote
from services.runtime.edge.http import form_fields, inline_schema, read_form, validate
from services.runtime.edge.media import image_from_request, read_upload

from services.diagram.tables import complete_table

from .contract import Part, Turn, VisionItem, VisionResult, VisionResults

router = APIRouter(tags=["vision"])
ROUTES = ("/generate",)


class GenerateForm(BaseModel):
    """POST /generate form fields (the image itself is the `image` file part)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(..., min_length=1, description="the prompt")
    image_url: str | None = Field(None, description="only when QWEN_VL_ALLOW_IMAGE_URL=true (SSRF-guarded)")
    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)


def token_budget(cfg, asked: int | None, param: str = "max_new_tokens") -> int:
    n = asked or cfg.max_new_tokens
    if n > cfg.max_new_tokens_limit:
        raise InvalidRequest(f"{param} {n} exceeds the limit of {cfg.max_new_tokens_limit}", param=param,
                             code="invalid_value")
    return n


def wire_image(decoded) -> str:
    return to_wire(decoded.image)


async def load_image(gw, cfg, *, data: bytes | None, url: str | None, param: str, url_param: str):
    if url and not url.strip().startswith("data:") and not getattr(cfg, "allow_image_url", False):
        raise InvalidRequest("fetching images by URL is disabled here (QWEN_VL_ALLOW_IMAGE_URL); upload the image "
                             "or send a data: URL", param=url_param, code="image_url_disabled")
    # The model service's processor applies cfg.image_pixels to every image; `resize` only does it here first.
    return await image_from_request(gw.settings, data=data, url=url, param=param, url_param=url_param,
                                    max_pixels=cfg.max_pixels,
                                    resize_to=(cfg.image_pixels or None) if getattr(cfg, "resize", False) else None)


@router.post("/generate", summary="Generate from a text prompt and an optional image (multipart)",
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["text"],
                 "properties": {"image": {"type": "string", "format": "binary"},
                                **inline_schema(GenerateForm)["properties"]}}}}}})
async def generate(request: Request, gw=Depends(gateway)) -> Response:
    gw.require("vl")
    cfg = gw.settings.vl
    await gw.rate_limit("vl", request)
    upload, form = await read_form(request, file_field="image", file_required=False,
                                   what="`text` and an optional `image` part", max_fields=8,
                                   content_types=("multipart/form-data", "application/x-www-form-urlencoded"))
    req = validate(GenerateForm, form_fields(form, "image"))
    if len(req.text) > cfg.max_prompt_chars:
        raise PayloadTooLarge(f"text exceeds {cfg.max_prompt_chars} characters", param="text",
                              code="prompt_too_long")
    images = []
    if upload is not None or req.image_url:
        data = None if upload is None else await read_upload(upload, max_bytes=cfg.max_image_bytes, param="image")
        images = [wire_image(await load_image(gw, cfg, data=data, url=req.image_url, param="image",
                                              url_param="image_url"))]
    item = VisionItem.prompt(req.text, images, max_new_tokens=token_budget(cfg, req.max_new_tokens),
                             temperature=req.temperature)
    t0 = time.perf_counter()
    out = await generate_one(gw, "vl", item)
    return JSONResponse({
        "response": out.text,
        "finish_reason": out.finish_reason,
        "usage": out.usage.model_dump(),
        "model": cfg.model,
        "timings": {"total_seconds": round(time.perf_counter() - t0, 4), "generate_seconds": out.generate_seconds},
    })


async def generate_one(gw, key: str, item: VisionItem) -> VisionResult:
    """One item through the `key` service's batched generate."""
    service = getattr(gw, key)
    (out,) = (await remote.call(key, lambda: service.to_async.generate(requests=[item]), into=VisionResults)).results
    return out


async def chat_item(gw, cfg, req: ChatRequest) -> VisionItem:
    """OpenAI messages (text and image_url parts) -> a model-service item; images decoded here."""
    messages: list[Turn] = []
    images: list[str] = []
    for i, msg in enumerate(req.messages):
        if msg.role == "tool":
            raise InvalidRequest("tool messages are not supported", param=f"messages[{i}].role", code="invalid_value")
        role = "system" if msg.role == "developer" else msg.role
        if msg.content is None or isinstance(msg.content, str):
            messages.append(Turn(role=role, content=[Part.of_text(msg.content or "")]))
            continue
        parts = []
        for j, part in enumerate(msg.content):
            where = f"messages[{i}].content[{j}]"
            if part.type == "text":
                parts.append(Part.of_text(part.text or ""))
            elif part.type == "image_url":
                url = part.image_url.get("url") if isinstance(part.image_url, dict) else part.image_url
                if not url:
                    raise InvalidRequest("image_url.url is required", param=where, code="invalid_value")
                img = await load_image(gw, cfg, data=None, url=url, param=where, url_param=f"{where}.image_url")
                images.append(wire_image(img))
                parts.append(Part.image())
            else:
                raise InvalidRequest(f"part type {part.type!r} is not supported here (text and image_url)",
                                     param=where, code="unsupported_content")
        messages.append(Turn(role=role, content=parts))
    if not any(m.role == "user" for m in messages):
        raise InvalidRequest("at least one user message is required", param="messages", code="invalid_value")
    fmt = req.response_format
    return VisionItem(messages=messages, images=images, max_new_tokens=token_budget(cfg, req.token_limit, "max_tokens"),
                      temperature=0.0 if req.temperature is None else req.temperature, top_p=req.top_p,
                      top_k=req.top_k, constraint=fmt.constraint(table_defaults(cfg)) if fmt else None)


def table_defaults(cfg) -> list[str] | None:
    return getattr(cfg, "table_columns", None)  # the diagram model's; VL: a table's columns must be given


def chat_for(key: str):
    async def handle(gw, req: ChatRequest) -> Response:
        gw.require(key)
        cfg = gw.settings.service(key)
        item = await chat_item(gw, cfg, req)
        cid = new_id()
        if not req.stream:
            out = await generate_one(gw, key, item)
            if req.response_format is not None and req.response_format.type == "table":
                # the rows the budget completed (a streamed table may end inside a row: finish_reason length)
                out = out.model_copy(update={"text": complete_table(
                    out.text, req.response_format.columns_for(table_defaults(cfg)))})
            return JSONResponse(completion_body(cid, req.model, out))
        body = await remote.open_stream(key, getattr(gw, key).to_async.stream(request=item))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return sse(jsonl_chunks(cid, req.model, body, include_usage))

    return handle


CHAT = ChatHandler(handle=chat_for("vl"), structured=True)
