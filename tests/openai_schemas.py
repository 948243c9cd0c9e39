"""Validate our OpenAI-shaped responses and stream events against OpenAI's own schemas
(tests/fixtures/openai/schemas.json: an extract of openai/openai-openapi, see its README).

`check(root, obj)` raises AssertionError listing every violation. The schemas are followed as published,
except where OpenAI's real API behaves differently (each exception is named here, with the reason):

* none so far.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

BUNDLE = Path(__file__).parent / "fixtures" / "openai" / "schemas.json"


@functools.lru_cache(maxsize=None)
def _validator(root: str):
    from jsonschema import Draft202012Validator

    bundle = json.loads(BUNDLE.read_text())
    assert root in bundle["$defs"], f"no schema {root}"
    return Draft202012Validator({"$defs": bundle["$defs"], "$ref": f"#/$defs/{root}"})


def violations(root: str, obj: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in _validator(root).iter_errors(obj)]


def check(root: str, obj: Any) -> None:
    found = violations(root, obj)
    assert not found, f"{root}: {len(found)} violation(s): {found[:8]}"


def sse_events(text: str) -> list[Any]:
    """The JSON payloads of an SSE body's `data:` lines, without the terminal `[DONE]`."""
    out = []
    for line in text.splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                out.append(json.loads(data))
    return out


def root_for(path: str, status: int, body: Any) -> str | None:
    """The OpenAI schema an answer of one of our OpenAI-shaped routes must satisfy (None: not one of them,
    or a body this table does not know, e.g. text formats)."""
    if not path.startswith("/v1/") or path.startswith("/v1/audio/voices"):
        return None  # /v1/audio/voices is our extension, not OpenAI's
    if status >= 400:
        return "ErrorResponse"
    if not isinstance(body, dict):
        return None
    if path == "/v1/models":
        return "ListModelsResponse"
    if path.startswith("/v1/models/"):
        return "Model"
    if path == "/v1/chat/completions":
        return "CreateChatCompletionResponse"
    if path == "/v1/audio/transcriptions":
        return "CreateTranscriptionResponseVerboseJson" if "segments" in body or "duration" in body \
            else "CreateTranscriptionResponseJson"
    return None
