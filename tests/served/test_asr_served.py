"""POST /v1/audio/transcriptions through the real `bentoml serve`, driven by the unmodified openai SDK.

The tiny ASR's text is random: assertions are on types, formats, timing bounds and statuses."""

from __future__ import annotations

import re

import numpy as np
import openai
import pytest

from tests.audio_fixtures import SPEECH_SR, encode, song, speech, tone_and_noise

pytestmark = pytest.mark.served


@pytest.fixture(scope="module")
def oai(served):
    return served.openai()


def test_json_and_text(oai, wav):
    r = oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), response_format="json")
    assert isinstance(r.text, str)
    t = oai.audio.transcriptions.create(model="qwen3-asr", file=("a.wav", wav), response_format="text")
    assert isinstance(t, str) and "language " not in t and "<asr_text>" not in t


def test_srt_and_vtt(oai, wav):
    # The tiny ASR's text for this clip has letters (random, but deterministic): at least one cue.
    srt = oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), response_format="srt")
    assert isinstance(srt, str) and srt.startswith("1\n"), srt
    assert re.search(r"^\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}$", srt, re.M)
    vtt = oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), response_format="vtt")
    assert vtt.startswith("WEBVTT\n")
    assert re.search(r"^\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}$", vtt, re.M), vtt


def test_verbose_json_segments_and_words(oai, wav):
    r = oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), response_format="verbose_json",
                                        timestamp_granularities=["word", "segment"], language="en")
    assert r.language == "english"
    assert abs(r.duration - 12.0) < 0.1
    assert isinstance(r.text, str) and isinstance(r.segments, list) and isinstance(r.words, list)
    # The tiny ASR's (random, deterministic) text for this clip has letters, so the aligner times words:
    # an empty list here would mean the aligner was not reached.
    assert len(r.segments) >= 1 and len(r.words) >= 1, r.model_dump()
    for seg in r.segments:
        assert 0 <= seg.start <= seg.end <= r.duration + 1e-6 and isinstance(seg.text, str)
        # Computed, not placeholders: Whisper's compression ratio of the text, and voice activity's
        # no-speech probability of the segment's audio (runtime.serving.vad).
        assert seg.compression_ratio >= 0 and 0.0 <= seg.no_speech_prob <= 1.0, seg
        assert seg.avg_logprob <= 0 and all(isinstance(t, int) for t in seg.tokens), seg  # the decoder's own
    assert sum(len(seg.tokens) for seg in r.segments) >= 1
    starts = [w.start for w in r.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start <= w.end <= r.duration + 1e-6 and w.word for w in r.words)


def test_verbose_json_default_has_segments_not_words(oai, wav):
    r = oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), response_format="verbose_json")
    d = r.model_dump()
    assert "segments" in d and d.get("words") is None


def test_prompt_and_language_name_are_accepted(oai, wav):
    r = oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), language="zh",
                                        prompt="Qwen, BentoML", response_format="verbose_json")
    assert r.language == "chinese"


@pytest.mark.parametrize("kwargs, exc, code", [
    ({"model": "gpt-9"}, openai.NotFoundError, "model_not_found"),
    ({"response_format": "json", "timestamp_granularities": ["word"]}, openai.BadRequestError, "invalid_value"),
    ({"language": "klingon"}, openai.BadRequestError, "unsupported_language"),
    ({"response_format": "xml"}, openai.BadRequestError, "invalid_value"),
    ({"temperature": 3}, openai.BadRequestError, "invalid_value"),
    # Under the form's 4000-character cap but over QWEN_ASR_MAX_PROMPT_TOKENS (1024) on any Qwen
    # tokenizer (~2 real tokens per kanji, 3 on the tiny's): refused before it is batched with others.
    ({"prompt": "音声認識" * 900}, openai.BadRequestError, "prompt_too_long"),
    ({"chunking_strategy": {"type": "client_vad"}}, openai.BadRequestError, "invalid_value"),
    ({"chunking_strategy": {"type": "server_vad", "threshold": 2}}, openai.BadRequestError, "invalid_value"),
])
def test_bad_parameters_are_4xx_in_the_envelope(oai, wav, kwargs, exc, code):
    args = {"model": "whisper-1", "file": ("a.wav", wav), **kwargs}
    with pytest.raises(exc) as e:
        oai.audio.transcriptions.create(**args)
    assert e.value.body["code"] == code and e.value.body["message"]


def test_voice_activity_decodes_only_the_windows_with_speech(served, oai):
    """chunking_strategy (OpenAI's field; the session runs with QWEN_ASR_VAD=false because its other
    fixtures are tones): 20 s of tone and noise decode no window at all — an empty transcript, not an
    invented one; the same noise around one spoken sentence decodes one window (the engine's item count)."""
    noise = encode(tone_and_noise(20.0, 11), SPEECH_SR, "wav")
    spoken = encode(np.concatenate([tone_and_noise(6.0, 12), speech("Please call Stella and ask her to bring "
                                    "these things with her from the store."), tone_and_noise(6.0, 13)]),
                    SPEECH_SR, "wav")
    before = served.batches("asr")[0]
    r = oai.audio.transcriptions.create(model="whisper-1", file=("noise.wav", noise), chunking_strategy="auto",
                                        response_format="verbose_json")
    assert r.text == "" and r.segments == [] and abs(r.duration - 20.0) < 0.1, r.model_dump()
    assert served.batches("asr")[0] == before  # nothing reached the model
    r = oai.audio.transcriptions.create(model="whisper-1", file=("speech.wav", spoken), response_format="json",
                                        chunking_strategy={"type": "server_vad", "threshold": 0.5})
    assert isinstance(r.text, str)
    assert served.batches("asr")[0] == before + 1
    # Without it (this session's default), the noise is decoded: the model writes something for it.
    oai.audio.transcriptions.create(model="whisper-1", file=("noise.wav", noise), response_format="json")
    assert served.batches("asr")[0] == before + 2


def test_a_malformed_chunking_strategy_names_the_field(served, wav):
    with served.client() as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                   data={"model": "whisper-1", "chunking_strategy": "{not json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chunking_strategy", r.text


@pytest.mark.parametrize("data, status, code", [
    (b"", 400, "empty_audio"),
    (b"just some text, not audio\n" * 40, 415, "unsupported_media"),
])
def test_bad_files(oai, data, status, code):
    with pytest.raises(openai.APIStatusError) as e:
        oai.audio.transcriptions.create(model="whisper-1", file=("speech.wav", data))
    assert e.value.status_code == status and e.value.body["code"] == code


def test_missing_key_is_401(served, wav):
    with pytest.raises(openai.AuthenticationError):
        served.openai(key="wrong").audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))


def test_models_list_has_asr_aliases(oai):
    ids = {m.id for m in oai.models.list().data}
    assert {"Qwen/Qwen3-ASR-1.7B", "Qwen/Qwen3-ForcedAligner-0.6B"} <= ids


def test_twenty_minute_file_is_windowed(oai):
    data = encode(song(1200.0, sr=8000, phrase=6.0, gap=1.5), 8000, "flac")
    r = oai.audio.transcriptions.create(model="whisper-1", file=("long.flac", data), response_format="verbose_json")
    assert abs(r.duration - 1200.0) < 1.0
    assert len(r.segments) >= 1 and r.segments[-1].end <= 1200.0 + 1e-6


def test_task_form(served, wav):
    import time

    with served.client() as c:
        r = c.post("/v1/audio/transcriptions/tasks", files={"file": ("a.wav", wav)},
                   data={"model": "whisper-1", "response_format": "text"})
        assert r.status_code == 202, r.text
        task = r.json()
        deadline = time.monotonic() + 120
        while c.get(task["status_url"]).json()["status"] in ("pending", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        res = c.get(task["result_url"])
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")


def test_concurrent_requests_are_batched_into_one_generate(served, wav):
    import concurrent.futures

    batch_stats = lambda: served.batches("asr")  # noqa: E731
    before = batch_stats()
    oai = served.openai()

    def one(_):
        return oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), response_format="text")

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(one, range(4)))
    assert all(isinstance(t, str) for t in texts)
    after = batch_stats()
    items, calls = after[0] - before[0], after[1] - before[1]
    assert items == 4 and calls < 4  # four requests' windows went through fewer generate calls


def test_a_short_clip_is_not_held_behind_every_window_of_a_long_file(served, wav):
    """A 20-minute file (10 windows of 120 s) submitted as a task, then a short clip once its windows
    wait: batches form round robin across requests, so the clip rides in the next batch and the long
    task is still running when the clip's answer is back (first in, first out would have put the clip
    into the long file's last batch: both would end together)."""
    import time

    long_audio = encode(song(1199.0, sr=16000, seed=3), 16000, "flac")
    with served.client(timeout=300) as c:
        r = c.post("/v1/audio/transcriptions/tasks", files={"file": ("long.flac", long_audio)},
                   data={"model": "whisper-1", "response_format": "text"})
        assert r.status_code == 202, r.text
        task = r.json()
        deadline = time.monotonic() + 240
        while served.metric("qwen_queue_depth", "asr").get("qwen_queue_depth", 0) < 4:  # its windows wait
            assert time.monotonic() < deadline and c.get(task["status_url"]).json()["status"] in ("pending", "running")
            time.sleep(0.05)
        short = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                       data={"model": "whisper-1", "response_format": "text"})
        status = c.get(task["status_url"]).json()["status"]
        assert short.status_code == 200
        assert status == "running", status
        while c.get(task["status_url"]).json()["status"] in ("pending", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert c.get(task["result_url"]).status_code == 200


def test_streamed_transcription_with_the_unmodified_sdk(oai, wav):
    """stream=True: the SDK's iterator yields transcript.text.delta events, then transcript.text.done whose
    text is what the deltas added up to and what the same request gives unstreamed."""
    events = list(oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), stream=True,
                                                  language="en"))
    *deltas, done = events
    assert {e.type for e in deltas} <= {"transcript.text.delta"} and done.type == "transcript.text.done"
    assert "".join(e.delta for e in deltas) == done.text
    whole = oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), language="en")
    assert done.text == whole.text
    assert done.usage.input_tokens > 0 and done.usage.output_tokens >= 1
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens


def test_a_streamed_long_file_keeps_its_windows_in_order(served):
    """Three 120-s windows, batched together: each window's text streams while they decode at once, yet
    the deltas come window after window and add up to the unstreamed text."""
    from tests.openai_schemas import check, sse_events

    audio = encode(song(250.0, sr=16000, seed=7), 16000, "flac")
    form = {"model": "whisper-1", "language": "en", "response_format": "text"}
    with served.client(timeout=300) as c:
        streamed = c.post("/v1/audio/transcriptions", files={"file": ("long.flac", audio)},
                          data={**form, "stream": "true"})
        whole = c.post("/v1/audio/transcriptions", files={"file": ("long.flac", audio)}, data=form)
    assert streamed.status_code == 200 and whole.status_code == 200
    events = sse_events(streamed.text)
    for event in events:
        check("CreateTranscriptionResponseStreamEvent", event)
    assert events[-1]["type"] == "transcript.text.done" and len(events) > 3
    text = "".join(e["delta"] for e in events[:-1])
    assert text == events[-1]["text"] == whole.text.rstrip("\n")


def test_a_streaming_client_that_leaves_frees_the_windows_not_started(served, oai, wav):
    """A 20-minute file streamed (ten or more 120-s windows, four per batch, one batch at a time for one request):
    the client reads the first delta and hangs up. The gateway tells the ASR (`leave` with the stream's
    ticket) and the windows not started are dropped: not all of them reach the engine, the queue empties,
    and the next request is served. Without `leave` all run for nobody (seen: every one of the 13)."""
    import time

    from services.runtime.codecs.chunking import plan_chunks

    samples = song(1200.0, sr=16000, seed=8)
    windows = len(plan_chunks(samples, 16000, 120.0))  # as the ASR plans them (voice activity is off here)
    audio = encode(samples, 16000, "flac")
    before = served.batches("asr")[0]
    with served.client(timeout=300) as c:
        with c.stream("POST", "/v1/audio/transcriptions", files={"file": ("long.flac", audio)},
                      data={"model": "whisper-1", "language": "en", "stream": "true"}) as r:
            assert r.status_code == 200
            first = next(line for line in r.iter_lines() if line.startswith("data:"))
    assert "transcript.text.delta" in first
    deadline = time.monotonic() + 240
    while (served.metric("qwen_queue_depth", "asr").get("qwen_queue_depth", 0) > 0
           or served.metric("qwen_inference_active", "asr").get("qwen_inference_active", 0) > 0):
        assert time.monotonic() < deadline, "the ASR did not go idle"
        time.sleep(0.2)
    assert windows >= 10 and served.batches("asr")[0] - before < windows
    assert isinstance(oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav),
                                                      response_format="text"), str)


def test_a_streamed_request_refused_before_it_starts_keeps_its_status(served, wav):
    with served.client() as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                   data={"model": "whisper-1", "stream": "true", "language": "klingon"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "language"


def test_include_logprobs_gives_every_token_with_the_sdk(oai, wav):
    """include=["logprobs"] (json): each generated token's text, log-probability and bytes; the bytes add
    up to the transcript as decoded (before whitespace is trimmed), streamed or not."""
    from tests.openai_schemas import check

    r = oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), include=["logprobs"], language="en")
    check("CreateTranscriptionResponseJson", r.model_dump(exclude_none=True))
    assert r.logprobs and all(lp.logprob <= 0 and lp.bytes for lp in r.logprobs)
    joined = b"".join(bytes(int(b) for b in lp.bytes) for lp in r.logprobs).decode("utf-8", errors="replace")
    assert joined.strip() == r.text
    *deltas, done = list(oai.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav),
                                                         include=["logprobs"], language="en", stream=True))
    assert done.type == "transcript.text.done"
    assert [(lp.token, lp.logprob) for lp in done.logprobs] == [(lp.token, lp.logprob) for lp in r.logprobs]
    # The deltas carry them as they come: each its tokens since the previous delta, together the done list.
    assert len(deltas) >= 2 and all(d.type == "transcript.text.delta" for d in deltas)
    for d in deltas:
        check("TranscriptTextDeltaEvent", d.model_dump(exclude_none=True))
    assert [(lp.token, lp.logprob) for d in deltas for lp in d.logprobs] == \
        [(lp.token, lp.logprob) for lp in done.logprobs]
