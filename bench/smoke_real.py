"""Smoke test for the first host with real weights: one request per enabled model, and what it cost.

For every service in QWEN_SERVICES (default: all six) a fresh child process creates the service class
in-process, exactly as `bentoml serve` does (every QWEN_* setting applies: device, dtype, backend, model
paths, HF cache), waits for its model, sends one request through the service's own API method and
reports:

    service | model | device | load s | peak memory | first audio s | tokens/s | result

* load s: the service's own load time (weights fetched/read, moved to the device, warm-up), as /health
  reports it. A first run that downloads from the hub includes the download.
* peak memory: CUDA — torch.cuda.max_memory_allocated on the service's GPU (this process's tensors);
  with a vLLM backend the model lives in vLLM's process, so the GPU's used memory (total - free) is
  shown instead. Elsewhere the process's peak RSS.
* first audio s (TTS): time from the streaming request to its first PCM bytes.
* tokens/s: new tokens / generation seconds (VL, diagram: the service's generate time; captioner: the
  request's wall time including the audio encoder; ASR: the transcript re-tokenized with the model's
  tokenizer, over the request's wall time).
* result: ok with a short detail, or FAIL with the error (the child's log tail is printed below).

Why in-process and not against a served gateway URL: the gateway cannot tell the load time and peak
memory of a model process, and a failing model must show its own traceback; the service classes,
engines, schedulers and settings are the production ones (the served tests cover the HTTP layer).
One process per model keeps each peak its own and one crash from hiding the others.

Inputs are synthetic unless given: --audio FILE (speech or a song, decoded like an upload), --lyrics
TEXT (the aligner's lines, '|' between lines), --image FILE (a picture or a process diagram).

    make smoke-real                                  # every enabled model, hub ids or QWEN_<SVC>_MODEL paths
    QWEN_SERVICES=tts,vl .venv/bin/python bench/smoke_real.py --max-tokens 32
    QWEN_MODELS=tiny .venv/bin/python bench/smoke_real.py   # offline rehearsal on the tiny checkpoints

Exit status 0 when every model answered, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("service", "model", "device", "load s", "peak memory", "first audio s", "tokens/s", "result")
TTS_TEXT = "The lighthouse keeper climbed the stairs and lit the lamp for the ships."
LYRICS = ["hello world", "sing along with me"]
VL_PROMPT = "Describe this image in one sentence."


# --- child: one service, one request -------------------------------------------------------------------


def service_class(key: str):
    """The BentoML service of `key`: the ModelService subclass in services/<key>/service.py whose key it is."""
    from services.runtime.serving.modelservice import ModelService

    module = importlib.import_module(f"services.{key}.service")
    for obj in vars(module).values():
        inner = getattr(obj, "inner", obj)
        if isinstance(inner, type) and issubclass(inner, ModelService) and getattr(inner, "key", None) == key:
            return obj
    raise LookupError(f"no model service with key {key!r} in services.{key}.service")


def synthetic_audio(seconds: float = 8.0, sr: int = 16000):
    """Tone phrases and pauses (a stand-in for singing): exercises the path, not the model's accuracy."""
    import numpy as np

    t = np.arange(int(seconds * sr)) / sr
    on = (t % 2.0) < 1.6
    out = np.where(on, 0.3 * np.sin(2 * np.pi * (220 + 55 * np.floor(t / 2.0)) * t), 0.0)
    return (out + 0.003 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)


def synthetic_image():
    """Three labelled boxes joined by arrows: a tiny process diagram (also fine as a generic picture)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (640, 240), "white")
    d = ImageDraw.Draw(img)
    for i, label in enumerate(("Request", "Review", "Approve")):
        x = 20 + i * 215
        d.rectangle([x, 80, x + 170, 160], outline="black", width=3)
        d.text((x + 40, 112), label, fill="black")
        if i < 2:
            d.line([x + 170, 120, x + 215, 120], fill="black", width=3)
            d.polygon([(x + 215, 120), (x + 205, 114), (x + 205, 126)], fill="black")
    return img


def load_inputs(args) -> dict:
    from services.runtime.codecs.audio import decode_audio
    from services.runtime.codecs.images import decode_image

    audio = decode_audio(Path(args.audio).read_bytes()).samples if args.audio else synthetic_audio()
    image = decode_image(Path(args.image).read_bytes()) if args.image else synthetic_image()
    lyrics = [s.strip() for s in args.lyrics.split("|") if s.strip()] if args.lyrics else LYRICS
    # Synthetic audio is tones, in which voice activity hears no speech (every ASR window would be skipped):
    # voice activity only plans the windows of a given recording.
    return {"audio": audio, "image": image, "lyrics": lyrics, "max_tokens": args.max_tokens,
            "vad": None if args.audio else False}


async def request_aligner(svc, inp) -> dict:
    from services.aligner.contract import AlignLines
    from services.runtime.edge import remote

    out = await remote.call("aligner", svc.align(audio=inp["audio"], text=AlignLines(lines=inp["lyrics"])))
    return {"detail": f"{len(out['segments'])} segments, {out['chunks']} pass(es)"}


async def request_asr(svc, inp) -> dict:
    from services.asr.contract import TranscribeOptions
    from services.runtime.edge import remote

    t0 = time.perf_counter()
    out = await remote.call("asr", svc.transcribe(audio=inp["audio"], options=TranscribeOptions(vad=inp["vad"])))
    wall = time.perf_counter() - t0
    row = {"detail": f"{len(out['text'])} chars, language {out['language'] or '?'}"}
    processor = getattr(svc.handle.get().model, "processor", None)
    if processor is not None and out["text"]:
        n = len(processor.tokenizer(out["text"], add_special_tokens=False)["input_ids"])
        row.update(tokens=n, tokens_per_s=n / wall)
    return row


async def request_tts(svc, inp) -> dict:
    from services.tts.contract import Utterance

    engine = svc.handle.get()
    voice = engine.voices[0].id
    t0 = time.perf_counter()
    first = None
    header, pcm = b"", 0
    async for chunk in svc.stream(utterance=Utterance(text=TTS_TEXT, voice=voice, language="english")):
        if b"\n" not in header:  # the header line ({"ok": true, ...} or the error) precedes the PCM
            header += chunk
            if b"\n" not in header:
                continue
            head, chunk = header.split(b"\n", 1)
            if not json.loads(head).get("ok"):
                raise RuntimeError(f"stream refused: {head.decode(errors='replace')}")
        if chunk and first is None:
            first = time.perf_counter() - t0
        pcm += len(chunk)
    wall = time.perf_counter() - t0
    seconds = pcm / 4 / engine.sample_rate  # float32 samples
    if first is None:
        raise RuntimeError("the stream ended without audio")
    return {"first_audio_s": first, "detail": f"{seconds:.1f} s audio in {wall:.1f} s ({voice})"}


async def request_captioner(svc, inp) -> dict:
    from services.captioner.contract import GenParams
    from services.runtime.edge import remote
    from services.runtime.serving.generation import Completion

    params = GenParams(max_tokens=inp["max_tokens"], temperature=0.0, top_p=1.0, top_k=-1)
    t0 = time.perf_counter()
    out = await remote.call("captioner", svc.complete(audio=inp["audio"], params=params), into=Completion)
    wall = time.perf_counter() - t0
    n = out.usage.completion_tokens
    return {"tokens": n, "tokens_per_s": n / wall, "detail": f"{n} tokens, {out.finish_reason}"}


async def _vision(svc, key: str, inp, prompt: str) -> dict:
    from services.runtime.codecs.images import to_wire
    from services.runtime.edge import remote
    from services.vl.contract import VisionItem, VisionResults

    item = VisionItem.prompt(prompt, [to_wire(inp["image"])], max_new_tokens=inp["max_tokens"])
    (out,) = (await remote.call(key, svc.generate(requests=[item]), into=VisionResults)).results
    n, dt = out.usage.completion_tokens, out.generate_seconds
    detail = f"{n} tokens, {out.usage.prompt_tokens} prompt, {out.finish_reason}"
    if out.adapter:
        detail += f", adapter {out.adapter}"
    return {"tokens": n, "tokens_per_s": n / dt if dt > 0 else None, "detail": detail}


async def request_vl(svc, inp) -> dict:
    return await _vision(svc, "vl", inp, VL_PROMPT)


async def request_diagram(svc, inp) -> dict:
    return await _vision(svc, "diagram", inp, svc.cfg.prompt)


REQUESTS = {"aligner": request_aligner, "asr": request_asr, "tts": request_tts, "captioner": request_captioner,
            "vl": request_vl, "diagram": request_diagram}


def peak_memory(device: str | None, backend: str | None) -> dict:
    if device and device.startswith("cuda"):
        import torch

        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if backend == "vllm":  # the weights live in vLLM's process (or its workers)
            free, total = torch.cuda.mem_get_info(index)
            return {"kind": f"gpu {index} used", "bytes": total - free}
        return {"kind": f"gpu {index}", "bytes": torch.cuda.max_memory_allocated(index)}
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "rss", "bytes": rss if sys.platform == "darwin" else rss * 1024}  # Linux: KiB


class LoadFailed(Exception):
    """The model did not become ready: the handle's own error (already "Type: message")."""


def run_one(key: str, args) -> dict:
    row: dict = {"service": key, "ok": False}
    svc = None
    try:
        inputs = load_inputs(args)
        cls = service_class(key)
        made = cls()
        svc = made() if callable(made) and not hasattr(made, "handle") else made
        row["model"] = svc.model_id
        if not svc.handle.wait(args.timeout):
            h = svc.handle
            raise LoadFailed(h.error or f"still {h.state} ({h.phase}) after {args.timeout:.0f} s")
        row.update(device=svc.handle.device, dtype=svc.handle.dtype, load_s=svc.handle.load_seconds,
                   backend=getattr(svc.handle.get(), "backend", None))
        row.update(asyncio.run(REQUESTS[key](svc, inputs)))
        row["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - reported in the table
        row["error"] = str(exc) if isinstance(exc, LoadFailed) else f"{type(exc).__name__}: {exc}"
    if svc is not None and row.get("device") is None:
        row["device"] = svc.handle.device
    try:
        row["peak_memory"] = peak_memory(row.get("device"), row.get("backend"))
    except Exception as exc:  # noqa: BLE001
        row["peak_memory"] = {"kind": f"unknown ({type(exc).__name__})", "bytes": None}
    return row


# --- parent: one child per service, the table ----------------------------------------------------------


def enabled_services() -> list[str]:
    from services.runtime.core.settings import SERVICE_KEYS, get_settings

    return list(get_settings().services or SERVICE_KEYS)


def run_child(key: str, args, log_dir: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", key, "--timeout", str(args.timeout),
           "--max-tokens", str(args.max_tokens)]
    for opt in ("audio", "image", "lyrics"):
        if getattr(args, opt):
            cmd += [f"--{opt}", getattr(args, opt)]
    log = log_dir / f"{key}.log"
    t0 = time.perf_counter()
    with open(log, "wb") as err:
        try:
            out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, timeout=args.timeout + 600)
            lines = out.stdout.decode(errors="replace").strip().splitlines()
            row = json.loads(lines[-1]) if out.returncode == 0 and lines else {
                "service": key, "ok": False, "error": f"child exited with status {out.returncode}"}
        except subprocess.TimeoutExpired:
            row = {"service": key, "ok": False, "error": f"no answer in {args.timeout + 600:.0f} s"}
    row["wall_s"] = time.perf_counter() - t0
    row["log"] = str(log)
    return row


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def table(rows: list[dict]) -> str:
    cells = []
    for r in rows:
        mem = r.get("peak_memory") or {}
        result = ("ok" + (f" ({r['detail']})" if r.get("detail") else "")) if r.get("ok") else f"FAIL {r.get('error')}"
        cells.append((
            r["service"], str(r.get("model") or "-"), str(r.get("device") or "-"),
            "-" if r.get("load_s") is None else f"{r['load_s']:.1f}",
            "-" if mem.get("bytes") is None else f"{_gib(mem['bytes'])} {mem['kind']}",
            "-" if r.get("first_audio_s") is None else f"{r['first_audio_s']:.3f}",
            "-" if r.get("tokens_per_s") is None else f"{r['tokens_per_s']:.1f}",
            result,
        ))
    widths = [max(len(c[i]) for c in [COLUMNS, *cells]) for i in range(len(COLUMNS))]
    line = lambda c: " | ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip()  # noqa: E731
    return "\n".join([line(COLUMNS), "-+-".join("-" * w for w in widths), *map(line, cells)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", default=None, help="comma list (default: QWEN_SERVICES, else all six)")
    ap.add_argument("--audio", default=None, help="audio file for asr, aligner and captioner")
    ap.add_argument("--lyrics", default=None, help="aligner lines, '|' between lines")
    ap.add_argument("--image", default=None, help="image file for vl and diagram")
    ap.add_argument("--max-tokens", type=int, default=64, help="new tokens per VL/diagram/captioner request")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds a model may take to load")
    ap.add_argument("--log-dir", default=None, help="where the children's logs go (default: a temp folder)")
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON lines")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, args), default=str))
        return 0

    import tempfile

    from services.runtime.core.settings import SERVICE_KEYS

    keys = [k.strip() for k in args.services.split(",") if k.strip()] if args.services else enabled_services()
    unknown = [k for k in keys if k not in SERVICE_KEYS]
    if unknown:
        ap.error(f"unknown service(s) {unknown}; known: {', '.join(SERVICE_KEYS)}")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="smoke-real-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"smoke-real: {', '.join(keys)} (QWEN_MODELS={os.environ.get('QWEN_MODELS', 'hub')}; logs in {log_dir})",
          flush=True)
    rows = []
    for key in keys:
        rows.append(run_child(key, args, log_dir))
        r = rows[-1]
        print(f"  {key}: {'ok' if r.get('ok') else 'FAIL'} in {r['wall_s']:.0f} s", flush=True)
    print()
    print(table(rows))
    for r in rows:
        if not r.get("ok"):
            tail = Path(r["log"]).read_text(errors="replace").splitlines()[-20:]
            print(f"\n--- {r['service']}: last lines of {r['log']}\n" + "\n".join(tail))
    if args.json:
        for r in rows:
            print(json.dumps(r, default=str))
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
