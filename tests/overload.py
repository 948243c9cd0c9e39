"""Bounded bursts at a multiple of a route's capacity, shared by the recurring served test
(tests/served/test_overload_served.py) and `make overload` (bench/overload.py, its own small server).

A burst is `n` requests sent at once from `n` threads, repeated `rounds` times; every answer is counted by
status, and a 429/503 without a numeric Retry-After is counted as a violation. Requests can leave from
their own loopback address (127.0.0.x) so a per-IP rate limit they use up is not the other tests'.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import httpx
import psutil

from tests.audio_fixtures import encode, song
from tests.served_session import process_tree

ALLOWED = frozenset({200, 429, 503})


def capacity(status: dict) -> int:
    """Requests a model service holds at once: running slots x batch, plus its queue (from /health)."""
    return status["concurrency_limit"] * status["max_batch_size"] + status["queue_limit"]


def tree_rss_mb(pid: int) -> float:
    total = 0
    for p in process_tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def route_requests(voice: str = "vivian") -> dict[str, Callable[[httpx.Client, int], httpx.Response]]:
    """One small real request per overloaded route (what users send, made small)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (10, 20, 30)).save(buf, "PNG")
    png = buf.getvalue()
    wav = encode(song(8.0, sr=16000), 16000, "wav")
    return {
        "/generate": lambda c, i: c.post("/generate", data={"text": f"prompt {i}"}, files={"image": ("i.png", png)}),
        "/v1/audio/speech": lambda c, i: c.post("/v1/audio/speech", json={
            "model": "tts-1", "input": f"Sentence number {i}.", "voice": voice, "response_format": "wav"}),
        "/api/v1/align": lambda c, i: c.post("/api/v1/align", files={"audio": ("a.wav", wav)},
                                             data={"lyrics": json.dumps([f"line {i} here"] * 4)}),
    }


@dataclass
class BurstResult:
    route: str
    concurrent: int
    rounds: int
    seconds: float = 0.0
    counts: collections.Counter = field(default_factory=collections.Counter)
    missing_retry_after: int = 0
    errors: list[str] = field(default_factory=list)  # transport failures (timeouts, resets)

    @property
    def ok(self) -> bool:
        return not self.errors and self.missing_retry_after == 0 and set(self.counts) <= ALLOWED

    def line(self) -> str:
        return (f"{self.route:18s} {self.concurrent} concurrent x {self.rounds} rounds in {self.seconds:5.1f} s: "
                f"{dict(sorted(self.counts.items()))}, 429/503 without Retry-After: {self.missing_retry_after}, "
                f"transport errors: {len(self.errors)}")


def burst(url: str, route: str, make: Callable[[httpx.Client, int], httpx.Response], n: int, rounds: int,
          *, headers: dict | None = None, local_address: str | None = None, timeout: float = 300) -> BurstResult:
    res = BurstResult(route, n, rounds)

    def one(i: int):
        transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
        try:
            with httpx.Client(base_url=url, headers=headers or {}, timeout=timeout, transport=transport) as c:
                return make(c, i)
        except httpx.HTTPError as exc:
            return exc

    t0 = time.perf_counter()
    for _ in range(rounds):
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            for r in pool.map(one, range(n)):
                if isinstance(r, Exception):
                    res.errors.append(f"{type(r).__name__}: {r}"[:200])
                    continue
                res.counts[r.status_code] += 1
                if r.status_code in (429, 503) and not r.headers.get("retry-after", "").isdigit():
                    res.missing_retry_after += 1
    res.seconds = time.perf_counter() - t0
    return res
