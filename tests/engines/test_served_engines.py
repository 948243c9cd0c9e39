"""The vLLM backends behind the gateway: the served session with the ASR and the captioner on vLLM servers from
the engine environment's CPU twin (`make test-engines`: QWEN_TEST_ENGINE_BACKEND=vllm). The same served test
modules that `make test` runs on transformers run on this session too (the Makefile names them): these are
what only a vLLM engine has — its identity in /health, its `vllm:*` series merged into /metrics, batching
across clients reaching vLLM, and a killed server restarting while the gateway keeps answering. The restart
test is last (pytest runs a module's tests in order)."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.served_session import VLLM_SERVICES

pytestmark = [pytest.mark.engines, pytest.mark.served, pytest.mark.timeout(1800)]

if os.environ.get("QWEN_TEST_ENGINE_BACKEND") != "vllm":
    pytestmark.append(pytest.mark.skip(reason="the served session is not on vLLM (run `make test-engines`)"))


@pytest.fixture(scope="module")
def wav(media_dir):
    return (media_dir / "short.wav").read_bytes()


def services(served) -> dict:
    return httpx.get(served.url + "/health", timeout=30).json()["services"]


def test_health_names_the_engine_and_its_server(served):
    for key in VLLM_SERVICES:
        info = services(served)[key]
        assert (info["status"], info["backend"]) == ("ready", "vllm"), info
        engine = info["engine"]
        assert engine["state"] == "ready" and engine["pid"] > 0 and engine["restarts"] == 0
        assert engine["engine_flavor"] == "cpu"  # the CPU twin's environment, as engines/install.sh wrote it
    assert services(served)["tts"]["backend"] == "transformers"  # TTS stays on its own engine


def vllm_series(served) -> dict[str, set[str]]:
    """`vllm:*` family -> the model names its samples carry, from the gateway's /metrics."""
    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(httpx.get(served.url + "/metrics", timeout=30).text):
        if fam.name.startswith("vllm:"):
            out.setdefault(fam.name, set()).update(s.labels.get("model_name", "") for s in fam.samples)
    return out


def test_vllm_series_of_both_servers_are_merged_into_metrics(served, wav):
    with served.client() as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"model": "whisper-1"})
        assert r.status_code == 200, r.text
    series = vllm_series(served)
    assert "vllm:num_requests_running" in series
    served_names = set().union(*series.values())
    assert {"Qwen/Qwen3-ASR-1.7B", "Qwen/Qwen3-Omni-30B-A3B-Captioner"} <= served_names, series


def counter(served, name: str, model: str) -> float:
    for fam in text_string_to_metric_families(httpx.get(served.url + "/metrics", timeout=30).text):
        for s in fam.samples:
            if s.name == name and s.labels.get("model_name") == model:
                return s.value
    return 0.0


def test_concurrent_clients_are_batched_and_every_window_reaches_vllm(served, wav):
    """Eight clients at once: the scheduler hands windows over in batches (batch-size metric delta), and
    vLLM finished one request per window (its own counter's delta)."""
    model = "Qwen/Qwen3-ASR-1.7B"
    done0 = counter(served, "vllm:request_success_total", model)
    count0, total0 = served.batches("asr")

    def one(_):
        with served.client() as c:
            return c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                          data={"model": "whisper-1"}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(8)))
    assert codes == [200] * 8
    count1, total1 = served.batches("asr")
    assert total1 - total0 == 8 and count1 - count0 < 8  # 8 windows in fewer engine calls
    assert counter(served, "vllm:request_success_total", model) - done0 == 8


def test_a_killed_server_restarts_while_the_gateway_answers(served, wav):
    """SIGKILL to the ASR's vLLM API server: the service reports `loading` (503 with Retry-After on the
    route, never a hang), the supervisor restarts the child, and requests succeed again."""
    before = services(served)["asr"]["engine"]
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while services(served)["asr"]["status"] == "ready" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert services(served)["asr"]["status"] == "loading"
    with served.client() as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"model": "whisper-1"})
    assert r.status_code == 503 and r.headers.get("retry-after"), r.text
    assert r.json()["error"]["type"] == "server_error"
    deadline = time.monotonic() + 900
    while services(served)["asr"]["status"] != "ready" and time.monotonic() < deadline:
        time.sleep(1)
    after = services(served)["asr"]["engine"]
    assert after["state"] == "ready" and after["restarts"] == 1 and after["pid"] != before["pid"]
    assert "signal 9" in (after["last_error"] or "")
    with served.client() as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"model": "whisper-1"})
    assert r.status_code == 200, r.text
