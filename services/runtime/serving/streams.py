"""Work on other threads as async streams, written once: items cross to the event loop through one asyncio
queue (`Channel`), and a stream with a producer of its own runs it in ONE worker thread (`ThreadStream`).

`Channel()` (made on the event loop): `emit(item)` and `close(error=..., result=...)` may be called from any
thread; the consumer iterates it (`async for`), which ends after the last item and re-raises the error
`close` was given; `result` is what `close` was given. `leave()` is the consumer going away early: `cancel`
(a threading.Event the producer watches) is set and later items are dropped. Callbacks given to `on_close`
run once, on the loop, when the channel closes (whether or not anyone is still reading).

`ThreadStream(produce, cancel)` runs `produce(emit)` in its worker thread when iterated; what `produce`
returns is `.result` once the iteration has ended, and its error is re-raised in the consumer. When the
consumer leaves early (client gone, task cancelled) `cancel` is set, so the producer can stop at its next
step; the worker is joined before the iteration ends either way (the consumer waits for the close without
blocking the loop). An async generator that relays a ThreadStream iterates it inside `contextlib.aclosing`:
closing the relay then stops the producer at once (an `async for` left by GeneratorExit leaves the inner
iteration to the garbage collector).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Callable, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_END = object()


class Channel(Generic[T]):
    def __init__(self, cancel: threading.Event | None = None):
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._closed = asyncio.Event()  # set on the loop once close() has been handled
        self._lock = threading.Lock()
        self._closing = False  # close() was called (any thread)
        self._left = False
        self._callbacks: list[Callable[[], None]] = []
        self.cancel = cancel if cancel is not None else threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def _call(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def emit(self, item: T) -> None:
        if not self._left and not self.cancel.is_set():
            self._call(self._queue.put_nowait, item)

    def close(self, error: BaseException | None = None, result: Any = None) -> None:
        """The end of the items (the first call counts)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._call(self._finish, error, result)

    def _finish(self, error: BaseException | None, result: Any) -> None:
        self.error, self.result = error, result
        self._queue.put_nowait(_END)
        self._closed.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_close(self, callback: Callable[[], None]) -> None:
        if self._closed.is_set():
            callback()
        else:
            self._callbacks.append(callback)

    def leave(self) -> None:
        """The consumer is gone: cancel the producer unless it has finished, drop what it still emits."""
        self._left = True
        with self._lock:
            if not self._closing:
                self.cancel.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aiter__(self) -> AsyncIterator[T]:
        while (item := await self._queue.get()) is not _END:
            yield item
        if self.error is not None:
            raise self.error


class Listeners:
    """The open streams of a model service by the ticket its caller chose, so the caller can say "my client
    left" with a call of its own (`leave`). A closed socket is not a reliable signal across the hop: BentoML's
    client leaves the upstream HTTP response to the garbage collector, so the model service would generate
    for nobody until the stream ends. A ticket is forgotten when its channel closes."""

    def __init__(self):
        self._open: dict[str, tuple[Channel, Callable[[], Any] | None]] = {}

    def add(self, ticket: str, channel: Channel, on_leave: Callable[[], Any] | None = None) -> None:
        """`on_leave`: also called (on the event loop) when the caller leaves, e.g. to cancel the task whose
        queued work is for nobody now."""
        if ticket:
            self._open[ticket] = (channel, on_leave)
            channel.on_close(lambda: self._open.pop(ticket, None))

    def leave(self, ticket: str) -> bool:
        """True when the ticket's stream was open (it is cancelled now)."""
        found = self._open.pop(ticket, None)
        if found is None:
            return False
        channel, on_leave = found
        channel.leave()
        if on_leave is not None:
            on_leave()
        return True


class InOrder:
    """Pieces of numbered parts produced at once, from any thread, emitted in part order: part k's pieces
    go out as they come once the parts before it are finished, and wait until then otherwise. Between
    two parts that both have pieces, `separator` goes out first (when given)."""

    def __init__(self, emit: Callable[[Any], None], parts: int, separator: Any = None):
        self._emit = emit
        self._waiting: list[list] = [[] for _ in range(parts)]
        self._finished = [False] * parts
        self._current = 0
        self._any = False  # some part has emitted a piece
        self._started = [False] * parts
        self._separator = separator
        self._lock = threading.Lock()

    def piece(self, part: int, item: Any) -> None:
        with self._lock:
            if part == self._current:
                self._out(part, item)
            else:
                self._waiting[part].append(item)

    def finish(self, part: int) -> None:
        with self._lock:
            self._finished[part] = True
            while self._current < len(self._finished) and self._finished[self._current]:
                self._current += 1
                if self._current < len(self._finished):
                    for item in self._waiting[self._current]:
                        self._out(self._current, item)
                    self._waiting[self._current].clear()

    def _out(self, part: int, item: Any) -> None:
        if not self._started[part]:
            self._started[part] = True
            if self._any and self._separator is not None:
                self._emit(self._separator)
            self._any = True
        self._emit(item)


class ThreadStream(Generic[T, R]):
    def __init__(self, produce: Callable[[Callable[[T], None]], R], cancel: threading.Event | None = None):
        self.produce = produce
        self.cancel = cancel if cancel is not None else threading.Event()
        self.result: R | None = None
        self._started = False

    def __aiter__(self) -> AsyncIterator[T]:
        if self._started:
            raise RuntimeError("a ThreadStream is iterated once")
        self._started = True
        return self._consume()

    async def _consume(self) -> AsyncIterator[T]:
        channel: Channel[T] = Channel(self.cancel)

        def work() -> None:
            try:
                value = self.produce(channel.emit)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                channel.close(error=exc)
            else:
                channel.close(result=value)

        worker = threading.Thread(target=work, name="thread-stream", daemon=True)
        worker.start()
        try:
            async for item in channel:
                yield item
            self.result = channel.result
        finally:
            channel.leave()
            await channel.wait_closed()  # the producer has returned (or is returning)
            worker.join()

