"""The captioner's vLLM backend without vLLM: command line, request/SSE mapping against a fake OpenAI
server on 127.0.0.1, and the supervision of a child process (a Python one-liner HTTP server)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from services.captioner import vllm_backend as vb
from services.captioner.engine import GenParams
from services.runtime.errors import InvalidRequest, QwenError, ServiceUnavailable
from services.runtime.settings import CaptionerSettings

PARAMS = GenParams(max_tokens=64, temperature=0.6, top_p=0.95, top_k=20, seed=7)
AUDIO = (0.25 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 16000)).astype(np.float32)


def settings(**kw) -> CaptionerSettings:
    base = dict(model="Qwen/Qwen3-Omni-30B-A3B-Captioner", vllm_command="vllm serve", vllm_host="127.0.0.1",
                vllm_port=0, vllm_tensor_parallel_size=None, vllm_extra_args="", max_model_len=32768,
                vllm_gpu_memory_utilization=0.95, vllm_max_num_seqs=8, vllm_start_timeout=30.0,
                vllm_restart_backoff=0.2, timeout=30.0, aliases=["captioner", "qwen3-omni-captioner"])
    base.update(kw)
    return CaptionerSettings(**base)


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


# -- command line ----------------------------------------------------------------------------------------
def test_command_vllm_serve_form(monkeypatch):
    monkeypatch.setattr(vb, "visible_gpu_count", lambda: 2)
    cfg = settings(vllm_extra_args="--enforce-eager --chat-template '/a b/t.jinja'")
    cmd = vb.build_command(cfg, "/models/cap", "bfloat16", 8123)
    assert os.path.basename(cmd[0]) == "vllm" and cmd[1:3] == ["serve", "/models/cap"]  # positional model
    assert "--model" not in cmd
    assert flag(cmd, "--tensor-parallel-size") == "2"
    assert flag(cmd, "--max-model-len") == "32768"
    assert flag(cmd, "--gpu-memory-utilization") == "0.95"
    assert flag(cmd, "--max-num-seqs") == "8"
    assert flag(cmd, "--dtype") == "bfloat16"
    assert json.loads(flag(cmd, "--limit-mm-per-prompt")) == {"audio": 1, "image": 0, "video": 0}
    assert flag(cmd, "--host") == "127.0.0.1" and flag(cmd, "--port") == "8123"
    i = cmd.index("--served-model-name")
    assert cmd[i + 1:i + 4] == ["Qwen/Qwen3-Omni-30B-A3B-Captioner", "captioner", "qwen3-omni-captioner"]
    assert cmd[-3:] == ["--enforce-eager", "--chat-template", "/a b/t.jinja"]  # shell-split, last


def test_command_python_module_form():
    cfg = settings(vllm_command="'/opt/venv vllm/bin/python' -m vllm.entrypoints.openai.api_server",
                   vllm_tensor_parallel_size=4)
    cmd = vb.build_command(cfg, "/models/cap", "float32", 9000)
    assert cmd[:5] == ["/opt/venv vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model",
                       "/models/cap"]
    assert flag(cmd, "--tensor-parallel-size") == "4"  # explicit setting wins over the GPU count
    assert flag(cmd, "--dtype") == "float32"


def test_tp_defaults_to_visible_gpus(monkeypatch):
    import torch

    from services.runtime import device

    monkeypatch.setattr(device, "_nvml", lambda: None)  # torch's count answers (a GPU host's NVML would)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert flag(vb.build_command(settings(), "/m", "auto", 1), "--tensor-parallel-size") == "3"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert flag(vb.build_command(settings(), "/m", "auto", 1), "--tensor-parallel-size") == "1"  # no GPU


def test_visible_gpus_from_env_without_torch(monkeypatch):
    from services.runtime import device

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.setattr(device, "_nvml", lambda: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert vb.visible_gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,-1,3")  # CUDA stops at the first invalid id
    assert vb.visible_gpu_count() == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert vb.visible_gpu_count() == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert vb.visible_gpu_count() == 0


def test_placed_tensor_parallel_size_wins():
    cmd = vb.build_command(settings(vllm_tensor_parallel_size=4), "/m", "bfloat16", 1, tensor_parallel_size=2)
    assert flag(cmd, "--tensor-parallel-size") == "2"


# -- finding vLLM ------------------------------------------------------------------------------------------
@pytest.fixture
def no_vllm_anywhere(monkeypatch, tmp_path):
    """This interpreter in a venv without vLLM, and a PATH without it (`make serve` on a CUDA host)."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "path").mkdir()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    return tmp_path


def executable(path):
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_bare_vllm_is_the_one_next_to_the_interpreter_then_on_path(no_vllm_anywhere):
    assert vb.resolve_command("vllm serve") == ["vllm", "serve"]  # nowhere: left for the check to refuse
    on_path = executable(no_vllm_anywhere / "path" / "vllm")
    assert vb.build_command(settings(), "/m", "auto", 1)[:3] == [on_path, "serve", "/m"]
    venv = executable(no_vllm_anywhere / "venv" / "bin" / "vllm")  # the venv's wins: PATH may lack it
    assert vb.build_command(settings(), "/m", "auto", 1)[:3] == [venv, "serve", "/m"]
    vb.check_command("vllm serve")
    assert vb.resolve_command("/opt/x/bin/python -m vllm.entrypoints.openai.api_server")[0] == "/opt/x/bin/python"


def test_missing_vllm_is_refused_with_the_install_hint(no_vllm_anywhere, monkeypatch):
    from services.runtime import device

    with pytest.raises(RuntimeError, match=r"no `vllm` is installed next to this interpreter .*uv sync --extra cuda"):
        vb.check_command("vllm serve")
    with pytest.raises(RuntimeError, match="not an executable"):
        vb.check_command("/nonexistent/bin/python -m vllm.entrypoints.openai.api_server")
    # This interpreter's `-m vllm...`: vLLM must be importable here.
    python = executable(no_vllm_anywhere / "venv" / "bin" / "python")
    monkeypatch.setattr(device.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"captioner: .*not installed.*uv sync --extra cuda"):
        vb.check_command(shlex.join([python, "-m", "vllm.entrypoints.openai.api_server"]))
    other = executable(no_vllm_anywhere / "path" / "python3")  # another interpreter: not inspected
    vb.check_command(shlex.join([other, "-m", "vllm.entrypoints.openai.api_server"]))


def test_captioner_refuses_a_missing_vllm_before_placing_or_fetching(no_vllm_anywhere, monkeypatch):
    """backend auto on CUDA is vLLM: without it the load fails at once with the hint (was: /health 503
    after the weights were fetched)."""
    from services.captioner import service as cs
    from services.runtime import modelservice
    from services.runtime.settings import Settings

    monkeypatch.setattr(cs, "resolve_device", lambda preference: "cuda")
    monkeypatch.setattr(modelservice, "place", lambda *a: pytest.fail("placed"))
    svc = cs.Captioner.inner.__new__(cs.Captioner.inner)
    svc.settings = Settings()
    svc.cfg = svc.settings.captioner
    assert svc.cfg.backend == "auto"
    with pytest.raises(RuntimeError, match="uv sync --extra cuda"):
        svc._load()
    monkeypatch.setattr(cs, "resolve_device", lambda preference: "cpu")  # auto off CUDA: transformers
    assert svc.backend_for("cpu") == "transformers"
    svc.check_settings()


def test_port_zero_means_free_port():
    server = vb.VLLMServer(settings(), "/m", "float32")
    assert server.port > 0 and flag(server.command, "--port") == str(server.port)
    assert vb.VLLMServer(settings(vllm_port=8555), "/m", "float32").port == 8555
    assert server.state == "stopped" and server.served_model_name == "Qwen/Qwen3-Omni-30B-A3B-Captioner"


# -- request mapping -------------------------------------------------------------------------------------
def test_chat_request_maps_params_and_audio():
    body = vb.chat_request("cap", AUDIO, PARAMS, stream=False, max_model_len=4096)
    assert body["model"] == "cap" and body["stream"] is False and "stream_options" not in body
    assert (body["temperature"], body["top_p"], body["top_k"], body["max_tokens"], body["seed"]) == \
        (0.6, 0.95, 20, 64, 7)
    (msg,) = body["messages"]
    assert msg["role"] == "user"
    (part,) = msg["content"]  # the clip alone: the captioner takes no text prompt
    assert part["type"] == "audio_url"
    url = part["audio_url"]["url"]
    assert url.startswith("data:audio/wav;base64,")
    with wave.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 8000)
        pcm = np.frombuffer(w.readframes(8000), dtype="<i2") / 32767.0
    assert np.abs(pcm - AUDIO).max() < 1e-4

    s = vb.chat_request("cap", AUDIO, GenParams(max_tokens=4096, temperature=0, top_p=1, top_k=0), stream=True,
                        max_model_len=4096)
    assert s["stream_options"] == {"include_usage": True}
    assert "max_tokens" not in s and "seed" not in s  # the whole context: vLLM's default (the rest)
    assert s["top_k"] == -1  # 0 means "off" for us, -1 for vLLM


def test_iter_sse():
    lines = [": keep-alive", "data: {\"a\": 1}", "", "event: x", "data: line1\r", "data:line2", "", "data: [DONE]"]
    assert list(vb.iter_sse(lines)) == ['{"a": 1}', "line1\nline2", "[DONE]"]


def test_vllm_series_filter():
    text = ("# HELP python_gc_objects_collected_total x\n# TYPE python_gc_objects_collected_total counter\n"
            "python_gc_objects_collected_total{generation=\"0\"} 1.0\n"
            "# HELP vllm:num_requests_running Running.\n# TYPE vllm:num_requests_running gauge\n"
            "vllm:num_requests_running{model_name=\"cap\"} 0.0\nprocess_cpu_seconds_total 3.0\n")
    out = vb.vllm_series(text)
    assert out.splitlines() == ["# HELP vllm:num_requests_running Running.", "# TYPE vllm:num_requests_running gauge",
                                "vllm:num_requests_running{model_name=\"cap\"} 0.0"]


# -- the proxy against a fake OpenAI server ---------------------------------------------------------------
class FakeOpenAI:
    """A minimal upstream speaking vLLM's chat-completions wire format; `mode` picks the answer."""

    def __init__(self):
        self.requests: list[dict] = []
        self.mode = "ok"
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, body: bytes, ctype="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/health":
                    return self._send(200, b"")
                if self.path == "/metrics":
                    return self._send(200, b"# TYPE process_open_fds gauge\nprocess_open_fds 9.0\n"
                                      b"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 0.0\n",
                                      "text/plain")
                self._send(404, b"{}")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                if fake.mode == "bad":
                    return self._send(400, json.dumps({"error": {"message": "audio could not be decoded",
                                                                 "type": "BadRequestError", "code": 400}}).encode())
                if fake.mode == "too_large" and "max_tokens" in body:
                    return self._send(400, json.dumps({"error": {
                        "message": "'max_tokens' or 'max_completion_tokens' is too large: 64. This model's "
                                   "maximum context length is 40 tokens and your request has 30 input tokens "
                                   "(64 > 40 - 30).", "type": "BadRequestError", "code": 400}}).encode())
                if not body.get("stream"):
                    return self._send(200, json.dumps({
                        "id": "c1", "object": "chat.completion", "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "a calm voice"},
                                     "finish_reason": "length" if fake.mode == "too_large" else "stop"}],
                        "usage": {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}}).encode())
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def chunk(obj):
                    data = obj if isinstance(obj, str) else json.dumps(obj)
                    raw = f"data: {data}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
                    self.wfile.flush()

                base = {"id": "c2", "object": "chat.completion.chunk", "model": body["model"]}
                chunk({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
                for piece in ("a ", "calm ", "voice"):
                    chunk({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                if fake.mode == "stream_error":
                    chunk({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}})
                else:
                    chunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                    chunk({**base, "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 3}})
                    chunk("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class StubServer:
    def __init__(self, base_url: str, state: str = "ready"):
        self.base_url, self.state, self.error = base_url, state, None
        self.served_model_name = "cap"

    @property
    def ready(self):
        return self.state == "ready"


@pytest.fixture
def fake():
    f = FakeOpenAI()
    yield f
    f.close()


def engine_for(base_url: str, **kw) -> vb.VLLMCaptionEngine:
    return vb.VLLMCaptionEngine(StubServer(base_url, **kw), settings(max_model_len=4096), owns_server=False)


def test_complete_maps_answer(fake):
    eng = engine_for(fake.base_url)
    c = asyncio.run(eng.complete(AUDIO, PARAMS))
    assert (c.text, c.finish_reason, c.usage.prompt_tokens, c.usage.completion_tokens) == ("a calm voice", "stop",
                                                                                          30, 3)
    (req,) = fake.requests
    assert req["model"] == "cap" and req["top_k"] == 20 and req["seed"] == 7 and req["max_tokens"] == 64
    assert req["messages"][0]["content"][0]["type"] == "audio_url"


def test_stream_yields_deltas_then_finish_and_usage(fake):
    eng = engine_for(fake.base_url)

    async def collect():
        return [d async for d in eng.stream(AUDIO, PARAMS)]

    deltas = asyncio.run(collect())
    assert [d.text for d in deltas[:-1]] == ["a ", "calm ", "voice"]
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    last = deltas[-1]
    assert last.text == "" and last.finish_reason == "stop"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (30, 3, 33)
    req = fake.requests[-1]
    assert req["stream"] is True and req["stream_options"] == {"include_usage": True}


def test_upstream_400_is_invalid_request_with_its_message(fake):
    fake.mode = "bad"
    eng = engine_for(fake.base_url)
    with pytest.raises(InvalidRequest, match="audio could not be decoded") as ei:
        asyncio.run(eng.complete(AUDIO, PARAMS))
    assert ei.value.status == 400

    async def collect():
        return [d async for d in eng.stream(AUDIO, PARAMS)]

    with pytest.raises(InvalidRequest, match="audio could not be decoded"):
        asyncio.run(collect())


def test_max_tokens_beyond_context_falls_back_to_the_rest(fake):
    """vLLM 0.14 rejects prompt + max_tokens > max_model_len; we then ask for what is left."""
    fake.mode = "too_large"
    eng = engine_for(fake.base_url)
    c = asyncio.run(eng.complete(AUDIO, PARAMS))
    assert c.finish_reason == "length"
    assert "max_tokens" in fake.requests[0] and "max_tokens" not in fake.requests[1]

    async def collect():
        return [d async for d in eng.stream(AUDIO, PARAMS)]

    deltas = asyncio.run(collect())
    assert deltas[-1].finish_reason == "stop"
    assert "max_tokens" in fake.requests[2] and "max_tokens" not in fake.requests[3]


def test_error_in_the_middle_of_a_stream(fake):
    fake.mode = "stream_error"
    eng = engine_for(fake.base_url)
    got: list = []

    async def collect():
        async for d in eng.stream(AUDIO, PARAMS):
            got.append(d)

    with pytest.raises(QwenError, match="engine died") as ei:
        asyncio.run(collect())
    assert ei.value.status == 500 and [d.text for d in got] == ["a ", "calm ", "voice"]


def test_unreachable_or_not_ready_is_503():
    eng = engine_for(f"http://127.0.0.1:{vb.free_port()}")  # nothing listens there
    with pytest.raises(ServiceUnavailable) as ei:
        asyncio.run(eng.complete(AUDIO, PARAMS))
    assert ei.value.status == 503 and ei.value.retry_after

    eng = engine_for("http://127.0.0.1:9", state="loading")
    with pytest.raises(ServiceUnavailable, match="loading") as ei:
        asyncio.run(eng.complete(AUDIO, PARAMS))
    assert ei.value.headers()["Retry-After"]
    assert asyncio.run(eng.metrics_text()) == ""


def test_metrics_text_keeps_vllm_series(fake):
    eng = engine_for(fake.base_url)
    text = asyncio.run(eng.metrics_text())
    assert "vllm:num_requests_waiting 0.0" in text and "process_open_fds" not in text


# -- supervision of the child --------------------------------------------------------------------------
# A stand-in for `vllm serve`: answers /health and a fixed chat completion on --port; with $FAKE_PIDS set,
# it starts a grandchild (like vLLM's engine core) and writes "child grandchild" pids there.
CHILD = r"""
import json, os, subprocess, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
a = sys.argv
port = int(a[a.index('--port') + 1])
if os.environ.get('FAKE_PIDS'):
    g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
    open(os.environ['FAKE_PIDS'], 'w').write(f'{os.getpid()} {g.pid}')
class H(BaseHTTPRequestHandler):
    def log_message(self, *x):
        pass
    def _send(self, code, body):
        self.send_response(code); self.send_header('Content-Length', str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self._send(200 if self.path == '/health' else 404, b'')
    def do_POST(self):
        self.rfile.read(int(self.headers['Content-Length']))
        self._send(200, json.dumps({'choices': [{'message': {'content': 'ok'}, 'finish_reason': 'stop'}],
                                    'usage': {'prompt_tokens': 5, 'completion_tokens': 1}}).encode())
print('fake vllm listening on', port, flush=True)
HTTPServer(('127.0.0.1', port), H).serve_forever()
"""


def child_settings(script: str, **kw) -> CaptionerSettings:
    return settings(vllm_command=shlex.join([sys.executable, "-c", script]), vllm_tensor_parallel_size=1, **kw)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_child_is_restarted_after_it_dies_and_stopped_with_its_group(tmp_path):
    pids = tmp_path / "pids"
    server = vb.VLLMServer(child_settings(CHILD), "/models/fake", "float32", env={"FAKE_PIDS": str(pids)})
    server.HEALTH_INTERVAL = 0.1
    server.start()
    try:
        assert server.wait_ready(20), server.error
        assert server.state == "ready" and server.error is None
        child, grandchild = map(int, pids.read_text().split())
        assert server.pid == child and alive(grandchild)

        eng = vb.VLLMCaptionEngine(server, child_settings(CHILD), owns_server=False)
        assert asyncio.run(eng.complete(AUDIO, PARAMS)).text == "ok"

        os.kill(child, signal.SIGKILL)  # the API server dies (its engine core is left behind)
        assert wait_for(lambda: server.state != "ready", 5)
        with pytest.raises(ServiceUnavailable):
            asyncio.run(eng.complete(AUDIO, PARAMS))
        assert wait_for(lambda: server.ready and server.pid not in (None, child), 20), server.info()
        assert server.restarts == 1 and "signal 9" in server.info()["last_error"]
        assert wait_for(lambda: not alive(grandchild), 5)  # the old group was reaped before the restart
        assert asyncio.run(eng.complete(AUDIO, PARAMS)).text == "ok"  # serves again

        child2, grandchild2 = map(int, pids.read_text().split())
        assert child2 == server.pid
    finally:
        server.close()
    assert server.state == "stopped"
    assert wait_for(lambda: not alive(child2) and not alive(grandchild2), 5)


def test_engine_start_places_the_child_on_its_gpus(tmp_path, monkeypatch):
    """The GPUs placement chose reach the child as CUDA_VISIBLE_DEVICES, their count as tensor parallel."""
    seen = tmp_path / "seen"
    monkeypatch.setenv("FAKE_SEEN", str(seen))
    script = ("import json, os, sys\nopen(os.environ['FAKE_SEEN'], 'w').write(json.dumps("
              "[os.environ.get('CUDA_VISIBLE_DEVICES'), sys.argv]))\n" + CHILD)
    cfg = settings(vllm_command=shlex.join([sys.executable, "-c", script]))
    engine = vb.VLLMCaptionEngine.start(cfg, "/models/fake", "float16", gpus=["2", "3"])
    try:
        visible, argv = json.loads(seen.read_text())
        assert visible == "2,3" and flag(argv, "--tensor-parallel-size") == "2"
    finally:
        engine.server.close()


def test_start_failure_is_reported_with_the_child_output(caplog):
    script = ("import sys; print('(APIServer pid=1) INFO 11-22 [api.py:1] Received request c1: prompt: secret'); "
              "print('(APIServer pid=1) ERROR 11-22 [core.py:9] ValueError: no such model', flush=True); "
              "sys.exit(3)")
    logger = logging.getLogger("qwen.captioner.vllm")
    logger.addHandler(caplog.handler)  # the qwen tree may not propagate to the root (runtime.logging)
    caplog.set_level(logging.INFO, logger="qwen.captioner.vllm")
    server = vb.VLLMServer(child_settings(script), "/nope", "float32").start()
    try:
        assert server.wait_ready(20) is False
        assert server.state == "failed"
        assert "code 3" in server.error and "no such model" in server.error
        assert server.restarts == 0  # a child that never got ready is not restarted blindly
    finally:
        server.close()
        logger.removeHandler(caplog.handler)
    forwarded = [r for r in caplog.records if "no such model" in r.getMessage()]
    assert forwarded and forwarded[0].levelno == logging.ERROR  # vLLM's level kept
    assert not any("secret" in r.getMessage() for r in caplog.records)  # request content never logged

    with pytest.raises(RuntimeError, match="no such model"):
        vb.VLLMCaptionEngine.start(child_settings(script), "/nope", "float32")


def test_start_timeout():
    server = vb.VLLMServer(child_settings("import time; time.sleep(60)", vllm_start_timeout=1.0), "/m", "float32")
    server.start()
    try:
        assert server.wait_ready(20) is False
        assert server.state == "failed" and "not ready after" in server.error
        assert server.pid is None  # the hung child was stopped
    finally:
        server.close()


def test_missing_command_fails_fast():
    cfg = settings(vllm_command="/nonexistent/bin/python -m vllm.entrypoints.openai.api_server")
    server = vb.VLLMServer(cfg, "/m", "float32").start()
    try:
        assert server.wait_ready(10) is False
        assert server.state == "failed" and "cannot start vLLM" in server.error
    finally:
        server.close()
