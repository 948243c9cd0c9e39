"""The OpenAI-protocol client against a fake OpenAI-compatible server on 127.0.0.1: the one SSE parser,
chat completions whole and streamed, and the server's errors mapped to ours."""

from __future__ import annotations

import asyncio

import pytest

from services.runtime.serving.engine_supervisor import free_port
from services.runtime.core.errors import InvalidRequest, QwenError, ServiceUnavailable, Timeout, TooManyRequests
from services.runtime.serving.openai_client import OpenAIClient, aiter_sse, upstream_error

from .fake_servers import FakeOpenAI

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**BODY, "stream": True, "stream_options": {"include_usage": True}}


@pytest.fixture
def fake():
    f = FakeOpenAI()
    yield f
    f.close()


def sse(lines: list[str]) -> list[str]:
    async def source():
        for line in lines:
            yield line

    async def collect():
        return [d async for d in aiter_sse(source())]

    return asyncio.run(collect())


def test_sse_events():
    lines = [": keep-alive", "data: {\"a\": 1}", "", "event: x", "data: line1\r", "data:line2", "", "id: 3", "",
             "data: [DONE]"]
    # comments and other fields skipped; multi-line data joined; an unterminated last event still counts
    assert sse(lines) == ['{"a": 1}', "line1\nline2", "[DONE]"]
    assert sse(["", ""]) == []


async def _stream(client: OpenAIClient, body: dict, got: list[str]):
    deltas = client.chat_stream(body)
    async for text in deltas:
        got.append(text)
    return deltas.result


def test_chat_whole_and_streamed(fake):
    client = OpenAIClient(fake.base_url, timeout=10, name="fake backend")
    out = asyncio.run(client.chat(BODY))
    assert (out.text, out.finish_reason, out.prompt_tokens, out.completion_tokens) == ("a calm voice", "stop", 30, 3)
    got: list[str] = []
    res = asyncio.run(_stream(client, STREAM, got))
    assert got == ["a ", "calm ", "voice"]  # the empty role delta is not a delta
    assert (res.text, res.finish_reason, res.prompt_tokens, res.completion_tokens) == ("a calm voice", "stop", 30, 3)
    assert fake.requests == [BODY, STREAM]


@pytest.mark.parametrize("mode, error, status, message, retry_after", [
    ("bad", InvalidRequest, 400, "audio could not be decoded", None),  # the request's fault: its message kept
    ("busy", TooManyRequests, 429, "too many requests", "1"),
    ("down", ServiceUnavailable, 503, "fake backend unavailable: engine is sleeping", "5"),
])
def test_error_answers_are_ours(fake, mode, error, status, message, retry_after):
    fake.mode = mode
    client = OpenAIClient(fake.base_url, timeout=10, name="fake backend")
    with pytest.raises(error, match=message) as ei:
        asyncio.run(client.chat(BODY))
    assert type(ei.value) is error and ei.value.status == status
    assert ei.value.headers().get("Retry-After") == retry_after
    got: list[str] = []
    with pytest.raises(error, match=message):  # before any delta
        asyncio.run(_stream(client, STREAM, got))
    assert got == []


def test_error_in_the_middle_of_a_stream(fake):
    fake.mode = "stream_error"
    client = OpenAIClient(fake.base_url, timeout=10, name="fake backend")
    got: list[str] = []
    with pytest.raises(QwenError, match=r"fake backend error \(500\): engine died") as ei:
        asyncio.run(_stream(client, STREAM, got))
    assert ei.value.status == 500 and ei.value.type == "server_error" and ei.value.code == "backend_error"
    assert got == ["a ", "calm ", "voice"]


def test_unreachable_is_503_and_a_stalled_answer_504(fake):
    client = OpenAIClient(f"http://127.0.0.1:{free_port()}", timeout=10, name="fake backend")  # nobody there
    with pytest.raises(ServiceUnavailable, match="fake backend unreachable") as ei:
        asyncio.run(client.chat(BODY))
    assert ei.value.retry_after
    with pytest.raises(ServiceUnavailable):
        asyncio.run(_stream(client, STREAM, []))

    fake.mode, fake.delay = "slow", 2.0
    client = OpenAIClient(fake.base_url, timeout=0.3, name="fake backend")
    with pytest.raises(Timeout, match="fake backend timed out"):
        asyncio.run(client.chat(BODY))


def test_upstream_error_mapping():
    assert isinstance(upstream_error(504, {"detail": "x"}), Timeout)
    assert isinstance(upstream_error(408, "x"), Timeout)
    e = upstream_error(422, {"error": {"message": "bad top_p", "code": 422}})
    assert type(e) is InvalidRequest and e.message == "bad top_p"
    e = upstream_error(500, "boom", "b")
    assert type(e) is QwenError and e.status == 500 and e.message == "b error (500): boom"


def test_one_client_per_event_loop(fake):
    client = OpenAIClient(fake.base_url, timeout=10)

    async def twice():
        await client.chat(BODY)
        first = client.http()
        await client.chat(BODY)
        return first, client.http()

    a, b = asyncio.run(twice())
    assert a is b  # pooled within a loop
    c, _ = asyncio.run(twice())
    assert c is not a  # a new loop gets its own (the old one's connections are bound to it)
    asyncio.run(client.aclose())
