"""POST /v1/audio/speech and GET /v1/audio/voices through the real `bentoml serve`, with the openai SDK.

The tiny talker never emits EOS: every synthesis is QWEN_TTS_MAX_FRAMES (40) frames = 3.2 s at 24 kHz.
Audio is decoded back with PyAV; assertions are on rates, durations, formats, timing order, statuses."""

from __future__ import annotations

import io
import json
import time

import av
import httpx
import numpy as np
import openai
import pytest

pytestmark = pytest.mark.served

SECONDS = 40 * 0.08


@pytest.fixture(scope="module")
def oai(served):
    return served.openai()


def decode(data: bytes) -> tuple[int, float]:
    with av.open(io.BytesIO(data)) as c:
        s = c.streams.audio[0]
        n = sum(f.samples for f in c.decode(s))
        return s.rate, n / s.rate


@pytest.mark.parametrize("fmt, rate", [("mp3", 24000), ("opus", 48000), ("aac", 24000), ("flac", 24000),
                                       ("wav", 24000)])
def test_every_format_decodes_to_the_right_rate_and_length(oai, fmt, rate):
    r = oai.audio.speech.create(model="tts-1", voice="vivian", input="Hello there.", response_format=fmt)
    got_rate, seconds = decode(r.content)
    assert got_rate == rate
    assert abs(seconds - SECONDS) < 0.15, seconds


def test_pcm_is_24k_s16le(oai):
    r = oai.audio.speech.create(model="tts-1", voice="Ryan", input="Hello there.", response_format="pcm")
    assert r.response.headers["content-type"] == "audio/pcm"
    samples = np.frombuffer(r.content, dtype="<i2")
    assert len(samples) == int(SECONDS * 24000) and np.abs(samples).max() > 0


def test_content_types(served):
    with served.client() as c:
        for fmt, ctype in [("mp3", "audio/mpeg"), ("wav", "audio/wav"), ("flac", "audio/flac"),
                           ("aac", "audio/aac"), ("opus", "audio/ogg")]:
            r = c.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "aiden",
                                                  "response_format": fmt})
            assert r.status_code == 200 and r.headers["content-type"] == ctype


def test_speed_stretches_duration(oai):
    fast = oai.audio.speech.create(model="tts-1", voice="vivian", input="Hello.", response_format="wav", speed=2.0)
    slow = oai.audio.speech.create(model="tts-1", voice="vivian", input="Hello.", response_format="wav", speed=0.5)
    assert abs(decode(fast.content)[1] - SECONDS / 2) < 0.1
    assert abs(decode(slow.content)[1] - SECONDS * 2) < 0.15


@pytest.mark.parametrize("model", ["tts-1-hd", "qwen3-tts", "tts-1-en", "tts-1-hd-ja", "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice"])
def test_model_names_and_language_suffixes(oai, model):
    r = oai.audio.speech.create(model=model, voice="SOHEE", input="Hello.", response_format="wav")
    assert decode(r.content)[0] == 24000


def test_instructions_are_accepted(oai):
    r = oai.audio.speech.create(model="tts-1", voice="serena", input="Hello.", instructions="Speak softly.",
                                response_format="wav")
    assert abs(decode(r.content)[1] - SECONDS) < 0.1


def test_streaming_sends_audio_before_synthesis_ends(oai):
    t0 = time.perf_counter()
    arrivals, chunks = [], []
    with oai.audio.speech.with_streaming_response.create(
        model="tts-1", voice="ryan", input="A longer sentence to stream.", response_format="mp3",
        extra_body={"stream_format": "audio"},
    ) as resp:
        assert resp.headers["content-type"] == "audio/mpeg"
        for chunk in resp.iter_bytes(1024):
            arrivals.append(time.perf_counter() - t0)
            chunks.append(chunk)
    total = arrivals[-1]
    assert len(chunks) >= 3
    assert arrivals[0] < total / 2, (arrivals[0], total)  # the first bytes well before the end
    assert abs(decode(b"".join(chunks))[1] - SECONDS) < 0.15


def test_stream_true_alias_and_wav_stream(served):
    with served.client() as c:
        with c.stream("POST", "/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "eric",
                                                         "response_format": "wav", "stream": True}) as r:
            assert r.status_code == 200
            data = b"".join(r.iter_bytes())
    rate, seconds = decode(data)
    assert rate == 24000 and abs(seconds - SECONDS) < 0.1


def test_sse_stream_events(served):
    with served.client() as c:
        with c.stream("POST", "/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "dylan",
                                                         "response_format": "pcm", "stream_format": "sse"}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    done = events[-1]  # every tiny synthesis runs to its frame cap: "length", 40 frames, said not hidden
    assert done["type"] == "speech.audio.done" and done["finish_reason"] == "length"
    usage = done["usage"]
    assert usage["output_tokens"] == 40 and usage["input_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    import base64

    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"} and len(pcm) == int(SECONDS * 24000) * 2


TIMED_INPUT = "Hello there, my friend. How are you today?"
TIMED_WORDS = 8  # the aligner's units: words without their punctuation


def test_word_timestamps_whole_with_the_sdk(oai):
    """timestamps (extension) through the unmodified SDK's extra_body: a JSON answer with the audio and one
    time per input word, ordered, inside the audio (the tiny aligner's times are random: no accuracy)."""
    r = oai.audio.speech.create(model="tts-1", voice="vivian", input=TIMED_INPUT, response_format="flac",
                                extra_body={"timestamps": True})
    body = json.loads(r.content)
    rate, seconds = decode(__import__("base64").b64decode(body["audio"]))
    assert rate == 24000 and abs(seconds - SECONDS) < 0.05 and body["duration"] == pytest.approx(SECONDS, abs=0.01)
    words = body["words"]
    assert len(words) == TIMED_WORDS and [w["word"] for w in words][:2] == ["Hello", "there"]
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert all(0 <= w["start"] <= w["end"] <= body["duration"] + 0.01 for w in words)


def test_word_timestamps_stream_sentence_by_sentence_with_the_sdk(oai):
    """SSE: each sentence's words arrive after its audio, at offsets in the whole stream; clients that do
    not know speech.audio.words skip it (the audio deltas and done are OpenAI's)."""
    import base64

    with oai.audio.speech.with_streaming_response.create(
            model="tts-1", voice="vivian", input=TIMED_INPUT, response_format="pcm", stream_format="sse",
            extra_body={"timestamps": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] == 80  # two sentences
    timed = [e for e in events if e["type"] == "speech.audio.words"]
    assert [e["sentence"] for e in timed] == [0, 1]
    assert kinds.index("speech.audio.words") > kinds.index("speech.audio.delta")
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert len(pcm) == 2 * int(SECONDS * 24000) * 2
    first, second = timed[0]["words"], timed[1]["words"]
    assert len(first) + len(second) == TIMED_WORDS and len(first) == 4
    assert all(0 <= w["start"] <= w["end"] <= SECONDS + 0.01 for w in first)
    assert all(SECONDS - 0.01 <= w["start"] <= w["end"] <= 2 * SECONDS + 0.01 for w in second)
    starts = [w["start"] for w in first + second]
    assert starts == sorted(starts)


@pytest.mark.parametrize("body, status, code", [
    ({"input": "", "voice": "vivian"}, 400, "empty_input"),
    ({"input": "   ", "voice": "vivian"}, 400, "empty_input"),
    ({"input": "Hi", "voice": "bob"}, 400, "invalid_voice"),
    ({"input": "Hi", "voice": "vivian", "response_format": "ogg"}, 400, "invalid_value"),
    ({"input": "Hi", "voice": "vivian", "speed": 10}, 400, "invalid_value"),
    ({"input": "Hi", "voice": "vivian", "speed": 0.1}, 400, "invalid_value"),
    ({"input": "x" * 5000, "voice": "vivian"}, 413, "input_too_long"),
    ({"input": "Hi", "voice": "vivian", "model": "tts-2"}, 404, "model_not_found"),
    ({"input": "Hi", "voice": "vivian", "stream": True, "speed": 10}, 400, "invalid_value"),
    ({"input": "Hi", "voice": "bob", "stream_format": "sse"}, 400, "invalid_voice"),
])
def test_bad_requests_are_refused_before_any_audio(served, body, status, code):
    with served.client() as c:
        r = c.post("/v1/audio/speech", json={"model": "tts-1", **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]


def test_unknown_voice_lists_the_valid_ones(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.audio.speech.create(model="tts-1", voice="bob", input="Hi")
    assert "vivian" in e.value.body["message"] and e.value.body["param"] == "voice"


def test_voices_and_models(served, oai):
    with served.client() as c:
        v = c.get("/v1/audio/voices").json()
    assert {x["id"] for x in v["data"]} == {"vivian", "serena", "uncle_fu", "dylan", "eric", "ryan", "aiden",
                                             "ono_anna", "sohee"}
    assert all(x["language"] and x["description"] for x in v["data"])
    models = oai.models.list().data
    tts = next(m for m in models if m.id == "Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice")
    assert {"tts-1", "tts-1-hd", "qwen3-tts", "tts-1-en", "tts-1-hd-zh"} <= set(tts.model_extra["aliases"])


def test_a_cut_synthesis_says_so(served):
    from prometheus_client.parser import text_string_to_metric_families

    def truncated() -> float:
        fams = {f.name: f for f in text_string_to_metric_families(httpx.get(served.url + "/metrics").text)}
        return sum(s.value for s in fams["qwen_generation_truncated"].samples
                   if s.labels.get("service") == "tts" and s.name.endswith("_total"))

    before = truncated()
    with served.client() as c:
        r = c.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "ryan", "response_format": "wav"})
    assert r.status_code == 200 and r.headers["x-finish-reason"] == "length"  # the tiny talker never stops
    assert truncated() == before + 1


def test_concurrent_listeners_share_the_decode_loop(served):
    """Six streams at once: each one's first audio arrives before any of them has ended (streams that
    took turns would start only as the previous one ends), and the loop's steps carried several rows
    (qwen_batch_size of tts: rows per decode step)."""
    import concurrent.futures
    import threading

    from prometheus_client.parser import text_string_to_metric_families

    def rows_per_step() -> tuple[float, float]:
        fams = {f.name: f for f in text_string_to_metric_families(httpx.get(served.url + "/metrics").text)}
        vals = {s.name: s.value for s in fams["qwen_batch_size"].samples if s.labels.get("service") == "tts"}
        return vals.get("qwen_batch_size_sum", 0.0), vals.get("qwen_batch_size_count", 0.0)

    events: list[tuple[str, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def body(i: int) -> dict:
        return {"model": "tts-1", "voice": "aiden", "response_format": "pcm", "input": f"Listener {i} hears this."}

    def listen(i: int) -> bytes:
        start.wait()
        got = b""
        with served.client(timeout=120) as c:
            with c.stream("POST", "/v1/audio/speech", json={**body(i), "stream": True}) as r:
                assert r.status_code == 200
                for chunk in r.iter_bytes():
                    if chunk and not got:
                        with lock:
                            events.append(("first", i))
                    got += chunk
        with lock:
            events.append(("end", i))
        return got

    before = rows_per_step()
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        streamed = list(pool.map(listen, range(6)))
    after = rows_per_step()
    assert [len(b) for b in streamed] == [int(SECONDS * 24000) * 2] * 6  # all 40 frames of 16-bit PCM each
    with served.client(timeout=120) as c:  # each alone, not streamed: the same frames (greedy tiny model)
        for i, got in enumerate(streamed):
            alone = np.frombuffer(c.post("/v1/audio/speech", json=body(i)).content, dtype="<i2").astype(int)
            # streamed decode windows vs the package's chunked decode: float noise, a few 16-bit steps
            assert np.abs(np.frombuffer(got, dtype="<i2").astype(int) - alone).max() <= 8, i
    kinds = [k for k, _ in events]
    assert sorted(i for k, i in events if k == "first") == list(range(6))
    assert kinds.index("end") > max(n for n, k in enumerate(kinds) if k == "first"), events
    rows, steps = after[0] - before[0], after[1] - before[1]
    assert steps > 0 and rows / steps > 2, (rows, steps)


def test_a_late_joiner_starts_before_the_first_stream_ends(served):
    """A second listener who arrives once the first one's audio flows joins the running batch at the next
    step: its first audio comes before the first stream's end."""
    import threading

    order: list[str] = []
    joined = threading.Event()

    def late():
        joined.wait(60)
        with served.client(timeout=120) as c:
            with c.stream("POST", "/v1/audio/speech", json={"model": "tts-1", "voice": "sohee", "stream": True,
                                                             "response_format": "pcm", "input": "I came late."}) as r:
                for chunk in r.iter_bytes():
                    if chunk:
                        order.append("late first audio")
                        break

    t = threading.Thread(target=late)
    t.start()
    with served.client(timeout=120) as c:
        with c.stream("POST", "/v1/audio/speech", json={"model": "tts-1", "voice": "ryan", "stream": True,
                                                         "response_format": "pcm", "input": "I was here first."}) as r:
            for chunk in r.iter_bytes():
                if chunk and not joined.is_set():
                    joined.set()
    order.append("first stream ended")
    t.join(120)
    assert order == ["late first audio", "first stream ended"], order


def test_a_listener_who_leaves_frees_its_row(served):
    """The client closes its stream after the first audio: the request leaves the decode loop at once,
    instead of generating its other frames for nobody (a whole synthesis here is 40 frames, so about 39
    row-steps of the loop; one that leaves after its first chunk makes only a few)."""
    import time

    def active() -> float:
        return served.metric("qwen_inference_active", "tts").get("qwen_inference_active", 0.0)

    before = served.batches("tts")
    with served.client(timeout=120) as c:
        with c.stream("POST", "/v1/audio/speech", json={"model": "tts-1", "voice": "eric", "stream": True,
                                                         "response_format": "pcm", "input": "Goodbye early."}) as r:
            assert r.status_code == 200
            next(chunk for chunk in r.iter_bytes() if chunk)
    deadline = time.monotonic() + 60
    while active() > 0:  # the request has left the loop (the service's own count)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    row_steps = served.batches("tts")[0] - before[0]
    assert row_steps < 30, row_steps
