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
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.overload import burst, capacity, route_requests, tree_rss_mb  # noqa: E402
from tests.served_session import free_port, stop_server  # noqa: E402

# Small limits so 4x capacity is a burst a laptop can send (capacity is read back from /health).
LIMITS = {
    "QWEN_VL_MAX_CONCURRENCY": "1", "QWEN_VL_MAX_BATCH_SIZE": "2", "QWEN_VL_MAX_QUEUE": "2",
    "QWEN_VL_RATE_LIMIT": "0", "QWEN_VL_MAX_NEW_TOKENS": "16",
    "QWEN_TTS_MAX_QUEUE": "2", "QWEN_TTS_MAX_FRAMES": "60",
    "QWEN_ALIGNER_MAX_CONCURRENCY": "1", "QWEN_ALIGNER_MAX_QUEUE": "2",
}
SERVICE_OF = {"/generate": "vl", "/v1/audio/speech": "tts", "/api/v1/align": "aligner"}


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
                r = httpx.get(url + "/health", timeout=5)
                if r.status_code == 200:
                    services = r.json()["services"]
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                print("server did not become healthy; see /tmp/qwen-overload.log")
                return 2
            time.sleep(1)
        requests = route_requests()
        ok = True
        rss0 = tree_rss_mb(proc.pid)
        print(f"server tree RSS before: {rss0:.0f} MB")
        for route, make in requests.items():
            n = 4 * capacity(services[SERVICE_OF[route]])
            res = burst(url, route, make, n, args.rounds)
            ok &= res.ok
            print(res.line() + f", tree RSS {tree_rss_mb(proc.pid):.0f} MB")
            for e in res.errors[:3]:
                print("   ", e)
        with httpx.Client(base_url=url, timeout=120) as c:
            after = {route: make(c, 999).status_code for route, make in requests.items()}
            health = c.get("/health").status_code
        print(f"after the bursts: /health {health}, one request each: {after}")
        print(f"server tree RSS after: {tree_rss_mb(proc.pid):.0f} MB (before {rss0:.0f} MB)")
        ok &= health == 200 and set(after.values()) == {200}
        print("RESULT:", "ok" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        stop_server(proc)
        log.close()


if __name__ == "__main__":
    raise SystemExit(main())
