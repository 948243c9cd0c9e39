"""Alignment cost of a 1-minute vs a 10-minute song, through the aligner service's own code path; and with
`--modes`, what the no-lyrics mode and vocal separation cost per minute of audio beside plain alignment.

Each duration runs in a fresh process (so peak RSS is its own): the Aligner service class is created
in-process, the model loaded (tiny by default, or QWEN_ALIGNER_MODEL / --model for a real checkpoint),
then `align()` — chunking at quiet points, batching, line rebuild — is timed over a few repeats.
Prints absolute figures for context and the 10-min / 1-min ratios measured in this run.

`--modes` (one process, one song of --minutes): plain alignment; no lyrics (the ASR service hears the song,
the aligner times what it heard: services/gateway/pipelines/transcribe_align.py, with both services
in-process); separation by the configured Demucs (tiny unless QWEN_ALIGNER_SEPARATOR names a real one);
and separation by HTDemucs at the v4 architecture's published widths (the class defaults: 48 channels,
depth 4, 5 transformer layers) with random weights — the compute of a real checkpoint, not its output.
Prints seconds per minute of audio and each mode's ratio to plain alignment, measured in this run. On the
tiny models the ASR never stops early (no EOS), so the no-lyrics figure is its token budget's worst case.

    .venv/bin/python bench/align.py [--repeats 3] [--model PATH]
    .venv/bin/python bench/align.py --modes [--minutes 1]
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

from bench.inprocess import service  # noqa: E402


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

    inner = service(Aligner)
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


def modes(minutes: float, repeats: int) -> dict:
    """Seconds per minute of audio of each way to time a song, in this process."""
    from fractions import Fraction
    from types import SimpleNamespace

    import numpy as np
    import torch

    from tests.audio_fixtures import SPEECH_SR, encode, speech, tone_and_noise

    from services.aligner.contract import AlignLines
    from services.aligner.review import review_rules
    from services.aligner.separation import VocalSeparator
    from services.aligner.service import Aligner
    from services.asr.service import ASR
    from services.gateway.pipelines import transcribe_align
    from services.runtime.core.settings import get_settings

    aligner, asr = service(Aligner), service(ASR)
    seconds = minutes * 60
    # Spoken lines (espeak-ng) over a tone and noise, one every 5 s: what the no-lyrics mode must hear words in.
    audio = 0.3 * tone_and_noise(seconds)
    for k, start in enumerate(range(0, int(seconds) - 4, 5)):
        voice = speech(f"this is line number {k} of the song")[: 4 * SPEECH_SR]
        audio[start * SPEECH_SR:start * SPEECH_SR + len(voice)] += voice
    audio = np.clip(audio, -1, 1).astype(np.float32)
    encoded = encode(audio, SPEECH_SR, "flac")
    lines = [f"this is line number {k} of the song" for k in range(int(seconds / 5))]
    gw = SimpleNamespace(aligner=SimpleNamespace(to_async=aligner), asr=SimpleNamespace(to_async=asr),
                         enabled={"aligner", "asr"}, settings=get_settings())

    from demucs.apply import BagOfModels
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(0)
    v4 = VocalSeparator(BagOfModels([HTDemucs(sources=["drums", "bass", "other", "vocals"],
                                              segment=Fraction(39, 5)).eval()]), "cpu")
    runs = {
        "lyrics": lambda: aligner.align(audio=audio, text=AlignLines(lines=lines, language="en")),
        "no_lyrics": lambda: transcribe_align.lyrics_from_audio(gw, audio, "en", review_rules(gw.settings)),
        "separation (configured)": lambda: asyncio.to_thread(aligner.separator.vocals_of_file, encoded,
                                                             max_seconds=3600),
        "separation (HTDemucs v4 widths)": lambda: asyncio.to_thread(v4.vocals_of_file, encoded, max_seconds=3600),
    }

    async def measure() -> dict[str, float]:  # one event loop: the services' schedulers live in it
        out = {}
        for name, run in runs.items():
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                await run()
                times.append(time.perf_counter() - t0)
            out[name] = statistics.median(times) / minutes
        return out

    out = asyncio.run(measure())
    return {"minutes": minutes, "per_minute_s": out, "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="local aligner checkpoint (default: tiny)")
    ap.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--modes", action="store_true", help="cost per minute of no-lyrics and separation")
    ap.add_argument("--minutes", type=float, default=1.0, help="song length for --modes")
    ap.add_argument("--modes-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.repeats)))
        return
    if args.modes_child:
        print(json.dumps(modes(args.minutes, args.repeats)))
        return
    env = {**os.environ, "QWEN_TORCH_THREADS": os.environ.get("QWEN_TORCH_THREADS", "1"), "OMP_NUM_THREADS": "1"}
    if args.model:
        env["QWEN_ALIGNER_MODEL"] = args.model
    else:
        env["QWEN_MODELS"] = "tiny"
    if args.modes:
        env.setdefault("QWEN_ALIGNER_SEPARATOR", "adefossez/HTDemucs")
        env.setdefault("QWEN_SERVICES", "aligner,asr")
        out = subprocess.run([sys.executable, __file__, "--modes-child", "--minutes", str(args.minutes),
                              "--repeats", str(args.repeats)], env=env, cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        per = r["per_minute_s"]
        print(f"{r['minutes']:.1f}-minute song, {r['threads']} torch thread(s), median of {args.repeats}:")
        for name, s in per.items():
            print(f"  {name:32s} {s:8.2f} s per minute of audio   ratio to plain alignment {s / per['lyrics']:6.2f}")
        return
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
