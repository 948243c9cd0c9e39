"""POST /generate, POST /infer, GET /infer/stats and image chat through the real `bentoml serve`.

Tiny Qwen2.5-VL / Qwen3-VL(+2 LoRA adapters): random text; assertions on shapes, usage, adapters,
statuses, limits."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import os
import time

from typing import Literal

import httpx
import openai
import pydantic
import pytest
from PIL import Image

from tests.tables import markdown_table

pytestmark = pytest.mark.served


def png(w=320, h=200, color=(20, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def jpeg(w=64, h=48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(served):
    with served.client() as c:
        yield c


def test_generate_with_and_without_image(client):
    r = client.post("/generate", data={"text": "Describe this image"}, files={"image": ("x.bin", png())})
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["response"], str) and body["usage"]["completion_tokens"] <= 8
    assert body["timings"]["generate_seconds"] <= body["timings"]["total_seconds"]
    with_image = body["usage"]["prompt_tokens"]
    r = client.post("/generate", data={"text": "Describe this image"})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] < with_image  # no image tokens


@pytest.mark.parametrize("data, files, status, code", [
    ({}, None, 400, "invalid_value"),  # text missing
    ({"text": "hi"}, {"image": ("a.png", b"this is text, not a png")}, 415, "unsupported_media"),
    ({"text": "hi"}, {"image": ("a.png", png()[:60])}, 400, "corrupt_image"),
    ({"text": "hi", "image_url": "https://example.com/a.png"}, None, 400, "image_url_disabled"),
    ({"text": "hi", "max_new_tokens": "999999"}, None, 400, "invalid_value"),
    ({"text": "hi", "temperature": "9"}, None, 400, "invalid_value"),
])
def test_generate_bad_input(client, data, files, status, code):
    r = client.post("/generate", data=data or {"_": ""} if not data else data, files=files)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_decompression_bomb_is_413(client):
    # A 1-colour 12000x12000 PNG is a few hundred KB but 144 MP: refused from its header.
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG", optimize=True)
    r = client.post("/generate", data={"text": "hi"}, files={"image": ("bomb.png", buf.getvalue())})
    assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"


def test_infer_table_with_adapters(client):
    r = client.post("/infer", files={"file": ("diagram", png())})
    assert r.status_code == 200, r.text
    body = r.json()
    md = body["metadata"]
    assert isinstance(body["description"], str)
    assert md["adapter"] == "default" and md["image_size"] == [320, 200] and md["device"] == "cpu"
    assert md["model"] == "Qwen/Qwen3-VL-2B-Instruct" and md["generation_time"] <= md["inference_time"]
    outs = {}
    for adapter in ("default", "alt", "base"):
        r = client.post("/infer", files={"file": ("d.png", png())},
                        data={"adapter": adapter, "max_new_tokens": "6", "format": "text"})
        assert r.status_code == 200 and r.json()["metadata"]["adapter"] == adapter
        outs[adapter] = r.json()["description"]
    assert len(set(outs.values())) > 1  # the adapters change the (greedy) output


def test_infer_answers_a_table_that_parses(client):
    """Decoding is held to the table's grammar: the tiny model's random weights still give a table with the
    configured (or requested) columns, for any budget; format=text is the model's free text."""
    for form in ({}, {"max_new_tokens": "5"}, {"max_new_tokens": "60", "columns": "Step, Owner"},
                 {"adapter": "alt", "max_new_tokens": "40"}):
        r = client.post("/infer", files={"file": ("d.png", png())}, data=form)
        assert r.status_code == 200, r.text
        md = r.json()["metadata"]
        expected = ["Step", "Owner"] if "columns" in form else ["№", "Step", "Role"]
        assert md["format"] == "table" and md["columns"] == expected
        head, rows = markdown_table(r.json()["description"])
        assert head == expected and all(len(row) == len(expected) for row in rows)
    r = client.post("/infer", files={"file": ("d.png", png())}, data={"format": "text", "max_new_tokens": "12"})
    assert r.status_code == 200 and r.json()["metadata"]["format"] == "text" and "columns" not in r.json()["metadata"]
    for bad in ("a|b", "", ",".join("c" * 13)):
        r = client.post("/infer", files={"file": ("d.png", png())}, data={"columns": bad or ","})
        assert r.status_code == 400 and r.json()["error"]["param"] == "columns", r.text
    r = client.post("/infer", files={"file": ("d.png", png())}, data={"format": "csv"})
    assert r.status_code == 400


class Step(pydantic.BaseModel):
    n: Literal[1, 2, 3]
    role: Literal["user", "system", "service"]


class Steps(pydantic.BaseModel):
    """Bounded (enums, at most 3 items): written without free whitespace, every answer fits the budget."""

    steps: list[Step] = pydantic.Field(max_length=3)


def test_chat_response_format_json_schema_and_table(served):
    """The unmodified SDK's parse(): every answer of the tiny model's random weights is JSON of the schema,
    on VL and on the diagram model, greedy and sampled; a table format streams a table that parses; what
    xgrammar cannot compile is a 400 and the service keeps serving."""
    oai = served.openai()
    data_url = "data:image/png;base64," + base64.b64encode(png()).decode()
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                         {"type": "text", "text": "The steps, as JSON."}]}]
    for model, extra in [("vl", {}), ("diagram", {}), ("qwen3-vl", {"temperature": 0.9})]:
        r = oai.chat.completions.parse(model=model, messages=msgs, response_format=Steps, max_tokens=200, **extra)
        assert r.choices[0].finish_reason == "stop" and isinstance(r.choices[0].message.parsed, Steps), r
    stream = oai.chat.completions.create(model="diagram", messages=msgs, max_tokens=60, stream=True,
                                         response_format={"type": "table", "columns": ["Step", "Owner"]})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("| Step | Owner |\n|---|---|\n"[: len(text)])
    whole = oai.chat.completions.create(model="diagram", messages=msgs, max_tokens=30,
                                        response_format={"type": "table"})
    head, rows = markdown_table(whole.choices[0].message.content)
    assert head == ["№", "Step", "Role"] and all(len(row) == 3 for row in rows)
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="diagram", messages=msgs, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}})
    assert e.value.body["code"] == "invalid_constraint" and e.value.body["param"] == "response_format"
    r = oai.chat.completions.create(model="diagram", messages=msgs, max_tokens=3)
    assert r.choices[0].message.role == "assistant"  # still serving


def test_infer_unknown_adapter_and_bad_files(client):
    r = client.post("/infer", files={"file": ("d.png", png())}, data={"adapter": "nope"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_adapter"
    assert "default" in r.json()["error"]["message"]
    r = client.post("/infer", data={"adapter": "default"}, files={"other": ("d.png", png())})
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_file"
    r = client.post("/infer", files={"file": ("d.gif", b"GIF89a" + b"\x00" * 10)})
    assert r.status_code in (400, 415)


def test_infer_stats_and_health(served, client):
    client.post("/infer", files={"file": ("d.jpg", jpeg())})
    s = client.get("/infer/stats").json()
    assert s["inference_count"] >= 1 and s["avg_inference_time"] > 0 and s["model_load_time"] > 0
    h = client.get("/health").json()["services"]["diagram"]
    assert h["status"] == "ready" and set(h["adapters"]) == {"default", "alt"}


def test_chat_with_image_parts(served):
    oai = served.openai()
    data_url = "data:image/png;base64," + base64.b64encode(png()).decode()
    r = oai.chat.completions.create(model="vl", max_tokens=5, messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                     {"type": "image_url", "image_url": {"url": data_url}}]}])
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens <= 5
    stream = oai.chat.completions.create(model="Qwen/Qwen2.5-VL-3B-Instruct", max_tokens=5, stream=True,
                                         stream_options={"include_usage": True}, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                     {"type": "text", "text": "What is it?"}]}])
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage.completion_tokens <= 5
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="vl", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://10.0.0.1/a.png"}}]}])
    assert e.value.body["code"] == "image_url_disabled"
    r = oai.chat.completions.create(model="diagram", max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url}}, {"type": "text", "text": "table"}]}])
    assert r.usage.completion_tokens <= 4


def test_concurrent_chat_requests_are_batched(served):
    """Four image questions at once to the VL model (QWEN_VL_MAX_CONCURRENCY=1, batches of 4): fewer
    generate calls than requests."""
    import concurrent.futures

    data_url = "data:image/png;base64," + base64.b64encode(png()).decode()
    before = served.batches("vl")

    def one(i):
        return served.openai().chat.completions.create(model="vl", max_tokens=3, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                         {"type": "text", "text": f"Question {i}?"}]}])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(4)))
    after = served.batches("vl")
    assert [a.usage.completion_tokens <= 3 for a in answers] == [True] * 4
    items, calls = after[0] - before[0], after[1] - before[1]
    assert items == 4 and calls < items, (items, calls)


@contextlib.contextmanager
def engine_held(served, key: str):
    """While inside, a vLLM server child of `key` is stopped (SIGSTOP): its requests wait as a slow engine's
    would, whatever the engine's speed (vLLM on the tiny model drains a queue faster than a burst arrives).
    Nothing to hold on the in-process engine, which is slower than the burst by itself."""
    import signal

    engine = httpx.get(served.url + "/health", timeout=30).json()["services"][key].get("engine") or {}
    pid = engine.get("pid")
    if pid:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)


def test_burst_beyond_the_queue_gets_429_with_retry_after(served):
    def one(i):
        with served.client() as c:
            return c.post("/generate", data={"text": f"prompt {i}", "max_new_tokens": "48"},
                          files={"image": ("a.png", png(64 + i, 64))})

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        with engine_held(served, "vl"):
            futures = [pool.submit(one, i) for i in range(12)]
            # The refusals come while the engine is held (capacity: a batch of 4 running + 4 queued).
            concurrent.futures.wait(futures, timeout=60, return_when=concurrent.futures.FIRST_COMPLETED)
            time.sleep(2)
        responses = [f.result() for f in futures]
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429} and 200 in codes and 429 in codes, codes
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "queue_full"
