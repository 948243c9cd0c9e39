"""Admission control and adaptive micro-batching in front of one engine, written once for every service.

`Scheduler.run(items)` admits a request's items into a bounded queue (full: 429 with a Retry-After
estimated from recent batch times and queue depth), groups waiting items from concurrent requests into
batches of at most `max_batch_size` (a batch leaves when full or `batch_wait_ms` after its first item
arrived — and at once when a slot frees up with items already waiting), runs at most `max_concurrency`
batches at a time in worker threads, and gives each request its own results, in order.

Batches are formed fairly across requests: the next item comes from the waiting request that has had the
fewest items started (a newcomer first, two long requests alternating): a 5-second clip that arrives
while the 10 windows of a 20-minute file wait runs in the next batch, not after all 10. And a request
never holds every running slot (at most max_concurrency - 1 of its batches run at once, at least 1): with
two slots the clip starts at once, beside the file's running batch. Each request's own items still run in
order. A request that
exceeds `timeout` gets a 504 and its not-yet-started items are dropped. With max_batch_size=1 it is a
plain concurrency limit with a bounded queue.

`async with scheduler.slot():` takes one running slot through the same queue for work that is not a
batch call (a streamed synthesis), so streams and batches share one concurrency budget.

It lives in the model service's process, so it protects the device whoever calls. Engines that batch
themselves (vLLM) are not put behind it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from services.runtime.core.errors import Timeout, TooManyRequests
from services.runtime.core.metrics import metrics


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)
    exclusive: bool = False  # a slot() holder: never batched, holds a running slot until released
    request: "_Request | None" = None


@dataclass(eq=False)
class _Request:
    items: collections.deque
    served: int = 0  # items started
    running: int = 0  # batches holding its items that are running now


class _Queue:
    """Waiting requests; each holds its not-yet-started items in order. The next item comes from the
    request that has had the fewest items started so far (arrival order among equals): a newcomer goes
    before a request already being served, and two long requests alternate.

    A request may have at most `per_request` batches running at once (max_concurrency - 1, at least 1): the
    last running slot is kept for another request, so a short request that arrives while a long one runs
    starts at once instead of waiting for one of the long request's batches to end."""

    def __init__(self, per_request: int = 1) -> None:
        self._requests: list[_Request] = []  # in arrival order
        self._items = 0
        self.per_request = per_request

    def __len__(self) -> int:
        return self._items

    def add(self, items: list[_Pending]) -> None:
        request = _Request(collections.deque(items))
        for p in items:
            p.request = request
        self._requests.append(request)
        self._items += len(items)

    def _next(self, batch: set | None = None, head: Any = None) -> _Request | None:
        """The fewest-served request that may start an item now (it is below its running batches, or
        already in the batch being formed), and whose next item is of the batch's size class (`head`: the
        batch's first item); None when there is none."""
        ready = [r for r in self._requests if (r.running < self.per_request or (batch and r in batch))
                 and (head is None or same_size_class(head.item, r.items[0].item))]
        return min(ready, key=lambda r: r.served) if ready else None  # min keeps the first of equals

    def ready(self) -> bool:
        return self._next() is not None

    def first(self, batch: set | None = None, head: Any = None) -> _Pending | None:
        request = self._next(batch, head)
        return request.items[0] if request is not None else None

    def take(self, batch: set | None = None, head: Any = None) -> _Pending:
        request = self._next(batch, head)
        assert request is not None
        item = request.items.popleft()
        request.served += 1
        self._items -= 1
        if not request.items:
            self._requests.remove(request)
        return item

    def oldest(self) -> float:
        return min(r.items[0].arrived for r in self._requests)

    def drop(self, items: list[_Pending]) -> None:
        gone = {id(p) for p in items}
        for r in self._requests:
            r.items = collections.deque(p for p in r.items if id(p) not in gone)
        self._requests = [r for r in self._requests if r.items]
        self._items = sum(len(r.items) for r in self._requests)


# Items that say what they cost (`cost`: seconds of audio, tokens to generate) are batched only with items
# within this factor of the batch's first: one batch runs as long as its longest item (padding, and a
# generate that ends with its longest row), so a 5-s clip beside 100-s windows, or a 16-token answer beside
# a 1024-token one, would wait for them.
SIZE_RATIO = 4.0


def same_size_class(a: Any, b: Any) -> bool:
    ca, cb = getattr(a, "cost", None), getattr(b, "cost", None)
    if ca is None or cb is None:
        return True
    small, big = sorted((float(ca), float(cb)))
    return big <= max(small, 1e-9) * SIZE_RATIO


def retry_after_seconds(waiting: int, batch_size: int, concurrency: int, batch_seconds: float) -> float:
    """When a refused client may find room: the batches ahead of it (the waiting items, then its own) at the
    recent batch time, `concurrency` at a time; at least 1 s. The one Retry-After rule of every queue."""
    return max(1.0, batch_seconds * (waiting / batch_size + 1) / concurrency)


class Scheduler:
    def __init__(
        self,
        service: str,
        model: str,
        run_batch: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch_size: int = 1,
        batch_wait_ms: float = 0.0,
        max_concurrency: int = 1,
        max_queue: int = 16,
        timeout: float = 300.0,
    ):
        self.service = service
        self.model = model
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000.0
        self._pending = _Queue()
        self.max_concurrency = max_concurrency  # sets the queue's per-request limit too
        self.max_queue = max_queue
        self.timeout = timeout
        self._running = 0
        self._ewma_batch_seconds = 1.0
        self._wake: asyncio.Event | None = None
        self._dispatcher: asyncio.Task | None = None
        self._m = metrics()

    # -- public -------------------------------------------------------------------------------------
    @property
    def max_concurrency(self) -> int:
        return self._max_concurrency

    @max_concurrency.setter
    def max_concurrency(self, value: int) -> None:
        self._max_concurrency = value
        self._pending.per_request = max(1, value - 1)  # one slot stays free for another request

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def retry_after(self) -> float:
        return retry_after_seconds(len(self._pending), self.max_batch_size, self.max_concurrency,
                                   self._ewma_batch_seconds)

    async def run(self, items: Sequence[Any]) -> list[Any]:
        """Run `items` (one request) through the engine; results in the same order."""
        if not items:
            return []
        self._ensure_started()
        self.admit(len(items))
        loop = asyncio.get_running_loop()
        mine = [_Pending(it, loop.create_future()) for it in items]
        self._pending.add(mine)
        self._gauge()
        assert self._wake is not None
        self._wake.set()
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(p.future for p in mine)), self.timeout))
        except asyncio.TimeoutError:
            self._m.rejected.labels(self.service, "timeout").inc()
            raise Timeout(f"{self.service} did not finish within {self.timeout:.0f}s") from None
        finally:
            # Drop what has not started (timeout, client gone); started batches finish in their thread. A
            # cancelled caller finds its futures already cancelled (by gather), so those count too.
            if any(not p.future.done() or p.future.cancelled() for p in mine):
                self._pending.drop(mine)
                for p in mine:
                    p.future.cancel()
                self._gauge()

    def admit(self, count: int) -> None:
        """429 (queue_full, Retry-After) unless `count` more items fit the queue now. `run` checks its items;
        a service may check earlier, before costly preparation (ASR: at least one window, before voice
        activity runs over the whole file)."""
        if len(self._pending) + count > self.max_queue + self._free_capacity():
            self._m.rejected.labels(self.service, "queue_full").inc()
            raise TooManyRequests(
                f"{self.service} is at capacity ({self.max_concurrency} running, {len(self._pending)} queued); "
                "retry later",
                retry_after=self.retry_after(),
            )

    @contextlib.asynccontextmanager
    async def slot(self):
        """Hold one of the `max_concurrency` running slots (queued like a one-item request)."""
        self._ensure_started()
        if len(self._pending) + 1 > self.max_queue + self._free_capacity():
            self._m.rejected.labels(self.service, "queue_full").inc()
            raise TooManyRequests(f"{self.service} is at capacity; retry later", retry_after=self.retry_after())
        mine = _Pending(None, asyncio.get_running_loop().create_future(), exclusive=True)
        self._pending.add([mine])
        self._gauge()
        assert self._wake is not None
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(mine.future), self.timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if mine.future.done() and not mine.future.cancelled():
                self._release()  # granted just as we gave up
            else:
                mine.future.cancel()
                self._pending.drop([mine])
                self._gauge()
            if isinstance(exc, asyncio.TimeoutError):
                self._m.rejected.labels(self.service, "timeout").inc()
                raise Timeout(f"{self.service} had no free slot within {self.timeout:.0f}s") from None
            raise
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._m.inference.labels(self.service, self.model).observe(time.perf_counter() - t0)
            self._release()

    def _release(self) -> None:
        self._running -= 1
        self._gauge()
        if self._wake is not None:
            self._wake.set()

    # -- internals ----------------------------------------------------------------------------------
    def _free_capacity(self) -> int:
        return max(0, self.max_concurrency - self._running) * self.max_batch_size

    def _gauge(self) -> None:
        self._m.queue_depth.labels(self.service).set(len(self._pending))
        self._m.active.labels(self.service).set(self._running)

    def _ensure_started(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._wake = asyncio.Event()
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch(), name=f"sched-{self.service}")

    async def _dispatch(self) -> None:
        assert self._wake is not None
        while True:
            if not self._pending.ready() or self._running >= self.max_concurrency:
                self._wake.clear()
                await self._wake.wait()
                continue
            # Batch window: wait for more items until the batch is full or the oldest item waited enough.
            deadline = self._pending.oldest() + self.batch_wait
            while len(self._pending) < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            head = self._pending.first()
            if head is None:  # the waiting requests are all at their running limit (items were dropped)
                continue
            if head.exclusive:
                p = self._pending.take()
                if not p.future.done():
                    self._running += 1  # released by the holder (slot())
                    self._gauge()
                    p.future.set_result(None)
                continue
            batch: list[_Pending] = []
            members: set = set()
            while len(batch) < self.max_batch_size and \
                    (nxt := self._pending.first(members, batch[0] if batch else None)) is not None and not nxt.exclusive:
                p = self._pending.take(members, batch[0] if batch else None)
                if not p.future.done():
                    batch.append(p)
                    members.add(p.request)
            if not batch:
                self._gauge()  # only abandoned items were taken
                continue
            for request in members:
                request.running += 1
            self._running += 1
            self._gauge()
            asyncio.get_running_loop().create_task(self._execute(batch, members))

    async def _execute(self, batch: list[_Pending], members: set) -> None:
        t0 = time.perf_counter()
        try:
            results = await asyncio.to_thread(self._run_batch, [p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} items")
            for p, r in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(r)
        except BaseException as exc:  # noqa: BLE001 - delivered to every waiting request
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
        finally:
            dt = time.perf_counter() - t0
            self._ewma_batch_seconds = 0.8 * self._ewma_batch_seconds + 0.2 * dt
            self._m.batch_size.labels(self.service).observe(len(batch))
            self._m.inference.labels(self.service, self.model).observe(dt)
            for request in members:
                request.running -= 1
            self._release()
