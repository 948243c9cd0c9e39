"""POST /v1/chat/completions to the captioner through the real `bentoml serve`, with the openai SDK.

Tiny thinker: random text, never EOS (QWEN_CAPTIONER_MAX_TOKENS=16 in the session). Assertions are on
the OpenAI shapes, usage, streaming framing and refusals."""

from __future__ import annotations

import base64

import openai
import pytest

pytestmark = pytest.mark.served


@pytest.fixture(scope="module")
def oai(served):
    return served.openai()


@pytest.fixture(scope="module")
def b64(media_dir):
    return base64.b64encode((media_dir / "short.wav").read_bytes()).decode()


def audio_msg(part):
    return [{"role": "user", "content": [part]}]


def input_audio(b64):
    return {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}}


def test_caption_with_input_audio_and_usage(oai, b64):
    r = oai.chat.completions.create(model="captioner", messages=audio_msg(input_audio(b64)))
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_tokens_and_sampling_params(oai, b64):
    r = oai.chat.completions.create(model="Qwen/Qwen3-Omni-30B-A3B-Captioner", messages=audio_msg(input_audio(b64)),
                                    max_tokens=4, temperature=0.6, top_p=0.95, extra_body={"top_k": 20}, seed=1)
    assert r.usage.completion_tokens <= 4 and r.choices[0].finish_reason == "length"


def test_audio_url_from_http_and_data_url(oai, served, b64):
    r = oai.chat.completions.create(model="captioner", messages=audio_msg(
        {"type": "audio_url", "audio_url": {"url": f"{served.media_url}/short.mp3"}}))
    assert r.usage.prompt_tokens > 0
    r = oai.chat.completions.create(model="captioner", messages=audio_msg(
        {"type": "audio_url", "audio_url": {"url": f"data:audio/wav;base64,{b64}"}}))
    assert r.usage.prompt_tokens > 0


def test_streaming_chunks_end_with_finish_and_usage(oai, b64):
    stream = oai.chat.completions.create(model="captioner", messages=audio_msg(input_audio(b64)), stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_stream_ends_with_done(served, b64):
    with served.client() as c:
        with c.stream("POST", "/v1/chat/completions", json={"model": "captioner", "stream": True,
                                                             "messages": audio_msg(input_audio(b64))}) as r:
            lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_longer_audio_is_413_or_truncated_on_request(oai, served):
    url = {"type": "audio_url", "audio_url": {"url": f"{served.media_url}/long.mp3"}}  # 45 s, limit 30 s
    with pytest.raises(openai.APIStatusError) as e:
        oai.chat.completions.create(model="captioner", messages=audio_msg(url))
    assert e.value.status_code == 413 and e.value.body["code"] == "audio_too_long"
    cut = oai.chat.completions.create(model="captioner", messages=audio_msg(url), max_tokens=2,
                                      extra_body={"truncate_audio": True})
    ten = oai.chat.completions.create(model="captioner", messages=audio_msg(
        {"type": "audio_url", "audio_url": {"url": f"{served.media_url}/short.mp3"}}), max_tokens=2)  # 12 s
    # Audio tokens grow with duration: the truncated 30 s prompt is longer than the 12 s one, and the
    # prompt of the 45 s file was cut (13 audio tokens per second).
    assert cut.usage.prompt_tokens > ten.usage.prompt_tokens
    assert cut.usage.prompt_tokens - ten.usage.prompt_tokens < 13 * (45 - 12) - 13 * 5


def test_long_audio_as_a_timeline_whole_and_streamed(oai, served):
    """caption_windows (extension): the 45 s file is two windows (≤ 30 s, cut at a quiet point), each
    captioned as its own clip: the SDK's response carries the timeline beside the text, and the stream
    one delta per window, in order, with the same text."""
    url = {"type": "audio_url", "audio_url": {"url": f"{served.media_url}/long.mp3"}}
    r = oai.chat.completions.create(model="captioner", messages=audio_msg(url), max_tokens=3,
                                    extra_body={"caption_windows": True})
    timeline = r.choices[0].message.timeline  # the SDK keeps fields it does not know
    assert [e["index"] for e in timeline] == [0, 1] and timeline[0]["start"] == 0
    assert timeline[0]["end"] == timeline[1]["start"] and 44 < timeline[1]["end"] <= 45.5
    assert all(0 < e["end"] - e["start"] <= 30 for e in timeline)
    assert r.choices[0].message.content.startswith("[0:00.0–") and r.choices[0].message.content.count("\n\n[") == 1
    assert r.usage.completion_tokens <= 2 * 3 and r.usage.prompt_tokens > 13 * 40  # every window's audio
    chunks = list(oai.chat.completions.create(model="captioner", messages=audio_msg(url), max_tokens=3, stream=True,
                                              stream_options={"include_usage": True},
                                              extra_body={"caption_windows": True}))
    windows = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.model_extra.get("window")]
    assert [d.model_extra["window"]["index"] for d in windows] == [0, 1]
    assert [d.model_extra["window"]["end"] for d in windows] == [e["end"] for e in timeline]
    assert chunks[-1].usage.completion_tokens <= 6


@pytest.mark.parametrize("messages, code", [
    ([{"role": "user", "content": "describe this"}], "text_not_supported"),
    ([{"role": "system", "content": "You are helpful"}, {"role": "user", "content": [{"type": "input_audio",
      "input_audio": {"data": "UklGRg==", "format": "wav"}}]}], "text_not_supported"),
    ([{"role": "user", "content": [{"type": "text", "text": "what is this?"}]}], "text_not_supported"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}],
     "unsupported_content"),
    ([{"role": "user", "content": []}], "missing_audio"),
])
def test_refusals_are_400(oai, messages, code):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="captioner", messages=messages)
    assert e.value.body["code"] == code


def test_several_audio_parts_are_400(oai, b64):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="captioner", messages=[{"role": "user", "content": [
            input_audio(b64), input_audio(b64)]}])
    assert e.value.body["code"] == "too_many_audio_parts"


def test_bad_audio_and_bad_params(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="captioner", messages=audio_msg(
            {"type": "input_audio", "input_audio": {"data": "%%%notbase64", "format": "wav"}}))
    assert e.value.body["code"] == "invalid_base64"
    with pytest.raises(openai.APIStatusError) as e:
        oai.chat.completions.create(model="captioner", messages=audio_msg(
            {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"text, not audio" * 30).decode(),
                                                    "format": "wav"}}))
    assert e.value.status_code == 415
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="captioner", messages=audio_msg({"type": "input_audio", "input_audio": {
            "data": "UklGRg==", "format": "wav"}}), temperature=5)
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="captioner", messages=audio_msg({"type": "audio_url", "audio_url": {
            "url": "http://169.254.169.254/latest"}}))


def test_unknown_model_is_404(oai, b64):
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-4o", messages=audio_msg(input_audio(b64)))
