"""The one thread -> asyncio stream bridge (runtime.serving.streams) and token streaming on it
(runtime.serving.generation.stream_generate): order, result, errors, cancellation, one thread per stream."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from services.runtime.serving.generation import stream_generate
from services.runtime.serving.streams import Channel, ThreadStream


def run(coro):
    return asyncio.run(coro)


async def collect(stream) -> list:
    return [item async for item in stream]


def test_items_arrive_in_order_and_the_result_after_them():
    seen: list[threading.Thread] = []

    def produce(emit):
        seen.append(threading.current_thread())
        for i in range(200):
            emit(i)
        return "done"

    stream = ThreadStream(produce)
    assert run(collect(stream)) == list(range(200))
    assert stream.result == "done"
    assert len(seen) == 1 and seen[0] is not threading.main_thread() and not seen[0].is_alive()


def test_a_stream_is_iterated_once():
    stream = ThreadStream(lambda emit: None)
    run(collect(stream))
    with pytest.raises(RuntimeError):
        aiter(stream)


def test_a_producer_error_is_re_raised_after_the_items_it_emitted():
    seen: list[threading.Thread] = []

    def produce(emit):
        seen.append(threading.current_thread())
        emit(1)
        emit(2)
        raise ValueError("boom")

    got: list = []

    async def consume():
        async for item in ThreadStream(produce):
            got.append(item)

    with pytest.raises(ValueError, match="boom"):
        run(consume())
    assert got == [1, 2] and not seen[0].is_alive()


def endless(seen: list) -> ThreadStream:
    """A producer that emits until cancelled, one step at a time (as a generate loop checks its criteria)."""
    cancel = threading.Event()

    def produce(emit):
        seen.append(threading.current_thread())
        i = 0
        while not cancel.is_set():
            emit(i)
            i += 1
            time.sleep(0.005)
        return "stopped"

    return ThreadStream(produce, cancel)


def test_leaving_early_cancels_the_producer_and_joins_its_thread():
    seen: list[threading.Thread] = []
    stream = endless(seen)

    async def consume():
        it = aiter(stream)
        got = [await anext(it) for _ in range(3)]
        await it.aclose()  # what `async for ... break` leads to, and a client that went away
        return got

    assert run(consume()) == [0, 1, 2]
    assert stream.cancel.is_set() and not seen[0].is_alive()
    assert stream.result is None  # it never finished for the consumer


def test_closing_a_relay_that_iterates_inside_aclosing_stops_the_producer_at_once():
    import contextlib

    seen: list[threading.Thread] = []
    stream = endless(seen)

    async def relay():  # as a model service relays a generation as JSON lines
        async with contextlib.aclosing(aiter(stream)) as it:
            async for item in it:
                yield f"line {item}"

    async def consume():
        outer = relay()
        first = await anext(outer)
        await outer.aclose()
        return first, stream.cancel.is_set(), seen[0].is_alive()

    assert run(consume()) == ("line 0", True, False)


def test_a_cancelled_consumer_task_cancels_the_producer_and_joins_its_thread():
    seen: list[threading.Thread] = []
    stream = endless(seen)

    async def main():
        got: list = []

        async def consume():
            async for item in stream:
                got.append(item)

        task = asyncio.create_task(consume())
        while len(got) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    assert stream.cancel.is_set() and not seen[0].is_alive()


def test_exactly_one_worker_thread_per_stream():
    before = set(threading.enumerate())
    during: list[set] = []
    producers: list[threading.Thread] = []

    def produce(emit):
        producers.append(threading.current_thread())
        emit("a")
        time.sleep(0.05)
        emit("b")

    async def consume(stream):
        async for _ in stream:
            during.append(set(threading.enumerate()) - before)

    async def two():
        await asyncio.gather(consume(ThreadStream(produce)), consume(ThreadStream(produce)))

    run(consume(ThreadStream(produce)))
    # while the producer runs (it sleeps after its first item) it is the one thread more; after, none
    assert len(during) == 2 and during[0] == {producers[0]} and during[1] <= {producers[0]}
    during.clear()
    producers.clear()
    run(two())
    assert len(producers) == 2 and len(during) == 4 and all(extra <= set(producers) for extra in during)
    assert not any(t.is_alive() for t in producers)


class WordTokenizer:
    """Token ids 1, 2, 3 are the words hello, world, again (what TextStreamer needs of a tokenizer)."""

    WORDS = {1: "hello", 2: "world", 3: "again"}

    def decode(self, ids, **_kwargs):
        return " ".join(self.WORDS[int(i)] for i in ids)


def test_stream_generate_emits_decoded_words_from_the_generating_thread():
    import torch

    calls: list[threading.Thread] = []

    def generate(streamer, criteria):  # what model.generate does with them, one token per step
        calls.append(threading.current_thread())
        streamer.put(torch.tensor([[9, 9]]))  # the prompt: skipped
        for token in (1, 2, 3):
            if criteria[0](None, None):
                break
            streamer.put(torch.tensor([token]))
        streamer.end()
        return "ids"

    cancel = threading.Event()
    before = set(threading.enumerate())
    during: list[set] = []
    stream = ThreadStream(lambda emit: stream_generate(generate, WordTokenizer(), emit, cancel), cancel)

    async def consume():
        out = []
        async for piece in stream:
            during.append(set(threading.enumerate()) - before)
            out.append(piece)
        return out

    assert run(consume()) == ["hello ", "world ", "again"]
    assert stream.result == "ids"
    assert len(calls) == 1 and all(extra <= {calls[0]} for extra in during)  # generate ran in the one worker


def test_stream_generate_stops_at_the_next_step_once_cancelled():
    import torch

    steps: list[int] = []

    def generate(streamer, criteria):
        for token in range(1, 1000):
            if criteria[0](None, None):
                break
            steps.append(token)
            streamer.put(torch.tensor([1]))
            time.sleep(0.002)
        return len(steps)

    cancel = threading.Event()
    stream = ThreadStream(lambda emit: stream_generate(generate, WordTokenizer(), emit, cancel), cancel)

    async def consume():
        it = aiter(stream)
        await anext(it)
        await it.aclose()

    run(consume())
    assert cancel.is_set() and len(steps) < 999


# --- Channel: a producer that is not the stream's own thread (TTS: the shared decode loop) ------------------

def test_a_channel_carries_items_from_other_threads_then_its_result_and_runs_on_close_on_the_loop():
    async def main():
        loop_thread = threading.current_thread()
        channel: Channel[int] = Channel()
        closed_on: list[threading.Thread] = []
        channel.on_close(lambda: closed_on.append(threading.current_thread()))

        def producer():
            for i in range(50):
                channel.emit(i)
            channel.close(result="finished")
            channel.close(error=RuntimeError("ignored: the first close counts"))

        threading.Thread(target=producer).start()
        got = [item async for item in channel]
        channel.leave()
        return got, channel.result, closed_on == [loop_thread], channel.cancel.is_set()

    assert run(main()) == (list(range(50)), "finished", True, False)  # leaving after the end cancels nothing


def test_a_channel_re_raises_the_producers_error_after_its_items():
    async def main():
        channel: Channel[str] = Channel()
        threading.Thread(target=lambda: (channel.emit("a"), channel.close(error=ValueError("engine died")))).start()
        got = []
        with pytest.raises(ValueError, match="engine died"):
            async for item in channel:
                got.append(item)
        return got

    assert run(main()) == ["a"]


def test_leaving_a_channel_early_cancels_the_producer_and_its_close_still_runs_the_callbacks():
    async def main():
        channel: Channel[int] = Channel()
        closed = asyncio.Event()
        channel.on_close(closed.set)
        emitted_after_leave = threading.Event()

        def producer():  # emits until cancelled, then closes (as a batch row leaves within one step)
            i = 0
            while not channel.cancel.is_set():
                channel.emit(i)
                i += 1
                time.sleep(0.002)
            channel.emit(-1)  # dropped: nobody reads any more
            emitted_after_leave.set()
            channel.close(result="cancelled")

        threading.Thread(target=producer).start()
        got = []
        async for item in channel:
            got.append(item)
            if len(got) == 3:
                break
        channel.leave()
        await asyncio.wait_for(closed.wait(), 5)
        rest = [item async for item in channel]  # what was in flight before leave(), then the end
        return got, rest, channel.cancel.is_set(), emitted_after_leave.is_set(), channel.result

    got, rest, cancelled, emitted, result = run(main())
    assert got == [0, 1, 2] and cancelled and emitted and result == "cancelled"
    assert rest == list(range(3, 3 + len(rest)))  # the item emitted after leave() (-1) was dropped


def test_listeners_cancel_an_open_stream_by_its_ticket_and_forget_it_when_it_closes():
    from services.runtime.serving.streams import Listeners

    async def main():
        listeners = Listeners()
        a, b = Channel(), Channel()
        listeners.add("a", a)
        listeners.add("b", b)
        listeners.add("", Channel())  # no ticket: nobody can leave it
        assert listeners.leave("a") is True
        assert a.cancel.is_set() and not b.cancel.is_set()
        assert listeners.leave("a") is False  # once
        b.close(result="done")
        await b.wait_closed()
        assert listeners.leave("b") is False  # closed streams are forgotten
        assert not b.cancel.is_set()
        assert listeners.leave("") is False

    run(main())


def test_in_order_emits_parts_in_order_whatever_order_they_are_produced_in():
    from services.runtime.serving.streams import InOrder

    out: list[str] = []
    relay = InOrder(out.append, 3, separator="|")
    relay.piece(1, "b1")  # part 1 runs beside part 0: it waits
    relay.piece(0, "a1")
    relay.piece(2, "c1")
    assert out == ["a1"]
    relay.piece(0, "a2")
    relay.finish(0)  # part 1's waiting pieces go out, after the separator
    assert out == ["a1", "a2", "|", "b1"]
    relay.piece(1, "b2")  # part 1 is current now: straight out
    relay.finish(2)  # part 2 finished early: it waits for part 1
    assert out[-1] == "b2"
    relay.finish(1)
    assert out == ["a1", "a2", "|", "b1", "b2", "|", "c1"]


def test_in_order_puts_no_separator_around_a_part_without_pieces():
    from services.runtime.serving.streams import InOrder

    out: list[str] = []
    relay = InOrder(out.append, 3, separator=" ")
    relay.piece(0, "a")
    relay.finish(0)
    relay.finish(1)  # an empty window (silence)
    relay.piece(2, "c")
    relay.finish(2)
    assert out == ["a", " ", "c"]
