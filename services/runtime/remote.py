"""Calls from the gateway to model services, the same in one process or across processes.

A model service's API is wrapped with `@guarded`: a `QwenError` comes back as a value
`{"__qwen_error__": payload}` (BentoML would otherwise flatten 4xx messages and hide 5xx ones), and any
other exception becomes a 500 whose message names the service but not the internals. The gateway awaits
`call(...)`, which re-raises the error, and maps transport failures (the process is gone, overloaded, too
slow) to 503/429/504 in the envelope.
"""

from __future__ import annotations

import functools
from typing import Any, Awaitable

from .errors import QwenError, ServiceUnavailable, Timeout, TooManyRequests
from .logging import get_logger

log = get_logger("remote")
ERROR_KEY = "__qwen_error__"


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


async def call(service: str, awaitable: Awaitable[Any]) -> Any:
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
    except (ConnectionError, OSError) as exc:
        raise ServiceUnavailable(f"{service} is unreachable: {type(exc).__name__}", code="service_unavailable",
                                 retry_after=5) from None
    except Exception as exc:  # httpx transport errors and the like
        if type(exc).__module__.startswith(("httpx", "aiohttp", "anyio")):
            if "Timeout" in type(exc).__name__:
                raise Timeout(f"{service} did not answer in time") from None
            raise ServiceUnavailable(f"{service} is unreachable: {type(exc).__name__}",
                                     code="service_unavailable", retry_after=5) from None
        raise
    if isinstance(result, dict) and ERROR_KEY in result:
        raise QwenError.from_payload(result[ERROR_KEY])
    return result
