"""A model worker of the composed Bento dies (OOM killer, segfault): SIGKILL the aligner's worker process
under the shared `bentoml serve`. Requests in flight and until it is back are 503 with Retry-After in the
envelope, the other services keep serving, and BentoML's supervisor starts a new worker that loads the
model again — /health walks back to 200 with no restart of the gateway. The test ends only once everything
is healthy again, so the tests after it see a whole session."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from tests.audio_fixtures import encode, song
from tests.served_session import process_tree

pytestmark = pytest.mark.served


def aligner_worker(served) -> psutil.Process:
    for p in process_tree(served.proc.pid):
        cmd = p.cmdline()
        if "--service-name" in cmd and cmd[cmd.index("--service-name") + 1] == "aligner":
            return p
    raise AssertionError("no aligner worker under the served session")


def test_a_killed_worker_is_503_meanwhile_and_replaced(served):
    wav = encode(song(4.0, sr=16000), 16000, "wav")
    # Ten-minute songs (five aligner windows each) keep the worker busy when it is killed.
    long = encode(song(600.0, sr=8000, phrase=6.0, gap=1.5), 8000, "flac")
    results = []

    def align(c):
        results.append(c.post("/api/v1/align", files={"audio": ("long.flac", long)},
                              data={"lyrics": '["a b", "c d"]'}))

    with served.client(timeout=120) as c:
        old = aligner_worker(served)
        threads = [threading.Thread(target=align, args=(c,)) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while c.get("/health").json()["services"]["aligner"]["queue_depth"] < 1:  # windows are waiting
            assert time.monotonic() < deadline and any(t.is_alive() for t in threads), results
            time.sleep(0.05)
        old.kill()
        for t in threads:
            t.join(timeout=120)
        codes = sorted(r.status_code for r in results)
        print("in flight at the kill:", codes)
        assert len(codes) == 3 and set(codes) <= {200, 429, 503} and 503 in codes, codes
        for r in results:
            if r.status_code in (429, 503):
                err = r.json()["error"]
                assert r.headers["retry-after"].isdigit() and "aligner" in err["message"], r.text
        # Meanwhile (a new worker needs a process start and a model load: far longer than these calls),
        # the aligner is refused with the reason and the other services serve.
        r = c.post("/api/v1/align", files={"audio": ("a.wav", wav)}, data={"lyrics": '["a b"]'})
        assert r.status_code == 503 and r.headers["retry-after"].isdigit(), r.text
        assert "aligner" in r.json()["error"]["message"]
        h = c.get("/health")
        assert h.status_code == 503 and h.json()["services"]["aligner"]["status"] != "ready", h.text
        assert h.json()["services"]["tts"]["status"] == "ready", h.text
        assert c.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "vivian",
                                               "response_format": "wav"}).status_code == 200
        seen = {h.json()["services"]["aligner"]["status"]}
        deadline = time.monotonic() + 300
        while True:
            h = c.get("/health")
            seen.add(h.json()["services"]["aligner"]["status"])
            if h.status_code == 200:
                break
            assert time.monotonic() < deadline, (seen, h.text)
            time.sleep(0.5)
        print("aligner states seen meanwhile:", seen)
        new = aligner_worker(served)
        assert new.pid != old.pid and not old.is_running()
        r = c.post("/api/v1/align", files={"audio": ("a.wav", wav)}, data={"lyrics": '["a b"]', "format": "json"})
        assert r.status_code == 200 and len(r.json()["segments"]) == 1, r.text
