"""Every JSON body and SSE event of our OpenAI-shaped routes, validated against OpenAI's own schemas
(tests/openai_schemas.py; the schemas are an extract of OpenAI's published OpenAPI document).

Typed clients in other languages and validating proxies reject what the Python SDK lets through: a field
the schema requires must be there, with its type. Tiny models give random text, so only shapes are checked.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.openai_schemas import check, sse_events

pytestmark = pytest.mark.served


def png_url() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 120, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_body(model: str, media_dir) -> dict:
    if model == "captioner":
        part = {"type": "input_audio", "input_audio": {
            "data": base64.b64encode((media_dir / "short.wav").read_bytes()).decode(), "format": "wav"}}
        return {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": [part]}]}
    return {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_url()}}, {"type": "text", "text": "What is it?"}]}]}


def test_models_list_and_each_model(served):
    with served.client() as c:
        listing = c.get("/v1/models")
        assert listing.status_code == 200
        check("ListModelsResponse", listing.json())
        ids = [m["id"] for m in listing.json()["data"]]
        assert ids
        for model_id in ids:
            one = c.get(f"/v1/models/{model_id}")
            assert one.status_code == 200, model_id
            check("Model", one.json())


@pytest.mark.parametrize("fmt, root", [("json", "CreateTranscriptionResponseJson"),
                                       ("verbose_json", "CreateTranscriptionResponseVerboseJson")])
def test_transcription_bodies(served, wav, fmt, root):
    data = {"model": "whisper-1", "response_format": fmt}
    if fmt == "verbose_json":
        data["timestamp_granularities[]"] = ["word", "segment"]
    with served.client() as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data=data)
    assert r.status_code == 200, r.text
    body = r.json()
    check(root, body)
    if fmt == "verbose_json":
        assert body["segments"], body  # the segment schema was really exercised


@pytest.mark.parametrize("include", [[], ["logprobs"]])
def test_transcription_sse_events(served, wav, include):
    data = {"model": "whisper-1", "stream": "true", "include[]": include}
    with served.client() as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data=data)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    events = sse_events(r.text)
    types = [e["type"] for e in events]
    assert types[-1] == "transcript.text.done" and types.count("transcript.text.delta") == len(events) - 1 >= 1
    assert all(("logprobs" in e) == bool(include) for e in events)
    for event in events:
        check("CreateTranscriptionResponseStreamEvent", event)


def test_speech_sse_events(served):
    with served.client() as c:
        r = c.post("/v1/audio/speech", json={"model": "tts-1", "voice": "ryan", "input": "Hello there.",
                                             "stream_format": "sse", "response_format": "pcm"})
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    assert [e["type"] for e in events][-1] == "speech.audio.done" and len(events) >= 2
    for event in events:
        check("CreateSpeechResponseStreamEvent", event)


@pytest.mark.parametrize("model", ["vl", "diagram", "captioner"])
def test_chat_completion_plain_and_streamed(served, media_dir, model):
    body = chat_body(model, media_dir)
    with served.client() as c:
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        check("CreateChatCompletionResponse", r.json())
        s = c.post("/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert s.status_code == 200, s.text
    chunks = sse_events(s.text)
    assert len(chunks) >= 2 and chunks[-1]["usage"] is not None
    for chunk in chunks:
        check("CreateChatCompletionStreamResponse", chunk)


@pytest.mark.parametrize("case", ["bad_value", "no_key", "unknown_model", "bad_json", "not_found_route"])
def test_error_bodies(served, wav, case):
    with (served.client(key=None) if case == "no_key" else served.client()) as c:
        if case == "bad_value":
            r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                       data={"model": "whisper-1", "response_format": "nope"})
        elif case == "no_key":
            r = c.get("/v1/models")
        elif case == "unknown_model":
            r = c.post("/v1/chat/completions", json={"model": "gpt-nope", "messages": [{"role": "user", "content": "hi"}]})
        elif case == "bad_json":
            r = c.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
        else:
            r = c.get("/v1/no-such-route")
    assert 400 <= r.status_code < 500, (case, r.status_code)
    check("ErrorResponse", r.json())
