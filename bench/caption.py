"""Captioner latency and throughput at concurrency 1 vs 4, through the service's own code path.

One fresh process (QWEN_MODELS=tiny, QWEN_CAPTIONER_BACKEND=transformers, QWEN_TORCH_THREADS=1): the
Captioner service class is created in-process, its model handle awaited, and its `complete` API called
directly with asyncio on 5 s clips, greedy, max_tokens 16 (QWEN_CAPTIONER_MAX_TOKENS=16).

The transformers backend runs one generation at a time by design (module state; batched clips would
attend to each other), behind the scheduler's single slot. So 4 concurrent requests queue: expected
latency per request at c4 ~ (1 + 2 + 3 + 4) / 4 = 2.5x the c1 latency on average (p50 ~2-3x, the last
one ~4x), and throughput flat (c4 / c1 ~ 1.0). Rounds alternate the two modes; medians are compared.
(vLLM, the CUDA backend, batches itself; not measured here.)

    .venv/bin/python bench/caption.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONCURRENCY = 4
SECONDS = 5.0
MAX_TOKENS = 16


def child(repeats: int) -> dict:
    from tests.audio_fixtures import song

    from services.captioner.contract import GenParams
    from services.captioner.service import Captioner

    svc = Captioner()
    cap = svc() if callable(svc) and not hasattr(svc, "handle") else svc
    if not cap.handle.wait(600):
        raise SystemExit(f"model failed: {cap.handle.error}")
    clips = [song(SECONDS, sr=16000, phrase=2.0, gap=0.5, seed=i) for i in range(CONCURRENCY)]
    params = GenParams(max_tokens=cap.cfg.max_tokens, temperature=0.0, top_p=1.0, top_k=-1)

    async def one(audio) -> tuple[float, int]:
        t0 = time.perf_counter()
        out = await cap.complete(audio=audio, params=params)
        assert "text" in out, out
        return time.perf_counter() - t0, out["usage"]["completion_tokens"]

    async def run() -> dict:
        await one(clips[0])  # warm-up beyond the engine's own (a 5 s clip's shapes)
        seq_wall, conc_wall, seq_lat, conc_lat, tokens = [], [], [], [], set()
        for _ in range(repeats):  # alternate, so drift in machine load hits both alike
            t0 = time.perf_counter()
            res = [await one(c) for c in clips]
            seq_wall.append(time.perf_counter() - t0)
            seq_lat += [r[0] for r in res]
            tokens |= {r[1] for r in res}
            t0 = time.perf_counter()
            res = await asyncio.gather(*(one(c) for c in clips))
            conc_wall.append(time.perf_counter() - t0)
            conc_lat.append(sorted(r[0] for r in res))
            tokens |= {r[1] for r in res}
        return {"seq_wall": seq_wall, "conc_wall": conc_wall, "seq_lat": seq_lat, "conc_lat": conc_lat,
                "tokens": sorted(tokens), "max_tokens": params.max_tokens, "device": cap.handle.device,
                "backend": cap.handle.get().backend, "slots": cap.scheduler.max_concurrency}

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.repeats)))
        return
    env = {**os.environ, "QWEN_MODELS": "tiny", "OMP_NUM_THREADS": "1", "QWEN_LOG_LEVEL": "WARNING",
           "QWEN_TORCH_THREADS": os.environ.get("QWEN_TORCH_THREADS", "1"),
           "QWEN_CAPTIONER_BACKEND": "transformers", "QWEN_CAPTIONER_MAX_TOKENS": str(MAX_TOKENS)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-4000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])

    n = CONCURRENCY
    seq_wall, conc_wall = statistics.median(r["seq_wall"]), statistics.median(r["conc_wall"])
    p50_1 = statistics.median(r["seq_lat"])
    all_conc = [x for run in r["conc_lat"] for x in run]
    p50_4 = statistics.median(all_conc)
    mean_1, mean_4 = statistics.mean(r["seq_lat"]), statistics.mean(all_conc)
    by_rank = [statistics.median(run[i] for run in r["conc_lat"]) for i in range(n)]
    print(f"tiny captioner, backend {r['backend']} on {r['device']} ({r['slots']} generation slot), torch threads "
          f"{env['QWEN_TORCH_THREADS']}, {os.cpu_count()} cores; {SECONDS:.0f} s clips, greedy, "
          f"max_tokens {r['max_tokens']} (completion tokens {r['tokens']}); {args.repeats} round(s) of {n} requests")
    print(f"  concurrency 1: p50 latency {p50_1 * 1000:7.0f} ms (mean {mean_1 * 1000:.0f}),  {n} requests in "
          f"{seq_wall:6.2f} s -> {n / seq_wall:.2f} req/s")
    print(f"  concurrency {n}: p50 latency {p50_4 * 1000:7.0f} ms (mean {mean_4 * 1000:.0f}; by finishing order "
          f"{', '.join(f'{x * 1000:.0f}' for x in by_rank)} ms),  {n} requests in {conc_wall:6.2f} s -> "
          f"{n / conc_wall:.2f} req/s")
    print(f"  ratio latency c{n}/c1: p50 {p50_4 / p50_1:.2f}, mean {mean_4 / mean_1:.2f}, last to finish "
          f"{by_rank[-1] / p50_1:.2f}  (one at a time: expect mean ~{(n + 1) / 2:.1f}, last ~{n})")
    print(f"  ratio throughput c{n}/c1 = {seq_wall / conc_wall:.2f}  (expect ~1.0: no batching on this backend)")
    print(f"wall time {time.perf_counter() - t0:.0f} s (one process, including model load)")


if __name__ == "__main__":
    main()
