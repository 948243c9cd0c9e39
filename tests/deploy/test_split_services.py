"""Per-service deployment: model services served on their own (`bentoml serve services.<svc>.service:<Class>`)
and a gateway reaching them by URL (QWEN_<SVC>_URL) — the shape of deploy/kubernetes and deploy/compose.
Real processes on loopback; calls cross as JSON (a standalone server refuses pickle)."""

from __future__ import annotations

import base64
import io
import os
import threading
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import psutil
import pytest
from PIL import Image

from tests.audio_fixtures import encode, song
from tests.served_session import free_port, process_tree
from tests.served_session import stop_server as stop

pytestmark = pytest.mark.served
ROOT = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).parent / "bentoml")


def start(target: str, port: int, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([BENTOML, "serve", target, "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_ok(url: str, path: str, deadline: float, procs, logs) -> None:
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            pytest.fail("a server exited:\n" + "\n".join(lg.read_text(errors="replace")[-1500:] for lg in logs))
        try:
            if httpx.get(url + path, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url}{path} not ready:\n" + "\n".join(lg.read_text(errors="replace")[-1500:] for lg in logs))


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    work = tmp_path_factory.mktemp("split")
    env = {**os.environ, "BENTOML_CONFIG": str(ROOT / "configuration.yaml"), "BENTOML_HOME": str(work / "home"),
           "BENTOML_DO_NOT_TRACK": "true", "QWEN_MODELS": "tiny", "QWEN_TINY_DIR": str(work / "tiny"),
           "QWEN_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "QWEN_VL_MAX_NEW_TOKENS": "4"}
    env.pop("QWEN_API_KEY", None)
    ports = {k: free_port() for k in ("aligner", "vl", "gateway", "tts")}
    logs = [work / f"{k}.log" for k in ports]
    procs = [start("services.aligner.service:Aligner", ports["aligner"], env, logs[0]),
             start("services.vl.service:VL", ports["vl"], env, logs[1])]
    gw_env = {**env, "QWEN_SERVICES": "aligner,vl,tts", "QWEN_ALIGNER_URL": f"http://127.0.0.1:{ports['aligner']}",
              "QWEN_VL_URL": f"http://127.0.0.1:{ports['vl']}", "QWEN_TTS_URL": f"http://127.0.0.1:{ports['tts']}",
              # The gateway's view of VL's deadline: its client waits 3 s + margin (2 s) for a hung VL.
              "QWEN_VL_TIMEOUT": "3",
              # A gateway without the playground: no page, no redirect.
              "QWEN_PLAYGROUND": "false"}
    procs.append(start("services.gateway:Gateway", ports["gateway"], gw_env, logs[2]))
    procs.append(start("services.tts.service:TTS", ports["tts"], {**env, "QWEN_TTS_MAX_FRAMES": "12"}, logs[3]))
    url = f"http://127.0.0.1:{ports['gateway']}"
    try:
        wait_ok(url, "/health", time.monotonic() + 420, procs, logs)
        yield SimpleNamespace(url=url, procs=procs, env=env, ports=ports, logs=logs, work=work)
    finally:
        for p in procs:
            stop(p)


def test_gateway_reaches_model_services_by_url_and_starts_none(split):
    url, procs = split.url, split.procs
    health = httpx.get(url + "/health").json()
    assert health["status"] == "healthy" and set(health["services"]) == {"aligner", "vl", "tts"}
    # The gateway's process tree holds no model worker: only its own service process(es).
    tree = psutil.Process(procs[2].pid).children(recursive=True)
    cmdlines = [" ".join(p.cmdline()) for p in tree]
    assert not any("--service-name" in c and ("aligner" in c or " vl" in c or "tts" in c) for c in cmdlines), cmdlines


def test_playground_off_means_no_page_and_no_redirect(split):
    for path in ("/playground", "/playground/app.js", "/playground/config.json"):
        r = httpx.get(split.url + path, follow_redirects=False)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.status_code)
    r = httpx.get(split.url + "/", follow_redirects=False)  # BentoML's own index again, not a redirect
    assert r.status_code == 200 and "location" not in r.headers


def test_calls_cross_as_json(split):
    url = split.url
    audio = encode(song(8.0, sr=16000), 16000, "wav")
    r = httpx.post(url + "/api/v1/align", files={"audio": ("a.wav", audio)},
                   data={"lyrics": '["one two", "three"]', "format": "json"}, timeout=120)
    assert r.status_code == 200, r.text
    assert [s["text"] for s in r.json()["segments"]] == ["one two", "three"]
    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (1, 2, 3)).save(buf, "PNG")
    r = httpx.post(url + "/generate", data={"text": "hi"}, files={"image": ("i.png", buf.getvalue())}, timeout=120)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
    data_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    r = httpx.post(url + "/v1/chat/completions", json={"model": "vl", "stream": True, "max_tokens": 3, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}}]}]}, timeout=120)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    # Errors keep their envelope across the hop.
    r = httpx.post(url + "/api/v1/align", files={"audio": ("a.wav", audio)}, data={"lyrics": '["x"]', "language": "xx"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_language"


def test_speech_crosses_as_json_whole_and_streamed(split):
    """The TTS contract over a socket: the whole answer (base64 float32 samples + how it finished) and the
    stream (header line with the rate, then PCM records and the finish record)."""
    import json
    import wave

    body = {"model": "tts-1", "input": "Hello there.", "voice": "ryan"}
    r = httpx.post(split.url + "/v1/audio/speech", json={**body, "response_format": "wav"}, timeout=120)
    assert r.status_code == 200 and r.headers["x-finish-reason"] == "length"  # the tiny talker never stops
    with wave.open(io.BytesIO(r.content)) as w:
        assert w.getframerate() == 24000 and w.getnframes() == 12 * 1920
    r = httpx.post(split.url + "/v1/audio/speech", json={**body, "response_format": "pcm", "stream_format": "sse"},
                   timeout=120)
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and events[-1]["type"] == "speech.audio.done"
    assert events[-1]["finish_reason"] == "length" and events[-1]["usage"]["output_tokens"] == 12
    assert sum(len(base64.b64decode(e["audio"])) for e in events[:-1]) == 12 * 1920 * 2
    r = httpx.post(split.url + "/v1/audio/speech", json={**body, "voice": "nobody"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_voice"


def test_a_dead_model_service_is_503_and_recovers_when_back(split):
    """Kill the aligner's server: the gateway says 503 with the reason (and keeps serving VL); start it
    again on the same address: health and alignment come back without touching the gateway."""
    url = split.url
    stop(split.procs[0])
    audio = encode(song(4.0, sr=16000), 16000, "wav")
    r = httpx.post(url + "/api/v1/align", files={"audio": ("a.wav", audio)}, data={"lyrics": '["a b"]'}, timeout=60)
    assert r.status_code == 503 and r.headers["retry-after"].isdigit(), r.text
    assert r.json()["error"]["code"] == "service_unavailable" and "aligner" in r.json()["error"]["message"]
    health = httpx.get(url + "/health", timeout=30)
    assert health.status_code == 503 and health.json()["services"]["aligner"]["status"] == "unreachable"
    assert health.json()["services"]["vl"]["status"] == "ready"
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, "PNG")
    assert httpx.post(url + "/generate", data={"text": "hi"}, files={"image": ("i.png", buf.getvalue())},
                      timeout=120).status_code == 200
    split.procs[0] = restart_aligner(split, split.env)
    wait_ok(url, "/health", time.monotonic() + 300, [split.procs[0], split.procs[2]], split.logs)
    r = httpx.post(url + "/api/v1/align", files={"audio": ("a.wav", audio)}, data={"lyrics": '["a b"]'}, timeout=60)
    assert r.status_code == 200, r.text


def restart_aligner(split, env: dict) -> subprocess.Popen:
    """Start the aligner's server again on its address. BentoML's supervisor reserves its control ports by
    probing for free ones, which can race with other processes on a busy machine: a start that dies in its
    first seconds with 'Address already in use' is retried once (anything else fails the test as usual)."""
    proc = start("services.aligner.service:Aligner", split.ports["aligner"], env, split.logs[0])
    for _ in range(20):
        if proc.poll() is not None:
            if "Address already in use" in split.logs[0].read_text(errors="replace"):
                return start("services.aligner.service:Aligner", split.ports["aligner"], env, split.logs[0])
            break
        time.sleep(0.25)
    return proc


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (5, 6, 7)).save(buf, "PNG")
    return buf.getvalue()


def _align(url: str, audio: bytes, timeout: float = 120) -> httpx.Response:
    return httpx.post(url + "/api/v1/align", files={"audio": ("a.wav", audio)}, data={"lyrics": '["a b", "c d"]', "format": "json"},
                      timeout=timeout)


def _aligner_status(url: str) -> dict:
    return httpx.get(url + "/health", timeout=30).json()["services"]["aligner"]


def assert_503_envelope(r: httpx.Response) -> dict:
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert r.headers["retry-after"].isdigit(), r.headers
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "aligner" in err["message"], err
    return err


def test_a_hung_model_service_is_504_and_serves_again_when_it_resumes(split):
    """SIGSTOP the VL server (alive, accepting connections, never answering): the gateway's call gives up
    after VL's deadline with a 504 in the envelope; /health says unreachable; SIGCONT and it serves."""
    url, vl = split.url, split.procs[1]
    signal_tree(vl, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = httpx.post(url + "/generate", data={"text": "hi"}, files={"image": ("i.png", _png())}, timeout=120)
        waited = time.monotonic() - t0
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        assert err["type"] == "timeout_error" and "vl" in err["message"], err
        assert waited < 60  # the gateway's deadline ended it, not the 120 s client timeout
        health = httpx.get(url + "/health", timeout=30)
        assert health.status_code == 503 and health.json()["services"]["vl"]["status"] == "unreachable"
        assert health.json()["services"]["aligner"]["status"] == "ready"
    finally:
        signal_tree(vl, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while True:
        r = httpx.post(url + "/generate", data={"text": "hi"}, files={"image": ("i.png", _png())}, timeout=120)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert r.status_code == 200, r.text
    assert httpx.get(url + "/health", timeout=30).status_code == 200


def test_a_model_service_killed_under_load_fails_its_requests_with_503_then_recovers(split):
    """Three ten-minute songs in flight (five aligner windows each), the aligner's server SIGKILLed once
    windows are queued: every answer is a 503 with Retry-After in the envelope (or a 429 if the queue was
    full) — never a 500 or a hang — and the gateway serves again once the process is back."""
    url = split.url
    long = encode(song(600.0, sr=8000, phrase=6.0, gap=1.5), 8000, "flac")
    results: list[httpx.Response | Exception] = []

    def one():
        try:
            results.append(httpx.post(url + "/api/v1/align", files={"audio": ("long.flac", long)},
                                      data={"lyrics": '["a b", "c d"]'}, timeout=120))
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            results.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    # The server holds work when it dies. A status call can time out while it is busy (seen on a loaded CI
    # host): the gateway then writes the status itself, with queue_depth null.
    while (_aligner_status(url).get("queue_depth") or 0) < 1:
        assert time.monotonic() < deadline and any(t.is_alive() for t in threads), results
        time.sleep(0.05)
    stop_hard(split.procs[0])
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 3 and not any(isinstance(r, Exception) for r in results), results
    codes = sorted(r.status_code for r in results)
    assert set(codes) <= {200, 429, 503} and 503 in codes, codes
    for r in results:
        if r.status_code == 503:
            assert assert_503_envelope(r)["code"] == "service_unavailable"
    split.procs[0] = restart_aligner(split, split.env)
    wait_ok(url, "/health", time.monotonic() + 300, [split.procs[0], split.procs[2]], split.logs)
    assert _align(url, encode(song(4.0, sr=16000), 16000, "wav")).status_code == 200


def test_a_model_service_killed_while_loading_is_503_and_a_restart_completes_the_load(split):
    """Restart the aligner on an empty weights folder (it builds its checkpoint first: the 'fetching
    weights' phase): while it loads, requests are 503 'loading' with Retry-After; SIGKILL it mid-load and
    they are 503 'unreachable'; start it again on the same folder (a half-written checkpoint must not be
    taken for a whole one) and it loads and serves."""
    url = split.url
    stop(split.procs[0])
    env = {**split.env, "QWEN_TINY_DIR": str(split.work / "tiny-fresh")}
    split.procs[0] = restart_aligner(split, env)
    deadline = time.monotonic() + 240
    while (st := _aligner_status(url))["status"] != "loading":
        assert time.monotonic() < deadline and st["status"] in ("unreachable", "loading"), st
        time.sleep(0.2)
    assert st["phase"], st  # the phase is shown while loading
    audio = encode(song(4.0, sr=16000), 16000, "wav")
    err = assert_503_envelope(_align(url, audio))
    assert err["code"] == "model_not_ready" and "loading" in err["message"], err
    stop_hard(split.procs[0])
    assert assert_503_envelope(_align(url, audio))["code"] == "service_unavailable"
    assert _aligner_status(url)["status"] == "unreachable"
    split.procs[0] = restart_aligner(split, env)
    wait_ok(url, "/health", time.monotonic() + 300, [split.procs[0], split.procs[2]], split.logs)
    r = _align(url, audio)
    assert r.status_code == 200 and len(r.json()["segments"]) == 2, r.text


def signal_tree(proc: subprocess.Popen, sig: int) -> list[psutil.Process]:
    """Signal the server and every process under it (BentoML's workers are not all in its process group)."""
    procs = process_tree(proc.pid)
    for p in procs:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    return procs


def stop_hard(proc: subprocess.Popen) -> None:
    """SIGKILL the whole server (arbiter and workers): a crash, not a shutdown. Returns once every process
    of it is gone, so its port and control sockets are free for the restart."""
    procs = signal_tree(proc, signal.SIGKILL)
    proc.wait(timeout=15)
    gone, alive = psutil.wait_procs(procs, timeout=15)
    assert not alive, alive


def test_a_task_is_409_while_it_runs_then_its_result(split):
    """The aligner's server is stopped (SIGSTOP) while a task waits on it: the task is accepted (202) and
    its result is a 409 `task_not_finished` until the aligner resumes; then the result is the answer."""
    url, audio = split.url, encode(song(4.0, sr=16000), 16000, "wav")
    signal_tree(split.procs[0], signal.SIGSTOP)
    try:
        r = httpx.post(url + "/api/v1/align/tasks", files={"audio": ("a.wav", audio)},
                       data={"lyrics": '["a b", "c d"]', "format": "json"}, timeout=60)
        assert r.status_code == 202, r.text
        task = r.json()
        deadline = time.monotonic() + 30
        while (st := httpx.get(url + task["status_url"]).json())["status"] == "pending":
            assert time.monotonic() < deadline, st
            time.sleep(0.1)
        assert st["status"] == "running", st  # waiting on the stopped aligner
        r = httpx.get(url + task["result_url"])
        assert r.status_code == 409 and r.json()["error"]["code"] == "task_not_finished", r.text
    finally:
        signal_tree(split.procs[0], signal.SIGCONT)
    deadline = time.monotonic() + 120
    while (st := httpx.get(url + task["status_url"]).json())["status"] == "running":
        assert time.monotonic() < deadline, st
        time.sleep(0.2)
    r = httpx.get(url + task["result_url"])
    assert st["status"] == "succeeded" and r.status_code == 200 and len(r.json()["segments"]) == 2, r.text


class _StatusStub:
    """Stands in for a model service on its address: answers BentoML's `status` API (POST /status) with
    `body`, as a service whose model serves with something missing (a diagram LoRA adapter) does."""

    def __init__(self, port: int, body: dict):
        import http.server
        import json

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                data = json.dumps(body).encode()
                self.send_response(200 if self.path == "/status" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_health_failed_for_a_model_that_does_not_load_and_degraded_is_200(split):
    """The aligner restarted on weights that do not exist: its model fails to load. /health is 503
    `unhealthy` with the aligner `failed` and the reason; requests (and tasks) answer 503 `model_failed`.
    A service reporting `degraded` (a stub on the aligner's address) makes /health 200 `degraded`. The real
    aligner is started again at the end."""
    url, audio = split.url, encode(song(4.0, sr=16000), 16000, "wav")
    stop(split.procs[0])
    missing = split.work / "no-such-weights"
    split.procs[0] = restart_aligner(split, {**split.env, "QWEN_MODELS": "hub", "QWEN_ALIGNER_MODEL": str(missing)})
    deadline = time.monotonic() + 240
    while (st := _aligner_status(url))["status"] != "failed":
        assert time.monotonic() < deadline and st["status"] in ("unreachable", "loading"), st
        time.sleep(0.5)
    health = httpx.get(url + "/health", timeout=30)
    assert health.status_code == 503 and health.json()["status"] == "unhealthy", health.text
    assert str(missing) in st["error"] and health.json()["services"]["vl"]["status"] == "ready", st
    err = assert_503_envelope(_align(url, audio))
    assert err["code"] == "model_failed" and "failed to load" in err["message"], err
    r = httpx.post(url + "/api/v1/align/tasks", files={"audio": ("a.wav", audio)}, data={"lyrics": '["a b"]'})
    assert r.status_code == 202, r.text
    task, deadline = r.json(), time.monotonic() + 60
    while (st := httpx.get(url + task["status_url"]).json())["status"] in ("pending", "running"):
        assert time.monotonic() < deadline, st
        time.sleep(0.2)
    assert st["status"] == "failed" and st["error"]["code"] == "model_failed", st
    result = httpx.get(url + task["result_url"])
    assert assert_503_envelope(result) == st["error"]  # the failed task's result is its error

    stop(split.procs[0])
    stub = _StatusStub(split.ports["aligner"], {"status": "degraded", "error": "adapter 'x' not served"})
    try:
        health = httpx.get(url + "/health", timeout=30)
        assert health.status_code == 200 and health.json()["status"] == "degraded", health.text
        assert health.json()["services"]["aligner"]["status"] == "degraded"
    finally:
        stub.close()
    split.procs[0] = restart_aligner(split, split.env)
    wait_ok(url, "/health", time.monotonic() + 300, [split.procs[0], split.procs[2]], split.logs)
    assert _align(url, audio).status_code == 200
