"""Realtime transcription (/v1/realtime?intent=transcription) through the real `bentoml serve`: the unmodified
`openai` SDK's realtime client with server VAD on espeak-ng speech, and a raw `websockets` client for the
handshake refusals and the error events. The tiny ASR writes random text: assertions are on the events,
their order, item ids and times, never on the words."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from services.runtime.codecs.audio import resample
from tests.audio_fixtures import speech
from tests.served_session import API_KEY

pytestmark = [pytest.mark.served, pytest.mark.timeout(300)]


def pcm16_24k(samples_16k: np.ndarray) -> bytes:
    return (np.clip(resample(samples_16k, 16000, 24000), -1, 1) * 32767).astype("<i2").tobytes()


def ws_url(served, query: str = "intent=transcription") -> str:
    return served.url.replace("http://", "ws://") + "/v1/realtime?" + query


def test_the_openai_sdk_realtime_client_transcribes_turn_by_turn(served):
    """Two spoken sentences separated by silence: server VAD makes two turns, each transcribed as it is
    committed, in OpenAI's event order."""
    oai = served.openai()
    gap = np.zeros(24000, np.float32)
    audio = np.concatenate([gap, speech("Good morning, everyone."), gap, speech("Let us begin the meeting."), gap])
    pcm = pcm16_24k(audio)
    events = []
    with oai.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        created = conn.recv()
        assert created.type == "session.created" and created.session.type == "transcription"
        conn.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 500,
                               "prefix_padding_ms": 300}}}})
        assert conn.recv().type == "session.updated"
        for i in range(0, len(pcm), 9600):  # 200-ms appends
            conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + 9600]).decode())
        done = 0
        while done < 2:
            event = conn.recv()
            events.append(event)
            assert event.type != "error", event
            done += event.type == "conversation.item.input_audio_transcription.completed"
    kinds = [e.type for e in events]
    items = [e.item_id for e in events if e.type == "input_audio_buffer.committed"]
    assert len(items) == 2 and items[0] != items[1]
    for item in items:
        mine = [e.type for e in events if getattr(e, "item_id", None) == item
                or (e.type == "conversation.item.added" and e.item.id == item)]
        assert mine[:4] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                            "input_audio_buffer.committed", "conversation.item.added"], mine
        assert mine[-1] == "conversation.item.input_audio_transcription.completed"
        deltas = "".join(e.delta for e in events if e.type.endswith("transcription.delta") and e.item_id == item)
        (completed,) = [e for e in events if e.type.endswith("transcription.completed") and e.item_id == item]
        assert deltas == completed.transcript and completed.usage.type == "tokens"
    starts = [e.audio_start_ms for e in events if e.type == "input_audio_buffer.speech_started"]
    stops = [e.audio_end_ms for e in events if e.type == "input_audio_buffer.speech_stopped"]
    assert starts[0] < stops[0] < starts[1] < stops[1] <= len(audio) / 16
    assert kinds.index("input_audio_buffer.speech_started") == 0


def test_raw_websocket_refusals_and_error_events(served):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as no_key:
        connect(ws_url(served))
    assert no_key.value.response.status_code == 401
    assert json.loads(no_key.value.response.body)["error"]["type"] == "authentication_error"
    with pytest.raises(InvalidStatus) as no_intent:
        connect(ws_url(served, ""), additional_headers={"Authorization": f"Bearer {API_KEY}"})
    assert no_intent.value.response.status_code == 400
    # a browser's way: the key in a subprotocol, the `realtime` one echoed
    with connect(ws_url(served), subprotocols=["realtime", f"openai-insecure-api-key.{API_KEY}"]) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(ws.recv())["type"] == "session.created"
        ws.send("{not json")
        assert json.loads(ws.recv())["error"]["code"] == "invalid_json"
        ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "mine"}))
        err = json.loads(ws.recv())["error"]
        assert err["code"] == "input_audio_buffer_commit_empty" and err["event_id"] == "mine"
        ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"turn_detection": None, "format": {"type": "audio/pcmu"}}}}}))
        assert json.loads(ws.recv())["type"] == "session.updated"
        ws.send(json.dumps({"type": "input_audio_buffer.append",
                            "audio": base64.b64encode(bytes([0xFF]) * 4000).decode()}))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        kinds = []
        while not kinds or kinds[-1] not in ("conversation.item.input_audio_transcription.completed", "error"):
            kinds.append(json.loads(ws.recv())["type"])
        assert kinds[:2] == ["input_audio_buffer.committed", "conversation.item.added"]
        assert kinds[-1] == "conversation.item.input_audio_transcription.completed"


def test_turns_of_concurrent_sessions_are_batched_together(served):
    """Four SDK sessions commit a turn at once (manual turn detection, a barrier before the commit): the
    ASR runs the four turns in fewer generate calls than four (qwen_batch_size's sum and count), and every
    session gets its own turn's events back."""
    import concurrent.futures
    import threading

    pcm = pcm16_24k(speech("Four people talk at once."))
    barrier = threading.Barrier(4)
    before = served.batches("asr")

    def session(i: int) -> tuple[str, str]:
        with served.openai().realtime.connect(extra_query={"intent": "transcription"}) as conn:
            assert conn.recv().type == "session.created"
            conn.session.update(session={"type": "transcription", "audio": {"input": {"turn_detection": None}}})
            assert conn.recv().type == "session.updated"
            for k in range(0, len(pcm), 9600):
                conn.input_audio_buffer.append(audio=base64.b64encode(pcm[k:k + 9600]).decode())
            barrier.wait(timeout=120)
            conn.input_audio_buffer.commit()
            committed = None
            while True:
                event = conn.recv()
                assert event.type != "error", event
                if event.type == "input_audio_buffer.committed":
                    committed = event.item_id
                if event.type == "conversation.item.input_audio_transcription.completed":
                    return committed, event.item_id

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(session, range(4)))
    assert all(committed == done for committed, done in results) and len({r[0] for r in results}) == 4
    after = served.batches("asr")
    items, calls = after[0] - before[0], after[1] - before[1]
    assert items == 4 and calls < 4, (items, calls)
