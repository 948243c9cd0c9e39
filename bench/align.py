"""Alignment cost of a 1-minute vs a 10-minute song, through the aligner service's own code path.

Each duration runs in a fresh process (so peak RSS is its own): the Aligner service class is created
in-process, the model loaded (tiny by default, or QWEN_ALIGNER_MODEL / --model for a real checkpoint),
then `align()` — chunking at quiet points, batching, line rebuild — is timed over a few repeats.
Prints absolute figures for context and the 10-min / 1-min ratios measured in this run.

    .venv/bin/python bench/align.py [--repeats 3] [--model PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(seconds: float, repeats: int) -> dict:
    import numpy as np

    from tests.audio_fixtures import song

    from services.aligner.contract import AlignLines
    from services.aligner.service import Aligner

    svc = Aligner()
    inner = svc() if callable(svc) and not hasattr(svc, "handle") else svc
    if not inner.handle.wait(600):
        raise SystemExit(f"model failed: {inner.handle.error}")
    # Built in 10-second blocks: generating 10 minutes at once would itself set the peak RSS.
    audio = np.concatenate([song(10.0, sr=16000, phrase=4.0, gap=1.0, seed=i) for i in range(int(seconds // 10))])
    lines = [f"line number {i} of the song" for i in range(int(seconds / 5))]
    base = rss_mb()

    async def run():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = await inner.align(audio=audio, text=AlignLines(lines=lines, language="en"))
            times.append(time.perf_counter() - t0)
            assert "segments" in out, out
        return times, out["chunks"]

    times, chunks = asyncio.run(run())
    return {"seconds": seconds, "median_s": statistics.median(times), "chunks": chunks,
            "baseline_mb": base, "peak_mb": peak_mb(), "extra_peak_mb": peak_mb() - base}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="local aligner checkpoint (default: tiny)")
    ap.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.repeats)))
        return
    env = {**os.environ, "QWEN_TORCH_THREADS": os.environ.get("QWEN_TORCH_THREADS", "1"), "OMP_NUM_THREADS": "1"}
    if args.model:
        env["QWEN_ALIGNER_MODEL"] = args.model
    else:
        env["QWEN_MODELS"] = "tiny"
    results = {}
    for seconds in (60.0, 600.0):
        out = subprocess.run([sys.executable, __file__, "--child", str(seconds), "--repeats", str(args.repeats)],
                             env=env, cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        results[seconds] = json.loads(out.stdout.strip().splitlines()[-1])
    one, ten = results[60.0], results[600.0]
    for r in (one, ten):
        print(f"{r['seconds'] / 60:4.0f} min: {r['median_s'] * 1000:8.1f} ms median, {r['chunks']} window(s), "
              f"peak RSS {r['peak_mb']:.0f} MB (+{r['extra_peak_mb']:.0f} MB over loaded baseline)")
    print(f"ratio time   10min/1min = {ten['median_s'] / one['median_s']:.2f}  (audio ratio 10.0)")
    print(f"ratio memory 10min/1min = {max(ten['extra_peak_mb'], 1) / max(one['extra_peak_mb'], 1):.2f}"
          "  (extra peak over the loaded baseline)")


if __name__ == "__main__":
    main()
