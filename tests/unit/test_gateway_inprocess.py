"""The gateway's routes in-process: TestClient on `build_gateway(settings, services)` around fake model
services that implement the calls the routes make (`gw.<key>.to_async.<api>(...)`). Seconds, no model, no
BentoML server; the served suite keeps the real thing."""

from __future__ import annotations

import base64
import json
import io
import wave
from types import SimpleNamespace

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.aligner.contract import AlignLines, Alignment, AlignSpans, Segment, TextSpan, Word
from services.asr.contract import Span, TranscribeOptions, Transcription
from services.captioner.contract import GenParams
from services.diagram.contract import SeedStats
from services.gateway.app import build_gateway
from services.gateway.registry import REGISTRY
from services.runtime.core.errors import PayloadTooLarge
from services.runtime.edge import remote
from services.runtime.edge.http import EdgeMiddleware
from services.runtime.core.settings import Settings
from services.runtime.serving.generation import Completion, Delta, Usage
from services.tts.contract import Finish, Speech, StreamHeader, Utterance, pack_audio, pack_finish
from services.vl.contract import VisionItem, VisionResult, VisionResults


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
            def api(**kwargs):
                self.calls.append((name, kwargs))
                return fn(**kwargs)  # a coroutine, or an async generator for a streamed API
            return api

        self.to_async = SimpleNamespace(status=status_api, **{n: recorded(n, f) for n, f in apis.items()})


async def transcribe(audio, options: TranscribeOptions):
    """The ASR's answer: one window per second of audio, each heard as "hello there."."""
    seconds = len(audio) / 16000
    spans = [Span(start=float(i), end=min(float(i + 1), seconds), text="hello there.")
             for i in range(int(seconds) or 1)]
    return Transcription(text=" ".join(s.text for s in spans), language="English", duration=seconds,
                         spans=spans).model_dump()


async def asr_leave(ticket: str):
    return False  # the in-process streams always run to their end


async def transcribe_stream(audio, options: TranscribeOptions, ticket: str = ""):
    """The ASR's stream: the same windows as `transcribe`, each window's text in two pieces, cut anywhere."""
    assert ticket  # the gateway names every stream, so that it can leave it
    from services.asr.contract import StreamDone, TextDelta

    whole = Transcription.model_validate(await transcribe(audio, options))
    body = b""
    for k, span in enumerate(whole.spans):
        if k:
            body += TextDelta(delta=" ").line()
        body += TextDelta(delta=span.text[:5]).line() + TextDelta(delta=span.text[5:]).line()
    body += StreamDone(transcription=whole, input_tokens=40, output_tokens=7).line()
    yield remote.stream_ok()
    for i in range(0, len(body), 7):
        yield body[i : i + 7]


def _timed(lines: list[str], start: float, end: float) -> list[Segment]:
    step = (end - start) / max(1, len(lines))
    return [Segment(text=line, start=start + i * step, end=start + (i + 1) * step,
                    words=[Word(text=w, start=start + i * step, end=start + (i + 1) * step) for w in line.split()])
            for i, line in enumerate(lines)]


async def align(audio, text: AlignLines):
    return Alignment(segments=_timed(text.lines, 0.0, len(audio) / 16000), language="en",
                     duration=len(audio) / 16000, chunks=1).model_dump()


async def align_spans(audio, text: AlignSpans):
    segments = [seg for span in text.spans for seg in _timed(span.lines, span.start, span.end)]
    return Alignment(segments=segments, language=text.language or "en", duration=len(audio) / 16000,
                     chunks=len(text.spans)).model_dump()


def fake_tts(sample_rate: int = 24000, status: str | Exception = "ready", reason: str = "stop") -> Fake:
    """The TTS: 0.1 s of silence at `sample_rate`, whole or as a stream of three chunks, ending `reason`."""
    samples = sample_rate // 10
    finish = Finish(finish_reason=reason, input_tokens=12, output_tokens=samples // 1920)

    async def synthesize(utterance: Utterance):
        return Speech(audio=np.zeros(samples, np.float32), sample_rate=sample_rate,
                      finish=finish).model_dump(mode="json")

    left: list[str] = []

    async def leave(ticket: str):
        left.append(ticket)
        return True

    async def stream(utterance: Utterance, ticket: str = ""):
        assert ticket  # the gateway names every stream, so that it can leave it
        yield remote.stream_ok(StreamHeader(sample_rate=sample_rate))
        body = b"".join(pack_audio(part) for part in np.array_split(np.zeros(samples, "<f4"), 3))
        body += pack_finish(finish)
        for i in range(0, len(body), 1000):  # records do not survive the socket's chunking: cut anywhere
            yield body[i : i + 1000]

    fake_ = Fake(status, synthesize=synthesize, stream=stream, leave=leave)
    fake_.left = left  # tickets the gateway said it left
    return fake_


def fake(key: str, status: str | Exception = "ready") -> Fake:
    if key == "tts":
        return fake_tts(status=status)
    apis = {"aligner": {"align": align, "align_spans": align_spans},
            "asr": {"transcribe": transcribe, "stream": transcribe_stream, "leave": asr_leave}}
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
    service = fake_tts()
    with client({"tts": service}) as c:
        r = c.post("/v1/audio/speech", json={"model": "tts-1-en", "input": " hi ", "voice": "Ryan",
                                             "response_format": "wav"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("audio/wav")
    with wave.open(io.BytesIO(r.content)) as w:
        assert w.getframerate() == 24000 and w.getnframes() == 2400
    assert service.calls == [("synthesize", {"utterance": Utterance(text="hi", voice="ryan", language="english")})]


@pytest.mark.parametrize("extra", [{}, {"stream": True}], ids=["whole", "stream"])
def test_speech_is_encoded_at_the_rate_the_service_answers_with(extra):
    """No rate is assumed by the gateway: the result (whole) or the stream's header line (stream) says it."""
    service = fake_tts(sample_rate=16000)
    with client({"tts": service}) as c:
        r = c.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "ryan",
                                             "response_format": "flac", **extra})
    assert r.status_code == 200, r.text
    with av.open(io.BytesIO(r.content)) as f:
        assert f.streams.audio[0].rate == 16000
        assert sum(frame.samples for frame in f.decode(audio=0)) == 1600
    assert [name for name, _ in service.calls] == ["stream" if extra else "synthesize"]


@pytest.mark.parametrize("reason", ["stop", "length"])
def test_how_the_speech_ended_reaches_the_client(reason):
    """Cut at its frame cap ("length") or ended by the model ("stop"): the X-Finish-Reason header of a whole
    answer, and the speech.audio.done event of an SSE stream (with its usage, as OpenAI's schema requires)."""
    service = fake_tts(reason=reason)
    with client({"tts": service}) as c:
        whole = c.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "ryan"})
        sse = c.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "ryan",
                                               "stream_format": "sse", "response_format": "pcm"})
    assert whole.status_code == 200 and whole.headers["x-finish-reason"] == reason
    events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[-2:]] == ["speech.audio.delta", "speech.audio.done"]
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) == 2400 * 2  # 0.1 s of 16-bit PCM at 24 kHz, every record through
    assert events[-1] == {"type": "speech.audio.done", "finish_reason": reason,
                          "usage": {"input_tokens": 12, "output_tokens": 1, "total_tokens": 13}}


@pytest.mark.parametrize("body, status, code", [
    ({"model": "tts-2"}, 404, "model_not_found"),
    ({"language": "klingon"}, 400, "invalid_value"),
    ({"input": "  "}, 400, "empty_input"),
    ({"input": "x" * 4097}, 413, "input_too_long"),
    ({"voice": "bob"}, 400, "invalid_voice"),
    ({"voice": "bob", "stream": True}, 400, "invalid_voice"),
])
def test_speech_is_refused_before_the_service_is_called(body, status, code):
    service = fake_tts()
    with client({"tts": service}) as c:
        r = c.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "ryan", **body})
    assert r.status_code == status and r.json()["error"]["code"] == code
    assert service.calls == []


def test_align_json_sends_the_decoded_audio_and_lines():
    aligner = fake("aligner")
    with client({"aligner": aligner}) as c:
        r = c.post("/api/v1/align", files={"audio": ("a.wav", wav(0.5), "audio/wav")},
                   data={"lyrics": '["one", "two"]', "format": "json"})
    assert r.status_code == 200, r.text
    # (the fake aligner gives no scores: confidence null, nothing flagged, no review summary)
    unscored = {"confidence": None, "needs_review": False, "review": [], "found": None}
    assert r.json() == {"segments": [{"text": "one", "start": 0.0, "end": 0.25, **unscored, "words": [
                            {"text": "one", "start": 0.0, "end": 0.25, "confidence": None, "aligned": None}]},
                                     {"text": "two", "start": 0.25, "end": 0.5, **unscored, "words": [
                            {"text": "two", "start": 0.25, "end": 0.5, "confidence": None, "aligned": None}]}],
                        "language": "en", "duration": 0.5, "review": None, "extra_audio": None}
    ((name, kwargs),) = aligner.calls
    assert name == "align" and kwargs["text"] == AlignLines(lines=["one", "two"]) and len(kwargs["audio"]) == 8000


def test_transcription_json():
    asr = fake("asr")
    with client({"asr": asr}) as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav(0.25), "audio/wav")},
                   data={"model": "whisper-1", "response_format": "json"})
    assert r.status_code == 200 and r.json() == {"text": "hello there."}
    assert [name for name, _ in asr.calls] == ["transcribe"] and len(asr.calls[0][1]["audio"]) == 4000


def test_a_service_error_crosses_the_seam_as_its_envelope():
    async def transcribe(audio, options):
        raise PayloadTooLarge("audio: audio is longer than the 1200-second limit", param="audio",
                              code="audio_too_long")

    with client({"asr": Fake(transcribe=transcribe)}) as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav(0.25), "audio/wav")},
                   data={"model": "whisper-1"})
    assert r.status_code == 413
    assert r.json()["error"] == {"message": "audio: audio is longer than the 1200-second limit",
                                 "type": "invalid_request_error", "param": "audio", "code": "audio_too_long"}


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


# -- speech in: transcriptions (ASR, then the aligner) and alignment ---------------------------------------
def speech_in(*keys: str, **settings) -> tuple[TestClient, dict[str, Fake]]:
    services = {key: fake(key) for key in keys}
    return client(services, Settings(services=list(services), **settings)), services


def transcribe_form(**fields) -> dict:
    return {"files": {"file": ("a.wav", wav(2.0), "audio/wav")}, "data": {"model": "whisper-1", **fields}}


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/transcriptions/tasks"])
def test_word_timestamps_without_the_aligner_are_refused_before_any_model_runs(path):
    c, services = speech_in("asr")
    with c:
        r = c.post(path, **transcribe_form(response_format="verbose_json", **{"timestamp_granularities[]": "word"}))
    assert r.status_code == 400 and r.json()["error"]["param"] == "timestamp_granularities"
    assert r.json()["error"]["code"] == "timestamps_unavailable"
    assert services["asr"].calls == []


def test_verbose_json_words_come_from_the_aligner_window_by_window():
    c, services = speech_in("asr", "aligner")
    with c:
        r = c.post("/v1/audio/transcriptions", **transcribe_form(
            response_format="verbose_json", language="en", **{"timestamp_granularities[]": ["word", "segment"]}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["language"], body["duration"], body["text"]) == ("english", 2.0, "hello there. hello there.")
    assert [(s["start"], s["end"], s["text"]) for s in body["segments"]] == [(0.0, 1.0, "hello there."),
                                                                               (1.0, 2.0, "hello there.")]
    assert [(w["word"], w["start"], w["end"]) for w in body["words"]] == [
        ("hello", 0.0, 1.0), ("there.", 0.0, 1.0), ("hello", 1.0, 2.0), ("there.", 1.0, 2.0)]
    ((_, asr_call),) = services["asr"].calls
    ((name, aligner_call),) = services["aligner"].calls
    assert asr_call["options"] == TranscribeOptions(prompt="", language="en", statistics=True)
    assert name == "align_spans" and aligner_call["text"] == AlignSpans(
        spans=[TextSpan(start=0.0, end=1.0, lines=["hello there."]),
               TextSpan(start=1.0, end=2.0, lines=["hello there."])], language="en")
    assert len(aligner_call["audio"]) == len(asr_call["audio"]) == 32000


@pytest.mark.parametrize("with_aligner", [True, False])
def test_verbose_json_segment_statistics_come_from_their_own_tokens_and_frames(with_aligner):
    """Each sentence segment gets the tokens of its window that end inside it and their mean
    log-probability; no_speech_prob follows the voice activity of its own time span; compression_ratio
    is its text's. Without the aligner the segment is the whole window."""
    from services.asr.protocol import compression_ratio
    from services.runtime.serving import vad

    text = "hello there. Bye."
    frames = int(2.0 / vad.FRAME_SECONDS)

    async def transcribe_with_tokens(audio, options: TranscribeOptions):
        assert options.statistics
        span = Span(start=0.0, end=2.0, text=text, tokens=[11, 12, 13, 14], logprobs=[-0.1, -0.3, -1.0, -2.0],
                    token_ends=[5, 12, 16, 17])  # "hello", " there.", " Bye", "."
        speech = np.r_[np.ones(frames // 2), np.zeros(frames - frames // 2)].astype(np.float32)  # speech, then none
        return Transcription(text=text, language="English", duration=2.0, spans=[span],
                             speech=vad.pack(speech)).model_dump()

    async def align_two(audio, text: AlignSpans):
        ((span,),) = [text.spans]
        assert span.lines == ["hello there.", "Bye."]
        return Alignment(segments=[Segment(text="hello there.", start=0.0, end=0.9, words=[]),
                                   Segment(text="Bye.", start=1.1, end=2.0, words=[])],
                         language="en", duration=2.0, chunks=1).model_dump()

    services = {"asr": Fake("ready", transcribe=transcribe_with_tokens)}
    if with_aligner:
        services["aligner"] = Fake("ready", align_spans=align_two)
    with client(services, Settings(services=list(services))) as c:
        r = c.post("/v1/audio/transcriptions", **transcribe_form(response_format="verbose_json"))
    assert r.status_code == 200, r.text
    segs = r.json()["segments"]
    if with_aligner:
        assert [s["tokens"] for s in segs] == [[11, 12], [13, 14]]
        assert [s["avg_logprob"] for s in segs] == [pytest.approx(-0.2), pytest.approx(-1.5)]
        assert segs[0]["no_speech_prob"] < 0.01 and segs[1]["no_speech_prob"] > 0.99
    else:
        assert [s["tokens"] for s in segs] == [[11, 12, 13, 14]]
        assert segs[0]["avg_logprob"] == pytest.approx(-0.85) and segs[0]["no_speech_prob"] < 0.01
    assert [s["compression_ratio"] for s in segs] == [pytest.approx(compression_ratio(s["text"]), abs=1e-4)
                                                      for s in segs]


def test_json_and_text_do_not_ask_the_aligner_and_srt_has_its_sentences():
    c, services = speech_in("asr", "aligner")
    with c:
        assert c.post("/v1/audio/transcriptions", **transcribe_form(response_format="text")).text == \
            "hello there. hello there.\n"
        assert services["aligner"].calls == []
        srt = c.post("/v1/audio/transcriptions", **transcribe_form(response_format="srt")).text
    assert srt == "1\n00:00:00,000 --> 00:00:01,000\nhello there.\n\n2\n00:00:01,000 --> 00:00:02,000\nhello there.\n"


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/transcriptions/tasks"])
@pytest.mark.parametrize("request_kw, status, param, code", [
    (transcribe_form(colour="red"), 400, "colour", "invalid_value"),
    (transcribe_form(response_format="verbose_json", **{"timestamp_granularities[]": "bogus"}), 400,
     "timestamp_granularities.0", "invalid_value"),
    (transcribe_form(response_format="xml"), 400, "response_format", "invalid_value"),
    (transcribe_form(temperature="3"), 400, "temperature", "invalid_value"),
    (transcribe_form(**{"timestamp_granularities[]": "word"}), 400, "timestamp_granularities", "invalid_value"),
    (transcribe_form(stream="true", response_format="srt"), 400, "stream", "invalid_value"),
    (transcribe_form(model="gpt-9"), 404, "model", "model_not_found"),
    ({"data": {"model": "whisper-1"}, "files": {"other": ("x.txt", b"x")}}, 400, "other", "invalid_value"),
    ({"data": {"model": "whisper-1"}}, 415, None, "unsupported_content_type"),
    ({"files": {"model": (None, "whisper-1")}}, 400, "file", "missing_file"),
    ({"json": {"model": "whisper-1"}}, 415, None, "unsupported_content_type"),
    ({"files": [("file", ("a.wav", b"1")), ("file", ("b.wav", b"2"))], "data": {"model": "whisper-1"}}, 400, None,
     "invalid_multipart"),
])
def test_transcription_form_errors_are_the_envelope(path, request_kw, status, param, code):
    c, services = speech_in("asr", "aligner")
    with c:
        r = c.post(path, **request_kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"], err["type"]) == (param, code, "invalid_request_error") and err["message"]
    assert services["asr"].calls == []


def test_the_task_form_refuses_stream_and_a_malformed_chunking_strategy():
    """A task's result is whole: stream=true there is a 400, not a JSON body the client did not ask for."""
    c, services = speech_in("asr", "aligner")
    with c:
        r = c.post("/v1/audio/transcriptions/tasks", **transcribe_form(stream="true"))
        deep = c.post("/v1/audio/transcriptions", **transcribe_form(chunking_strategy="[" * 999))
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream", r.text
    assert deep.status_code == 400 and deep.json()["error"]["param"] == "chunking_strategy", deep.text
    assert services["asr"].calls == []


def test_a_streamed_transcription_is_openais_event_stream():
    """stream=true: transcript.text.delta events whose deltas add up to the done event's text, then
    transcript.text.done with usage in tokens; every event valid against OpenAI's schema."""
    from tests.openai_schemas import check, sse_events

    c, services = speech_in("asr", "aligner")
    with c:
        r = c.post("/v1/audio/transcriptions", **transcribe_form(stream="true", response_format="text"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    events = sse_events(r.text)
    for event in events:
        check("CreateTranscriptionResponseStreamEvent", event)
    *deltas, done = events
    assert [e["type"] for e in deltas] == ["transcript.text.delta"] * 5 and done["type"] == "transcript.text.done"
    assert "".join(e["delta"] for e in deltas) == done["text"] == "hello there. hello there."
    assert done["usage"] == {"type": "tokens", "input_tokens": 40, "output_tokens": 7, "total_tokens": 47}
    assert [name for name, _ in services["asr"].calls] == ["stream"] and services["aligner"].calls == []


def test_the_plain_field_name_of_timestamp_granularities_is_accepted_too():
    c, services = speech_in("asr", "aligner")
    with c:
        r = c.post("/v1/audio/transcriptions", **transcribe_form(
            response_format="verbose_json", timestamp_granularities=["word"]))
    assert r.status_code == 200 and "words" in r.json() and "segments" not in r.json(), r.text


def test_transcription_task_gives_the_plain_routes_answer():
    c, _ = speech_in("asr")
    with c:
        r = c.post("/v1/audio/transcriptions/tasks", **transcribe_form(response_format="json"))
        assert r.status_code == 202, r.text
        for _ in range(200):
            if c.get(r.json()["status_url"]).json()["status"] == "succeeded":
                break
        result = c.get(r.json()["result_url"])
    assert result.status_code == 200 and result.json() == {"text": "hello there. hello there."}


def test_upload_cap_is_413_naming_the_part():
    c, services = speech_in("asr", upload_max_bytes=1000)
    with c:
        r = c.post("/v1/audio/transcriptions", **transcribe_form())
    assert r.status_code == 413 and r.json()["error"]["param"] == "file"
    assert services["asr"].calls == []


def test_the_duration_cap_names_the_field_the_audio_came_in():
    import base64

    c, services = speech_in("asr", "aligner", asr={"max_audio_seconds": 1}, aligner={"max_audio_seconds": 1})
    audio = wav(3.0)  # over 1 s and its slack
    with c:
        by_file = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", audio)}, data={"model": "asr"})
        by_part = c.post("/api/v1/align", files={"audio": ("a.wav", audio)}, data={"lyrics": "one"})
        by_url = c.post("/api/v1/align", json={"lyrics": ["one"], "audio_url": "data:audio/wav;base64,"
                                               + base64.b64encode(audio).decode()})
    for r, param in ((by_file, "file"), (by_part, "audio"), (by_url, "audio_url")):
        assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long", r.text
        assert r.json()["error"]["param"] == param
    assert services["asr"].calls == [] and services["aligner"].calls == []


@pytest.mark.parametrize("lyrics, status, code", [(["", "  "], 422, "empty_lyrics"),
                                                  (["la"] * 3, 413, "lyrics_too_long"),
                                                  (["la la la la la la"], 413, "lyrics_too_long")])
def test_lyric_limits_are_checked_before_the_audio_is_read_or_the_aligner_asked(lyrics, status, code):
    c, services = speech_in("aligner", aligner={"max_lines": 2, "max_lyrics_chars": 10})
    with c:
        r = c.post("/api/v1/align", json={"lyrics": lyrics, "audio_url": "http://127.0.0.1:9/never-fetched.mp3"})
        task = c.post("/api/v1/align/tasks", json={"lyrics": lyrics, "audio_url": "http://127.0.0.1:9/x.mp3"})
    for answer in (r, task):
        assert answer.status_code == status and answer.json()["error"]["code"] == code, answer.text
        assert answer.json()["error"]["param"] == "lyrics"
    assert services["aligner"].calls == []


def test_openapi_documents_the_speech_in_bodies():
    c, _ = speech_in("asr", "aligner")
    spec = c.app.app.openapi()
    for path in ("/v1/audio/transcriptions", "/v1/audio/transcriptions/tasks"):
        body = spec["paths"][path]["post"]["requestBody"]
        ref = body["content"]["multipart/form-data"]["schema"]["$ref"]
        schema = spec["components"]["schemas"][ref.split("/")[-1]]
        assert list(schema["properties"]) == ["file", "model", "language", "prompt", "response_format", "temperature",
                                              "timestamp_granularities[]", "stream", "include[]", "chunking_strategy",
                                              "chunking_strategy[type]", "chunking_strategy[threshold]",
                                              "chunking_strategy[prefix_padding_ms]",
                                              "chunking_strategy[silence_duration_ms]"]
        assert (schema["properties"]["file"]["type"], schema["properties"]["file"]["format"]) == ("string", "binary")
        assert schema["required"] == ["file", "model"] and schema["additionalProperties"] is False
        assert spec["paths"][path]["post"]["responses"]["400"]["content"]["application/json"]["schema"]["required"] == \
            ["error"]
    for path in ("/api/v1/align", "/api/v1/align/tasks"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}
        form = content["multipart/form-data"]["schema"]["properties"]
        assert {"audio", "lyrics", "format", "language", "metadata"} <= set(form)
    assert "HTTPValidationError" not in spec.get("components", {}).get("schemas", {})


# --- vision (vl, diagram), the captioner and the chat route ------------------------------------------------------

def vision_result(text: str = "a table", adapter: str | None = None, completion: int = 3) -> VisionResult:
    return VisionResult(text=text, finish_reason="length", adapter=adapter, generate_seconds=0.25,
                        usage=Usage(prompt_tokens=20, completion_tokens=completion))


def vision(key: str = "vl", adapter: str | None = None) -> Fake:
    """A vl or diagram service: generate answers one result per item; stream sends two pieces (the second
    split across chunks, as bytes arrive over a socket) and the finish line."""

    async def generate(requests: list[VisionItem]):
        return VisionResults(results=[vision_result(adapter=adapter) for _ in requests]).model_dump()

    async def stream(request: VisionItem):
        second = Delta(text="é b").line()
        yield remote.STREAM_OK + Delta(text="a ").line() + second[:5]
        yield second[5:]
        yield Delta(finish_reason="length", usage=Usage(prompt_tokens=20, completion_tokens=2)).line()

    async def seed_stats():
        return SeedStats(inference_count=2, total_inference_time=1.5, avg_inference_time=0.75,
                         model_load_time=3.0).model_dump(exclude_unset=True)

    return Fake(generate=generate, stream=stream, **({"seed_stats": seed_stats} if key == "diagram" else {}))


def captioner() -> Fake:
    async def complete(audio, params: GenParams):
        return Completion(text="a calm voice", finish_reason="stop",
                          usage=Usage(prompt_tokens=len(audio) // 1280, completion_tokens=3)).model_dump()

    async def stream(audio, params: GenParams):
        yield remote.STREAM_OK
        for piece in ("a ", "calm ", "voice"):
            yield Delta(text=piece).line()
        yield Delta(finish_reason="stop", usage=Usage(prompt_tokens=7, completion_tokens=3)).line()

    return Fake(complete=complete, stream=stream)


def png(w: int = 40, h: int = 30) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def sse_events(r) -> list[dict]:
    import json

    lines = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_generate_sends_one_vision_item_and_answers_with_its_result():
    vl = vision()
    with client({"vl": vl}) as c:
        r = c.post("/generate", data={"text": "what is it?", "max_new_tokens": "7"},
                   files={"image": ("x.png", png())})
        plain = c.post("/generate", data={"text": "no image"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["response"] == "a table" and body["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}
    assert body["model"] == "Qwen/Qwen2.5-VL-3B-Instruct" and body["timings"]["generate_seconds"] == 0.25
    ((name, kwargs), (_, plain_kwargs)) = vl.calls
    (item,) = kwargs["requests"]
    assert name == "generate" and isinstance(item, VisionItem)
    assert item.template_messages() == [{"role": "user", "content": [{"type": "image"},
                                                                     {"type": "text", "text": "what is it?"}]}]
    assert len(item.images) == 1 and item.max_new_tokens == 7 and item.temperature == 0.0
    assert plain.status_code == 200 and plain_kwargs["requests"][0].images == []


@pytest.mark.parametrize("request_kw, status, param, code", [
    ({"data": {"max_new_tokens": "3"}}, 400, "text", "invalid_value"),
    ({"data": {"text": "hi", "max_new_tokens": "999999"}}, 400, "max_new_tokens", "invalid_value"),
    ({"data": {"text": "hi", "temperature": "9"}}, 400, "temperature", "invalid_value"),
    ({"data": {"text": "hi", "seed": "1"}}, 400, "seed", "invalid_value"),
    ({"data": {"text": "x" * 8001}}, 413, "text", "prompt_too_long"),
    ({"data": {"text": "hi", "image_url": "https://example.com/a.png"}}, 400, "image_url", "image_url_disabled"),
    ({"data": {"text": "hi"}, "files": {"image": ("a.png", b"not an image at all")}}, 415, "image",
     "unsupported_media"),
    ({"json": {"text": "hi"}}, 415, None, "unsupported_content_type"),
])
def test_generate_refusals_are_the_envelope_and_reach_no_model(request_kw, status, param, code):
    vl = vision()
    with client({"vl": vl}) as c:
        r = c.post("/generate", **request_kw)
    assert r.status_code == status, r.text
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == (param, code)
    assert vl.calls == []


def test_infer_names_the_adapter_and_passes_the_seed_counters_through():
    diagram = vision("diagram", adapter="alt")
    with client({"diagram": diagram}) as c:
        r = c.post("/infer", files={"file": ("d.png", png(64, 48))}, data={"adapter": "alt", "format": "text"})
        default = c.post("/infer", files={"file": ("d.png", png())})
        stats = c.get("/infer/stats")
    assert r.status_code == 200, r.text
    md = r.json()["metadata"]
    assert r.json()["description"] == "a table" and md["adapter"] == "alt" and md["image_size"] == [64, 48]
    assert md["usage"]["total_tokens"] == 23 and md["generation_time"] == 0.25 and md["finish_reason"] == "length"
    item = diagram.calls[0][1]["requests"][0]
    assert item.adapter == "alt" and item.max_new_tokens == Settings().diagram.max_new_tokens
    assert item.messages[0].content[1].text == Settings().diagram.prompt
    assert item.constraint is None  # format=text: free text
    assert default.status_code == 200 and diagram.calls[1][1]["requests"][0].adapter is None
    # the default format is a table held to its grammar; the fake's "a table" completed no row
    assert diagram.calls[1][1]["requests"][0].constraint.kind == "ebnf"
    assert default.json()["description"] == "| № | Step | Role |\n|---|---|---|\n"
    assert stats.json() == {"inference_count": 2, "total_inference_time": 1.5, "avg_inference_time": 0.75,
                            "model_load_time": 3.0}  # no GPU figures off CUDA


def test_a_result_outside_the_contract_is_a_server_error():
    async def generate(requests):
        return {"results": [{"text": "no usage"}]}

    with client({"vl": Fake(generate=generate)}) as c:
        r = c.post("/generate", data={"text": "hi"})
    assert r.status_code == 500 and r.json()["error"]["message"] == "vl answered outside its contract"


def test_image_chat_to_vl_whole_and_streamed():
    vl = vision()
    data_url = "data:image/png;base64," + base64.b64encode(png()).decode()
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                             {"type": "image_url", "image_url": {"url": data_url}}]}]
    with client({"vl": vl}) as c:
        r = c.post("/v1/chat/completions", json={"model": "vl", "messages": messages, "max_tokens": 5,
                                                 "temperature": 0.7, "top_k": 5})
        s = c.post("/v1/chat/completions", json={"model": "someone/Qwen2.5-VL-3B-Instruct", "messages": messages,
                                                 "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"] == {"role": "assistant", "content": "a table", "refusal": None}
    assert r.json()["usage"]["total_tokens"] == 23
    item = vl.calls[0][1]["requests"][0]
    assert item.template_messages() == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image"}]}]
    assert (item.max_new_tokens, item.temperature, item.top_p, item.top_k) == (5, 0.7, None, 5)
    assert s.status_code == 200 and vl.calls[1][0] == "stream"
    events = sse_events(s)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["delta"].get("content") for e in events[1:3]] == ["a ", "é b"]
    assert events[3]["choices"][0]["finish_reason"] == "length"
    assert events[4]["choices"] == [] and events[4]["usage"]["total_tokens"] == 22 and len(events) == 5


def test_caption_chat_sends_the_clip_and_its_decoding_whole_and_streamed():
    cap = captioner()
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav(1.0)).decode(), "format": "wav"}}
    with client({"captioner": cap}) as c:
        r = c.post("/v1/chat/completions", json={"model": "captioner", "max_tokens": 9, "seed": 4,
                                                 "messages": [{"role": "user", "content": [part]}]})
        s = c.post("/v1/chat/completions", json={"model": "captioner", "stream": True,
                                                 "messages": [{"role": "user", "content": [part]}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "a calm voice"
    assert r.json()["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    (name, kwargs), (stream_name, stream_kwargs) = cap.calls
    cfg = Settings().captioner
    assert name == "complete" and len(kwargs["audio"]) == 16000
    assert kwargs["params"] == GenParams(max_tokens=9, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                         seed=4)
    assert stream_name == "stream" and stream_kwargs["params"].max_tokens == cfg.max_tokens
    events = sse_events(s)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "a calm voice"
    assert events[-1]["choices"][0]["finish_reason"] == "stop"  # no usage chunk unless asked


def test_chat_dispatches_by_the_registry_names_and_refuses_others():
    vl, cap = vision(), captioner()
    msg = [{"role": "user", "content": "hi"}]
    with client({"vl": vl, "captioner": cap}) as c:
        for name in ("vl", "qwen2.5-vl", "Qwen/Qwen2.5-VL-3B-Instruct", "any-org/Qwen2.5-VL-3B-Instruct"):
            r = c.post("/v1/chat/completions", json={"model": name, "messages": msg})
            assert r.status_code == 200, (name, r.text)
        r = c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": msg})
    assert len(vl.calls) == 4 and cap.calls == []
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "vl" in r.json()["error"]["message"] and "captioner" in r.json()["error"]["message"]


def test_response_format_becomes_the_items_constraint_and_others_are_refused():
    """json_schema / json_object / table (an extension) reach the vision services as a decoding constraint;
    a table answer is cut to its complete rows; models without structured generation and malformed formats
    are a 400 in the envelope before any service is called."""
    import json as jsonlib

    from services.diagram.tables import header, table_grammar

    vl, diagram, cap = vision(), vision("diagram"), captioner()
    msg = [{"role": "user", "content": "the steps"}]
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    with client({"vl": vl, "diagram": diagram, "captioner": cap}) as c:
        ok = [c.post("/v1/chat/completions", json={"model": model, "messages": msg, "response_format": fmt})
              for model, fmt in [
                  ("vl", {"type": "json_schema", "json_schema": {"name": "steps", "schema": schema, "strict": True}}),
                  ("vl", {"type": "json_object"}),
                  ("vl", {"type": "text"}),
                  ("diagram", {"type": "table"}),
                  ("vl", {"type": "table", "columns": ["Step", " Owner "]})]]
        bad = [c.post("/v1/chat/completions", json={"model": model, "messages": msg, "response_format": fmt})
               for model, fmt in [
                   ("captioner", {"type": "json_object"}),
                   ("vl", {"type": "table"}),  # VL has no configured columns
                   ("diagram", {"type": "table", "columns": ["a|b"]}),
                   ("vl", {"type": "xml"}),
                   ("vl", {"type": "json_schema"}),
                   ("vl", {"type": "json_object", "columns": ["a"]}),
                   ("vl", {"type": "json_schema", "json_schema": {"name": "has space", "schema": schema}})]]
    assert [r.status_code for r in ok] == [200] * 5, [r.text for r in ok]
    items = [call[1]["requests"][0] for call in vl.calls] + [diagram.calls[0][1]["requests"][0]]
    assert items[0].constraint.kind == "json_schema" and jsonlib.loads(items[0].constraint.spec) == schema
    assert jsonlib.loads(items[1].constraint.spec) == {"type": "object"}
    assert items[2].constraint is None
    assert items[3].constraint.spec == table_grammar(["Step", "Owner"])
    assert items[4].constraint.spec == table_grammar(["№", "Step", "Role"])  # the diagram's configured columns
    # the fake answered "a table" for each: as a table, no row was completed, so the header alone
    assert ok[3].json()["choices"][0]["message"]["content"] == header(["№", "Step", "Role"])
    assert ok[0].json()["choices"][0]["message"]["content"] == "a table"  # JSON answers are passed as written
    assert [r.status_code for r in bad] == [400] * 7
    assert [r.json()["error"]["type"] for r in bad] == ["invalid_request_error"] * 7
    assert bad[0].json()["error"]["code"] == "unsupported_parameter" and cap.calls == []
    assert [r.json()["error"]["param"] for r in bad[1:3]] == ["response_format.columns"] * 2
    assert len(vl.calls) == 4 and len(diagram.calls) == 1


def test_speech_with_word_timestamps_whole_as_json():
    """Not streamed: one synthesis, its sentences timed by one aligner call over the whole audio (16 kHz),
    answered as JSON with the encoded audio beside the words, times in delivered seconds (÷ speed)."""
    c, services = speech_in("tts", "aligner")
    with c:
        r = c.post("/v1/audio/speech", json={"model": "tts-1", "voice": "vivian", "response_format": "wav",
                                             "input": "Hello big world. How are you?", "timestamps": True})
        fast = c.post("/v1/audio/speech", json={"model": "tts-1", "voice": "vivian", "input": "One two.",
                                                "timestamps": True, "speed": 2.0, "response_format": "flac"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    body = r.json()
    assert body["response_format"] == "wav" and body["duration"] == 0.1 and body["finish_reason"] == "stop"
    assert base64.b64decode(body["audio"])[:4] == b"RIFF"
    assert [w["word"] for w in body["words"]] == ["Hello", "big", "world.", "How", "are", "you?"]
    starts = [w["start"] for w in body["words"]]
    assert starts == sorted(starts) and all(0 <= w["start"] <= w["end"] <= 0.1 for w in body["words"])
    ((name, kwargs),) = services["aligner"].calls[:1]
    assert name == "align_spans" and len(kwargs["audio"]) == 1600  # 0.1 s at 16 kHz, resampled from 24 kHz
    assert [s.lines for s in kwargs["text"].spans] == [["Hello big world.", "How are you?"]]
    assert [(n, k["utterance"].text) for n, k in services["tts"].calls] == [
        ("synthesize", "Hello big world. How are you?"), ("synthesize", "One two.")]
    assert fast.json()["duration"] == 0.05 and max(w["end"] for w in fast.json()["words"]) <= 0.05


def test_speech_sse_with_word_timestamps_sentence_by_sentence():
    """Streamed: each sentence synthesized in turn into one audio stream; after each, a speech.audio.words
    event with its words at global offsets; done sums the sentences' usage."""
    c, services = speech_in("tts", "aligner")
    with c:
        r = c.post("/v1/audio/speech", json={"model": "tts-1", "voice": "vivian", "stream_format": "sse",
                                             "response_format": "pcm", "input": "Hello world. How are you? ...",
                                             "timestamps": True})
    assert r.status_code == 200, r.text
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done" and kinds.count("speech.audio.words") == 2
    assert kinds.index("speech.audio.words") > kinds.index("speech.audio.delta")
    words = [e for e in events if e["type"] == "speech.audio.words"]
    assert [e["sentence"] for e in words] == [0, 1]
    assert [w["word"] for w in words[0]["words"]] == ["Hello", "world."]
    assert [w["word"] for w in words[1]["words"]] == ["How", "are", "you?", "..."]  # the wordless tail joins it
    assert all(0 <= w["start"] <= w["end"] <= 0.1 for w in words[0]["words"])
    assert all(0.1 <= w["start"] <= w["end"] <= 0.2 for w in words[1]["words"])  # offset by sentence 0's audio
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert len(audio) == 2 * 2400 * 2  # two sentences of 0.1 s, 16-bit pcm at 24 kHz
    assert events[-1]["usage"]["input_tokens"] == 24 and events[-1]["finish_reason"] == "stop"
    assert [k["utterance"].text for n, k in services["tts"].calls if n == "stream"] == [
        "Hello world.", "How are you? ..."]


def test_speech_timestamps_are_refused_where_they_cannot_be_given():
    c, services = speech_in("tts")
    with c:
        no_aligner = c.post("/v1/audio/speech", json={"model": "tts-1", "voice": "vivian", "input": "Hi there.",
                                                      "timestamps": True})
    c, both = speech_in("tts", "aligner")
    with c:
        raw = c.post("/v1/audio/speech", json={"model": "tts-1", "voice": "vivian", "input": "Hi there.",
                                               "timestamps": True, "stream_format": "audio"})
    assert no_aligner.status_code == 400 and no_aligner.json()["error"]["code"] == "timestamps_unavailable"
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "timestamps"
    assert services["tts"].calls == [] and both["tts"].calls == []


def gapped_tone(seconds: float, gaps: list[float], rate: int = 16000) -> bytes:
    """A loud tone with 1-s silences starting at `gaps` (seconds), as 16-bit wav."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.5 * np.sin(2 * np.pi * 330 * t)
    for g in gaps:
        x[int(g * rate):int((g + 1) * rate)] = 0
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((x * 32767).astype(np.int16).tobytes())
    return buf.getvalue()


def test_long_audio_becomes_a_timeline_of_windows_cut_at_quiet_points():
    """caption_windows: 75 s with silences at 24-25 s and 47-48 s -> three windows cut inside the silences,
    each captioned as its own clip (at most window_concurrency at once, and really two at once), answered
    in order as text and as `timeline`, usage summed; streamed, one delta per window with its times."""
    import asyncio

    running, most = 0, 0

    async def complete(audio, params: GenParams):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05 * (1 + len(audio) % 3))  # windows finish out of order
        running -= 1
        return Completion(text=f" {len(audio)} samples ", finish_reason="length" if len(audio) < 380000 else "stop",
                          usage=Usage(prompt_tokens=10, completion_tokens=2)).model_dump()

    cap = Fake(complete=complete)
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(gapped_tone(75, [24, 47])).decode(),
                                                    "format": "wav"}}
    body = {"model": "captioner", "caption_windows": True, "messages": [{"role": "user", "content": [part]}]}
    with client({"captioner": cap}) as c:
        r = c.post("/v1/chat/completions", json=body)
        s = c.post("/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}})
        plain = c.post("/v1/chat/completions", json={k: v for k, v in body.items() if k != "caption_windows"})
    assert r.status_code == 200, r.text
    timeline = r.json()["choices"][0]["message"]["timeline"]
    assert [e["index"] for e in timeline] == [0, 1, 2]
    assert timeline[0]["start"] == 0 and timeline[-1]["end"] == 75.0
    assert all(a["end"] == b["start"] for a, b in zip(timeline, timeline[1:]))  # contiguous, in order
    assert 24 <= timeline[0]["end"] <= 25 and 47 <= timeline[1]["end"] <= 48  # cut where it is quiet
    assert all(e["end"] - e["start"] <= 30 for e in timeline)
    sizes = [len(k["audio"]) for name, k in cap.calls[:3]]
    assert [e["text"] for e in timeline] == [f"{n} samples" for n in sizes]  # each window its own clip
    assert sum(sizes) == 75 * 16000 and most == 2  # two windows at once, never more
    content = r.json()["choices"][0]["message"]["content"]
    assert content.split("\n\n")[0] == f"[0:00.0–{timeline[0]['end'] // 60:.0f}:{timeline[0]['end'] % 60:04.1f}] " \
                                        f"{sizes[0]} samples"
    assert r.json()["usage"] == {"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}
    assert r.json()["choices"][0]["finish_reason"] == "length"  # the middle window was cut
    events = sse_events(s)
    windows_ = [e["choices"][0]["delta"] for e in events if e["choices"] and "window" in e["choices"][0]["delta"]]
    assert [d["window"]["index"] for d in windows_] == [0, 1, 2]
    assert "".join(d["content"] for d in windows_) == content
    assert events[-1]["usage"]["total_tokens"] == 36 and events[-2]["choices"][0]["finish_reason"] == "length"
    assert plain.status_code == 413 and plain.json()["error"]["code"] == "audio_too_long"


def test_a_timeline_has_its_own_length_cap():
    cap = captioner()
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav(12.0)).decode(), "format": "wav"}}
    with client({"captioner": cap}, Settings(services=["captioner"], captioner={"max_windowed_seconds": 10})) as c:
        r = c.post("/v1/chat/completions", json={"model": "captioner", "caption_windows": True,
                                                 "messages": [{"role": "user", "content": [part]}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long" and cap.calls == []


def test_an_alignment_converts_to_every_format_without_the_model():
    """POST /api/v1/align/convert writes the segments given (a JSON answer, maybe edited) in any format; the
    aligner is not called; malformed input is a 400 in the envelope."""
    aligner = fake("aligner")
    segments = [{"text": "Hello big world", "start": 1.0, "end": 2.5, "words": [
        {"text": "Hello", "start": 1.0, "end": 1.4}, {"text": "big", "start": 1.5, "end": 1.9},
        {"text": "world", "start": 2.0, "end": 2.5}]}, {"text": "", "start": 2.5, "end": 3.0, "words": []}]
    with client({"aligner": aligner}) as c:
        out = {fmt: c.post("/api/v1/align/convert", json={"segments": segments, "format": fmt, "language": "en",
                                                         "duration": 4.0, "metadata": {"title": "T"}})
               for fmt in ("lrc", "lrc_enhanced", "srt", "vtt", "ttml", "ass", "json")}
        bad = [c.post("/api/v1/align/convert", json=body) for body in (
            {"segments": segments, "format": "docx"}, {"segments": [], "format": "lrc"},
            {"segments": [{"text": "x"}], "format": "lrc"}, {"segments": segments, "format": "lrc", "extra": 1})]
        not_a_time = c.post("/api/v1/align/convert", json={"format": "ass", "segments": [
            {"text": "a", "start": 0, "end": 1e12, "words": []}]})
        not_json = c.post("/api/v1/align/convert", content=b'{"format": "ass", "segments": [{"text": "a", '
                          b'"start": 0, "end": Infinity, "words": []}]}', headers={"content-type": "application/json"})
    assert {f: r.status_code for f, r in out.items()} == dict.fromkeys(out, 200)
    assert out["lrc"].text.splitlines()[:3] == ["[ti:T]", "[length:00:04]", "[00:01.00] Hello big world"]
    assert out["ass"].headers["content-type"].startswith("text/x-ssa") and "{\\k40}Hello" in out["ass"].text
    assert out["ttml"].headers["content-type"].startswith("application/ttml+xml")
    assert out["json"].json()["segments"][0]["words"][2]["text"] == "world"
    assert [r.status_code for r in bad] == [400] * 4
    assert not_a_time.status_code == 400 and "segments[0].end" in not_a_time.json()["error"]["message"]
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    assert "Infinity is not a JSON number" in not_json.json()["error"]["message"]
    assert all(r.json()["error"]["type"] == "invalid_request_error" for r in bad)
    assert aligner.calls == []


def test_without_lyrics_the_asr_hears_them_and_the_aligner_times_them():
    """lyrics omitted: the ASR transcribes the song window by window, the aligner times each window's
    sentences inside it, and the heard text comes back as timed lines in any format (here LRC and JSON);
    without the ASR enabled it is a 400 before any model runs."""
    c, services = speech_in("asr", "aligner")
    with c:
        lrc = c.post("/api/v1/align", files={"audio": ("song.wav", wav(3.0), "audio/wav")}, data={"format": "lrc"})
        js = c.post("/api/v1/align", files={"audio": ("song.wav", wav(3.0), "audio/wav")}, data={"format": "json"})
    assert lrc.status_code == 200, lrc.text
    assert [line.split("] ", 1)[1] for line in lrc.text.splitlines()[1:]] == ["hello there."] * 3
    segs = js.json()["segments"]
    assert [(s["start"], s["end"]) for s in segs] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]  # each in its window
    assert js.json()["review"]["lines"] == 3 and all("needs_review" in s for s in segs)
    asr_calls = [name for name, _ in services["asr"].calls]
    assert asr_calls == ["transcribe", "transcribe"]
    assert [name for name, _ in services["aligner"].calls] == ["align_spans", "align_spans"]
    c, only = speech_in("aligner")
    with c:
        refused = c.post("/api/v1/align", files={"audio": ("song.wav", wav(1.0), "audio/wav")}, data={"format": "lrc"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "lyrics_required"
    assert only["aligner"].calls == []


def test_verify_flags_a_line_nobody_sang():
    """verify: the lyrics aligned and, at the same time, the song heard by the ASR and timed; a lyric line
    with none of its words heard where it was placed is not_found (the decision itself: test_align_verify)."""
    c, services = speech_in("asr", "aligner")
    with c:
        r = c.post("/api/v1/align", files={"audio": ("song.wav", wav(3.0), "audio/wav")},
                   data={"lyrics": '["hello there", "never sung words", "hello there"]', "format": "json",
                         "verify": "true"})
    assert r.status_code == 200, r.text
    segs = r.json()["segments"]
    assert [s["found"] for s in segs] == [True, False, True]
    assert [s["review"] for s in segs] == [[], ["not_found"], []]
    assert r.json()["review"]["lines_to_review"] == [1] and r.json()["extra_audio"] == []
    assert sorted(name for name, _ in services["aligner"].calls) == ["align", "align_spans"]
    c, _ = speech_in("aligner")
    with c:
        refused = c.post("/api/v1/align", files={"audio": ("song.wav", wav(1.0), "audio/wav")},
                         data={"lyrics": '["a"]', "verify": "true"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "verify_unavailable"


def test_separate_sends_the_file_to_the_separator_and_everything_after_hears_the_vocals(monkeypatch):
    """separate: the uploaded bytes go to the aligner's `separate` (it decodes them at the model's own rate and
    channels); the vocals it answers, fitted to the decoded length, are what the aligner and, without lyrics,
    the ASR then receive. Without QWEN_ALIGNER_SEPARATOR it is a 400 before any model runs."""
    monkeypatch.setenv("QWEN_ALIGNER_SEPARATOR", "htdemucs")
    c, services = speech_in("asr", "aligner")
    sent = wav(2.0)

    async def separate(audio):
        assert bytes(np.asarray(audio, np.uint8)) == sent
        return np.full(32000 - 3, 0.5, np.float32)  # a resampler's few samples short

    services["aligner"].to_async.separate = separate
    with c:
        timed = c.post("/api/v1/align", files={"audio": ("song.wav", sent, "audio/wav")},
                       data={"lyrics": '["hello there"]', "format": "json", "separate": "true"})
        heard = c.post("/api/v1/align", files={"audio": ("song.wav", sent, "audio/wav")},
                       data={"format": "json", "separate": "true"})
    assert timed.status_code == 200 and heard.status_code == 200, (timed.text, heard.text)
    calls = services["aligner"].calls + services["asr"].calls
    assert [name for name, _ in calls] == ["align", "align_spans", "transcribe"]  # lyrics; then none
    for audio in [kw["audio"] for _, kw in calls]:
        assert len(audio) == 32000 and audio[:-3].min() == 0.5 == audio[:-3].max() and not audio[-3:].any()

    monkeypatch.delenv("QWEN_ALIGNER_SEPARATOR")
    c, services = speech_in("aligner")
    with c:
        refused = c.post("/api/v1/align", files={"audio": ("song.wav", sent, "audio/wav")},
                         data={"lyrics": '["a"]', "separate": "true"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "separation_unavailable"
    assert refused.json()["error"]["param"] == "separate" and services["aligner"].calls == []


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", b'{"model": "captioner", "messages": [{"role": "user", "content": "hi"}], '
                             b'"temperature": NaN}'),
    ("/v1/audio/speech", b'{"model": "tts", "input": "hi", "voice": "vivian", "speed": Infinity}'),
    ("/api/v1/align", b'{"audio_url": "http://example.com/a.wav", "lyrics": ["a"], "x": -Infinity}'),
    ("/api/v1/align/convert", b'{"format": "lrc", "segments": [{"text": "a", "start": NaN, "end": 1}]}'),
])
def test_nan_and_infinity_are_not_json_on_any_json_route(path, body):
    """Python's JSON parser reads NaN/Infinity; every JSON route reads its body strictly (400 invalid_json,
    before any validation or model), and the gateway goes on serving."""
    c, services = speech_in("tts", "aligner", "captioner")
    with c:
        r = c.post(path, content=body, headers={"content-type": "application/json"})
        after = c.post("/api/v1/align/convert", json={"format": "lrc", "segments": [{"text": "a", "start": 0,
                                                                                   "end": 1, "words": []}]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_json" and r.json()["error"]["type"] == "invalid_request_error"
    assert "is not a JSON number" in r.json()["error"]["message"]
    assert all(s.calls == [] for s in services.values()) and after.status_code == 200
