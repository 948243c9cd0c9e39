"""A client of an OpenAI-compatible server (a managed vLLM, say): JSON requests, server-sent events, and
the server's errors mapped to ours.

- `OpenAIClient.post_json` / `chat` send one request and return the JSON / the chat completion;
  `chat_stream` gives the text deltas of a streamed chat completion (`stream_options.include_usage` makes
  the server send the usage in a last chunk), with finish_reason and usage on `.result` at the end.
- `aiter_sse` is the one server-sent-events parser; `upstream_error` maps the server's error answers:
  4xx is the request's fault (its message kept), 429 is busy, 503 not ready, 408/504 a timeout, the rest
  a server error. A server that cannot be reached is 503, one that stops answering mid-request 504.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from services.runtime.core.errors import InvalidRequest, QwenError, ServiceUnavailable, Timeout, TooManyRequests

CHAT_PATH = "/v1/chat/completions"


# -- server-sent events ----------------------------------------------------------------------------------
class SSEDecoder:
    """Server-sent events line by line: `feed(line)` returns an event's data when a blank line ends it
    (multi-line data joined by newlines; comments and other fields skipped); `flush()` returns an
    unterminated last one."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, raw: str) -> str | None:
        line = raw.rstrip("\r\n")
        if not line:
            return self.flush()
        if not line.startswith(":"):
            field, _, value = line.partition(":")
            if field == "data":
                self._data.append(value.removeprefix(" "))
        return None

    def flush(self) -> str | None:
        out, self._data = ("\n".join(self._data) if self._data else None), []
        return out


async def aiter_sse(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The data of each server-sent event of a stream of lines."""
    events = SSEDecoder()
    async for raw in lines:
        if (data := events.feed(raw)) is not None:
            yield data
    if (data := events.flush()) is not None:
        yield data


# -- errors ------------------------------------------------------------------------------------------------
def error_message(payload) -> str:
    """The message of an error answer: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the text."""
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)
        if "detail" in payload:
            return str(payload["detail"])
        return str(err)
    return str(payload)


def upstream_error(status: int, payload, name: str = "backend") -> QwenError:
    """The server's error answer as ours (`name` says whose it is in the message)."""
    msg = error_message(payload)[:2000]
    if status in (408, 504):
        return Timeout(f"{name} timed out: {msg}")
    if status == 503:
        return ServiceUnavailable(f"{name} unavailable: {msg}", retry_after=5)
    if status == 429:
        return TooManyRequests(msg, code="backend_busy", retry_after=1)
    if 400 <= status < 500:
        return InvalidRequest(msg, code="invalid_value")
    return QwenError(f"{name} error ({status}): {msg}", code="backend_error")


def json_or_text(r: httpx.Response):
    try:
        return r.json()
    except ValueError:
        return r.text


def answer_json(r: httpx.Response, name: str) -> dict:
    """A (not streamed) answer's JSON object; an error answer, or one that is not a JSON object, raised as ours."""
    payload = json_or_text(r)
    if r.status_code != 200:
        raise upstream_error(r.status_code, payload, name)
    if not isinstance(payload, dict):
        raise QwenError(f"{name} answered with something that is not JSON", code="backend_error")
    return payload


def parse_chunk(data: str, name: str) -> dict:
    """One streamed chunk's JSON; an error event (raised mid-stream) or malformed data raised as ours."""
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise QwenError(f"{name} sent a malformed event: {exc}", code="backend_error") from exc
    if "error" in chunk and not chunk.get("choices"):
        err = chunk["error"]
        status = err.get("code") if isinstance(err, dict) else None
        raise upstream_error(status if isinstance(status, int) else 500, chunk, name)
    return chunk


# -- chat completions --------------------------------------------------------------------------------------
@dataclass
class ChatResult:
    """A chat completion's first choice: its text, why it ended, and the server's token counts."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add_usage(self, usage: dict | None) -> None:
        usage = usage or {}
        self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        self.completion_tokens = int(usage.get("completion_tokens") or 0)


class ChatStream:
    """`async for text in client.chat_stream(body)`: the content deltas of the first choice; once the
    stream is over, `result` holds the whole text, finish_reason and usage. An HTTP error answer is raised
    before the first delta, an error event where it arrives."""

    def __init__(self, client: OpenAIClient, body: dict, path: str = CHAT_PATH):
        self._client, self._body, self._path = client, body, path
        self.result = ChatResult()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    def feed(self, data: str) -> list[str] | None:
        """One event's data -> its text deltas; None at [DONE]."""
        if data.strip() == "[DONE]":
            return None
        chunk = parse_chunk(data, self._client.name)
        out: list[str] = []
        for choice in (chunk.get("choices") or [])[:1]:
            text = (choice.get("delta") or {}).get("content") or ""
            if text:
                out.append(text)
                self.result.text += text
            if choice.get("finish_reason"):
                self.result.finish_reason = choice["finish_reason"]
        if chunk.get("usage"):
            self.result.add_usage(chunk["usage"])
        return out

    async def _deltas(self) -> AsyncIterator[str]:
        c = self._client
        try:
            async with c.http().stream("POST", self._path, json=self._body) as r:
                if r.status_code != 200:
                    await r.aread()
                    raise upstream_error(r.status_code, json_or_text(r), c.name)
                async for data in aiter_sse(r.aiter_lines()):
                    texts = self.feed(data)
                    if texts is None:
                        break
                    for text in texts:
                        yield text
        except httpx.HTTPError as exc:
            raise c.unreachable(exc) from exc


class OpenAIClient:
    """Requests to one OpenAI-compatible server at `base_url`; `name` names it in error messages."""

    def __init__(self, base_url: str, *, timeout: float, name: str = "backend", connect_timeout: float = 5.0):
        self.base_url, self.name = base_url, name
        self._timeout = httpx.Timeout(float(timeout), connect=connect_timeout)
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = {}

    def http(self) -> httpx.AsyncClient:
        """One pooled client per event loop (a pooled connection is bound to the loop that opened it)."""
        loop = asyncio.get_running_loop()
        entry = self._clients.get(id(loop))
        if entry is None or entry[0] is not loop:
            client = httpx.AsyncClient(base_url=self.base_url, timeout=self._timeout, trust_env=False,
                                       limits=httpx.Limits(max_connections=None, max_keepalive_connections=32))
            # Clients of loops that are gone (asyncio.run in tests) are dropped, not closed.
            self._clients = {k: v for k, v in self._clients.items() if not v[0].is_closed()}
            self._clients[id(loop)] = entry = (loop, client)
        return entry[1]

    def unreachable(self, exc: Exception) -> QwenError:
        """A transport failure: 504 when the server stopped answering, 503 when it cannot be reached."""
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return Timeout(f"{self.name} timed out ({type(exc).__name__})")
        return ServiceUnavailable(f"{self.name} unreachable: {type(exc).__name__}", retry_after=10)

    async def post_json(self, path: str, body: dict) -> dict:
        try:
            r = await self.http().post(path, json=body)
        except httpx.HTTPError as exc:
            raise self.unreachable(exc) from exc
        return answer_json(r, self.name)

    async def chat(self, body: dict, path: str = CHAT_PATH) -> ChatResult:
        """A chat completion (body without stream): its first choice."""
        out = await self.post_json(path, body)
        choice = (out.get("choices") or [{}])[0]
        result = ChatResult(text=(choice.get("message") or {}).get("content") or "",
                            finish_reason=choice.get("finish_reason"))
        result.add_usage(out.get("usage"))
        return result

    def chat_stream(self, body: dict, path: str = CHAT_PATH) -> ChatStream:
        """A streamed chat completion (body with stream: true)."""
        return ChatStream(self, body, path)

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for loop, client in clients.values():
            try:
                if not loop.is_closed():
                    await client.aclose()
            except Exception:  # noqa: BLE001 - closing on another loop
                pass
