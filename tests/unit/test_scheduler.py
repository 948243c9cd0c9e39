"""The admission queue + micro-batcher, driven by a plain function (it is engine-agnostic)."""

import asyncio
import threading
import time

import pytest

from services.runtime.core.errors import Timeout, TooManyRequests
from services.runtime.serving.scheduler import Scheduler


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_batched_and_each_gets_its_own_results_in_order():
    calls = []

    def run_batch(items):
        calls.append(list(items))
        time.sleep(0.05)
        return [x * 10 for x in items]

    async def main():
        s = Scheduler("t", "m", run_batch, max_batch_size=4, batch_wait_ms=30, max_concurrency=1, max_queue=32)
        return await asyncio.gather(s.run([1, 2]), s.run([3]), s.run([4, 5, 6]))

    out = run(main())
    assert out == [[10, 20], [30], [40, 50, 60]]
    assert max(len(c) for c in calls) == 4  # a batch took items of several requests
    assert sorted(x for c in calls for x in c) == [1, 2, 3, 4, 5, 6]


def peak_counting():
    """(run_batch that takes 50 ms, [peak number of batches that ran at once])."""
    active, peak, lock = [0], [0], threading.Lock()

    def run_batch(items):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return items

    return run_batch, peak


def test_concurrency_limit_is_respected():
    run_batch, peak = peak_counting()

    async def main():
        s = Scheduler("t", "m", run_batch, max_batch_size=1, max_concurrency=2, max_queue=32)
        await asyncio.gather(*(s.run([i]) for i in range(8)))

    run(main())
    assert peak[0] == 2


def test_full_queue_answers_429_with_retry_after():
    def run_batch(items):
        time.sleep(0.2)
        return items

    async def main():
        s = Scheduler("t", "m", run_batch, max_batch_size=1, max_concurrency=1, max_queue=2)
        results = await asyncio.gather(*(s.run([i]) for i in range(6)), return_exceptions=True)
        return results

    results = run(main())
    rejected = [r for r in results if isinstance(r, TooManyRequests)]
    assert len(rejected) == 3 and all(r.retry_after >= 1 for r in rejected)
    assert rejected[0].headers()["Retry-After"].isdigit()
    assert sum(isinstance(r, list) for r in results) == 3


def test_timeout_is_504_and_drops_unstarted_items():
    seen = []

    def run_batch(items):
        seen.extend(items)
        time.sleep(0.3)
        return items

    async def main():
        s = Scheduler("t", "m", run_batch, max_batch_size=1, max_concurrency=1, max_queue=8, timeout=0.1)
        r = await asyncio.gather(s.run(["a"]), s.run(["b"]), return_exceptions=True)
        await asyncio.sleep(0.4)
        return r, s.queue_depth

    r, depth = run(main())
    assert all(isinstance(x, Timeout) and x.status == 504 for x in r)
    assert depth == 0 and seen == ["a"]  # "b" never started


def test_a_cancelled_request_leaves_the_queue_at_once_and_the_gauge_says_so():
    """A caller cancelled while its items wait (a streaming client that left): they leave the queue then, not
    when the dispatcher reaches them, and the queue-depth gauge follows (the autoscaler reads it). gather
    has already cancelled the items' futures when run's cleanup looks at them."""
    from services.runtime.core.metrics import metrics

    started = threading.Event()
    release = threading.Event()

    def run_batch(items):
        started.set()
        release.wait(5)
        return items

    async def main():
        s = Scheduler("cancel-t", "m", run_batch, max_batch_size=1, max_concurrency=1, max_queue=8)
        task = asyncio.ensure_future(s.run(["a", "b", "c", "d"]))
        while not started.is_set():
            await asyncio.sleep(0.01)
        waiting = s.queue_depth
        task.cancel()
        await asyncio.sleep(0.05)
        depth = s.queue_depth
        gauge = metrics().queue_depth.labels("cancel-t")._value.get()
        release.set()
        return waiting, depth, gauge

    waiting, depth, gauge = run(main())
    assert (waiting, depth, gauge) == (3, 0, 0)


def test_engine_error_reaches_every_request_of_the_batch_and_the_scheduler_keeps_serving():
    def run_batch(items):
        if "boom" in items:
            raise ValueError("engine failed")
        return items

    async def main():
        s = Scheduler("t", "m", run_batch, max_batch_size=4, batch_wait_ms=20, max_concurrency=1)
        r = await asyncio.gather(s.run(["boom"]), s.run(["x"]), return_exceptions=True)
        after = await s.run(["ok"])
        return r, after

    r, after = run(main())
    assert all(isinstance(x, ValueError) for x in r)
    assert after == ["ok"]


def test_empty_request_runs_nothing():
    assert run(Scheduler("t", "m", lambda items: pytest.fail("called")).run([])) == []


def test_slots_share_the_concurrency_budget_with_batches_and_are_released():
    order = []

    def run_batch(items):
        order.append(("batch", tuple(items)))
        return items

    async def main():
        s = Scheduler("t", "m", run_batch, max_batch_size=4, max_concurrency=1, max_queue=8)

        async def stream():
            async with s.slot():
                order.append(("slot-start",))
                await asyncio.sleep(0.1)
                order.append(("slot-end",))

        t = asyncio.create_task(stream())
        await asyncio.sleep(0.01)
        r = await s.run([1, 2])  # must wait for the slot: one concurrency unit
        await t
        async with s.slot():  # released: can be taken again at once
            pass
        return r

    assert run(main()) == [1, 2]
    assert order.index(("slot-end",)) < order.index(("batch", (1, 2)))


def test_slot_on_a_full_queue_is_429():
    async def main():
        s = Scheduler("t", "m", lambda items: items, max_concurrency=1, max_queue=0)
        async with s.slot():
            with pytest.raises(TooManyRequests):
                async with s.slot():
                    pass

    run(main())


def _retry_after_at(depths, batch_seconds, warm_batches=4):
    """Retry-After a scheduler (one slot, batches of one) gives after `warm_batches` batches of
    `batch_seconds` each, with its slot busy and `depth` requests queued, for each depth; then the
    Retry-After of a real refusal once its queue is full."""
    release = threading.Event()

    def run_batch(items):
        if items == ["warm"]:
            time.sleep(batch_seconds)
        else:
            release.wait(10)
        return items

    async def main():
        s = Scheduler("t", "m", run_batch, max_batch_size=1, max_concurrency=1, max_queue=max(depths))
        for _ in range(warm_batches):
            await s.run(["warm"])
        tasks = [asyncio.create_task(s.run(["busy"]))]  # holds the only slot until released
        values = []
        try:
            for depth in depths:
                while s.queue_depth < depth:
                    tasks.append(asyncio.create_task(s.run([len(tasks)])))
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.02)
                assert s.queue_depth == depth
                values.append(s.retry_after())
            with pytest.raises(TooManyRequests) as refused:
                await s.run(["one too many"])
            return values, refused.value
        finally:
            release.set()
            await asyncio.gather(*tasks)

    return run(main())


def test_retry_after_grows_with_queue_depth_and_with_batch_time():
    """A refusal's Retry-After is the wait for the batches ahead of it: recent batch time x batches queued
    / running slots (at least 1 s)."""
    slow, full = _retry_after_at([2, 6, 12], batch_seconds=0.15)
    assert slow[0] < slow[1] < slow[2], slow  # deeper queue, longer wait
    assert full.retry_after == slow[2] and full.status == 429  # the 429 carries the same estimate
    assert int(full.headers()["Retry-After"]) == max(1, round(full.retry_after))
    fast, _ = _retry_after_at([12], batch_seconds=0.0)
    assert fast[0] < slow[2], (fast, slow)  # same depth, quicker recent batches: shorter wait
    assert 1 <= fast[0] and slow[2] / slow[0] > 2.5  # proportional to the batches ahead, not a constant


@pytest.mark.parametrize("batch", [1, 2])
def test_a_short_request_is_not_held_behind_every_item_of_a_long_one(batch):
    """Fewest-served first: a 1-item request that arrives while a 20-item request waits runs in the next
    batch that forms, not after the long request's 20 items."""
    batches: list[list[str]] = []
    gate = threading.Event()

    def run_batch(items):
        batches.append(list(items))
        if len(batches) == 1:
            gate.wait(5)  # hold the first batch until the short request has been queued
        return items

    async def main():
        s = Scheduler("t", "m", run_batch, max_batch_size=batch, max_concurrency=1, max_queue=64)
        long = asyncio.ensure_future(s.run([f"L{i}" for i in range(20)]))
        while not batches:
            await asyncio.sleep(0.005)
        short = asyncio.ensure_future(s.run(["S"]))
        await asyncio.sleep(0.05)  # queued behind the long request's 20 - batch items
        gate.set()
        assert await short == ["S"]
        short_done_at = len(batches)
        assert await long == [f"L{i}" for i in range(20)]
        return short_done_at

    short_done_at = run(main())
    where = next(i for i, b in enumerate(batches) if "S" in b)
    assert where == 1, batches  # FIFO: 20 // batch; round robin could put one long item first: 2
    assert short_done_at <= 3 < len(batches)
    # the long request's items still run in order
    longs = [x for b in batches for x in b if x != "S"]
    assert longs == [f"L{i}" for i in range(20)]


def test_two_long_requests_alternate_and_keep_each_ones_order():
    batches: list[list[str]] = []
    gate = threading.Event()

    def run_batch(items):
        batches.append(list(items))
        if len(batches) == 1:
            gate.wait(5)
        return items

    async def main():
        s = Scheduler("t", "m", run_batch, max_batch_size=2, max_concurrency=1, max_queue=64)
        a = asyncio.ensure_future(s.run([f"A{i}" for i in range(6)]))
        while not batches:
            await asyncio.sleep(0.005)
        b = asyncio.ensure_future(s.run([f"B{i}" for i in range(6)]))
        await asyncio.sleep(0.05)
        gate.set()
        return await a, await b

    a, b = run(main())
    assert a == [f"A{i}" for i in range(6)] and b == [f"B{i}" for i in range(6)]
    # B catches up with A's two started items, then they alternate
    assert batches == [["A0", "A1"], ["B0", "B1"], ["A2", "B2"], ["A3", "B3"], ["A4", "B4"], ["A5", "B5"]], batches


def test_a_request_keeps_one_running_slot_free_for_others():
    """With two running slots, a long request runs one batch at a time (the other slot stays free), so a
    short request that arrives while the long one's batch runs starts at once, beside it, instead of
    waiting for that batch to end (which a long request holding both slots would make it do)."""
    running: dict[str, int] = {}
    peak = {"L": 0}
    started: list[str] = []
    lock = threading.Lock()
    release = threading.Event()

    def run_batch(items):
        who = items[0][0]
        with lock:
            started.append(items[0])
            running[who] = running.get(who, 0) + 1
            peak["L"] = max(peak["L"], running.get("L", 0))
        if who == "L":
            release.wait(5)  # the long request's batches take long: held until the short one is done
        with lock:
            running[who] -= 1
        return items

    async def main():
        s = Scheduler("t", "m", run_batch, max_batch_size=1, max_concurrency=2, max_queue=64)
        long = asyncio.ensure_future(s.run([f"L{i}" for i in range(6)]))
        while not started:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)  # a scheduler that let the long request take both slots has done so now
        assert await asyncio.wait_for(s.run(["S"]), 5) == ["S"]  # beside the long batch, which still runs
        release.set()
        assert await long == [f"L{i}" for i in range(6)]

    run(main())
    assert started[:2] == ["L0", "S"], started
    assert peak["L"] == 1


def test_a_lone_request_still_uses_every_slot_when_the_service_has_three():
    """The cap is max_concurrency - 1: with three slots a long request runs two batches at once."""
    run_batch, peak = peak_counting()

    async def main():
        s = Scheduler("t", "m", run_batch, max_batch_size=1, max_concurrency=3, max_queue=64)
        assert await s.run(list(range(8))) == list(range(8))

    run(main())
    assert peak[0] == 2


def test_items_are_batched_only_with_items_of_a_similar_cost():
    """A batch runs as long as its longest item: a short item is not put beside items SIZE_RATIO times
    its cost (it forms its own batch), while items of a similar cost still batch together."""
    from dataclasses import dataclass

    from services.runtime.serving.scheduler import SIZE_RATIO

    @dataclass
    class Item:
        name: str
        cost: float

    batches: list[list[str]] = []

    def run_batch(items):
        batches.append([i.name for i in items])
        return items

    async def main():
        s = Scheduler("t", "m", run_batch, max_batch_size=4, batch_wait_ms=50, max_concurrency=1, max_queue=64)
        await asyncio.gather(s.run([Item("L0", 100), Item("L1", 90)]), s.run([Item("S", 100 / SIZE_RATIO / 2)]),
                             s.run([Item("M", 100 / SIZE_RATIO * 1.5)]))

    run(main())
    assert sorted(map(sorted, batches)) == [["L0", "L1", "M"], ["S"]], batches


def test_the_asr_refuses_a_full_queue_before_voice_activity_runs():
    """ASR plans windows with voice activity over the whole file first (~0.7 s per minute): with no room for
    even one window, the 429 comes before that cost. Its _plan on a stand-in service whose queue is full."""
    from types import SimpleNamespace

    import numpy as np

    from services.asr.contract import TranscribeOptions
    from services.asr.service import ASR
    from services.runtime.core.settings import ASRSettings
    from services.runtime.serving import vad

    def run_batch(items):
        time.sleep(0.2)
        return items

    async def main():
        s = Scheduler("t", "m", run_batch, max_batch_size=1, max_concurrency=1, max_queue=0)
        busy = asyncio.ensure_future(s.run(["x"]))
        await asyncio.sleep(0.02)  # running: no slot and no queue left
        fake = SimpleNamespace(cfg=ASRSettings(vad=True), scheduler=s,
                               handle=SimpleNamespace(get=lambda: SimpleNamespace(count_tokens=len)))
        try:
            await ASR.inner._plan(fake, np.zeros(16000 * 60, np.float32), TranscribeOptions())
        finally:
            await busy

    called = []
    original = vad.voice_activity
    vad.voice_activity = lambda: called.append(1) or original()
    try:
        with pytest.raises(TooManyRequests) as e:
            run(main())
    finally:
        vad.voice_activity = original
    assert e.value.status == 429 and e.value.retry_after and called == []
