"""The VL engine on the tiny checkpoints (batching, adapters, trimming), adapter discovery, and the
degraded state of a diagram service whose adapters are missing or do not fit (a real service in a
subprocess)."""

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from services.diagram.service import discover_adapters
from services.runtime.core.errors import InvalidRequest
from services.runtime.core.settings import Settings
from services.vl.engine import BASE, AdapterUnavailable, VisionLanguageEngine, VLItem, attach_adapters

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def vl_engine(tiny_root):
    from services import tiny

    path = tiny.ensure("vl", tiny_root)
    return VisionLanguageEngine.load(str(path), "cpu", "float32", model_class="Qwen2_5_VLForConditionalGeneration",
                                     replicas=2, threads=1)


@pytest.fixture(scope="module")
def diagram_engine(tiny_root):
    from services import tiny

    path = tiny.ensure("diagram", tiny_root)
    adapters, problems = discover_adapters([str(path / "adapters")])
    assert problems == [] and set(adapters) == {"default", "alt"}
    return VisionLanguageEngine.load(str(path), "cpu", "float32", model_class="Qwen3VLForConditionalGeneration",
                                     adapters=adapters, threads=1)


@pytest.fixture(scope="module")
def bad_adapters(tiny_root, tmp_path_factory):
    """Adapters that do not fit the tiny Qwen3-VL, each made from its good `default` adapter:
    prefix  - keys under another module path (as from a model whose decoder is named differently): none match;
    subset  - only the q_proj weights although the config targets seven projections: most LoRA weights missing;
    shapes  - LoRA A matrices for a 32-wide model (the tiny decoder is 64 wide): size mismatch;
    gpt2    - target modules of another architecture (c_attn/c_proj): nothing to attach to."""
    from safetensors.torch import load_file, save_file

    from services import tiny

    good = tiny.ensure("diagram", tiny_root) / "adapters" / "default"
    weights = load_file(good / "adapter_model.safetensors")
    config = json.loads((good / "adapter_config.json").read_text())
    variants = {
        "prefix": ({}, {k.replace(".language_model.", ".text_model."): v for k, v in weights.items()}),
        "subset": ({}, {k: v for k, v in weights.items() if ".q_proj." in k}),
        "shapes": ({}, {k: v[:, :32].contiguous() if ".lora_A." in k else v for k, v in weights.items()}),
        "gpt2": ({"target_modules": ["c_attn", "c_proj"]}, weights),
    }
    root = tmp_path_factory.mktemp("bad-adapters")
    for name, (cfg_patch, tensors) in variants.items():
        (root / name).mkdir()
        (root / name / "adapter_config.json").write_text(json.dumps({**config, **cfg_patch}))
        save_file(tensors, root / name / "adapter_model.safetensors")
    return {name: str(root / name) for name in variants}


def item(i, max_new_tokens=6, image=True, adapter=None):
    parts = ([{"type": "image"}] if image else []) + [{"type": "text", "text": f"describe picture {i}"}]
    images = [Image.new("RGB", (80 + 17 * i, 64), (30 * i % 255, 90, 160))] if image else []
    return VLItem([{"role": "user", "content": parts}], images, max_new_tokens=max_new_tokens, adapter=adapter)


def test_batched_equals_sequential_and_budgets_are_per_item(vl_engine):
    items = [item(0, 3), item(1, 6), item(2, 5, image=False), item(3, 6)]
    batched = vl_engine.generate_batch(items)
    single = [vl_engine.generate_batch([it])[0] for it in items]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.usage.completion_tokens for r in batched] == [3, 6, 5, 6]  # the tiny model never stops early
    assert all(r.finish_reason == "length" for r in batched)
    assert batched[2].usage.prompt_tokens < batched[1].usage.prompt_tokens  # no image, no image tokens


def test_replicas_serve_concurrent_calls(vl_engine, monkeypatch):
    """Four calls released together on two replicas: two generations run at once, never more, each on
    its own replica (both are used); every replica is handed back."""
    spans: list[tuple[float, float, int]] = []  # start, end, replica
    generate = vl_engine._generate_group

    def timed_generate(model, group, adapter):
        t0 = time.perf_counter()
        try:
            return generate(model, group, adapter)
        finally:
            spans.append((t0, time.perf_counter(), id(model)))

    monkeypatch.setattr(vl_engine, "_generate_group", timed_generate)
    out = []
    start = threading.Barrier(4)

    def call(i):
        start.wait()
        out.append(vl_engine.generate_batch([item(i)])[0])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(out) == 4 and len(spans) == 4 and vl_engine._free.qsize() == 2  # every replica handed back
    running = [sum(s <= t < e for s, e, _ in spans) for t, _, _ in spans]  # generations running at each start
    assert max(running) == 2, spans
    for a in spans:  # the generations that overlap ran on different replicas
        assert all(b is a or b[2] != a[2] for b in spans if b[0] < a[1] and a[0] < b[1]), spans
    assert len({r for _, _, r in spans}) == 2


def test_stream_matches_generate(vl_engine):
    pieces: list[str] = []
    result = vl_engine.stream(item(1, 6), pieces.append, threading.Event())
    whole = vl_engine.generate_batch([item(1, 6)])[0]
    assert "".join(pieces) == whole.text
    assert result.usage == whole.usage and result.usage.completion_tokens == 6
    assert vl_engine._free.qsize() == vl_engine.replicas  # the replica is handed back


def test_adapters_change_outputs_and_are_chosen_per_item(diagram_engine):
    outs = diagram_engine.generate_batch([item(0, adapter="default"), item(0, adapter="alt"), item(0, adapter=BASE),
                                          item(0)])
    assert [r.adapter for r in outs] == ["default", "alt", None, "default"]
    assert len({outs[0].text, outs[1].text, outs[2].text}) == 3
    assert outs[3].text == outs[0].text  # default adapter when none is named
    with pytest.raises(ValueError, match="available: alt, default, base"):
        diagram_engine.resolve_adapter("nope")


def test_discover_adapters_reports_what_is_missing(tmp_path):
    good = tmp_path / "a1"
    good.mkdir()
    (good / "adapter_config.json").write_text("{}")
    (good / "adapter_model.safetensors").write_bytes(b"x")
    no_weights = tmp_path / "a2"
    no_weights.mkdir()
    (no_weights / "adapter_config.json").write_text("{}")
    found, problems = discover_adapters([str(tmp_path), str(tmp_path / "missing")])
    assert found == {"a1": str(good)}
    assert any("weights missing" in p for p in problems) and any("no such folder" in p for p in problems)


def test_image_urls_are_off_by_default_and_guarded_when_on():
    from services.vl.routes import load_image

    off = SimpleNamespace(settings=Settings())
    with pytest.raises(InvalidRequest) as e:
        asyncio.run(load_image(off, off.settings.vl, data=None, url="https://example.com/a.png", param="image",
                               url_param="image_url"))
    assert e.value.code == "image_url_disabled"
    on = SimpleNamespace(settings=Settings(vl={"allow_image_url": True}))
    for url in ("http://127.0.0.1/a.png", "http://169.254.169.254/latest", "http://10.1.2.3/x.png"):
        with pytest.raises(InvalidRequest) as e:
            asyncio.run(load_image(on, on.settings.vl, data=None, url=url, param="image", url_param="image_url"))
        assert e.value.code == "url_refused"


def test_missing_adapters_make_the_diagram_service_degraded_not_crashed(tmp_path):
    code = """
import asyncio, json
from services.diagram.service import Diagram
svc = Diagram()
inner = svc() if not hasattr(svc, "handle") else svc
assert inner.handle.wait(300), inner.handle.error
print(json.dumps(asyncio.run(inner.status())))
"""
    env = {**os.environ, "QWEN_MODELS": "tiny", "QWEN_TINY_DIR": str(tmp_path / "tiny"), "QWEN_TORCH_THREADS": "1",
           "QWEN_DIAGRAM_ADAPTERS": str(tmp_path / "no-such-adapters"), "QWEN_LOG_JSON": "false"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    status = json.loads(out.stdout.strip().splitlines()[-1])
    assert status["status"] == "degraded" and "no such folder" in status["error"]
    assert status["adapters"] == [] and status["default_adapter"] is None
    assert "LoRA adapter not loaded" in out.stderr


def test_a_vanishing_temperature_decodes_greedily_instead_of_failing(vl_engine):
    # Found by the OpenAPI fuzzer: temperature=1e-300 made sampling divide by ~0 (inf/nan probabilities).
    tiny_t = item(0, 4)
    tiny_t.temperature = 1e-300
    greedy = item(0, 4)
    assert vl_engine.generate_batch([tiny_t])[0].text == vl_engine.generate_batch([greedy])[0].text


def test_adapters_that_do_not_fit_are_not_served_and_the_others_are_unaffected(tiny_root, bad_adapters,
                                                                              diagram_engine):
    from services import tiny

    path = tiny.ensure("diagram", tiny_root)
    good = {n: str(path / "adapters" / n) for n in ("default", "alt")}
    # a failing adapter first (it wraps the model, then is taken out again), the others around the good ones
    order = {"shapes": bad_adapters["shapes"], "default": good["default"], "prefix": bad_adapters["prefix"],
             "gpt2": bad_adapters["gpt2"], "alt": good["alt"], "subset": bad_adapters["subset"]}
    engine = VisionLanguageEngine.load(str(path), "cpu", "float32", model_class="Qwen3VLForConditionalGeneration",
                                       adapters=order, threads=1)
    assert engine.adapters == ["default", "alt"] and engine.default_adapter == "default"
    assert set(engine.failed) == {"shapes", "prefix", "gpt2", "subset"}
    assert "42 of its 42 LoRA weights missing" in engine.failed["prefix"] and "none loaded" in engine.failed["prefix"]
    assert "42 weights in the file match no module" in engine.failed["prefix"]
    assert "36 of its 42 LoRA weights missing" in engine.failed["subset"] and "6 loaded" in engine.failed["subset"]
    assert "size mismatch" in engine.failed["shapes"]
    assert "c_attn" in engine.failed["gpt2"] and "not found" in engine.failed["gpt2"]
    for name in engine.failed:
        with pytest.raises(AdapterUnavailable, match=f"adapter '{name}' is not available"):
            engine.resolve_adapter(name)
    # the good adapters and the base decode exactly as on an engine that never saw a bad one
    items = [item(0, adapter="default"), item(0, adapter="alt"), item(0, adapter=BASE)]
    assert [r.text for r in engine.generate_batch(items)] == [r.text for r in diagram_engine.generate_batch(items)]


def test_a_failed_default_adapter_refuses_requests_naming_none(tiny_root, bad_adapters):
    from services import tiny

    path = tiny.ensure("diagram", tiny_root)
    engine = VisionLanguageEngine.load(str(path), "cpu", "float32", model_class="Qwen3VLForConditionalGeneration",
                                       adapters={"prefix": bad_adapters["prefix"]}, threads=1)
    assert engine.adapters == [] and engine.default_adapter == "prefix" and set(engine.failed) == {"prefix"}
    with pytest.raises(AdapterUnavailable):
        engine.resolve_adapter(None)  # never the base model in its place
    assert engine.resolve_adapter(BASE) is None  # asked for explicitly: served
    engine.warmup()  # warms up on what is served


def test_a_good_adapter_loads_exactly_as_peft_loads_it(tiny_root):
    import torch
    from peft import PeftModel
    from transformers import Qwen3VLForConditionalGeneration

    from services import tiny

    path = tiny.ensure("diagram", tiny_root)
    good = {n: str(path / "adapters" / n) for n in ("default", "alt")}

    def base():
        return Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()

    ours, loaded, failed = attach_adapters(base(), good)
    assert (loaded, failed) == (["default", "alt"], {})
    theirs = PeftModel.from_pretrained(base(), good["default"], adapter_name="default")
    theirs.load_adapter(good["alt"], adapter_name="alt")
    ids = torch.tensor([[1, 5, 9, 14, 20]])
    with torch.no_grad():
        for name in ("default", "alt"):
            ours.set_adapter(name)
            theirs.set_adapter(name)
            assert torch.equal(ours(input_ids=ids).logits, theirs(input_ids=ids).logits)


def test_a_mismatched_adapter_makes_the_diagram_service_degraded_and_is_refused(tiny_root, bad_adapters):
    code = """
import asyncio, json
from services.diagram.service import Diagram
svc = Diagram()
inner = svc() if not hasattr(svc, "handle") else svc
assert inner.handle.wait(300), inner.handle.error
from services.vl.contract import VisionItem
item = VisionItem.prompt("hi", [], max_new_tokens=2)
print(json.dumps(asyncio.run(inner.status())))
print(json.dumps(asyncio.run(inner.generate([item]))))
print(json.dumps(asyncio.run(inner.generate([item.model_copy(update={"adapter": "base"})]))))
"""
    env = {**os.environ, "QWEN_MODELS": "tiny", "QWEN_TINY_DIR": str(tiny_root), "QWEN_TORCH_THREADS": "1",
           "QWEN_DIAGRAM_ADAPTERS": bad_adapters["subset"], "QWEN_LOG_JSON": "false"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    status, default, base = (json.loads(line) for line in out.stdout.strip().splitlines()[-3:])
    assert status["status"] == "degraded" and status["adapters"] == [] and status["default_adapter"] == "subset"
    assert "adapter 'subset' not served: 36 of its 42 LoRA weights missing" in status["error"]
    assert set(status["failed_adapters"]) == {"subset"}
    error = default["__qwen_error__"]
    assert (error["status"], error["code"], error["param"]) == (503, "adapter_unavailable", "adapter")
    assert "adapter 'subset' is not available" in error["message"]
    assert base["results"][0]["adapter"] is None and base["results"][0]["usage"]["completion_tokens"] == 2
    assert "LoRA adapter not served" in out.stderr


@pytest.mark.parametrize("which", ["vl", "diagram"])
def test_the_pixel_budget_reaches_the_image_processor_through_the_full_processor(which, vl_engine, diagram_engine,
                                                                                 monkeypatch):
    from services.runtime.codecs.images import processor_pixel_kwargs

    engine = vl_engine if which == "vl" else diagram_engine
    ip = engine.processor.image_processor
    px = (ip.patch_size * ip.merge_size) ** 2
    photo = VLItem([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                   [Image.new("RGB", (4000, 3000), (9, 99, 199))])

    def image_tokens() -> int:
        return int((engine._prepare([photo])["input_ids"] == engine.processor.image_token_id).sum())

    own = image_tokens()  # the tiny checkpoint's own limit: 16 tokens (12 for 4:3)
    monkeypatch.setattr(engine, "image_kwargs", processor_pixel_kwargs(ip, 8 * px))
    assert own == 12 and image_tokens() == 6  # a budget of 8 tokens: 3x2 for 4:3
