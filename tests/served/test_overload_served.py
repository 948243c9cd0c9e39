"""Overload, every run: /generate, /v1/audio/speech and /api/v1/align driven at 4x the capacity each
service reports in /health (running slots x batch + queue), in bounded bursts, through the shared served
session. Every answer is 200, 429 or 503 with Retry-After — no 5xx, no timeout, no reset; the server's
memory stays bounded; every service answers normally afterwards. `make overload` is the longer version
with its own server (bench/overload.py)."""

from __future__ import annotations

import pytest

from tests.overload import burst, capacity, route_requests, tree_rss_mb
from tests.served_session import API_KEY

pytestmark = pytest.mark.served
ROUNDS = 2
SERVICE_OF = {"/generate": "vl", "/v1/audio/speech": "tts", "/api/v1/align": "aligner"}
# The bursts leave from their own loopback address: /generate's per-IP rate limit that they use up is
# theirs, not the other served tests' (127.0.0.1).
SOURCE = "127.0.0.7"


def test_three_routes_at_4x_capacity_answer_200_or_429_and_recover(served):
    with served.client() as c:
        services = c.get("/health").json()["services"]
    rss_before = tree_rss_mb(served.proc.pid)
    results = []
    for route, make in route_requests().items():
        n = 4 * capacity(services[SERVICE_OF[route]])
        results.append(burst(served.url, route, make, n, ROUNDS, headers={"X-API-Key": API_KEY},
                             local_address=SOURCE))
    rss_after = tree_rss_mb(served.proc.pid)
    report = "\n".join(r.line() for r in results) + f"\nserver tree RSS {rss_before:.0f} -> {rss_after:.0f} MB"
    print(report)
    for r in results:
        assert r.ok, report + "\n" + "\n".join(r.errors[:5])
        assert r.counts[200] >= 1, report  # the admitted share is served, not refused wholesale
    assert sum(r.counts[429] for r in results) >= 1, report  # 4x capacity did overflow somewhere
    # Bounded memory: bursts of uploads and queued work leave the tree within half again its size.
    assert rss_after < 1.5 * rss_before, report
    with served.client() as c:
        for route, make in route_requests().items():
            r = make(c, 0)
            assert r.status_code == 200, (route, r.status_code, r.text[:300])
        assert c.get("/health").status_code == 200
