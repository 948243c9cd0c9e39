"""The state store on a real redis-server (and in process): bytes with a time to live, Redis trouble as a 503
that heals without a restart, and what two gateway replicas share through it — rate-limit windows and tasks."""

import asyncio

import pytest
from fastapi.responses import JSONResponse

from services.gateway.tasks import TaskStore
from services.runtime.core.errors import TooManyRequests
from services.runtime.core.state import MemoryStore, RedisStore, StateUnavailable, open_store
from services.runtime.edge.ratelimit import Limit, RateLimits
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def stores(redis):
    return [MemoryStore(), RedisStore(redis.url, timeout=1.0)]


def test_bytes_with_a_time_to_live(redis):
    async def main(store):
        await store.set("k", b"v\x00\xff", 60)
        await store.set("short", b"x", 0.2)
        got = await store.get("k"), await store.get("short")
        await asyncio.sleep(0.3)
        gone = await store.get("short")
        await store.delete("k")
        return got, gone, await store.get("k")

    for store in stores(redis):
        assert asyncio.run(main(store)) == ((b"v\x00\xff", b"x"), None, None), type(store).__name__


def test_open_store_by_url(redis):
    assert isinstance(open_store(None), MemoryStore) and isinstance(open_store(redis.url), RedisStore)
    with pytest.raises(ValueError):
        open_store("memcached://x")
    # rediss:// (managed Redis: ElastiCache, Memorystore) is TLS for both clients; nothing connects yet.
    tls = open_store("rediss://:pw@cache.example.internal:6380/0")
    assert tls._redis.connection_pool.connection_class.__name__ == "SSLConnection"
    limits_pool = tls.limits_storage.bridge.storage.connection_pool
    assert limits_pool.connection_class.__name__ == "SSLConnection"


def test_redis_down_is_a_503_and_back_up_works_without_a_new_store(redis):
    store = RedisStore(redis.url, timeout=0.5)

    async def roundtrip():
        await store.set("k", b"1", 60)
        return await store.get("k")

    async def main():
        assert await roundtrip() == b"1"
        redis.stop()
        try:
            with pytest.raises(StateUnavailable) as e:
                await roundtrip()
            assert e.value.status == 503 and e.value.retry_after and "Redis" in e.value.message
            assert redis.url.split("@")[0] not in e.value.message  # no credentials in the message
        finally:
            redis.start()
        return await roundtrip()

    assert asyncio.run(main()) == b"1"


def test_two_replicas_share_one_limit(redis):
    """Two gateways' limiters on one Redis: 10 per minute across both, the 11th refused wherever it lands."""
    a = RateLimits(RedisStore(redis.url).limits_storage, {"vl": Limit(10, 60)})
    b = RateLimits(RedisStore(redis.url).limits_storage, {"vl": Limit(10, 60)})

    async def main():
        allowed = 0
        for i in range(14):
            try:
                await (a if i % 2 else b).check("vl", "203.0.113.9")
                allowed += 1
            except TooManyRequests as err:
                assert err.retry_after >= 1
        return allowed

    assert asyncio.run(main()) == 10


def test_a_task_submitted_on_one_replica_is_read_on_the_other(redis):
    async def main():
        one, two = TaskStore(RedisStore(redis.url), ttl=60), TaskStore(RedisStore(redis.url), ttl=60)

        async def work():
            await asyncio.sleep(0.05)
            return JSONResponse({"done": True})

        rec = await one.submit("align", work)
        seen_running = (await two.get(rec.task_id, "align")).status
        while one._local:
            await asyncio.sleep(0.01)
        response = await two.result(rec.task_id, "align")
        return seen_running, response

    seen_running, response = asyncio.run(main())
    assert seen_running == "running" and response.status_code == 200 and response.body == b'{"done":true}'
