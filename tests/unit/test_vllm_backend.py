"""vLLM backends without vLLM: the engine environment and the command line (runtime.serving.vllm_server),
the captioner's request mapping, and VLLMCaptionEngine against a fake OpenAI server on 127.0.0.1 and a fake
child (supervision itself: test_engine_supervisor.py; the OpenAI protocol: test_openai_client.py; the
ASR's engine: test_asr_vllm.py)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shlex
import sys
import wave

import numpy as np
import pytest

from services.captioner import vllm_backend as vb
from services.runtime.serving import device, vllm_server
from services.captioner.engine import GenParams
from services.runtime.serving.engine_supervisor import free_port
from services.runtime.core.errors import InvalidRequest, QwenError, ServiceUnavailable
from services.runtime.core.settings import CaptionerSettings

from .fake_servers import CHILD, FakeOpenAI

PARAMS = GenParams(max_tokens=64, temperature=0.6, top_p=0.95, top_k=20, seed=7)
AUDIO = (0.25 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 16000)).astype(np.float32)


@pytest.fixture(autouse=True)
def fresh_settings():
    """QWEN_ENGINE_HOME is read through the cached global settings: each test reads its own environment."""
    from services.runtime.core.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


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
    monkeypatch.setattr(device, "visible_gpu_count", lambda: 2)
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

    monkeypatch.setattr(device, "_nvml", lambda: None)  # torch's count answers (a GPU host's NVML would)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert flag(vb.build_command(settings(), "/m", "auto", 1), "--tensor-parallel-size") == "3"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert flag(vb.build_command(settings(), "/m", "auto", 1), "--tensor-parallel-size") == "1"  # no GPU


def test_visible_gpus_from_env_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    monkeypatch.setattr(device, "_nvml", lambda: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert device.visible_gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,-1,3")  # CUDA stops at the first invalid id
    assert device.visible_gpu_count() == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device.visible_gpu_count() == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert device.visible_gpu_count() == 0


def test_placed_tensor_parallel_size_wins():
    cmd = vb.build_command(settings(vllm_tensor_parallel_size=4), "/m", "bfloat16", 1, tensor_parallel_size=2)
    assert flag(cmd, "--tensor-parallel-size") == "2"


# -- finding vLLM ------------------------------------------------------------------------------------------
@pytest.fixture
def no_vllm_anywhere(monkeypatch, tmp_path):
    """No engine environment (QWEN_ENGINE_HOME names an empty folder), this interpreter in a venv without
    vLLM, and a PATH without it."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "path").mkdir()
    (tmp_path / "engine").mkdir()
    monkeypatch.setenv("QWEN_ENGINE_HOME", str(tmp_path / "engine"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    return tmp_path


def executable(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_the_default_command_is_the_engine_environments_server_module(no_vllm_anywhere):
    assert not vllm_server.engine_available()
    python = executable(no_vllm_anywhere / "engine" / "bin" / "python")
    assert vllm_server.engine_available()
    cmd = vb.build_command(settings(vllm_command=""), "/m", "auto", 1)
    assert cmd[:5] == [python, "-m", "vllm.entrypoints.openai.api_server", "--model", "/m"]
    vllm_server.check_command(settings(vllm_command=""), "captioner")


def test_without_the_engine_environment_config_decides_the_default(monkeypatch, tmp_path):
    """QWEN_ENGINE_HOME unset: the CUDA image's /opt/qwen-engine, else the project's .venv-engine."""
    monkeypatch.delenv("QWEN_ENGINE_HOME", raising=False)
    image, project = tmp_path / "opt", tmp_path / "project"
    monkeypatch.setattr(vllm_server, "IMAGE_ENGINE_HOME", image)
    monkeypatch.setattr(vllm_server, "PROJECT_ENGINE_HOME", project)
    assert vllm_server.engine_home() is None
    executable(project / "bin" / "python")
    assert vllm_server.engine_home() == project
    executable(image / "bin" / "python")
    assert vllm_server.engine_home() == image
    (image / "qwen-engine.flavor").write_text("cuda\n")
    assert vllm_server.engine_flavor() == "cuda"


def test_bare_vllm_is_the_one_next_to_the_interpreter_then_on_path(no_vllm_anywhere):
    assert vllm_server.resolve_command("vllm serve") == ["vllm", "serve"]  # nowhere: left for the check to refuse
    on_path = executable(no_vllm_anywhere / "path" / "vllm")
    assert vb.build_command(settings(), "/m", "auto", 1)[:3] == [on_path, "serve", "/m"]
    venv = executable(no_vllm_anywhere / "venv" / "bin" / "vllm")  # the venv's wins: PATH may lack it
    assert vb.build_command(settings(), "/m", "auto", 1)[:3] == [venv, "serve", "/m"]
    vllm_server.check_command(settings(), "captioner")
    assert vllm_server.resolve_command("/opt/x/bin/python -m vllm.entrypoints.openai.api_server")[0] == "/opt/x/bin/python"


def test_missing_vllm_is_refused_with_the_install_hint(no_vllm_anywhere):
    with pytest.raises(RuntimeError, match=r"captioner: .*no engine environment .*make engine-env"):
        vllm_server.check_command(settings(vllm_command=""), "captioner")
    with pytest.raises(RuntimeError, match="QWEN_ASR_VLLM_COMMAND names .*not an executable"):
        vllm_server.check_command(settings(vllm_command="/nonexistent/bin/python -m vllm.entrypoints.openai.api_server"),
                                  "asr")


def test_backend_auto_is_vllm_on_cuda_only_with_the_engine_environment(no_vllm_anywhere):
    cfg = settings(backend="auto")
    assert not vllm_server.uses_vllm(cfg, "cuda:0")  # no engine environment: transformers
    executable(no_vllm_anywhere / "engine" / "bin" / "python")
    assert vllm_server.uses_vllm(cfg, "cuda:0") and vllm_server.uses_vllm(cfg, "cuda")
    assert not vllm_server.uses_vllm(cfg, "cpu") and not vllm_server.uses_vllm(cfg, "mps")
    assert vllm_server.uses_vllm(settings(backend="vllm"), "cpu")  # asked for: the CPU twin in the tests
    assert not vllm_server.uses_vllm(settings(backend="transformers"), "cuda:0")


def test_captioner_refuses_a_missing_vllm_before_placing_or_fetching(no_vllm_anywhere, monkeypatch):
    """backend vllm without an engine environment: the load fails at once with the hint (not after the
    weights were fetched); auto without it is transformers."""
    from services.captioner import service as cs
    from services.runtime.serving import modelservice
    from services.runtime.core.settings import Settings

    monkeypatch.setattr(modelservice, "resolve_device", lambda preference: "cuda")
    monkeypatch.setattr(modelservice, "place", lambda *a: pytest.fail("placed"))
    svc = cs.Captioner.inner.__new__(cs.Captioner.inner)
    svc.settings = Settings()
    svc.cfg = svc.settings.captioner.model_copy(update={"backend": "vllm"})
    with pytest.raises(RuntimeError, match="make engine-env"):
        svc._load()
    svc.cfg = svc.settings.captioner
    assert svc.cfg.backend == "auto" and svc.backend_for("cuda") == "transformers"
    svc.check_settings()


def test_the_child_is_configured_from_settings(monkeypatch):
    """Port 0 means a free port; the child is told it; vLLM's usage reporting is off; only its vllm:*
    metric families are passed on."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    server = vb.managed(settings(), "/m", "float32")
    assert server.port > 0 and flag(server.command, "--port") == str(server.port)
    assert server.state == "stopped" and server.metric_prefixes == ("vllm:",)
    assert server.env["VLLM_NO_USAGE_STATS"] == "1" and server.env["DO_NOT_TRACK"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in server.env  # not placed on GPUs: nothing restricted
    fixed = vb.managed(settings(vllm_port=8555), "/m", "float32", gpus=["1", "3"])
    assert fixed.port == 8555 and fixed.env["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert flag(fixed.command, "--tensor-parallel-size") == "2"


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


# -- the engine against a fake OpenAI server ---------------------------------------------------------------
@pytest.fixture
def fake():
    f = FakeOpenAI()
    yield f
    f.close()


MODEL = "Qwen/Qwen3-Omni-30B-A3B-Captioner"  # the first served name: what the engine asks for


def engine_for(port: int, state: str = "ready") -> vb.VLLMCaptionEngine:
    """The engine over the captioner's managed vLLM as configured, pointed at `port` and not started: its
    state set as the supervisor would."""
    cfg = settings(max_model_len=4096, vllm_port=port)
    server = vb.managed(cfg, "/m", "float32")
    server.state = state
    return vb.VLLMCaptionEngine(server, cfg, owns_server=False)


async def collect(eng, got: list | None = None):
    out = [] if got is None else got
    async for d in eng.stream(AUDIO, PARAMS):
        out.append(d)
    return out


def test_complete_maps_answer(fake):
    eng = engine_for(fake.port)
    c = asyncio.run(eng.complete(AUDIO, PARAMS))
    assert (c.text, c.finish_reason, c.usage.prompt_tokens, c.usage.completion_tokens) == ("a calm voice", "stop",
                                                                                          30, 3)
    (req,) = fake.requests
    assert req["model"] == MODEL and req["top_k"] == 20 and req["seed"] == 7 and req["max_tokens"] == 64
    assert req["messages"][0]["content"][0]["type"] == "audio_url"


def test_stream_yields_deltas_then_finish_and_usage(fake):
    deltas = asyncio.run(collect(engine_for(fake.port)))
    assert [d.text for d in deltas[:-1]] == ["a ", "calm ", "voice"]
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])
    last = deltas[-1]
    assert last.text == "" and last.finish_reason == "stop"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (30, 3, 33)
    req = fake.requests[-1]
    assert req["stream"] is True and req["stream_options"] == {"include_usage": True}


def test_upstream_400_is_invalid_request_with_its_message(fake):
    fake.mode = "bad"
    eng = engine_for(fake.port)
    with pytest.raises(InvalidRequest, match="audio could not be decoded") as ei:
        asyncio.run(eng.complete(AUDIO, PARAMS))
    assert ei.value.status == 400
    with pytest.raises(InvalidRequest, match="audio could not be decoded"):
        asyncio.run(collect(eng))
    assert len(fake.requests) == 2  # not retried


@pytest.mark.parametrize("mode", ["too_large", "too_long_030"])
def test_max_tokens_beyond_context_falls_back_to_the_rest(fake, mode):
    """vLLM rejects prompt + max_tokens > max_model_len (0.14 and the locked 0.30, in different words); we then
    ask for what is left."""
    fake.mode = mode
    eng = engine_for(fake.port)
    c = asyncio.run(eng.complete(AUDIO, PARAMS))
    assert c.finish_reason == "length"
    assert "max_tokens" in fake.requests[0] and "max_tokens" not in fake.requests[1]

    deltas = asyncio.run(collect(eng))
    assert [d.text for d in deltas] == ["a ", "calm ", "voice", ""] and deltas[-1].finish_reason == "stop"
    assert "max_tokens" in fake.requests[2] and "max_tokens" not in fake.requests[3]
    assert len(fake.requests) == 4


def test_error_in_the_middle_of_a_stream(fake):
    fake.mode = "stream_error"
    got: list = []
    with pytest.raises(QwenError, match="engine died") as ei:
        asyncio.run(collect(engine_for(fake.port), got))
    assert ei.value.status == 500 and [d.text for d in got] == ["a ", "calm ", "voice"]
    assert len(fake.requests) == 1  # text was sent: never retried


def test_unreachable_or_not_ready_is_503():
    eng = engine_for(free_port())  # nothing listens there
    with pytest.raises(ServiceUnavailable, match=r"captioner backend \(vLLM\) unreachable") as ei:
        asyncio.run(eng.complete(AUDIO, PARAMS))
    assert ei.value.status == 503 and ei.value.retry_after

    eng = engine_for(9, state="loading")
    with pytest.raises(ServiceUnavailable, match=r"captioner backend \(vLLM\) is loading") as ei:
        asyncio.run(eng.complete(AUDIO, PARAMS))
    assert ei.value.headers()["Retry-After"]
    with pytest.raises(ServiceUnavailable, match="is loading"):
        asyncio.run(collect(eng))
    eng.server.state = "failed"
    assert asyncio.run(eng.metrics_text()) == ""


def test_metrics_text_keeps_vllm_series(fake):
    text = asyncio.run(engine_for(fake.port).metrics_text())
    assert text.splitlines() == ["# TYPE vllm:num_requests_waiting gauge", "vllm:num_requests_waiting 0.0"]


# -- the engine over a managed child -----------------------------------------------------------------------
def child_settings(script: str, **kw) -> CaptionerSettings:
    return settings(vllm_command=shlex.join([sys.executable, "-c", script]), vllm_tensor_parallel_size=1, **kw)


def test_engine_start_places_the_child_on_its_gpus_and_serves(tmp_path, monkeypatch):
    """The GPUs placement chose reach the child as CUDA_VISIBLE_DEVICES, their count as tensor parallel;
    the started engine serves through the child and closes it."""
    seen = tmp_path / "seen"
    monkeypatch.setenv("FAKE_SEEN", str(seen))
    script = ("import json, os, sys\nopen(os.environ['FAKE_SEEN'], 'w').write(json.dumps("
              "[os.environ.get('CUDA_VISIBLE_DEVICES'), sys.argv]))\n" + CHILD)
    cfg = settings(vllm_command=shlex.join([sys.executable, "-c", script]))
    engine = vb.VLLMCaptionEngine.start(cfg, "/models/fake", "float16", gpus=["2", "3"])
    try:
        visible, argv = json.loads(seen.read_text())
        assert visible == "2,3" and flag(argv, "--tensor-parallel-size") == "2"
        assert engine.state == "ready" and engine.info()["pid"] == engine.server.pid
        assert asyncio.run(engine.complete(AUDIO, PARAMS)).text == "ok"
        assert asyncio.run(engine.metrics_text()).startswith("# HELP vllm:num_requests_running")
    finally:
        asyncio.run(engine.close())
    assert engine.state == "stopped" and engine.server.pid is None


def test_start_failure_raises_with_the_child_output():
    script = "print('ERROR ValueError: no such model', flush=True); raise SystemExit(3)"
    with pytest.raises(RuntimeError, match=r"vLLM did not become ready: captioner vLLM exited with code 3: .*no such model"):
        vb.VLLMCaptionEngine.start(child_settings(script), "/nope", "float32")
    with pytest.raises(RuntimeError, match=r"not ready after 1s \(QWEN_CAPTIONER_VLLM_START_TIMEOUT\)"):
        vb.VLLMCaptionEngine.start(child_settings("import time; time.sleep(60)", vllm_start_timeout=1.0), "/m",
                                   "float32")


# -- the service's admission -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend, device, limit", [("auto", "cuda:0", 6), ("auto", "cpu", 1), ("vllm", "cpu", 6),
                                                    ("transformers", "cuda:0", 1)])
def test_captioner_concurrency_is_set_by_its_backend_at_placement(monkeypatch, backend, device, limit):
    """vLLM batches max_num_seqs itself: that many calls at once; the thinker runs one at a time. The
    scheduler's limit is set where the device is known (placement), before the engine loads."""
    from services.captioner import service as cs
    from services.runtime.serving import modelservice, sources
    from services.runtime.serving.device import Placement
    from services.runtime.serving.lifecycle import ModelHandle
    from services.runtime.serving.scheduler import Scheduler
    from services.runtime.core.settings import Settings

    monkeypatch.setattr(vllm_server, "engine_available", lambda settings=None: True)
    svc = cs.Captioner.inner.__new__(cs.Captioner.inner)
    svc.settings = Settings()
    svc.cfg = svc.settings.captioner.model_copy(update={"backend": backend, "vllm_max_num_seqs": 6,
                                                        "max_concurrency": 3})
    svc.handle = ModelHandle("captioner", "m")
    svc.scheduler = Scheduler("captioner", "m", svc._run_batch, max_concurrency=svc.cfg.max_concurrency)
    seen = {}
    monkeypatch.setattr(modelservice, "place", lambda *a: Placement(device, "float32", []))
    monkeypatch.setattr(sources, "resolve_model_path", lambda *a, **kw: "/m")
    monkeypatch.setattr(svc, "check_settings", lambda: None)
    monkeypatch.setattr(svc, "load_engine", lambda *a: seen.setdefault("limit", svc.scheduler.max_concurrency))
    assert svc._load() == limit  # already set when the engine loads
    assert svc.scheduler.max_concurrency == limit and svc.scheduler.max_batch_size == 1
