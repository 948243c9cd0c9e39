"""The realtime transcription WebSocket (services.asr.realtime) in process, on a fake ASR service: the event
sequences of both API families, server VAD on real (espeak-ng) speech, manual commits of G.711 audio, every
client mistake an `error` event with the session going on, auth at the handshake, the session cap, the audio
rate, and backpressure (a session with a turn transcribing does not read its socket past the limit)."""

from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest
from starlette.testclient import WebSocketDenialResponse

from services.asr.contract import StreamDone, TextDelta, TranscribeOptions, Transcription
from services.runtime.codecs.audio import resample
from services.runtime.core.settings import Settings
from services.runtime.edge import remote
from tests.audio_fixtures import speech
from tests.unit.test_gateway_inprocess import Fake, client

pytestmark = pytest.mark.timeout(120)
URL = "/v1/realtime?intent=transcription"


def fake_asr(gate: threading.Event | None = None) -> Fake:
    """The ASR's stream: "hello" + " there" per item, after `gate` opens (when given)."""

    async def stream(audio, options: TranscribeOptions, ticket: str = ""):
        import asyncio

        if gate is not None:
            await asyncio.to_thread(gate.wait)
        seconds = len(audio) / 16000
        whole = Transcription(text="hello there", language="English", duration=seconds, spans=[])
        yield remote.stream_ok()
        yield TextDelta(delta="hello").line() + TextDelta(delta=" there").line()
        yield StreamDone(transcription=whole, input_tokens=20, output_tokens=2).line()

    async def leave(ticket: str):
        return False

    return Fake(stream=stream, leave=leave)


def pcm16_24k(samples_16k: np.ndarray) -> bytes:
    x = resample(samples_16k, 16000, 24000)
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def until(ws, kind: str, seen: list) -> dict:
    """Receive events (kept in `seen`) up to the first of type `kind`."""
    while True:
        event = ws.receive_json()
        seen.append(event)
        if event["type"] == kind:
            return event


@pytest.fixture(scope="module")
def spoken() -> np.ndarray:
    """1 s of silence, a spoken sentence, 1.5 s of silence (16 kHz)."""
    voice = speech("Hello there, this is a realtime transcription test.")
    return np.concatenate([np.zeros(16000, np.float32), voice, np.zeros(24000, np.float32)])


def test_ga_session_with_server_vad_on_real_speech(spoken):
    asr = fake_asr()
    with client({"asr": asr}) as c, c.websocket_connect(URL) as ws:
        created = ws.receive_json()
        assert created["type"] == "session.created" and created["event_id"].startswith("event_")
        session = created["session"]
        assert session["type"] == "transcription"
        assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"  # OpenAI's default
        ws.send_json({"type": "session.update", "event_id": "c1", "session": {
            "type": "transcription", "audio": {"input": {
                "transcription": {"model": "whisper-1", "language": "en", "prompt": "a test"},
                "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 200,
                                   "silence_duration_ms": 400}}}}})
        updated = ws.receive_json()
        assert updated["type"] == "session.updated"
        assert updated["session"]["audio"]["input"]["transcription"]["language"] == "en"
        assert updated["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 400
        pcm = pcm16_24k(spoken)
        for i in range(0, len(pcm), 4800):  # 100-ms appends, no reply to each
            ws.send_json({"type": "input_audio_buffer.append", "audio": b64(pcm[i:i + 4800])})
        seen: list = []
        done = until(ws, "conversation.item.input_audio_transcription.completed", seen)
    kinds = [e["type"] for e in seen]
    assert kinds[:4] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                         "input_audio_buffer.committed", "conversation.item.added"]
    assert kinds[4:] == ["conversation.item.input_audio_transcription.delta"] * 2 + [done["type"]]
    item = seen[0]["item_id"]
    assert all(e["item_id"] == item for e in seen[:3]) and seen[3]["item"]["id"] == item
    assert seen[2]["previous_item_id"] is None and seen[3]["item"]["role"] == "user"
    start, end = seen[0]["audio_start_ms"], seen[1]["audio_end_ms"]
    assert 500 <= start <= 1000 and start < end <= len(spoken) / 16  # speech begins after the 1 s of silence
    assert "".join(e["delta"] for e in seen[4:6]) == done["transcript"] == "hello there"
    assert done["usage"] == {"type": "tokens", "input_tokens": 20, "output_tokens": 2, "total_tokens": 22}
    (name, kwargs), = asr.calls
    assert name == "stream" and abs(len(kwargs["audio"]) - (end - start) * 16) <= 16
    assert (kwargs["options"].language, kwargs["options"].prompt) == ("en", "a test")


def test_beta_session_with_manual_commits_of_g711():
    asr = fake_asr()
    ulaw_silence = bytes([0xFF]) * 4000  # 0.5 s at 8 kHz
    with client({"asr": asr}) as c, c.websocket_connect(URL, headers={"OpenAI-Beta": "realtime=v1"}) as ws:
        assert ws.receive_json()["type"] == "transcription_session.created"
        ws.send_json({"type": "transcription_session.update", "session": {
            "input_audio_format": "g711_ulaw", "turn_detection": None,
            "input_audio_transcription": {"model": "qwen3-asr"}}})
        updated = ws.receive_json()
        assert updated["type"] == "transcription_session.updated"
        assert updated["session"]["input_audio_format"] == "g711_ulaw" and updated["session"]["turn_detection"] is None
        ws.send_json({"type": "input_audio_buffer.append", "audio": b64(ulaw_silence)})
        ws.send_json({"type": "input_audio_buffer.commit"})
        seen: list = []
        until(ws, "conversation.item.input_audio_transcription.completed", seen)
        ws.send_json({"type": "input_audio_buffer.append", "audio": b64(ulaw_silence)})
        ws.send_json({"type": "input_audio_buffer.commit"})
        second: list = []
        until(ws, "conversation.item.input_audio_transcription.completed", second)
    assert [e["type"] for e in seen[:2]] == ["input_audio_buffer.committed", "conversation.item.created"]
    assert second[0]["previous_item_id"] == seen[0]["item_id"] != second[0]["item_id"]
    assert [len(k["audio"]) for _, k in asr.calls] == [8000, 8000]  # 0.5 s each, at 16 kHz


@pytest.mark.parametrize("sent, code, param", [
    ("not json", "invalid_json", None),
    (json.dumps({"type": "response.create", "event_id": "e9"}), "invalid_event", "type"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "***", "event_id": "e9"}), "invalid_audio", "audio"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": b64(b"abc"), "event_id": "e9"}), "invalid_audio",
     "audio"),  # pcm16 of an odd length
    (json.dumps({"type": "input_audio_buffer.commit", "event_id": "e9"}), "input_audio_buffer_commit_empty", None),
    (json.dumps({"type": "session.update", "event_id": "e9", "session": {"type": "transcription", "audio": {
        "input": {"transcription": {"model": "gpt-4o-transcribe"}}}}}), "model_not_found",
     "session.transcription.model"),
    (json.dumps({"type": "session.update", "event_id": "e9", "session": {"type": "transcription", "audio": {
        "input": {"transcription": {"language": "xx"}}}}}), "invalid_value", "session.transcription.language"),
    (json.dumps({"type": "session.update", "event_id": "e9", "session": {"type": "realtime"}}), "invalid_value",
     "session.type"),
    (json.dumps({"type": "session.update", "event_id": "e9", "session": {"type": "transcription", "audio": {
        "input": {"turn_detection": {"type": "semantic_vad"}}}}}), "invalid_value",
     "session.audio.input.turn_detection.type"),
    (json.dumps({"type": "session.update", "event_id": "e9", "session": {"type": "transcription", "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}), "invalid_value",
     "session.audio.input.format.rate"),
])
def test_every_client_mistake_is_an_error_event_and_the_session_goes_on(sent, code, param):
    with client({"asr": fake_asr()}) as c, c.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_text(sent)
        err = ws.receive_json()
        assert err["type"] == "error" and err["error"]["code"] == code, err
        assert err["error"]["type"] == "invalid_request_error" and err["error"]["param"] == param
        assert err["error"]["event_id"] == (None if sent == "not json" else "e9")
        ws.send_json({"type": "input_audio_buffer.clear"})  # still serving
        assert ws.receive_json()["type"] == "input_audio_buffer.cleared"


def test_a_binary_frame_is_an_error_event():
    with client({"asr": fake_asr()}) as c, c.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_bytes(b"\x00\x01")
        assert ws.receive_json()["error"]["code"] == "invalid_event"


def test_the_key_is_checked_at_the_handshake_from_a_header_or_the_subprotocol():
    settings = Settings(services=["asr"], api_key="sekret")
    with client({"asr": fake_asr()}, settings) as c:
        with pytest.raises(WebSocketDenialResponse) as denied:
            with c.websocket_connect(URL):
                pass
        assert denied.value.status_code == 401 and denied.value.json()["error"]["type"] == "authentication_error"
        with c.websocket_connect(URL, headers={"Authorization": "Bearer sekret"}) as ws:
            assert ws.receive_json()["type"] == "session.created"
        with c.websocket_connect(URL, subprotocols=["realtime", "openai-insecure-api-key.sekret"]) as ws:
            assert ws.accepted_subprotocol == "realtime"  # a browser fails a handshake echoing none
            assert ws.receive_json()["type"] == "session.created"
        with pytest.raises(WebSocketDenialResponse) as wrong:
            with c.websocket_connect(URL, subprotocols=["realtime", "openai-insecure-api-key.nope"]):
                pass
        assert wrong.value.status_code == 401


def test_refusals_before_the_socket_opens():
    with client({"asr": fake_asr()}, Settings(services=["asr"], asr={"realtime_max_sessions": 1})) as c:
        with c.websocket_connect(URL) as first:
            first.receive_json()
            with pytest.raises(WebSocketDenialResponse) as full:
                with c.websocket_connect(URL):
                    pass
        with c.websocket_connect(URL) as again:  # the slot is free once the first closed
            assert again.receive_json()["type"] == "session.created"
        for url, status, code in [("/v1/realtime", 400, "unsupported_intent"),
                                  ("/v1/realtime?intent=transcription&model=gpt-4o", 404, "model_not_found")]:
            with pytest.raises(WebSocketDenialResponse) as bad:
                with c.websocket_connect(url):
                    pass
            assert bad.value.status_code == status and bad.value.json()["error"]["code"] == code
    assert full.value.status_code == 429 and full.value.json()["error"]["code"] == "too_many_sessions"
    assert full.value.headers["retry-after"] == "5"


def test_audio_faster_than_allowed_is_refused_chunk_by_chunk():
    settings = Settings(services=["asr"], asr={"realtime_audio_rate": 1.0, "realtime_burst_seconds": 1.0})
    chunk = b64(np.zeros(12000, "<i2").tobytes())  # 0.5 s at 24 kHz
    with client({"asr": fake_asr()}, settings) as c, c.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_json({"type": "session.update", "session": {"type": "transcription",
                                                           "audio": {"input": {"turn_detection": None}}}})
        ws.receive_json()
        for _ in range(3):  # 1.5 s at once against a 1-s burst: the third is dropped
            ws.send_json({"type": "input_audio_buffer.append", "audio": chunk})
        err = ws.receive_json()
        assert err["type"] == "error" and err["error"]["code"] == "audio_rate_exceeded"
        ws.send_json({"type": "input_audio_buffer.commit"})
        assert ws.receive_json()["type"] == "input_audio_buffer.committed"


def test_a_session_past_its_pending_turns_stops_reading_until_one_is_transcribed():
    """realtime_max_pending=1 and the ASR held: the second commit is taken (its events sent) but the session
    then waits for a slot without reading, so a `clear` sent after it is answered only after the first
    turn's transcription completed — ordering, not timing."""
    gate = threading.Event()
    settings = Settings(services=["asr"], asr={"realtime_max_pending": 1})
    chunk = b64(np.zeros(4800, "<i2").tobytes())  # 0.2 s
    with client({"asr": fake_asr(gate)}, settings) as c, c.websocket_connect(URL) as ws:
        ws.receive_json()
        ws.send_json({"type": "session.update", "session": {"type": "transcription",
                                                           "audio": {"input": {"turn_detection": None}}}})
        ws.receive_json()
        for _ in range(2):
            ws.send_json({"type": "input_audio_buffer.append", "audio": chunk})
            ws.send_json({"type": "input_audio_buffer.commit"})
        ws.send_json({"type": "input_audio_buffer.clear"})
        seen: list = []
        until(ws, "conversation.item.added", seen)
        until(ws, "conversation.item.added", seen)  # the second turn is committed...
        gate.set()  # ...and only now may the first turn's transcription run
        until(ws, "input_audio_buffer.cleared", seen)
        until(ws, "conversation.item.input_audio_transcription.completed", seen)
    kinds = [e["type"] for e in seen]
    first_done = kinds.index("conversation.item.input_audio_transcription.completed")
    assert kinds.index("input_audio_buffer.cleared") > first_done


def test_a_session_ends_at_its_maximum_length_with_an_error_event():
    from starlette.websockets import WebSocketDisconnect

    settings = Settings(services=["asr"], asr={"realtime_max_session_seconds": 0.5})
    with client({"asr": fake_asr()}, settings) as c, c.websocket_connect(URL) as ws:
        assert ws.receive_json()["type"] == "session.created"
        err = ws.receive_json()  # nothing sent: the session's time runs out
        assert err["type"] == "error" and err["error"]["code"] == "session_expired"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1000
