"""Captions past the captioner's 30 s: a timeline of windows, one caption each.

Qwen3-Omni's captioner perceives detail best up to 30 s (its model card), so long audio is not sent whole:
it is cut into windows of at most `max_audio_seconds`, each cut in the last 40% of its window at the
quietest point (runtime.codecs.chunking, the same planner as the ASR and aligner windows; energy only: a
caption describes any sound, speech or not, and a quiet point is where one sound ends), and each window is
captioned as its own clip by the captioner's `complete` API — so the windows of a long request are
ordinary items to the model service's admission and batching, at most `window_concurrency` of one
request at a time, and other requests interleave with them.

The answer is the windows in order, each as `[m:ss.s–m:ss.s] caption`, separated by blank lines, with the
timeline itself beside it (`timeline`: index, start, end, text, finish_reason). Streamed, each window is
one content delta carrying its `window` (index, start, end) as soon as it and those before it are done.
`max_tokens` applies to each window; usage is summed; the finish reason is `length` if any window was cut.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import AsyncIterator, Awaitable, Callable

import numpy as np

from services.runtime.codecs.chunking import plan_chunks
from services.runtime.serving.generation import Completion, Usage

SAMPLE_RATE = 16000


def windows(samples: np.ndarray, window_seconds: float) -> list[tuple[float, float, np.ndarray]]:
    """(start s, end s, samples) of each window, cut at quiet points, in order, covering all the audio."""
    return [(c.start / SAMPLE_RATE, c.end / SAMPLE_RATE, samples[c.start:c.end])
            for c in plan_chunks(samples, SAMPLE_RATE, window_seconds)]


def clock(seconds: float) -> str:
    """m:ss.s (minutes unbounded)."""
    tenths = int(round(seconds * 10))
    return f"{tenths // 600}:{tenths % 600 // 10:02d}.{tenths % 10}"


def entry_text(start: float, end: float, caption: str) -> str:
    return f"[{clock(start)}–{clock(end)}] {caption.strip()}"


async def in_order(calls: list[Callable[[], Awaitable]], limit: int) -> AsyncIterator:
    """The results of `calls` in their order, at most `limit` running at once; the rest are cancelled when
    the consumer stops early or a call fails."""
    pending: deque[asyncio.Future] = deque()
    todo = iter(calls)
    try:
        for call in todo:
            pending.append(asyncio.ensure_future(call()))
            if len(pending) >= limit:
                break
        while pending:
            result = await pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(asyncio.ensure_future(nxt()))
            yield result
    finally:
        for task in pending:
            task.cancel()


class Timeline:
    """The windows' captions as they come (in order), and the whole answer."""

    def __init__(self) -> None:
        self.entries: list[dict] = []
        self.prompt_tokens = self.completion_tokens = 0
        self.cut = False

    def add(self, start: float, end: float, out: Completion) -> str:
        """Record one window's caption; returns its text in the answer (a blank line before all but the first)."""
        self.entries.append({"index": len(self.entries), "start": round(start, 3), "end": round(end, 3),
                             "text": out.text.strip(), "finish_reason": out.finish_reason})
        self.prompt_tokens += out.usage.prompt_tokens
        self.completion_tokens += out.usage.completion_tokens
        self.cut = self.cut or out.finish_reason == "length"
        return ("\n\n" if len(self.entries) > 1 else "") + entry_text(start, end, out.text)

    @property
    def finish_reason(self) -> str:
        return "length" if self.cut else "stop"

    @property
    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens)
