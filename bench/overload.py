"""Overload: drive /generate, /v1/audio/speech and /api/v1/align at 4x their configured capacity.

Starts its own `bentoml serve` (tiny models, loopback, small queues so capacity is easy to exceed), sends
bounded bursts (count and time), and prints per route: status counts, whether every 429/503 carried
Retry-After, resident memory of the server's process tree before and after, and that every service
still answers afterwards. Exits non-zero if any response was outside {200, 429, 503}, a 429/503 lacked
Retry-After, or a service stopped answering.

    .venv/bin/python bench/overload.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.audio_fixtures import encode, song  # noqa: E402
from tests.served_session import free_port  # noqa: E402

# Capacity = running slots x batch + queue; set small so 4x is a burst a laptop can send.
LIMITS = {
    "QWEN_VL_MAX_CONCURRENCY": "1", "QWEN_VL_MAX_BATCH_SIZE": "2", "QWEN_VL_MAX_QUEUE": "2",
    "QWEN_VL_RATE_LIMIT": "0", "QWEN_VL_MAX_NEW_TOKENS": "16",
    "QWEN_TTS_MAX_QUEUE": "2", "QWEN_TTS_MAX_FRAMES": "60",
    "QWEN_ALIGNER_MAX_CONCURRENCY": "1", "QWEN_ALIGNER_MAX_QUEUE": "2",
}
CAPACITY = {"/generate": 1 * 2 + 2, "/v1/audio/speech": 1 + 2, "/api/v1/align": 1 + 2}


def tree_rss_mb(pid: int) -> float:
    try:
        p = psutil.Process(pid)
        return sum(x.memory_info().rss for x in [p, *p.children(recursive=True)]) / 2**20
    except psutil.Error:
        return 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "BENTOML_CONFIG": str(ROOT / "configuration.yaml"), "BENTOML_DO_NOT_TRACK": "true",
           "QWEN_MODELS": "tiny", "QWEN_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
           "QWEN_SERVICES": "aligner,tts,vl", **LIMITS}
    env.pop("QWEN_API_KEY", None)
    log = open("/tmp/qwen-overload.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve", "services.gateway:Gateway",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                print("server did not become healthy; see /tmp/qwen-overload.log")
                return 2
            time.sleep(1)

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (96, 64), (10, 20, 30)).save(buf, "PNG")
        png = buf.getvalue()
        wav = encode(song(20.0, sr=16000), 16000, "wav")
        requests = {
            "/generate": lambda c, i: c.post("/generate", data={"text": f"prompt {i}"}, files={"image": ("i.png", png)}),
            "/v1/audio/speech": lambda c, i: c.post("/v1/audio/speech", json={
                "model": "tts-1", "input": f"Sentence number {i}.", "voice": "vivian", "response_format": "wav"}),
            "/api/v1/align": lambda c, i: c.post("/api/v1/align", files={"audio": ("a.wav", wav)},
                                                 data={"lyrics": json.dumps([f"line {i} here"] * 8)}),
        }
        ok = True
        rss0 = tree_rss_mb(proc.pid)
        print(f"server tree RSS before: {rss0:.0f} MB")
        for route, make in requests.items():
            n = 4 * CAPACITY[route]
            counts: collections.Counter = collections.Counter()
            missing_retry = 0
            t0 = time.perf_counter()
            for _ in range(args.rounds):
                def one(i):
                    with httpx.Client(base_url=url, timeout=120) as c:
                        return make(c, i)

                with concurrent.futures.ThreadPoolExecutor(n) as pool:
                    for r in pool.map(one, range(n)):
                        counts[r.status_code] += 1
                        if r.status_code in (429, 503) and not r.headers.get("retry-after", "").isdigit():
                            missing_retry += 1
            dt = time.perf_counter() - t0
            bad = {k: v for k, v in counts.items() if k not in (200, 429, 503)}
            ok &= not bad and missing_retry == 0
            print(f"{route:20s} 4x capacity = {n} concurrent x {args.rounds} rounds in {dt:5.1f} s: "
                  f"{dict(sorted(counts.items()))}, 429/503 without Retry-After: {missing_retry}, "
                  f"tree RSS {tree_rss_mb(proc.pid):.0f} MB")
        with httpx.Client(base_url=url, timeout=120) as c:
            after = {route: make(c, 999).status_code for route, make in requests.items()}
            health = c.get("/health").status_code
        print(f"after the bursts: /health {health}, one request each: {after}")
        print(f"server tree RSS after: {tree_rss_mb(proc.pid):.0f} MB (before {rss0:.0f} MB)")
        ok &= health == 200 and set(after.values()) == {200}
        print("RESULT:", "ok" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=15)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


if __name__ == "__main__":
    raise SystemExit(main())
