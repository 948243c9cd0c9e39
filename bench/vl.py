"""VL micro-batching through the service's own code path: /generate throughput at concurrency 16 vs 1.

Each dtype runs in a fresh process: the VL service class is created in-process (one model replica,
QWEN_VL_MAX_CONCURRENCY=1, QWEN_VL_MAX_BATCH_SIZE=4, QWEN_VL_BATCH_WAIT_MS=20, a queue of 64 so nothing
is refused), its model handle awaited, and its `generate` API called directly with asyncio:

  (a) served gain   = throughput of 16 single-item requests sent at once (asyncio.gather) / the same 16
                      one at a time;
  (b) engine gain   = `engine.generate_batch` over the same 16 items in chunks of the batch size / one at
                      a time (what the model itself gains from batching: no scheduler, no asyncio);
      served gain / engine gain = the serving layer's share (1.0: it loses nothing over ideal batching);
  (c) p50/p99 latency of the requests of the concurrent run.
Batch size 8 is then measured in the same process by setting the scheduler's max_batch_size (what
QWEN_VL_MAX_BATCH_SIZE sets at load). Per served mode, the engine time inside the batches the scheduler
formed is recorded too, so "outside" = what the serving layer adds (batch window, image decoding, thread
hops), from the same run.

Greedy decoding, max_new_tokens=24, 16 different prompts and images. Rounds alternate the modes; medians
are compared. On a shared machine wall time carries other processes' load: process CPU time (one torch
thread) is printed beside it, and the ratios both ways.

Checkpoint: by default a mid-size RANDOM Qwen2.5-VL is built into a temp dir (deleted after): the tiny
checkpoint's tokenizer, processor, chat template and configs, the text model scaled to hidden 1024 x 4
layers (MLP 5504; the real head_dim 128, mrope sections [16, 24, 24] and 2 KV heads), a wider vision tower
whose merger projects into the text width; seeded random weights (services/tiny/common.init_model). So
model compute, not Python overhead, dominates a decode step, as with the real 3B. Its lm_head is untied
with the rows of the two EOS tokens zeroed, so every request decodes exactly max_new_tokens (equal work in
every mode). `--size tiny` uses the tiny checkpoint (QWEN_MODELS=tiny); `--model PATH` any local
Qwen2.5-VL folder.

Two dtypes by default (QWEN_VL_DTYPE): float32, the service's CPU default, and bfloat16, which on CPUs
with AMX (this one) makes a decode step over several rows cost about one row, as on a GPU; in float32 a
4-row step costs ~2 rows here (MKL sgemm for small M), which caps what batching can gain on CPU.

    .venv/bin/python bench/vl.py [--size mid|tiny] [--model PATH] [--dtypes float32,bfloat16]
                                 [--batch-sizes 4,8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_REQUESTS = 16
MAX_NEW = 24
SEED = 4242

# Mid-size text model: the real 3B's head_dim (128), mrope sections ([16, 24, 24], sum = head_dim / 2)
# and KV-head count (2), at half its width and 4 of its 36 layers; the vision tower widened so the
# merger still projects into the text width (out_hidden_size = text hidden_size).
MID = {
    "text": dict(hidden_size=1024, intermediate_size=5504, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=2, max_window_layers=4, rope_mrope_section=[16, 24, 24]),
    "vision": dict(depth=4, hidden_size=256, intermediate_size=512, num_heads=4, fullatt_block_indexes=[1, 3]),
}

PROMPTS = [
    "Describe this image in one sentence.",
    "What colour is the large shape on the left?",
    "List the objects you can see.",
    "Is there any text in the picture?",
    "What is in the picture?",
    "Give the picture a short title.",
    "How many distinct regions are there?",
    "describe this image",
    "Which part of the image is brightest?",
    "Write a caption for this photo.",
    "What is the dominant colour?",
    "Does the image look like a diagram or a photo?",
    "Summarise the scene.",
    "What might this picture be used for?",
    "Name one thing at the top of the image.",
    "Is the image noisy?",
]
# (height, width): 4..16 image tokens each through the tiny processor's pixel budget.
SIZES = [(64, 64), (120, 90), (200, 300), (480, 640), (56, 112), (300, 300), (1000, 800), (90, 200)] * 2


# -- checkpoint -----------------------------------------------------------------------------------------
def build_mid(out: Path, tiny: Path) -> dict:
    """A random Qwen2.5-VL of MID dims in `out`, from the tiny folder's tokenizer/processor/configs."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from services.tiny.common import init_model

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for f in tiny.iterdir():  # tokenizer, chat template, preprocessor config (not weights/config)
        if f.is_file() and not f.name.startswith(".") and f.name not in (
                "config.json", "generation_config.json", "model.safetensors"):
            shutil.copy2(f, out / f.name)
    cfg = json.loads((tiny / "config.json").read_text())
    text, vision = cfg["text_config"], cfg["vision_config"]
    t = dict(MID["text"])
    section = t.pop("rope_mrope_section")
    text.update(t)
    text["rope_scaling"] = {**text["rope_scaling"], "mrope_section": section}
    text["layer_types"] = ["full_attention"] * text["num_hidden_layers"]
    # Untied lm_head (as the 7B; the 3B ties): lets the EOS rows be zeroed without touching the inputs.
    text["tie_word_embeddings"] = False
    cfg["tie_word_embeddings"] = False
    vision.update(MID["vision"], out_hidden_size=text["hidden_size"])
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    assert sum(section) == head_dim // 2, (section, head_dim)
    assert vision["out_hidden_size"] == text["hidden_size"]
    for k in ("architectures", "transformers_version", "dtype"):
        cfg.pop(k, None)
    config = Qwen2_5_VLConfig(**cfg)
    model = init_model(Qwen2_5_VLForConditionalGeneration, config, SEED)
    gen = GenerationConfig.from_pretrained(tiny)
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    with torch.no_grad():
        for e in eos:  # logit 0 for EOS vs a positive max over the other rows: never chosen
            model.lm_head.weight[e].zero_()
    model.generation_config = gen
    model.save_pretrained(out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    n_text = sum(p.numel() for name, p in model.named_parameters() if ".visual." not in f".{name}")
    return {"params": n, "text_params": n_text, "mb": n * 4 / 2**20, "text": {k: text[k] for k in MID["text"]
            if k in text}, "vision": {k: vision[k] for k in ("depth", "hidden_size", "num_heads")}}


# -- child: one service process ------------------------------------------------------------------------
def make_requests():
    """The 16 /generate items, as the gateway sends them (services/vl/contract.py)."""
    import numpy as np
    from PIL import Image

    from services.runtime.codecs.images import to_wire
    from services.vl.contract import VisionItem

    def wire(a):
        return to_wire(Image.fromarray(a))

    rng = np.random.default_rng(SEED)
    reqs = []
    for i, (prompt, (h, w)) in enumerate(zip(PROMPTS, SIZES)):
        # Smooth gradient + noise: different content per image.
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * (i + 1)) % 256, (yy * (7 - i % 5)) % 256, ((xx + yy) * 3) % 256], -1)
        img = np.clip(base + rng.integers(-30, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        reqs.append(VisionItem.prompt(prompt, [wire(img)], max_new_tokens=MAX_NEW))
    return reqs


def child(repeats: int, batch_sizes: list[int]) -> dict:
    from services.vl.engine import VLItem
    from services.vl.service import VL

    svc = VL()
    vl = svc() if callable(svc) and not hasattr(svc, "handle") else svc
    if not vl.handle.wait(900):
        raise SystemExit(f"model failed: {vl.handle.error}")
    engine = vl.handle.get()
    configured = vl.scheduler.max_batch_size  # from QWEN_VL_MAX_BATCH_SIZE
    batches: list[tuple[int, float, float]] = []
    run_batch = vl.scheduler._run_batch

    def counting(items):  # each batch the scheduler formed: size, engine wall and CPU time (its thread)
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return run_batch(items)
        finally:
            batches.append((len(items), time.perf_counter() - t0, time.thread_time() - c0))

    vl.scheduler._run_batch = counting
    reqs = make_requests()
    items = [VLItem.decode(r) for r in reqs]

    async def one(req) -> tuple[float, dict]:
        t0 = time.perf_counter()
        out = await vl.generate(requests=[req])
        assert "results" in out, out
        return time.perf_counter() - t0, out["results"][0]

    async def served(concurrent: bool) -> dict:
        batches.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        if concurrent:
            res = await asyncio.gather(*(one(r) for r in reqs))
        else:
            res = [await one(r) for r in reqs]
        return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "lat": [r[0] for r in res],
                "tokens": [r[1]["usage"]["completion_tokens"] for r in res],
                "prompt_tokens": [r[1]["usage"]["prompt_tokens"] for r in res],
                "batches": [b[0] for b in batches], "batch_wall": sum(b[1] for b in batches),
                "batch_cpu": sum(b[2] for b in batches)}

    def engine_run(bs: int) -> dict:  # the same 16 items, in chunks of bs (1: one at a time), no scheduler
        t0, c0 = time.perf_counter(), time.thread_time()
        for i in range(0, len(items), bs):
            engine.generate_batch(items[i:i + bs])
        return {"wall": time.perf_counter() - t0, "cpu": time.thread_time() - c0}

    async def run() -> dict:
        # Warm-up: the largest batch shape once, short (allocator, first-call costs).
        vl.scheduler.max_batch_size = max(batch_sizes)
        await asyncio.gather(*(one(r.model_copy(update={"max_new_tokens": 2})) for r in reqs[:max(batch_sizes)]))
        vl.scheduler.max_batch_size = configured
        runs: dict = {"served_c1": [], "engine_1": []}
        for _ in range(repeats):  # rounds: every mode once, so drift in machine load hits all alike
            runs["served_c1"].append(await served(False))
            runs["engine_1"].append(engine_run(1))
            for bs in batch_sizes:
                # The scheduler reads max_batch_size at each dispatch (_load sets it from the settings).
                vl.scheduler.max_batch_size = bs
                runs.setdefault(f"served_c16_b{bs}", []).append(await served(True))
                vl.scheduler.max_batch_size = configured
                runs.setdefault(f"engine_b{bs}", []).append(engine_run(bs))
        tokens = sorted({t for k, rs in runs.items() if k.startswith("served") for r in rs for t in r["tokens"]})
        prompt = runs["served_c1"][0]["prompt_tokens"]
        for rs in runs.values():
            for r in rs:
                for k in ("tokens", "prompt_tokens"):
                    r.pop(k, None)
        return {"device": vl.handle.device, "dtype": vl.handle.dtype, "configured_batch_size": configured,
                "batch_sizes": batch_sizes, "tokens": tokens, "prompt_tokens": [min(prompt), max(prompt)],
                "runs": runs}

    return asyncio.run(run())


def _run_child(env: dict, repeats: int, batch_sizes: list[int]) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(repeats),
                          "--batch-sizes", ",".join(map(str, batch_sizes))],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-4000:])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    return res


def _med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _verdict(value: float, goal: float) -> str:
    return "met" if value >= goal else "NOT met"


def report(r: dict) -> None:
    import numpy as np

    runs = r["runs"]
    print(f"  {'mode':34s} {'wall s':>7s} {'req/s':>6s} {'cpu s':>7s}  batches formed: engine wall s in them / outside")
    rows = [("served_c1", "served, 1 request at a time")]
    for bs in r["batch_sizes"]:
        env_note = " (env)" if bs == r["configured_batch_size"] else ""
        rows.append((f"served_c16_b{bs}", f"served, 16 at once, batch {bs}{env_note}"))
    rows.append(("engine_1", "engine, 1 item at a time"))
    rows += [(f"engine_b{bs}", f"engine, chunks of {bs}") for bs in r["batch_sizes"]]
    for key, name in rows:
        rs = runs[key]
        wall, cpu = _med(rs, "wall"), _med(rs, "cpu")
        extra = ""
        if key.startswith("served"):
            b = rs[-1]["batches"]
            shown = f"{len(b)} x [1]" if set(b) == {1} else str(b)
            inside = _med(rs, "batch_wall")
            outside = statistics.median(x["wall"] - x["batch_wall"] for x in rs)
            extra = f"  {shown}: {inside:.2f} / {outside:.2f} ({outside / wall:.1%})"
        print(f"  {name:34s} {wall:7.2f} {N_REQUESTS / wall:6.2f} {cpu:7.2f}{extra}")
    c1, e1 = runs["served_c1"], runs["engine_1"]
    for bs in r["batch_sizes"]:
        c16, eb = runs[f"served_c16_b{bs}"], runs[f"engine_b{bs}"]
        served, eng = _med(c1, "wall") / _med(c16, "wall"), _med(e1, "wall") / _med(eb, "wall")
        served_cpu, eng_cpu = _med(c1, "cpu") / _med(c16, "cpu"), _med(e1, "cpu") / _med(eb, "cpu")
        share, share_cpu = served / eng, served_cpu / eng_cpu
        lat = [x for run in c16 for x in run["lat"]]
        lat1 = [x for run in c1 for x in run["lat"]]
        per = ", ".join(f"{a['wall'] / b['wall']:.2f}" for a, b in zip(c1, c16))
        print(f"  batch {bs}: (a) served gain c16/c1 throughput = {served:.2f} by wall (per round {per}), "
              f"{served_cpu:.2f} by CPU time  -- goal >= 3: {_verdict(served, 3)} / {_verdict(served_cpu, 3)}")
        print(f"           (b) engine gain batched/1-at-a-time  = {eng:.2f} by wall, {eng_cpu:.2f} by CPU time")
        print(f"               served gain / engine gain       = {share:.2f} by wall, {share_cpu:.2f} by CPU time"
              f"  -- goal >= 0.8: {_verdict(share, 0.8)} / {_verdict(share_cpu, 0.8)}")
        print(f"           (c) latency at c16: p50 {np.percentile(lat, 50):.2f} s, p99 {np.percentile(lat, 99):.2f} s "
              f"({len(lat)} requests; 1 at a time: p50 {np.percentile(lat1, 50):.2f} s)")
    engine_runs = [x for k, rs in runs.items() if k.startswith("engine") for x in rs]
    avail = sum(x["cpu"] for x in engine_runs) / sum(x["wall"] for x in engine_runs)
    print(f"  CPU this process got during the engine runs: {avail:.0%} of one core (~100%: an idle machine)."
          + ("" if avail > 0.9 else " The machine is loaded: the wall ratios carry other processes' load, the "
             "CPU-time ratios much less so."))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=("mid", "tiny"), default="mid",
                    help="mid: build a mid-size random Qwen2.5-VL into a temp dir (default); tiny: QWEN_MODELS=tiny")
    ap.add_argument("--model", default=None, help="a local Qwen2.5-VL folder instead (overrides --size)")
    ap.add_argument("--batch-sizes", default="4,8", help="QWEN_VL_MAX_BATCH_SIZE values (the first via the env)")
    ap.add_argument("--dtypes", default="float32,bfloat16",
                    help="QWEN_VL_DTYPE values, one process each (float32: the service's CPU default)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    batch_sizes = [int(x) for x in args.batch_sizes.split(",") if x]
    if args.child:
        print(json.dumps(child(args.repeats, batch_sizes)))
        return

    t_start = time.perf_counter()
    threads = os.environ.get("QWEN_TORCH_THREADS", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "QWEN_TORCH_THREADS": threads, "QWEN_LOG_LEVEL": "WARNING",
           "QWEN_VL_MAX_CONCURRENCY": "1", "QWEN_VL_MAX_QUEUE": "64", "QWEN_VL_BATCH_WAIT_MS": "20",
           "QWEN_VL_MAX_BATCH_SIZE": str(batch_sizes[0])}
    tmp = None
    try:
        if args.model:
            env.pop("QWEN_MODELS", None)
            env["QWEN_VL_MODEL"] = str(Path(args.model).resolve())
            label = f"local checkpoint {args.model}"
        elif args.size == "tiny":
            env["QWEN_MODELS"] = "tiny"
            label = "tiny (QWEN_MODELS=tiny: text hidden 64 x 2 layers, vocab 640)"
        else:
            from services import tiny

            t0 = time.perf_counter()
            tiny_dir = tiny.ensure("vl")
            tmp = Path(tempfile.mkdtemp(prefix="qwen-vl-bench-"))
            info = build_mid(tmp, tiny_dir)
            env.pop("QWEN_MODELS", None)
            env["QWEN_VL_MODEL"] = str(tmp)
            tx, vi = info["text"], info["vision"]
            label = (f"mid-size random Qwen2.5-VL (built in {time.perf_counter() - t0:.0f} s): text hidden "
                     f"{tx['hidden_size']} x {tx['num_hidden_layers']} layers, MLP {tx['intermediate_size']}, "
                     f"{tx['num_attention_heads']} heads / {tx['num_key_value_heads']} KV (head_dim "
                     f"{tx['hidden_size'] // tx['num_attention_heads']}), vision {vi['hidden_size']} x {vi['depth']};"
                     f" {info['params'] / 1e6:.0f}M params ({info['text_params'] / 1e6:.0f}M text), "
                     f"{info['mb']:.0f} MB in fp32 (the real 3B: 3.8B)")
        results = {}
        for dtype in [d for d in args.dtypes.split(",") if d]:
            results[dtype] = _run_child({**env, "QWEN_VL_DTYPE": dtype}, args.repeats, batch_sizes)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    r0 = next(iter(results.values()))
    lo, hi = r0["prompt_tokens"]
    print(f"checkpoint: {label}")
    print(f"device {r0['device']}, torch threads {threads}, {os.cpu_count()} cores; {N_REQUESTS} single-item "
          f"requests (different prompts and images, {lo}..{hi} prompt tokens), greedy, max_new_tokens={MAX_NEW} "
          f"(completion tokens {r0['tokens']}); QWEN_VL_MAX_CONCURRENCY=1, QWEN_VL_BATCH_WAIT_MS=20, "
          f"QWEN_VL_MAX_QUEUE=64; {args.repeats} round(s), medians")
    for dtype, r in results.items():
        print()
        print(f"QWEN_VL_DTYPE={dtype}  (process wall {r['wall_s']:.0f} s incl. load)")
        report(r)
    print()
    print(f"wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
