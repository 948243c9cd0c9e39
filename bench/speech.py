"""Speech under load (issue 13): TTS first audio and throughput at concurrency 1, 4, 8; ASR fairness.

Each service runs in a fresh process (QWEN_MODELS=tiny, QWEN_TORCH_THREADS=1): its class is created
in-process, the model handle awaited, and its API methods called directly with asyncio.

1. TTS `stream` first audio: time from calling `TTS.stream` to the first PCM record after the header line
   (read as the gateway reads it: remote.open_stream, contract.records), for a 140-character text with
   QWEN_TTS_MAX_FRAMES=40 (tiny never emits EOS: every stream is exactly 40 frames = 3.2 s of audio) and
   QWEN_TTS_MAX_BATCH_SIZE as set (default 8 on CPU).
   `c` streams start together; each round runs c = 1, 4, 8 in turn, so drift in machine load hits all
   alike. p50 and max over every stream of every round at that concurrency.
2. TTS throughput from the same rounds: audio seconds streamed per wall-clock second, c=8 vs c=1.
3. ASR fairness: a 5 s clip transcribed alone vs while a 20-minute file runs (started first: its first
   batch running, the rest of its 120 s windows queued). QWEN_ASR_MAX_NEW_TOKENS=16 and
   QWEN_ASR_MAX_BATCH_SIZE=4 (as the served test session; the CPU default is 1; the environment's value
   wins); alone and loaded alternate per round, medians are compared. Then the cost of voice activity
   (Silero VAD, verbose_json's no_speech_prob) per minute of audio, beside the ASR's.

Targets (issue 13, 2-core machine): first-audio p50(c=8) <= 2x p50(c=1), max(c=8) <= 4x p50(c=1); TTS
throughput at c=8 >= 4x c=1; the short ASR under the long one <= 3x its time alone. Absolute times are
printed for context; the claims are the ratios, measured in the same run. The last line is JSON.

    .venv/bin/python bench/speech.py [--quick] [--rounds N]
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

from bench.inprocess import service  # noqa: E402

TTS_FRAMES = 40  # QWEN_TTS_MAX_FRAMES for the child: 40 x 80 ms = 3.2 s of audio per stream
CONCURRENCY = (1, 4, 8)
ASR_TOKENS = 16
ASR_BATCH = 4
LONG_SECONDS, SHORT_SECONDS = 1200.0, 5.0

TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening, lit the great lamp, and watched "
    "ships pass safely through the narrow channel."
)

TARGETS = {  # figure: (comparison, bound)
    "first_audio_p50_ratio": ("<=", 2.0),
    "first_audio_max_ratio": ("<=", 4.0),
    "throughput_ratio": (">=", 4.0),
    "asr_short_ratio": ("<=", 3.0),
}


def child_tts(rounds: int) -> dict:
    from services.runtime.edge.remote import open_stream
    from services.tts.contract import Finish, StreamHeader, Utterance, records
    from services.tts.service import TTS

    tts = service(TTS)
    loop = tts.handle.get().loop
    utterance = Utterance(text=TEXT, voice="ryan", language="english")

    async def stream_once() -> tuple[float, float]:
        """(seconds to the first PCM record, seconds of audio streamed)."""
        t0 = time.perf_counter()
        header, body = await open_stream("tts", tts.stream(utterance=utterance), into=StreamHeader)
        first, nbytes, finish = None, 0, None
        async for rec in records(body):
            if isinstance(rec, Finish):
                finish = rec
            elif rec:
                if first is None:
                    first = time.perf_counter() - t0
                nbytes += len(rec)
        assert first is not None and finish is not None, (first, finish)
        return first, nbytes / 4 / header.sample_rate

    async def run() -> dict:
        await stream_once()  # warm: first calls pay for lazy imports and kernel selection
        by_c: dict[int, dict] = {c: {"first_s": [], "audio_s": 0.0, "wall_s": 0.0, "steps": 0, "rows": 0}
                                 for c in CONCURRENCY}
        for _ in range(rounds):
            for c in CONCURRENCY:
                got = by_c[c]
                steps, rows = loop.steps, loop.step_rows
                t0 = time.perf_counter()
                outs = await asyncio.gather(*(stream_once() for _ in range(c)))
                got["wall_s"] += time.perf_counter() - t0
                got["first_s"] += [f for f, _ in outs]
                got["audio_s"] += sum(a for _, a in outs)
                got["steps"] += loop.steps - steps
                got["rows"] += loop.step_rows - rows
        out = {}
        for c, got in by_c.items():
            out[str(c)] = {
                "first_p50_s": statistics.median(got["first_s"]), "first_max_s": max(got["first_s"]),
                "first_s": got["first_s"], "audio_per_s": got["audio_s"] / got["wall_s"],
                "stream_audio_s": got["audio_s"] / (c * rounds), "mean_rows": got["rows"] / max(1, got["steps"]),
            }
        return {"by_c": out, "device": tts.handle.device, "max_batch_size": loop.max_batch_size}

    return asyncio.run(run())


def child_asr(rounds: int) -> dict:
    import numpy as np

    from tests.audio_fixtures import song

    from services.asr.contract import TranscribeOptions, Transcription
    from services.asr.engine import SAMPLE_RATE
    from services.asr.service import ASR
    from services.runtime.serving import vad

    asr = service(ASR)
    sched = asr.scheduler
    batches: list[list[float]] = []  # seconds of audio of each item of each batch the scheduler formed
    run_batch = sched._run_batch

    def recording(items):
        batches.append([round(len(i.audio) / SAMPLE_RATE, 1) for i in items])
        return run_batch(items)

    sched._run_batch = recording
    # Built in 10-second blocks, each its own tone phrases and silences (quiet points to window at).
    long = np.concatenate([song(10.0, sr=SAMPLE_RATE, phrase=4.0, gap=1.0, seed=i)
                           for i in range(int(LONG_SECONDS // 10))])
    short = song(SHORT_SECONDS, sr=SAMPLE_RATE, phrase=2.0, gap=0.5, seed=99)
    # Tone audio: voice activity would skip every window (it hears no speech); this measures the decoder.
    options = TranscribeOptions(language="en", vad=False)

    async def transcribe(audio) -> tuple[float, Transcription]:
        t0 = time.perf_counter()
        out = Transcription.model_validate(await asr.transcribe(audio=audio, options=options))
        return time.perf_counter() - t0, out

    async def run() -> dict:
        await transcribe(short)  # warm
        alone, loaded, long_s, short_batches = [], [], [], []
        for _ in range(rounds):
            alone.append((await transcribe(short))[0])
            batches.clear()
            long_task = asyncio.ensure_future(transcribe(long))
            while not (sched._running and sched.queue_depth):  # its first batch runs, the rest queue
                await asyncio.sleep(0.005)
            queued = sched.queue_depth
            took, _ = await transcribe(short)
            loaded.append(took)
            long_took, long_out = await long_task
            long_s.append(long_took)
            upto = next(i for i, b in enumerate(batches) if SHORT_SECONDS in b)  # the short clip's batch
            short_batches.append({"queued_windows_at_start": queued, "batches": batches[: upto + 1]})
        # Voice activity (verbose_json's no_speech_prob) over the same 20-minute file, alone, one thread.
        t0 = time.perf_counter()
        vad.voice_activity().speech_probs(long)
        vad_s = time.perf_counter() - t0
        return {"alone_s": alone, "loaded_s": loaded, "long_s": long_s, "windows": len(long_out.spans),
                "batch_size": sched.max_batch_size, "batch_wait_ms": sched.batch_wait * 1000,
                "short_batches": short_batches, "device": asr.handle.device, "vad_s": vad_s}

    return asyncio.run(run())


def _run_child(which: str, rounds: int, env: dict) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", which, "--rounds", str(rounds)],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    return res


def _passes(name: str, value: float) -> bool:
    op, bound = TARGETS[name]
    return value <= bound if op == "<=" else value >= bound


def _ratio_line(label: str, name: str, value: float) -> str:
    op, bound = TARGETS[name]
    return f"   {label} = {value:.2f}   target {op} {bound:g}: {'PASS' if _passes(name, value) else 'FAIL'}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer rounds: a smoke run, not figures to quote")
    ap.add_argument("--rounds", type=int, default=None, help="TTS rounds (default 8, quick 2); ASR: 3, quick 1")
    ap.add_argument("--child", choices=("tts", "asr"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn = child_tts if args.child == "tts" else child_asr
        print(json.dumps(fn(args.rounds)))
        return
    tts_rounds = args.rounds or (2 if args.quick else 8)
    asr_rounds = 1 if args.quick else 3
    env = {**os.environ, "QWEN_MODELS": "tiny", "OMP_NUM_THREADS": "1", "QWEN_LOG_LEVEL": "WARNING",
           "QWEN_TORCH_THREADS": os.environ.get("QWEN_TORCH_THREADS", "1"),
           "QWEN_TTS_MAX_FRAMES": str(TTS_FRAMES),
           "QWEN_ASR_MAX_NEW_TOKENS": str(ASR_TOKENS),
           "QWEN_ASR_MAX_BATCH_SIZE": os.environ.get("QWEN_ASR_MAX_BATCH_SIZE", str(ASR_BATCH))}
    t0 = time.perf_counter()
    tts = _run_child("tts", tts_rounds, env)
    asr = _run_child("asr", asr_rounds, env)

    by_c = tts["by_c"]
    one, eight = by_c["1"], by_c["8"]
    fig = {
        "first_audio_p50_ratio": eight["first_p50_s"] / one["first_p50_s"],
        "first_audio_max_ratio": eight["first_max_s"] / one["first_p50_s"],
        "throughput_ratio": eight["audio_per_s"] / one["audio_per_s"],
        "asr_short_ratio": statistics.median(asr["loaded_s"]) / statistics.median(asr["alone_s"]),
    }
    print(f"tiny models, torch threads {env['QWEN_TORCH_THREADS']}, {os.cpu_count()} cores, device {tts['device']}"
          f"{', QUICK (smoke run, not figures to quote)' if args.quick else ''}")
    print()
    print(f"1. TTS streaming first audio ({len(TEXT)}-char text, QWEN_TTS_MAX_FRAMES={TTS_FRAMES}: "
          f"{one['stream_audio_s']:.1f} s of audio per stream, QWEN_TTS_MAX_BATCH_SIZE={tts['max_batch_size']}, "
          f"{tts_rounds} rounds)")
    for c in CONCURRENCY:
        r = by_c[str(c)]
        print(f"   c={c}: p50 {r['first_p50_s'] * 1000:7.0f} ms   max {r['first_max_s'] * 1000:7.0f} ms   "
              f"({len(r['first_s'])} streams; mean rows per talker step {r['mean_rows']:.1f})")
    print(_ratio_line("p50(c=8) / p50(c=1)", "first_audio_p50_ratio", fig["first_audio_p50_ratio"]))
    print(_ratio_line("max(c=8) / p50(c=1)", "first_audio_max_ratio", fig["first_audio_max_ratio"]))
    print()
    print("2. TTS throughput, streamed: audio seconds per wall-clock second (same rounds)")
    for c in CONCURRENCY:
        print(f"   c={c}: {by_c[str(c)]['audio_per_s']:6.2f}")
    print(_ratio_line("c=8 / c=1", "throughput_ratio", fig["throughput_ratio"]))
    print()
    alone, loaded = statistics.median(asr["alone_s"]), statistics.median(asr["loaded_s"])
    print(f"3. ASR fairness: a {SHORT_SECONDS:.0f} s clip alone vs behind a {LONG_SECONDS / 60:.0f}-minute file "
          f"({asr['windows']} windows) started first; QWEN_ASR_MAX_NEW_TOKENS={ASR_TOKENS}, "
          f"QWEN_ASR_MAX_BATCH_SIZE={asr['batch_size']} (the served session's 4 unless set; CPU default 1), "
          f"batch wait {asr['batch_wait_ms']:.0f} ms, {asr_rounds} round(s), medians")
    print(f"   alone {alone:6.2f} s   under the long one {loaded:6.2f} s   "
          f"(long file {statistics.median(asr['long_s']):.1f} s)")
    sb = asr["short_batches"][0]
    print(f"   batches up to the short clip's, seconds of audio per item (round 1; {sb['queued_windows_at_start']} "
          f"windows queued when it arrived): {sb['batches']}")
    print(_ratio_line("under / alone", "asr_short_ratio", fig["asr_short_ratio"]))
    minutes = LONG_SECONDS / 60
    print(f"   voice activity (window planning, no_speech_prob): {asr['vad_s'] / minutes:.2f} s per minute of audio "
          f"on one thread, beside the tiny ASR's {statistics.median(asr['long_s']) / minutes:.2f} s per minute "
          f"(real-time factors {asr['vad_s'] / LONG_SECONDS:.4f} and {statistics.median(asr['long_s']) / LONG_SECONDS:.4f})")
    print()
    print(f"wall time {time.perf_counter() - t0:.0f} s (tts process {tts['wall_s']:.0f} s, "
          f"asr process {asr['wall_s']:.0f} s, each including model load)")
    print(json.dumps({
        **{k: round(v, 3) for k, v in fig.items()},
        "pass": {k: _passes(k, v) for k, v in fig.items()},
        "tts": {c: {k: round(v, 4) for k, v in r.items() if k != "first_s"} for c, r in by_c.items()},
        "tts_frames": TTS_FRAMES, "tts_max_batch_size": tts["max_batch_size"], "tts_rounds": tts_rounds,
        "asr": {"alone_s": round(alone, 3), "loaded_s": round(loaded, 3),
                "long_s": round(statistics.median(asr["long_s"]), 2), "windows": asr["windows"],
                "max_new_tokens": ASR_TOKENS, "max_batch_size": asr["batch_size"], "rounds": asr_rounds,
                "vad_s_per_minute": round(asr["vad_s"] / (LONG_SECONDS / 60), 3)},
        "quick": args.quick,
    }))


if __name__ == "__main__":
    main()
