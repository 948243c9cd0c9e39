"""GPU sharing between co-located services, judged from settings (runtime.serving.colocation): no GPU needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.runtime.serving import colocation
from services.runtime.core.settings import SERVICE_KEYS, Settings

ROOT = Path(__file__).resolve().parents[2]
ALL = list(SERVICE_KEYS)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import os

    for name in list(os.environ):
        if name.startswith("QWEN_"):
            monkeypatch.delenv(name)
    # A GPU host with the engine environment (the CUDA image's): backend auto is vLLM on CUDA.
    python = tmp_path / "engine" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    monkeypatch.setenv("QWEN_ENGINE_HOME", str(tmp_path / "engine"))


def settings(monkeypatch, **env) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_make_serve_defaults_on_one_gpu_are_refused(monkeypatch):
    """`make serve` on a one-GPU host with the engine environment: four vLLM servers would each take their
    share of GPU 0 up front (ASR 0.45, captioner 0.95, VL and diagram 0.9), which cannot all start there,
    so the start is refused with the settings to change; the two torch models land there uncapped."""
    findings = colocation.check(settings(monkeypatch), ALL, ["0"])
    assert [(f.level, f.gpu) for f in findings] == [("error", "0")]
    message = findings[0].message
    assert "captioner (0.95, QWEN_CAPTIONER_VLLM_GPU_MEMORY_UTILIZATION)" in message
    assert "asr (0.45, QWEN_ASR_VLLM_GPU_MEMORY_UTILIZATION)" in message and "3.20" in message
    for key in ("vl", "diagram"):
        assert f"{key} (0.9, QWEN_{key.upper()}_VLLM_GPU_MEMORY_UTILIZATION)" in message
    for key in ("aligner", "tts"):
        assert f"{key} (uncapped)" in message
    # The speech services alone (QWEN_SERVICES=aligner,asr,tts): the ASR's vLLM beside uncapped torch models
    # is a warning, not a refusal.
    findings = colocation.check(settings(monkeypatch), ["aligner", "asr", "tts"], ["0"])
    assert [(f.level, f.gpu) for f in findings] == [("warning", "0")]
    colocation.refuse(findings)  # a warning does not refuse


def test_without_the_engine_environment_auto_runs_torch_and_is_judged_so(monkeypatch, tmp_path):
    """A GPU host without the engine environment: the captioner's auto backend is transformers in its own
    process, an uncapped torch claim (no 0.95 taken up front)."""
    s = settings(monkeypatch, QWEN_ENGINE_HOME=str(tmp_path / "none"))
    by_service = {c.service: c for c in colocation.claims(s, ALL, ["0", "1"])}
    assert by_service["captioner"].gpus == ("0",) and by_service["captioner"].fraction is None
    assert by_service["captioner"].setting == "QWEN_CAPTIONER_GPU_MEMORY_FRACTION"


def test_tensor_parallel_over_every_gpu_collides_only_where_the_others_are(monkeypatch):
    torch_only = {f"QWEN_{k.upper()}_BACKEND": "transformers" for k in ("asr", "vl", "diagram")}
    findings = colocation.check(settings(monkeypatch, **torch_only), ALL, ["0", "1"])
    assert [(f.level, f.gpu) for f in findings] == [("warning", "0")]  # GPU 1: the captioner alone
    tp1 = settings(monkeypatch, QWEN_CAPTIONER_VLLM_TENSOR_PARALLEL_SIZE="1", QWEN_CAPTIONER_DEVICE="cuda:1")
    assert [(f.gpu, "captioner" in f.message) for f in colocation.check(tp1, ALL, ["0", "1"])] == [("0", False)]


def test_declared_shares_over_one_gpu_are_refused(monkeypatch):
    s = settings(monkeypatch, QWEN_ASR_BACKEND="transformers", QWEN_ASR_GPU_MEMORY_FRACTION="0.45")
    findings = colocation.check(s, ["asr", "captioner"], ["0"])
    assert [(f.level, f.gpu) for f in findings] == [("error", "0")]
    assert "1.40" in findings[0].message and "QWEN_ASR_GPU_MEMORY_FRACTION" in findings[0].message
    with pytest.raises(RuntimeError, match="GPU placement refused: GPU 0 is over-committed"):
        colocation.refuse(findings)
    # ASR on vLLM declares its vLLM utilization (the torch fraction does not apply to it).
    s = settings(monkeypatch, QWEN_ASR_BACKEND="vllm", QWEN_TTS_GPU_MEMORY_FRACTION="0.6")
    findings = colocation.check(s, ["asr", "tts"], ["0"])
    assert [f.level for f in findings] == ["error"]
    assert "asr (0.45, QWEN_ASR_VLLM_GPU_MEMORY_UTILIZATION)" in findings[0].message


def test_capped_shares_up_to_one_gpu_are_fine(monkeypatch):
    """The seed's split of one T4: ASR 0.45 + TTS 0.45."""
    monkeypatch.setenv("QWEN_ASR_BACKEND", "transformers")
    s = settings(monkeypatch, QWEN_ASR_GPU_MEMORY_FRACTION="0.45", QWEN_TTS_GPU_MEMORY_FRACTION="0.45")
    assert colocation.check(s, ["asr", "tts"], ["0"]) == []
    s = settings(monkeypatch, QWEN_ASR_GPU_MEMORY_FRACTION="0.55")  # 0.55 + 0.45: all of it, still fine
    assert colocation.check(s, ["asr", "tts"], ["0"]) == []
    s = settings(monkeypatch, QWEN_ASR_GPU_MEMORY_FRACTION="0.6")
    assert [f.level for f in colocation.check(s, ["asr", "tts"], ["0"])] == ["error"]


def test_no_gpu_or_cpu_placement_claims_nothing(monkeypatch):
    assert colocation.check(settings(monkeypatch), ALL, []) == []
    assert colocation.check(settings(monkeypatch, QWEN_DEVICE="cpu"), ALL, ["0"]) == []
    # A GPU index that is not there is the service's own load error, not a collision.
    s = settings(monkeypatch, QWEN_DEVICE="cpu", QWEN_ASR_DEVICE="cuda:3", QWEN_TTS_DEVICE="cuda:3")
    assert colocation.claims(s, ALL, ["0"]) == []


def test_services_reached_by_url_are_not_colocated(monkeypatch):
    s = settings(monkeypatch, QWEN_CAPTIONER_URL="http://captioner:3000", QWEN_VL_URL="http://vl:3000")
    assert colocation.colocated(s, ALL) == ["aligner", "asr", "tts", "diagram"]


def test_the_reference_gpu_layout_has_no_collision(monkeypatch):
    """deploy/compose/bento.gpu.yml (one container, four GPUs) as written: captioner TP 2 on GPUs 0-1,
    vl+diagram+aligner at 0.90 of GPU 2, asr+tts at 0.90 of GPU 3."""
    compose = yaml.safe_load((ROOT / "deploy/compose/bento.gpu.yml").read_text())
    env = compose["services"]["qwen-bento"]["environment"]
    s = settings(monkeypatch, **{k: str(v) for k, v in env.items()})
    visible = ["0", "1", "2", "3"]
    by_service = {c.service: c.gpus for c in colocation.claims(s, ALL, visible)}
    assert by_service == {"captioner": ("0", "1"), "vl": ("2",), "diagram": ("2",), "aligner": ("2",),
                          "asr": ("3",), "tts": ("3",)}
    assert colocation.check(s, ALL, visible) == []
    # Each share stands whichever backend runs it (the image's engine environment, or the fallback).
    claimed = {c.service: c.setting for c in colocation.claims(s, ALL, visible)}
    assert claimed["vl"] == "QWEN_VL_VLLM_GPU_MEMORY_UTILIZATION" and claimed["asr"].endswith("VLLM_GPU_MEMORY_UTILIZATION")
    for key in ("vl", "diagram", "asr"):
        s = settings(monkeypatch, **{f"QWEN_{key.upper()}_BACKEND": "transformers"})
        assert colocation.check(s, ALL, visible) == []


def test_the_gateway_refuses_an_over_committed_gpu_and_shows_warnings_in_health(monkeypatch):
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from services.gateway import app, service

    over = colocation.Finding("error", "0", "GPU 0 is over-committed: ...")
    shared = colocation.Finding("warning", "0", "GPU 0 is shared by ...")
    monkeypatch.setattr(service, "placement", lambda _settings, _enabled: [shared, over])
    svc = service.build_service(Settings(services=["asr"]))
    with pytest.raises(RuntimeError, match="GPU placement refused: GPU 0 is over-committed"):
        svc.inner()  # refused before any dependency (model) is touched

    async def status():
        return {"status": "ready"}

    asr = SimpleNamespace(to_async=SimpleNamespace(status=status))
    gateway = app.build_gateway(Settings(services=["asr"]), {"asr": asr}, placement=[shared])
    response = TestClient(gateway).get("/health")
    body = response.json()
    assert response.status_code == 200 and body["placement"] == ["GPU 0 is shared by ..."]
