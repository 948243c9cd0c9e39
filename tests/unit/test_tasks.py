"""The task store over the state store (in-process here; tests/deploy/test_replicas.py runs it on Redis across
two gateways): results as rendered responses, failures with their envelope, bounds, leases, cancellation."""

import asyncio
import time

import pytest
from fastapi.responses import JSONResponse

from services.gateway.tasks import TaskRecord, TaskStore, _record_key
from services.runtime.core.errors import Conflict, InvalidRequest, NotFound, QwenError, TooManyRequests
from services.runtime.core.state import MemoryStore


async def settle(store: TaskStore) -> None:
    while store._local:
        await asyncio.sleep(0.01)


def test_a_task_keeps_its_rendered_response_and_a_failure_its_envelope():
    async def main():
        store = TaskStore(MemoryStore(), ttl=60, max_tasks=4)

        async def ok():
            await asyncio.sleep(0.01)
            return JSONResponse({"answer": 42}, headers={"X-Extra": "1"})

        async def bad():
            raise InvalidRequest("broken input", param="lyrics")

        t1, t2 = await store.submit("x", ok), await store.submit("x", bad)
        assert (await store.get(t1.task_id)).status == "running"
        with pytest.raises(Conflict):
            await store.result(t1.task_id)
        await settle(store)
        ok_rec, bad_rec = await store.get(t1.task_id), await store.get(t2.task_id)
        response = await store.result(t1.task_id)
        with pytest.raises(QwenError) as e:
            await store.result(t2.task_id)
        with pytest.raises(NotFound):
            await store.get("missing")
        with pytest.raises(NotFound):
            await store.get(t1.task_id, kind="other")  # another route's tasks are not this one's
        return ok_rec, bad_rec, response, e.value

    ok_rec, bad_rec, response, err = asyncio.run(main())
    assert ok_rec.status == "succeeded" and ok_rec.finished_at >= ok_rec.created_at
    assert response.status_code == 200 and response.body == b'{"answer":42}' and response.headers["x-extra"] == "1"
    d = bad_rec.describe()
    assert d["status"] == "failed" and d["error"]["param"] == "lyrics"
    assert (err.status, err.param) == (400, "lyrics")


def test_running_tasks_are_bounded_per_replica_and_results_by_size():
    async def main():
        store = TaskStore(MemoryStore(), ttl=60, max_tasks=2, max_result_bytes=1024)

        async def slow():
            await asyncio.sleep(0.1)
            return JSONResponse({})

        async def big():
            return JSONResponse({"blob": "x" * 5000})

        await store.submit("x", slow)
        await store.submit("x", slow)
        with pytest.raises(TooManyRequests):
            await store.submit("x", slow)
        await settle(store)
        rec = await store.submit("x", big)
        await settle(store)
        return await store.get(rec.task_id)

    rec = asyncio.run(main())
    assert rec.status == "failed" and rec.error["code"] == "result_too_large"


def test_an_expired_lease_fails_the_task_with_a_reason():
    """The replica running it is gone: its record says running, but nobody renewed the lease. Any reader marks
    it failed (and writes that back: it stays failed)."""
    async def main():
        shared = MemoryStore()
        now = time.time()
        orphan = TaskRecord(task_id="t1", kind="x", created_at=now - 60, owner="dead-replica", lease_until=now - 1)
        await shared.set(_record_key("t1"), orphan.model_dump_json().encode(), 60)
        first = await TaskStore(shared, ttl=60).get("t1")
        stored = TaskRecord.model_validate_json(await shared.get(_record_key("t1")))
        return first, stored

    first, stored = asyncio.run(main())
    assert first.status == stored.status == "failed"
    assert first.error["code"] == "task_lost" and first.error["status"] == 503 and stored.finished_at is not None


def test_the_owner_renews_its_lease_while_the_task_runs():
    async def main():
        store = TaskStore(MemoryStore(), ttl=60, lease=0.3)

        async def slow():
            await asyncio.sleep(1.0)
            return JSONResponse({})

        rec = await store.submit("x", slow)
        await asyncio.sleep(0.6)  # two lease periods
        running = await store.get(rec.task_id)
        await settle(store)
        return running, await store.get(rec.task_id)

    running, done = asyncio.run(main())
    assert running.status == "running" and done.status == "succeeded"


def test_delete_cancels_a_running_task_and_forgets_a_finished_one():
    async def main():
        store = TaskStore(MemoryStore(), ttl=60)
        started = asyncio.Event()

        async def slow():
            started.set()
            await asyncio.sleep(3600)

        async def quick():
            return JSONResponse({})

        rec = await store.submit("x", slow)
        await started.wait()
        cancelled = await store.cancel(rec.task_id)
        await settle(store)
        after = await store.get(rec.task_id)
        done = await store.submit("x", quick)
        await settle(store)
        await store.cancel(done.task_id)
        with pytest.raises(NotFound):
            await store.get(done.task_id)
        return cancelled, after

    cancelled, after = asyncio.run(main())
    assert cancelled.status == after.status == "cancelled"
