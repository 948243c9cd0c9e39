import asyncio

import pytest

from services.runtime.core.errors import InvalidRequest, NotFound, TooManyRequests
from services.gateway.tasks import TaskStore


def test_task_runs_to_a_result_and_failures_keep_their_envelope():
    async def main():
        store = TaskStore(ttl=60, max_tasks=4)

        async def ok():
            await asyncio.sleep(0.01)
            return 42

        async def bad():
            raise InvalidRequest("broken input", param="lyrics")

        t1, t2 = store.submit("x", ok), store.submit("x", bad)
        assert store.get(t1.id).status in ("pending", "running")
        await asyncio.sleep(0.05)
        return store, t1, t2

    store, t1, t2 = asyncio.run(main())
    assert store.get(t1.id).status == "succeeded" and store.get(t1.id).result == 42
    d = store.get(t2.id).describe()
    assert d["status"] == "failed" and d["error"]["param"] == "lyrics"
    with pytest.raises(NotFound):
        store.get("missing")


def test_store_is_bounded():
    async def main():
        store = TaskStore(ttl=60, max_tasks=2)
        store.submit("x", lambda: asyncio.sleep(0.1))
        store.submit("x", lambda: asyncio.sleep(0.1))
        with pytest.raises(TooManyRequests):
            store.submit("x", lambda: asyncio.sleep(0.1))
        await asyncio.sleep(0.15)

    asyncio.run(main())
