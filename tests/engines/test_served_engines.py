"""The vLLM backends behind the gateway: the served session with some services on vLLM servers from the engine
environment's CPU twin (`make test-engines`: QWEN_TEST_ENGINE_BACKEND=vllm, QWEN_TEST_VLLM_SERVICES=asr,captioner
then vl,diagram). The same served test modules that `make test` runs on transformers run on these sessions
too (the Makefile names them); these are what only a vLLM engine has: its identity in /health, its `vllm:*`
series merged into /metrics (and every one the dashboard queries), batching across clients reaching vLLM,
LoRA adapters chosen per request, and a killed server restarting while the gateway keeps answering. The
restart tests are last (pytest runs a module's tests in order; the Makefile runs this module last)."""

from __future__ import annotations

import io
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.served_session import vllm_services

pytestmark = [pytest.mark.engines, pytest.mark.served, pytest.mark.timeout(1800)]

ON_VLLM = vllm_services()
if not ON_VLLM:
    pytestmark.append(pytest.mark.skip(reason="the served session is not on vLLM (run `make test-engines`)"))

ROOT = Path(__file__).resolve().parents[2]
SERVED_NAMES = {"asr": "Qwen/Qwen3-ASR-1.7B", "captioner": "Qwen/Qwen3-Omni-30B-A3B-Captioner",
                "vl": "Qwen/Qwen2.5-VL-3B-Instruct", "diagram": "Qwen/Qwen3-VL-2B-Instruct"}


def needs(key: str):
    return pytest.mark.skipif(key not in ON_VLLM, reason=f"{key} is not on vLLM in this session")


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (40, 160, 90)).save(buf, "PNG")
    return buf.getvalue()


def services(served) -> dict:
    return httpx.get(served.url + "/health", timeout=30).json()["services"]


def metrics_text(served) -> str:
    return httpx.get(served.url + "/metrics", timeout=30).text


def test_health_names_the_engine_and_its_server(served):
    now = services(served)
    for key in ON_VLLM:
        info = now[key]
        assert info["status"] in ("ready", "degraded") and info["backend"] == "vllm", info
        engine = info["engine"]
        assert engine["state"] == "ready" and engine["pid"] > 0 and engine["restarts"] == 0
        assert engine["engine_flavor"] == "cpu"  # the CPU twin's environment, as engines/install.sh wrote it
    assert now["tts"]["backend"] == "transformers"  # TTS stays on its own engine
    assert now["aligner"]["backend"] == "transformers"


def test_vllm_series_of_every_server_are_merged_into_metrics(served):
    names = set()
    for fam in text_string_to_metric_families(metrics_text(served)):
        if fam.name.startswith("vllm:"):
            names |= {s.labels.get("model_name", "") for s in fam.samples}
    assert {SERVED_NAMES[k] for k in ON_VLLM} <= names, names


def test_every_vllm_series_the_dashboard_and_alerts_query_is_exposed(served):
    """The Grafana panels and Prometheus rules query vLLM 0.30's own names (0.14's gpu_cache_usage_perc is
    kv_cache_usage_perc now): each one is a sample name in the merged /metrics."""
    queried = set()
    for rel in ("deploy/grafana/qwen-bento.json", "deploy/prometheus/prometheus.yml"):
        queried |= set(re.findall(r"vllm:[a-z_]+", (ROOT / rel).read_text()))
    exposed = {line.split("{")[0].split()[0] for line in metrics_text(served).splitlines() if line.startswith("vllm:")}
    assert len(queried) >= 5 and queried <= exposed, queried - exposed


def counter(served, name: str, model: str) -> float:
    """A vLLM counter of one model, summed over its other labels (finished_reason, engine)."""
    return sum(s.value for fam in text_string_to_metric_families(metrics_text(served)) for s in fam.samples
               if s.name == name and s.labels.get("model_name") == model)


def concurrently(n: int, call) -> list[int]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: call(), range(n)))


@needs("asr")
def test_concurrent_transcriptions_are_batched_and_every_window_reaches_vllm(served, wav):
    """Eight clients at once: the scheduler hands windows over in batches (batch-size metric delta), and
    vLLM finished a request for each window (its own counter's delta: at least 8, as windows of earlier
    tests' abandoned streams may still be finishing there)."""
    done0 = counter(served, "vllm:request_success_total", SERVED_NAMES["asr"])
    items0, calls0 = served.batches("asr")

    def one():
        with served.client() as c:
            return c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                          data={"model": "whisper-1"}).status_code

    assert concurrently(8, one) == [200] * 8
    items1, calls1 = served.batches("asr")
    assert items1 - items0 == 8 and calls1 - calls0 < 8  # 8 windows in fewer engine calls
    assert counter(served, "vllm:request_success_total", SERVED_NAMES["asr"]) - done0 >= 8


@needs("vl")
def test_concurrent_generations_are_batched_and_reach_vllm(served):
    done0 = counter(served, "vllm:request_success_total", SERVED_NAMES["vl"])
    items0, calls0 = served.batches("vl")

    def one():
        with served.client() as c:
            return c.post("/generate", data={"text": "What is it?"}, files={"image": ("x.png", png())}).status_code

    assert concurrently(4, one) == [200] * 4
    items1, calls1 = served.batches("vl")
    assert items1 - items0 == 4 and calls1 - calls0 < 4
    assert counter(served, "vllm:request_success_total", SERVED_NAMES["vl"]) - done0 >= 4


@needs("diagram")
def test_lora_adapters_are_chosen_per_request_on_vllm(served):
    """The tiny checkpoint's two adapters are vLLM LoRA modules: each request runs the one it names (the
    adapter metric counts them), `base` runs without, an unknown name is a 400 before vLLM is asked."""
    info = services(served)["diagram"]
    assert sorted(info["adapters"]) == ["alt", "default"] and info["default_adapter"] == "default"
    with served.client() as c:
        ran = []
        for adapter in ("alt", "default", "base", None):
            form = {"max_new_tokens": "4", **({"adapter": adapter} if adapter else {})}
            r = c.post("/infer", data=form, files={"file": ("d.png", png())})
            assert r.status_code == 200, r.text
            ran.append(r.json()["metadata"]["adapter"])
        assert ran == ["alt", "default", "base", "default"]
        bad = c.post("/infer", data={"adapter": "nope"}, files={"file": ("d.png", png())})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_adapter"
    lora = [ln for ln in metrics_text(served).splitlines() if ln.startswith("vllm:lora_requests_info")]
    assert lora and 'max_lora="2"' in lora[0]


def kill_and_recover(served, key: str, request) -> None:
    before = services(served)[key]["engine"]
    os.kill(before["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while services(served)[key]["status"] in ("ready", "degraded") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert services(served)[key]["status"] == "loading"
    r = request()
    assert r.status_code == 503 and r.headers.get("retry-after"), r.text
    assert r.json()["error"]["type"] == "service_unavailable" and r.json()["error"]["code"] == "model_not_ready"
    deadline = time.monotonic() + 900
    while services(served)[key]["status"] not in ("ready", "degraded") and time.monotonic() < deadline:
        time.sleep(1)
    after = services(served)[key]["engine"]
    assert after["state"] == "ready" and after["restarts"] == 1 and after["pid"] != before["pid"]
    assert "signal 9" in (after["last_error"] or "")
    r = request()
    assert r.status_code == 200, r.text


@needs("asr")
def test_a_killed_asr_server_restarts_while_the_gateway_answers(served, wav):
    """SIGKILL to the ASR's vLLM API server: the service reports `loading` (503 with Retry-After on the
    route, never a hang), the supervisor restarts the child, and requests succeed again."""
    def request():
        with served.client() as c:
            return c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"model": "whisper-1"})

    kill_and_recover(served, "asr", request)


@needs("vl")
def test_a_killed_vl_server_restarts_while_the_gateway_answers(served):
    def request():
        with served.client() as c:
            return c.post("/generate", data={"text": "What is it?"}, files={"image": ("x.png", png())})

    kill_and_recover(served, "vl", request)
