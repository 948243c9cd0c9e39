"""The VL engine on the tiny checkpoints (batching, adapters, trimming), adapter discovery, and the
degraded state of a diagram service whose adapters are missing (a real service in a subprocess)."""

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from services.diagram.service import discover_adapters
from services.runtime.errors import InvalidRequest
from services.runtime.settings import Settings
from services.vl.engine import BASE, VisionLanguageEngine, VLItem

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


def item(i, max_new_tokens=6, image=True, adapter=None):
    parts = ([{"type": "image"}] if image else []) + [{"type": "text", "text": f"describe picture {i}"}]
    images = [Image.new("RGB", (80 + 17 * i, 64), (30 * i % 255, 90, 160))] if image else []
    return VLItem([{"role": "user", "content": parts}], images, max_new_tokens=max_new_tokens, adapter=adapter)


def test_batched_equals_sequential_and_budgets_are_per_item(vl_engine):
    items = [item(0, 3), item(1, 6), item(2, 5, image=False), item(3, 6)]
    batched = vl_engine.generate_batch(items)
    single = [vl_engine.generate_batch([it])[0] for it in items]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.completion_tokens for r in batched] == [3, 6, 5, 6]  # the tiny model never stops early
    assert all(r.finish_reason == "length" for r in batched)
    assert batched[2].prompt_tokens < batched[1].prompt_tokens  # no image, no image tokens


def test_replicas_serve_concurrent_calls(vl_engine):
    out = []
    threads = [threading.Thread(target=lambda i=i: out.append(vl_engine.generate_batch([item(i)])[0]))
               for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(out) == 4 and vl_engine._free.qsize() == 2  # every replica handed back


def test_stream_matches_generate(vl_engine):
    gen = vl_engine.stream(item(1, 6), threading.Event())
    pieces = []
    try:
        while True:
            pieces.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert "".join(pieces) == vl_engine.generate_batch([item(1, 6)])[0].text
    assert result.completion_tokens == 6


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
