"""Two gateway replicas sharing one real redis-server (QWEN_STATE_URL), in front of the aligner and VL model
services served on their own: tasks answered by either replica, one rate limit across both, client identity
from X-Forwarded-For only behind a trusted proxy, Redis trouble (503 on task routes, the rest serving,
recovery without a restart), and a replica killed mid-task (its task ends failed with a reason).

Real processes on loopback (`bentoml serve`, redis-server); tiny models."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import httpx
import pytest

from tests.audio_fixtures import encode, song
from tests.deploy.test_split_services import ROOT, start, wait_ok
from tests.redis_server import PASSWORD, RedisServer
from tests.served_session import free_port, process_tree
from tests.served_session import stop_server as stop

pytestmark = pytest.mark.served

LIMIT = 10  # QWEN_VL_RATE_LIMIT for this deployment: per client per minute, across both replicas


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    work = tmp_path_factory.mktemp("replicas")
    redis = RedisServer(work).start()
    env = {**os.environ, "BENTOML_CONFIG": str(ROOT / "configuration.yaml"), "BENTOML_HOME": str(work / "home"),
           "BENTOML_DO_NOT_TRACK": "true", "QWEN_MODELS": "tiny", "QWEN_TINY_DIR": str(work / "tiny"),
           "QWEN_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "QWEN_VL_MAX_NEW_TOKENS": "2"}
    env.pop("QWEN_API_KEY", None)
    ports = {k: free_port() for k in ("aligner", "vl", "a", "b")}
    logs = {k: work / f"{k}.log" for k in ports}
    procs = {"aligner": start("services.aligner.service:Aligner", ports["aligner"], env, logs["aligner"]),
             "vl": start("services.vl.service:VL", ports["vl"], env, logs["vl"])}
    gw_env = {**env, "QWEN_SERVICES": "aligner,vl", "QWEN_PLAYGROUND": "false", "QWEN_STATE_URL": redis.url,
              "QWEN_STATE_TIMEOUT": "1", "QWEN_VL_RATE_LIMIT": str(LIMIT),
              "QWEN_ALIGNER_URL": f"http://127.0.0.1:{ports['aligner']}",
              "QWEN_VL_URL": f"http://127.0.0.1:{ports['vl']}"}
    # Replica a believes nobody's X-Forwarded-For (the default); replica b sits behind a proxy on loopback.
    procs["a"] = start("services.gateway:Gateway", ports["a"], gw_env, logs["a"])
    procs["b"] = start("services.gateway:Gateway", ports["b"], {**gw_env, "QWEN_TRUSTED_PROXIES": "127.0.0.1"},
                       logs["b"])
    urls = {k: f"http://127.0.0.1:{ports[k]}" for k in ("a", "b")}
    try:
        for url in urls.values():
            wait_ok(url, "/health", time.monotonic() + 420, list(procs.values()), list(logs.values()))
        yield SimpleNamespace(a=urls["a"], b=urls["b"], procs=procs, logs=logs, redis=redis)
    finally:
        for p in procs.values():
            stop(p)
        redis.stop()


def generate(url: str, **headers) -> httpx.Response:
    return httpx.post(url + "/generate", data={"text": "hi"}, headers=headers, timeout=120)


def submit_align(url: str, seconds: float = 4.0) -> httpx.Response:
    audio = encode(song(seconds, sr=16000, seed=3), 16000, "wav")
    return httpx.post(url + "/api/v1/align/tasks", files={"audio": ("a.wav", audio)},
                      data={"lyrics": '["a b", "c d"]', "format": "json"}, timeout=120)


def poll(url: str, path: str, until, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(url + path, timeout=30).json()
        if until(body):
            return body
        time.sleep(0.2)
    raise AssertionError(f"{path}: still {body}")


def test_a_task_submitted_on_one_replica_is_answered_by_the_other(replicas):
    r = submit_align(replicas.a)
    assert r.status_code == 202, r.text
    status_url, result_url = r.json()["status_url"], r.json()["result_url"]
    done = poll(replicas.b, status_url, lambda b: b["status"] != "running")
    assert done["status"] == "succeeded", done
    on_b, on_a = httpx.get(replicas.b + result_url, timeout=30), httpx.get(replicas.a + result_url, timeout=30)
    assert on_b.status_code == on_a.status_code == 200 and on_b.content == on_a.content
    assert len(on_b.json()["segments"]) == 2
    # DELETE on the replica that did not run it forgets it everywhere.
    assert httpx.delete(replicas.b + status_url, timeout=30).status_code == 200
    assert httpx.get(replicas.a + status_url, timeout=30).status_code == 404


def test_one_limit_across_both_replicas_and_forged_addresses_do_not_help(replicas):
    """10 /generate per minute for this client, wherever they land: the 11th is a 429 with Retry-After on
    either replica. A forged X-Forwarded-For from our (untrusted) loopback peer changes nothing on replica a;
    behind replica b's trusted proxy (127.0.0.1) the forwarded address is the client, with its own bucket."""
    codes = [generate(replicas.a if i % 2 else replicas.b).status_code for i in range(LIMIT)]
    assert codes == [200] * LIMIT
    for url in (replicas.a, replicas.b):
        r = generate(url)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
        assert 1 <= int(r.headers["retry-after"]) <= 60
    for forged in ("6.6.6.6", "6.6.6.7", "6.6.6.8"):
        assert generate(replicas.a, **{"X-Forwarded-For": forged}).status_code == 429
    assert generate(replicas.b, **{"X-Forwarded-For": "198.51.100.7"}).status_code == 200
    # The same client's chat completions reach the same model: the same allowance, used up.
    chat = httpx.post(replicas.a + "/v1/chat/completions", timeout=60,
                      json={"model": "vl", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 429 and chat.json()["error"]["code"] == "rate_limited"


def test_redis_down_is_503_on_task_routes_only_and_heals_without_a_restart(replicas):
    replicas.redis.stop()
    try:
        r = submit_align(replicas.a)
        assert r.status_code == 503 and r.json()["error"]["code"] == "state_unavailable", r.text
        assert int(r.headers["retry-after"]) >= 1
        status = httpx.get(replicas.b + "/api/v1/align/tasks/0123", timeout=30)
        assert status.status_code == 503 and status.json()["error"]["code"] == "state_unavailable"
        # Everything else serves: plain alignment, the model list, and rate-limited routes (fail open).
        audio = encode(song(3.0, sr=16000, seed=4), 16000, "wav")
        plain = httpx.post(replicas.b + "/api/v1/align", files={"audio": ("a.wav", audio)},
                           data={"lyrics": '["a b"]', "format": "json"}, timeout=120)
        assert plain.status_code == 200, plain.text
        assert httpx.get(replicas.a + "/v1/models", timeout=30).status_code == 200
        assert generate(replicas.b, **{"X-Forwarded-For": "198.51.100.44"}).status_code == 200
    finally:
        replicas.redis.start()
    r = submit_align(replicas.a)
    assert r.status_code == 202, r.text
    assert poll(replicas.b, r.json()["status_url"], lambda b: b["status"] != "running")["status"] == "succeeded"
    logs = "".join(p.read_text(errors="replace") for p in replicas.logs.values())
    assert PASSWORD not in logs  # the state URL's password is never logged


def test_a_replica_killed_mid_task_leaves_it_failed_with_a_reason(replicas):
    """Replica a accepts a long alignment and is killed: b reports the task failed (task_lost) once its lease
    (15 s) has expired — not running forever. Runs last: a stays dead."""
    r = submit_align(replicas.a, seconds=240.0)
    assert r.status_code == 202, r.text
    status_url = r.json()["status_url"]
    assert httpx.get(replicas.b + status_url, timeout=30).json()["status"] == "running"
    for proc in process_tree(replicas.procs["a"].pid):  # SIGKILL: no cleanup, as a crashed node
        proc.kill()
    replicas.procs["a"].wait(30)
    body = poll(replicas.b, status_url, lambda b: b["status"] != "running", timeout=90)
    assert body["status"] == "failed" and body["error"]["code"] == "task_lost", body
    result = httpx.get(replicas.b + r.json()["result_url"], timeout=30)
    assert result.status_code == 503 and result.json()["error"]["code"] == "task_lost"
