"""Calls from the gateway to model services, the same in one process or across processes.

A model service's API is wrapped with `@guarded`: a `QwenError` comes back as a value
`{"__qwen_error__": payload}` (BentoML would otherwise flatten 4xx messages and hide 5xx ones), and any
other exception becomes a 500 whose message names the service but not the internals. The gateway awaits
`call(...)`, which re-raises the error, and maps transport failures (the process is gone, overloaded, too
slow) to 503/429/504 in the envelope.
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable, Callable, TypeVar

from pydantic import BaseModel, ValidationError

from services.runtime.core.errors import QwenError, ServiceUnavailable, Timeout, TooManyRequests
from services.runtime.core.logging import get_logger

log = get_logger("remote")
ERROR_KEY = "__qwen_error__"
M = TypeVar("M", bound=BaseModel)


def guarded(service: str):
    def deco(fn):
        @functools.wraps(fn)
        async def wrapper(*args, **kwargs):
            try:
                return await fn(*args, **kwargs)
            except QwenError as exc:
                return {ERROR_KEY: exc.payload()}
            except Exception as exc:  # noqa: BLE001
                log.error("unexpected failure", extra={"service": service}, exc_info=True)
                return {ERROR_KEY: QwenError(f"{service} failed: {type(exc).__name__}").payload()}

        return wrapper

    return deco


# A pooled keep-alive connection the callee closed while idle (its server's idle timeout is shorter
# than the client's) fails on first use, before the call reached the model: seen after a burst, as an
# aiohttp ClientOSError / ServerDisconnectedError. Model calls have no side effects, so such a failure is
# tried again. After a burst several pooled connections can have expired together, and the next try may
# take another of them (seen: a retry failing the same way, a 503 to the client): up to STALE_RETRIES
# tries, each failed connection leaving the pool. A callee that is really gone refuses the connection
# (not one of these errors) and fails at once.
_STALE_CONNECTION = ("ClientOSError", "ServerDisconnectedError", "ClientConnectionResetError",
                     "ConnectionResetError", "BrokenPipeError")
STALE_RETRIES = 4


async def call(service: str, request: Awaitable[Any] | Callable[[], Awaitable[Any]], into: type[M] | None = None) -> Any:
    """Await a model service's API and map its failures to our errors. `request` is the call, or a
    function making it (then a stale pooled connection is retried once). With `into` (a contract's pydantic
    model) the result is validated into it: the same whether the service ran in this process (a model or a
    dict) or across a socket (JSON)."""
    if not callable(request):
        result = await _call(service, request, retry_stale=False)
    else:
        for attempt in range(STALE_RETRIES + 1):
            try:
                result = await _call(service, request(), retry_stale=attempt < STALE_RETRIES)
                break
            except _StaleConnection:
                log.info("stale connection to a model service, retrying", extra={"service": service,
                                                                                "attempt": attempt + 1})
    return result if into is None else _into(service, into, result)


def _into(service: str, into: type[M], value: Any) -> M:
    try:
        return into.model_validate(value)
    except ValidationError as exc:  # the two sides disagree on the contract: a deployment fault, not the client's
        log.error("model service answered outside its contract", extra={"service": service, "errors": exc.error_count()})
        raise QwenError(f"{service} answered outside its contract") from None


_background: set = set()  # strong references to fire-and-forget tasks until they end


def _spawn(awaitable: Awaitable[Any]) -> None:
    import asyncio

    async def run():
        try:
            await awaitable
        except Exception as exc:  # noqa: BLE001 - best effort: the stream ends by itself anyway
            log.info("leave call failed", extra={"error": type(exc).__name__})

    task = asyncio.get_running_loop().create_task(run())
    _background.add(task)
    task.add_done_callback(_background.discard)


class _StaleConnection(Exception):
    pass


async def _call(service: str, awaitable: Awaitable[Any], *, retry_stale: bool) -> Any:
    from bentoml.exceptions import BentoMLException

    try:
        result = await awaitable
    except QwenError:
        raise
    except BentoMLException as exc:
        status = int(getattr(exc.error_code, "value", exc.error_code) or 500)
        if status == 429:
            raise TooManyRequests(f"{service} is overloaded", retry_after=5) from None
        if status == 504:
            raise Timeout(f"{service} did not answer in time") from None
        log.warning("dependency call failed", extra={"service": service, "status": status})
        raise ServiceUnavailable(f"{service} is unavailable ({status})", code="service_unavailable",
                                 retry_after=5) from None
    except TimeoutError:  # asyncio's and the builtin (an OSError since 3.11): the callee hung or is too slow
        raise Timeout(f"{service} did not answer in time") from None
    except Exception as exc:
        if retry_stale and type(exc).__name__ in _STALE_CONNECTION:
            raise _StaleConnection() from exc
        transport = isinstance(exc, (ConnectionError, OSError)) or \
            type(exc).__module__.startswith(("httpx", "aiohttp", "anyio"))  # transport errors and the like
        if not transport:
            raise
        if "Timeout" in type(exc).__name__:
            raise Timeout(f"{service} did not answer in time") from None
        raise ServiceUnavailable(f"{service} is unreachable: {type(exc).__name__}", code="service_unavailable",
                                 retry_after=5) from None
    if isinstance(result, dict) and ERROR_KEY in result:
        raise QwenError.from_payload(result[ERROR_KEY])
    return result


# -- streams ---------------------------------------------------------------------------------------------
# A streamed API cannot change its HTTP status once bytes flow, and chunk boundaries do not survive the
# socket between processes. So a model service's stream starts with one JSON line — {"ok": true} or
# {"__qwen_error__": payload} — and the gateway reads that line before it opens its own response: errors
# found before the first audio byte (validation, admission 429, loading 503) keep their status.
STREAM_OK = b'{"ok": true}\n'


def stream_ok(header: BaseModel | None = None) -> bytes:
    """The header line of a stream that starts: STREAM_OK, with a contract's header fields beside "ok"."""
    import json

    if header is None:
        return STREAM_OK
    return json.dumps({"ok": True, **header.model_dump(mode="json")}).encode() + b"\n"


def stream_error(err: QwenError) -> bytes:
    import json

    return json.dumps({ERROR_KEY: err.payload()}).encode() + b"\n"


async def lines(body):
    """The lines of a stream's bytes (after its header line), whatever the chunking: a model service's
    stream of JSON lines reaches us cut anywhere by the socket."""
    buf = b""
    async for data in body:
        buf += data
        *done, buf = buf.split(b"\n")
        for line in done:
            if line:
                yield line
    if buf:
        yield buf


async def open_stream(service: str, agen, into: type[M] | None = None,
                      on_leave: Callable[[], Awaitable[Any]] | None = None):
    """Read the header line of a model service's stream; raise its error, or return an async iterator of
    the remaining bytes. With `into` (a contract's header model): (the header validated into it, iterator).

    `on_leave` makes the call that tells the model service our client left before the end (the service's
    `leave` with the stream's ticket, serving.streams.Listeners): it runs in a task of its own, since the
    body is closed inside a cancelled scope."""
    import json

    buf = b""
    it = agen.__aiter__()
    while b"\n" not in buf:
        try:
            buf += await call(service, it.__anext__())
        except StopAsyncIteration:
            raise ServiceUnavailable(f"{service} closed the stream before it started",
                                     code="service_unavailable", retry_after=5) from None
    head, rest = buf.split(b"\n", 1)
    header = json.loads(head)
    if ERROR_KEY in header:
        raise QwenError.from_payload(header[ERROR_KEY])

    async def body():
        ended = False
        try:
            if rest:
                yield rest
            async for chunk in it:
                yield chunk
            ended = True
        finally:
            if not ended and on_leave is not None:
                _spawn(call(service, on_leave))

    return body() if into is None else (_into(service, into, header), body())
