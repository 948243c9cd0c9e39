"""The gateway's routes in-process: TestClient on `build_gateway(settings, services)` around fake model
services that implement the calls the routes make (`gw.<key>.to_async.<api>(...)`). Seconds, no model, no
BentoML server; the served suite keeps the real thing."""

from __future__ import annotations

import io
import wave
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.gateway.app import build_gateway
from services.gateway.registry import REGISTRY
from services.runtime.core.errors import PayloadTooLarge
from services.runtime.edge.http import EdgeMiddleware
from services.runtime.core.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("QWEN_") or name.startswith("SOW_QWEN3_"):
            monkeypatch.delenv(name)


class Fake:
    """A model service: `to_async.<api>` are the async methods given, plus `status`."""

    def __init__(self, status: str | Exception = "ready", **apis):
        self.calls: list[tuple[str, dict]] = []

        async def status_api():
            if isinstance(status, Exception):
                raise status
            return {"status": status}

        def recorded(name, fn):
            async def api(**kwargs):
                self.calls.append((name, kwargs))
                return await fn(**kwargs)
            return api

        self.to_async = SimpleNamespace(status=status_api, **{n: recorded(n, f) for n, f in apis.items()})


def fake(key: str, status: str | Exception = "ready") -> Fake:
    async def synthesize(text, voice, language=None, instructions=None):
        return {"audio": np.zeros(2400, dtype=np.float32), "sample_rate": 24000}

    async def align(audio, lines, language=None):
        return {"segments": [{"text": line, "start": 0.0, "end": 0.1} for line in lines], "language": "English",
                "duration": len(audio) / 16000}

    async def transcribe(audio, prompt="", language=None):
        return {"text": "hello", "language": "English", "duration": len(audio) / 16000}

    apis = {"tts": {"synthesize": synthesize}, "aligner": {"align": align}, "asr": {"transcribe": transcribe}}
    return Fake(status, **apis.get(key, {}))


def client(services: dict, settings: Settings | None = None, **kw) -> TestClient:
    settings = settings or Settings(services=list(services), **kw)
    app = build_gateway(settings, services)
    return TestClient(EdgeMiddleware(app, **app.state.edge))


def wav(seconds: float = 0.5, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(int(seconds * rate), dtype=np.int16).tobytes())
    return buf.getvalue()


def test_models_lists_every_service_with_its_id_and_aliases_and_finds_each_by_any_name():
    s = Settings()
    with client({key: fake(key) for key in REGISTRY}, s) as c:
        data = c.get("/v1/models").json()["data"]
        assert [m["service"] for m in data] == list(REGISTRY)
        for card in data:
            entry = REGISTRY[card["service"]]
            assert card["id"] == s.service(entry.key).model and card["aliases"] == entry.aliases(s)
            assert entry.key in card["aliases"]
            for name in [card["id"], *card["aliases"]]:
                r = c.get(f"/v1/models/{name}")
                assert r.status_code == 200 and r.json()["service"] == card["service"], name
        tts = next(m for m in data if m["service"] == "tts")
        assert {"tts-1", "tts-1-en", "tts-1-hd-zh"} <= set(tts["aliases"])
        r = c.get("/v1/models/no-such-model")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("states, status, code", [
    (["ready", "ready"], "healthy", 200),
    (["ready", "degraded"], "degraded", 200),
    (["ready", "failed"], "unhealthy", 503),
    (["ready", RuntimeError("connection refused")], "unhealthy", 503),
    (["ready", "loading"], "starting", 503),
])
def test_health_follows_the_services_states(states, status, code):
    with client({"asr": fake("asr", states[0]), "aligner": fake("aligner", states[1])}) as c:
        r = c.get("/health")
    assert r.status_code == code and r.json()["status"] == status
    aligner = r.json()["services"]["aligner"]
    if isinstance(states[1], Exception):
        assert aligner["status"] == "unreachable" and "connection refused" in aligner["error"]
    else:
        assert aligner == {"status": states[1]}


def test_speech_calls_the_tts_service_and_encodes_its_audio():
    tts = fake("tts")
    with client({"tts": tts}) as c:
        r = c.post("/v1/audio/speech", json={"model": "tts-1-en", "input": "hi", "voice": "ryan",
                                             "response_format": "wav"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("audio/wav")
    with wave.open(io.BytesIO(r.content)) as w:
        assert w.getframerate() == 24000 and w.getnframes() == 2400
    assert tts.calls == [("synthesize", {"text": "hi", "voice": "ryan", "language": "english",
                                         "instructions": None})]


def test_align_json_sends_the_decoded_audio_and_lines():
    aligner = fake("aligner")
    with client({"aligner": aligner}) as c:
        r = c.post("/api/v1/align", files={"audio": ("a.wav", wav(0.5), "audio/wav")},
                   data={"lyrics": '["one", "two"]', "format": "json"})
    assert r.status_code == 200, r.text
    assert [s["text"] for s in r.json()["segments"]] == ["one", "two"]
    ((name, kwargs),) = aligner.calls
    assert name == "align" and kwargs["lines"] == ["one", "two"] and len(kwargs["audio"]) == 8000


def test_transcription_json():
    asr = fake("asr")
    with client({"asr": asr}) as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav(0.25), "audio/wav")},
                   data={"model": "whisper-1", "response_format": "json"})
    assert r.status_code == 200 and r.json() == {"text": "hello"}
    assert [name for name, _ in asr.calls] == ["transcribe"] and len(asr.calls[0][1]["audio"]) == 4000


def test_a_service_error_crosses_the_seam_as_its_envelope():
    async def transcribe(audio, prompt="", language=None):
        raise PayloadTooLarge("audio is 2000s; the limit is 1200s", param="file", code="audio_too_long")

    with client({"asr": Fake(transcribe=transcribe)}) as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav(0.25), "audio/wav")},
                   data={"model": "whisper-1"})
    assert r.status_code == 413
    assert r.json()["error"] == {"message": "audio is 2000s; the limit is 1200s", "type": "invalid_request_error",
                                 "param": "file", "code": "audio_too_long"}


def test_a_key_is_required_on_api_routes_when_set():
    with client({"tts": fake("tts")}, api_key="sekret") as c:
        assert c.get("/v1/models").status_code == 401
        assert c.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "ryan"}).status_code == 401
        ok = c.get("/v1/models", headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200 and [m["service"] for m in ok.json()["data"]] == ["tts"]
        assert c.get("/playground").status_code == 200  # the page is public; what it calls is not


def test_a_gateway_with_one_service_has_only_its_routes():
    with client({"tts": fake("tts")}) as c:
        paths = set(c.app.app.openapi()["paths"])
        assert {"/v1/audio/speech", "/v1/audio/voices", "/health", "/v1/models"} <= paths
        assert not paths & {"/api/v1/align", "/v1/audio/transcriptions", "/generate", "/infer",
                            "/v1/chat/completions"}
        assert c.post("/api/v1/align", json={}).status_code == 404
        assert [m["service"] for m in c.get("/v1/models").json()["data"]] == ["tts"]
        assert c.app.app.state.edge["routes"] == ("/v1/models", "/v1/models/*", "/v1/audio/speech",
                                                  "/v1/audio/voices", "/", "/playground", "/playground/*")
