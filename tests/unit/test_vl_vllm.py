"""VL and diagram on vLLM without vLLM: the LoRA flags built from the adapters' own configs, the chat request a
generation becomes, and VLLMVisionEngine against a fake OpenAI server (the same adapter rule as on
transformers: the request's adapter is the model it asks vLLM for)."""

from __future__ import annotations

import base64
import io
import json
import threading

import pytest
from PIL import Image

from services.runtime.core.settings import DiagramSettings, VLSettings
from services.vl import vllm_backend as vb
from services.vl.engine import AdapterUnavailable, VLItem

from .fake_servers import FakeOpenAI


def adapter(tmp_path, name: str, r: int, targets) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": r, "target_modules": targets}))
    return str(folder)


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_lora_flags_hold_every_adapter(tmp_path):
    from services import tiny

    folder = tiny.ensure("diagram") / "adapters"
    found = {p.name: str(p) for p in sorted(folder.iterdir())}
    flags = vb.lora_flags(found)
    assert flags[:2] == ["--enable-lora", "--lora-modules"]
    assert flags[2:4] == [f"alt={found['alt']}", f"default={found['default']}"]
    assert flag(flags, "--max-lora-rank") == "8" and flag(flags, "--max-loras") == "2"
    assert "--enable-tower-connector-lora" not in flags  # the tiny adapters are language-model only
    odd = {"a": adapter(tmp_path, "a", 12, ["q_proj"]), "b": adapter(tmp_path, "b", 4, "visual.blocks.0.attn.qkv")}
    flags = vb.lora_flags(odd)
    assert flag(flags, "--max-lora-rank") == "16"  # the smallest vLLM accepts that holds rank 12
    assert flags[-1] == "--enable-tower-connector-lora"  # an adapter reaches into the vision tower
    with pytest.raises(RuntimeError, match="rank 1024"):
        vb.lora_flags({"big": adapter(tmp_path, "big", 1024, ["q_proj"])})
    assert vb.lora_flags({}) == []


def test_server_flags_carry_the_pixel_budget_and_image_limit():
    cfg = VLSettings(vllm_max_images=3)
    cmd = vb.managed(cfg, "vl", "/models/vl", "bfloat16", pixels={"min_pixels": 3136, "max_pixels": 1003520}).command
    assert json.loads(flag(cmd, "--limit-mm-per-prompt")) == {"image": 3, "video": 0}
    assert json.loads(flag(cmd, "--mm-processor-kwargs")) == {"min_pixels": 3136, "max_pixels": 1003520}
    assert flag(cmd, "--max-model-len") == "8192" and "--enable-lora" not in cmd
    # constraints compiled as on transformers: xgrammar, JSON without free whitespace (vLLM refuses that
    # option with its default backend "auto")
    assert json.loads(flag(cmd, "--structured-outputs-config")) == {"backend": "xgrammar",
                                                                    "disable_any_whitespace": True}
    i = cmd.index("--served-model-name")
    assert cmd[i + 1:i + 4] == ["Qwen/Qwen2.5-VL-3B-Instruct", "qwen2.5-vl", "vl"]


def img(color) -> Image.Image:
    return Image.new("RGB", (20, 10), color)


def test_chat_request_keeps_the_turns_images_and_decoding():
    item = VLItem([{"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                   {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]}],
                  [img((255, 0, 0)), img((0, 0, 255))], max_new_tokens=7)
    body = vb.chat_request("alt", item, stream=False)
    assert body["model"] == "alt" and body["max_tokens"] == 7 and body["stream"] is False
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.0, 1.0, -1)  # greedy, nothing mixed in
    system, user = body["messages"]
    assert system == {"role": "system", "content": [{"type": "text", "text": "be brief"}]}
    kinds = [p["type"] for p in user["content"]]
    assert kinds == ["image_url", "text", "image_url"]
    first = Image.open(io.BytesIO(base64.b64decode(user["content"][0]["image_url"]["url"].split(",", 1)[1])))
    assert first.size == (20, 10) and first.getpixel((0, 0)) == (255, 0, 0)  # in order, losslessly
    sampled = vb.chat_request("m", VLItem(item.messages, item.images, max_new_tokens=3, temperature=0.7, top_p=0.9,
                                          top_k=20), stream=True)
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (0.7, 0.9, 20)
    assert sampled["stream_options"] == {"include_usage": True}
    assert "structured_outputs" not in sampled and "response_format" not in sampled


def test_a_constraint_travels_as_structured_outputs():
    """vLLM >= 0.12 reads `structured_outputs` (the old guided_* fields are silently ignored)."""
    from services.diagram.tables import table_constraint
    from services.runtime.serving.generation import Constraint

    msgs = [{"role": "user", "content": [{"type": "text", "text": "t"}]}]
    table = table_constraint(["a", "b"])
    body = vb.chat_request("m", VLItem(msgs, [], max_new_tokens=3, constraint=table), stream=False)
    assert body["structured_outputs"] == {"grammar": table.spec}
    schema = {"type": "object", "properties": {"x": {"enum": [1, 2]}}, "required": ["x"]}
    body = vb.chat_request("m", VLItem(msgs, [], max_new_tokens=3,
                                       constraint=Constraint(kind="json_schema", spec=json.dumps(schema))),
                           stream=True)
    assert body["structured_outputs"] == {"json": schema}


@pytest.fixture
def fake():
    f = FakeOpenAI()
    yield f
    f.close()


def engine(port: int, adapters=(), default=None) -> vb.VLLMVisionEngine:
    cfg = DiagramSettings(vllm_port=port, timeout=30)
    server = vb.managed(cfg, "diagram", "/m", "float32")  # not started: ready, as the supervisor would say
    server.state = "ready"
    return vb.VLLMVisionEngine(server, cfg, "diagram", adapters=list(adapters), default_adapter=default,
                               owns_server=False)


def one(adapter=None) -> VLItem:
    return VLItem([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "table?"}]}],
                  [img((1, 2, 3))], max_new_tokens=3, adapter=adapter)


def test_each_generation_asks_for_its_adapter(fake):
    eng = engine(fake.port, adapters=["alt", "default"], default="default")
    out = eng.generate_batch([one("alt"), one(), one("base")])
    assert [r.adapter for r in out] == ["alt", "default", None]
    assert sorted(req["model"] for req in fake.requests) == ["Qwen/Qwen3-VL-2B-Instruct", "alt", "default"]
    assert all(r.text == "a calm voice" and r.usage.prompt_tokens == 30 and r.usage.completion_tokens == 3 for r in out)
    with pytest.raises(ValueError, match="unknown adapter 'nope'"):
        eng.generate_batch([one("nope")])
    eng.failed["alt"] = "did not load"
    with pytest.raises(AdapterUnavailable):
        eng.resolve_adapter("alt")


def test_stream_emits_pieces_then_finish_and_usage(fake):
    pieces: list[str] = []
    result = engine(fake.port).stream(one(), pieces.append, threading.Event())
    assert pieces == ["a ", "calm ", "voice"]
    assert result.text == "" and result.finish_reason == "stop"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (30, 3)


def test_a_cancelled_stream_stops_reading(fake):
    cancel = threading.Event()
    pieces: list[str] = []

    def emit(text):
        pieces.append(text)
        cancel.set()  # the client left after the first piece

    engine(fake.port).stream(one(), emit, cancel)
    assert pieces == ["a "]
