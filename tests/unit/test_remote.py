"""How the gateway maps a dependency's failures: hung → 504, gone → 503 with Retry-After, busy → 429, and a
service's own error comes back as itself."""

import asyncio

import httpx
import pytest

from services.runtime.edge import remote
from services.runtime.core.errors import InvalidRequest, QwenError, ServiceUnavailable, Timeout, TooManyRequests


def call(exc_or_value):
    async def dep():
        if isinstance(exc_or_value, BaseException):
            raise exc_or_value
        return exc_or_value

    return asyncio.run(remote.call("vl", dep()))


@pytest.mark.parametrize("exc", [TimeoutError(), asyncio.TimeoutError(), httpx.ReadTimeout("slow"),
                                 httpx.ConnectTimeout("slow")])
def test_a_dependency_that_does_not_answer_in_time_is_504(exc):
    with pytest.raises(Timeout) as e:
        call(exc)
    assert e.value.status == 504 and "vl" in e.value.message


@pytest.mark.parametrize("exc", [ConnectionRefusedError(), ConnectionResetError(), OSError("gone"),
                                 httpx.ConnectError("refused"), httpx.RemoteProtocolError("disconnected")])
def test_a_dependency_that_is_gone_is_503_with_retry_after(exc):
    with pytest.raises(ServiceUnavailable) as e:
        call(exc)
    assert e.value.status == 503 and e.value.code == "service_unavailable" and e.value.retry_after


def test_bentoml_429_and_504_keep_their_meaning():
    from bentoml.exceptions import BentoMLException
    from bentoml.exceptions import ServiceUnavailable as BentoUnavailable

    class Busy(BentoMLException):
        error_code = 429

    with pytest.raises(TooManyRequests):
        call(Busy("busy"))
    with pytest.raises(ServiceUnavailable):
        call(BentoUnavailable("down"))


def test_a_services_own_error_crosses_with_its_status_type_and_fields():
    err = InvalidRequest("bad lyrics", param="lyrics", code="invalid_value")
    with pytest.raises(QwenError) as e:
        call({remote.ERROR_KEY: err.payload()})
    assert e.value.payload() == err.payload() and e.value.status == 400


def _flaky(failures: list[BaseException], value="ok"):
    """A request factory whose calls fail with `failures` in turn, then return `value`; counts calls."""
    calls = []

    def make():
        calls.append(1)

        async def dep():
            if len(calls) <= len(failures):
                raise failures[len(calls) - 1]
            return value

        return dep()

    return make, calls


@pytest.mark.parametrize("stale", ["ClientOSError", "ServerDisconnectedError"])
def test_stale_pooled_connections_are_retried(stale):
    """aiohttp's errors for a keep-alive connection the callee closed while idle (seen after a burst): the
    model call never ran, so it is made again. Several pooled connections can have expired together (seen:
    the one retry met a second dead one, a 503 to the client): two in a row still get through."""
    import aiohttp

    exc = getattr(aiohttp, stale)() if stale == "ServerDisconnectedError" else aiohttp.ClientOSError(104, "reset")
    make, calls = _flaky([exc])
    assert asyncio.run(remote.call("aligner", make)) == "ok" and len(calls) == 2
    make, calls = _flaky([exc, exc])
    assert asyncio.run(remote.call("aligner", make)) == "ok" and len(calls) == 3
    make, calls = _flaky([exc] * (remote.STALE_RETRIES + 1))  # failing every time: bounded, then the answer
    with pytest.raises(ServiceUnavailable) as e:
        asyncio.run(remote.call("aligner", make))
    assert len(calls) == remote.STALE_RETRIES + 1 and e.value.retry_after and stale in e.value.message


def test_only_stale_connections_are_retried_and_only_for_factories():
    import aiohttp

    make, calls = _flaky([ConnectionRefusedError()])  # nobody listening: not retried
    with pytest.raises(ServiceUnavailable):
        asyncio.run(remote.call("aligner", make))
    assert len(calls) == 1
    make, calls = _flaky([TimeoutError()])  # the callee may still be working: never retried
    with pytest.raises(Timeout):
        asyncio.run(remote.call("aligner", make))
    assert len(calls) == 1
    make, calls = _flaky([aiohttp.ServerDisconnectedError()])  # an awaitable cannot be made again
    with pytest.raises(ServiceUnavailable):
        asyncio.run(remote.call("aligner", make()))
    assert len(calls) == 1


def test_into_validates_the_result_into_the_contract_model():
    from pydantic import BaseModel

    class Result(BaseModel):
        text: str
        n: int

    async def ok(value):
        return value

    for value in ({"text": "a", "n": 1}, Result(text="a", n=1)):  # across a socket / in one process
        got = asyncio.run(remote.call("svc", ok(value), into=Result))
        assert isinstance(got, Result) and (got.text, got.n) == ("a", 1)
    with pytest.raises(QwenError) as err:  # the service broke its contract: a 500, not the client's fault
        asyncio.run(remote.call("svc", ok({"text": "a"}), into=Result))
    assert err.value.status == 500 and "contract" in err.value.message
    # an error crossing the boundary still wins over the contract
    with pytest.raises(QwenError) as err:
        asyncio.run(remote.call("svc", ok({remote.ERROR_KEY: InvalidRequest("bad").payload()}), into=Result))
    assert err.value.status == 400


def test_resolve_model_is_the_one_model_name_check():
    from services.gateway.registry import resolve_model
    from services.runtime.core.errors import NotFound
    from services.runtime.core.settings import Settings

    s = Settings()
    for key in ("asr", "tts", "vl", "diagram", "captioner", "aligner"):
        model = getattr(s, key).model
        resolve_model(s, key, model)
        resolve_model(s, key, model.split("/")[-1])
        resolve_model(s, key, f"someorg/{model.split('/')[-1]}")  # last path part
        resolve_model(s, key, key)
        with pytest.raises(NotFound) as err:
            resolve_model(s, key, "gpt-4o-mini")
        assert err.value.code == "model_not_found" and model in err.value.message
    resolve_model(s, "asr", "whisper-1")
    resolve_model(s, "tts", "tts-1-hd-en")
    with pytest.raises(NotFound):
        resolve_model(s, "asr", "tts-1")


def _upstream(n: int):
    async def agen():
        yield remote.STREAM_OK
        for i in range(n):
            yield b"%d;" % i
    return agen()


@pytest.mark.parametrize("read_all", [True, False])
def test_a_stream_left_early_tells_the_service_and_one_read_to_its_end_does_not(read_all):
    """The model service learns that our client left from a `leave` call (the socket is no signal across
    BentoML's client), made once, and only when the body was closed before its end."""
    calls: list[str] = []

    async def leave():
        calls.append("leave")

    async def main():
        body = await remote.open_stream("tts", _upstream(5), on_leave=leave)
        got = []
        async for chunk in body:
            got.append(chunk)
            if not read_all:
                break
        await body.aclose()
        await asyncio.sleep(0.01)  # the leave call runs in a task of its own
        return got

    got = asyncio.run(main())
    assert calls == ([] if read_all else ["leave"])
    assert len(got) == (5 if read_all else 1)


def test_the_leave_call_runs_even_when_the_body_is_cancelled():
    """Starlette closes a response whose client left by cancelling it: the body's cleanup runs inside a
    cancelled scope, so the leave call must not be awaited there."""
    import anyio

    calls: list[str] = []
    gate = asyncio.Event()

    async def leave():
        await asyncio.sleep(0)  # a real call awaits I/O: inside the cancelled scope this would raise
        calls.append("leave")

    async def slow():
        yield remote.STREAM_OK
        yield b"first"
        await gate.wait()  # never set: the client leaves while the service is still generating
        yield b"never"

    async def main():
        body = await remote.open_stream("tts", slow(), on_leave=leave)
        async with anyio.create_task_group() as tg:
            async def consume():
                async for _ in body:
                    pass
            tg.start_soon(consume)
            await asyncio.sleep(0.01)
            tg.cancel_scope.cancel()
        await asyncio.sleep(0.01)

    asyncio.run(main())
    assert calls == ["leave"]
