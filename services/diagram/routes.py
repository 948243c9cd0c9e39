"""HTTP routes of the diagram service: POST /infer (the seed's API), GET /infer/stats (the seed's JSON
counters), and its chat handler."""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.chat import ChatHandler
from services.gateway.deps import gateway
from services.runtime.edge import remote
from services.runtime.edge.http import form_fields, inline_schema, read_form, validate
from services.runtime.edge.media import read_upload
from services.vl.contract import VisionItem
from services.vl.routes import chat_for, generate_one, load_image, token_budget, wire_image

from .contract import SeedStats
from .tables import complete_table, table_columns, table_constraint

router = APIRouter(tags=["vision"])
ROUTES = ("/infer", "/infer/stats")


class InferForm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(None, description="LoRA adapter name; 'base' for none; default: the first loaded")
    prompt: str | None = Field(None, max_length=8000, description="default: the diagram-to-table instruction")
    max_new_tokens: int | None = Field(None, ge=1)
    format: Literal["table", "text"] = Field(
        "table", description="table: a markdown table with `columns`, decoding held to its grammar (always "
                             "parses; a row cut by the token budget is dropped); text: free text")
    columns: str | None = Field(None, max_length=800,
                                description="comma-separated table columns; default QWEN_DIAGRAM_TABLE_COLUMNS")


@router.post("/infer", summary="Diagram image -> markdown table of its steps (multipart `file`)",
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "required": ["file"],
                 "properties": {"file": {"type": "string", "format": "binary"},
                                **inline_schema(InferForm)["properties"]}}}}}})
async def infer(request: Request, gw=Depends(gateway)) -> Response:
    gw.require("diagram")
    await gw.rate_limit("diagram", request)
    cfg = gw.settings.diagram
    upload, form = await read_form(request, file_field="file", file_required=True,
                                   what="the diagram image as a `file` part", max_fields=8)
    req = validate(InferForm, form_fields(form, "file"))
    data = await read_upload(upload, max_bytes=cfg.max_image_bytes, param="file")
    t0 = time.perf_counter()
    columns = table_columns(req.columns.split(",") if req.columns else None, cfg.table_columns, "columns") \
        if req.format == "table" else None
    img = await load_image(gw, cfg, data=data, url=None, param="file", url_param="file")
    item = VisionItem.prompt(req.prompt or cfg.prompt, [wire_image(img)],
                             max_new_tokens=token_budget(cfg, req.max_new_tokens), adapter=req.adapter,
                             constraint=table_constraint(columns) if columns else None)
    out = await generate_one(gw, "diagram", item)
    text = complete_table(out.text, columns) if columns else out.text
    status = await gw.service_status("diagram")
    return JSONResponse({
        "description": text,
        "metadata": {
            "format": req.format,
            **({"columns": columns} if columns else {}),
            "inference_time": round(time.perf_counter() - t0, 4),
            "generation_time": out.generate_seconds,
            "image_size": list(img.original_size),
            "model": cfg.model,
            "adapter": out.adapter or "base",
            "device": status.get("device"),
            "finish_reason": out.finish_reason,
            "usage": out.usage.model_dump(),
        },
    })


@router.get("/infer/stats", summary="The seed's JSON counters (also exported as Prometheus metrics)")
async def stats(gw=Depends(gateway)) -> JSONResponse:
    gw.require("diagram")
    stats = await remote.call("diagram", lambda: gw.diagram.to_async.seed_stats(), into=SeedStats)
    return JSONResponse(stats.model_dump(exclude_unset=True))


CHAT = ChatHandler(handle=chat_for("diagram"), structured=True)
