"""State the gateway replicas share: task records and results, rate-limit windows. One interface, two stores.

- `MemoryStore` (the default, QWEN_STATE_URL unset): in this process. `make demo`, one gateway process, no
  setup; a restart loses it.
- `RedisStore` (QWEN_STATE_URL=redis://[:password@]host:port/db, rediss:// for TLS): any number of gateway
  replicas agree on tasks and limits. redis-py's asyncio client; every command has a deadline
  (QWEN_STATE_TIMEOUT), and a dead connection is simply reopened by the next command (no restart).

What is stored is bytes under a key, with a time to live: the store knows nothing of tasks. Rate limits use
the `limits` library's storage for the same place (`limits_storage`): its moving-window strategy runs as
Lua scripts inside Redis, so the count is atomic across replicas.

Redis trouble (down, slow, refused) is a `StateUnavailable` (503 + Retry-After, code state_unavailable),
raised where a route needs the state; routes that do not need it keep serving.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from services.runtime.core.errors import ServiceUnavailable

PREFIX = "qwen:"  # every key this project writes in a shared Redis


class StateUnavailable(ServiceUnavailable):
    code = "state_unavailable"


def unavailable(exc: BaseException | None = None) -> StateUnavailable:
    what = f" ({type(exc).__name__})" if exc is not None else ""
    return StateUnavailable(f"the shared state store (Redis) is unreachable{what}; retry shortly", retry_after=5)


class Store(Protocol):
    """Bytes by key, each with a time to live (seconds)."""

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def get(self, key: str) -> bytes | None: ...

    async def delete(self, key: str) -> None: ...

    @property
    def limits_storage(self): ...


class MemoryStore:
    """This process's dict; expired keys are dropped when read and swept on writes (amortised)."""

    def __init__(self, clock=time.monotonic):
        self._data: dict[str, tuple[bytes, float]] = {}
        self._clock = clock
        self._next_sweep = 0.0
        self._limits = None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        now = self._clock()
        self._data[key] = (value, now + ttl)
        if now >= self._next_sweep:
            self._data = {k: v for k, v in self._data.items() if v[1] > now}
            self._next_sweep = now + 10.0

    async def get(self, key: str) -> bytes | None:
        found = self._data.get(key)
        if found is None:
            return None
        if found[1] <= self._clock():
            del self._data[key]
            return None
        return found[0]

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    @property
    def limits_storage(self):
        if self._limits is None:
            from limits.aio.storage import MemoryStorage

            self._limits = MemoryStorage()
        return self._limits


class RedisStore:
    def __init__(self, url: str, timeout: float = 2.0):
        import redis.asyncio as redis

        self.url = url
        self.timeout = timeout
        # Deadlines on connect and on every command: a slow Redis is an error, never a hung request.
        self._redis = redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                     health_check_interval=30, retry_on_timeout=False)
        self._limits = None

    async def _run(self, coro):
        import redis.exceptions

        try:
            return await asyncio.wait_for(coro, self.timeout * 2)
        except (redis.exceptions.RedisError, OSError, asyncio.TimeoutError) as exc:
            raise unavailable(exc) from None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._run(self._redis.set(PREFIX + key, value, px=max(1, int(ttl * 1000))))

    async def get(self, key: str) -> bytes | None:
        return await self._run(self._redis.get(PREFIX + key))

    async def delete(self, key: str) -> None:
        await self._run(self._redis.delete(PREFIX + key))

    @property
    def limits_storage(self):
        if self._limits is None:
            from limits.aio.storage import RedisStorage

            # The same server, through redis-py (limits' default client is coredis, which we do not ship);
            # storage errors surface as limits.errors.StorageError.
            self._limits = RedisStorage("async+" + self.url, implementation="redispy", wrap_exceptions=True,
                                        key_prefix=PREFIX + "limits", socket_timeout=self.timeout,
                                        socket_connect_timeout=self.timeout)
        return self._limits


def open_store(url: str | None, timeout: float = 2.0) -> MemoryStore | RedisStore:
    """The store QWEN_STATE_URL names: unset -> this process; redis:// or rediss:// -> Redis."""
    if not url:
        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, timeout=timeout)
    raise ValueError("QWEN_STATE_URL must be redis://, rediss:// or unix:// (or unset: in-process)")
