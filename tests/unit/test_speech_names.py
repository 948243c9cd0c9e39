"""Model-name aliases (OpenAI names, tts-1-{lang}), languages, the TTS request rules and what crosses to the
TTS service, and the ASR text clean-up."""

import asyncio
import json
import pickle

import numpy as np
import pytest

from services.asr.engine import _printable
from services.gateway.pipelines.transcribe_align import split_sentences
from services.gateway.registry import resolve_model
from services.runtime.core.errors import InvalidRequest, NotFound, PayloadTooLarge
from services.runtime.edge import remote
from services.runtime.core.languages import ASR
from services.runtime.core.settings import Settings
from services.tts.contract import Finish, Speech, StreamHeader, Utterance
from services.tts.routes import model_language

SETTINGS = Settings()


@pytest.mark.parametrize("model, lang", [("tts-1", None), ("tts-1-hd", None), ("qwen3-tts", None),
                                         ("tts-1-en", "english"), ("tts-1-hd-zh", "chinese"), ("tts-1-ja", "japanese"),
                                         ("Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice", None),
                                         ("/models/Qwen3-TTS-12Hz-1.7B-CustomVoice", None)])
def test_tts_model_names(model, lang):
    assert model_language(SETTINGS, model) == lang


@pytest.mark.parametrize("model", ["tts-2", "tts-1-xx", "gpt-4o-mini-tts", ""])
def test_unknown_tts_model_is_404(model):
    with pytest.raises(NotFound) as e:
        model_language(SETTINGS, model)
    assert e.value.code == "model_not_found" and "tts-1" in e.value.message


def test_utterance_is_normalised():
    u = Utterance(text="  Hello.\n", voice=" Uncle_FU", language="English ", instructions="Speak softly.")
    assert u.checked(100) == Utterance(text="Hello.", voice="uncle_fu", language="english",
                                       instructions="Speak softly.")
    assert Utterance(text="Hi", voice="ryan").checked(100).language is None  # auto


@pytest.mark.parametrize("fields, error, param, code", [
    ({"voice": "bob"}, InvalidRequest, "voice", "invalid_voice"),
    ({"voice": ""}, InvalidRequest, "voice", "invalid_voice"),
    ({"language": "klingon"}, InvalidRequest, "language", "invalid_value"),
    ({"language": "beijing_dialect"}, InvalidRequest, "language", "invalid_value"),  # a voice's, not a request's
    ({"text": " \n\t"}, InvalidRequest, "input", "empty_input"),
    ({"text": "x" * 11}, PayloadTooLarge, "input", "input_too_long"),
    ({"text": "", "voice": "bob", "language": "klingon"}, InvalidRequest, "language", "invalid_value"),
    ({"text": "", "voice": "bob"}, InvalidRequest, "input", "empty_input"),
])
def test_utterance_rules(fields, error, param, code):
    with pytest.raises(error) as e:
        Utterance(**{"text": "Hello.", "voice": "ryan", **fields}).checked(10)
    assert (e.value.param, e.value.code) == (param, code)
    assert type(e.value).status < 500


def test_unknown_voice_and_language_list_the_valid_ones():
    with pytest.raises(InvalidRequest, match=r"valid voices: aiden, dylan, .*, vivian$"):
        Utterance(text="Hi", voice="bob").checked(10)
    with pytest.raises(InvalidRequest, match=r"valid: auto, chinese, .*, spanish$"):
        Utterance(text="Hi", voice="ryan", language="xx").checked(10)


def test_speech_crosses_json_and_pickle_alike():
    """A split deployment carries the service's answer as JSON, one `bentoml serve` as pickle: the same dict
    (base64 float32 samples) gives the same samples either way, through the gateway's `remote.call`."""
    audio = np.linspace(-1, 1, 4801, dtype=np.float32)
    finish = Finish(finish_reason="length", input_tokens=20, output_tokens=3)
    answer = Speech(audio=audio, sample_rate=24000, finish=finish).model_dump(mode="json")
    assert isinstance(answer["audio"], str)
    for wire in (pickle.loads(pickle.dumps(answer)), json.loads(json.dumps(answer))):
        async def service(wire=wire):
            return wire

        out = asyncio.run(remote.call("tts", service, into=Speech))
        assert out.sample_rate == 24000 and out.audio.dtype == np.float32 and out.finish == finish
        np.testing.assert_array_equal(out.audio, audio)
    in_process = Speech.model_validate({"audio": audio, "sample_rate": 24000, "finish": finish})
    np.testing.assert_array_equal(in_process.audio, audio)


def test_stream_header_line_carries_the_rate():
    line = remote.stream_ok(StreamHeader(sample_rate=24000))
    assert json.loads(line) == {"ok": True, "sample_rate": 24000} and line.endswith(b"\n")
    assert remote.stream_ok() == remote.STREAM_OK


@pytest.mark.parametrize("model", ["whisper-1", "qwen3-asr", "asr", "Qwen/Qwen3-ASR-1.7B", "/models/Qwen3-ASR-1.7B"])
def test_asr_model_names(model):
    resolve_model(SETTINGS, "asr", model)


def test_unknown_asr_model():
    with pytest.raises(NotFound):
        resolve_model(SETTINGS, "asr", "whisper-2")


@pytest.mark.parametrize("value, name", [("en", "English"), ("EN", "English"), ("english", "English"),
                                         ("zh-CN", "Chinese"), ("yue", "Cantonese"), ("fil", "Filipino"),
                                         ("tl", "Filipino"), ("", None), (None, None)])
def test_asr_languages(value, name):
    assert ASR.parse(value) == name


def test_asr_unknown_language_lists_codes():
    with pytest.raises(ValueError, match=r"the ASR supports: zh \(Chinese\), en \(English\), .*mk \(Macedonian\)$"):
        ASR.parse("xx")


def test_control_characters_are_dropped_from_transcripts():
    assert _printable(" a\x0cb\x13c\n\td ") == "abc\n\td"


def test_sentence_split_latin_and_cjk():
    assert split_sentences("Hello there. How are you? Fine!") == ["Hello there.", "How are you?", "Fine!"]
    assert split_sentences("你好。我很好！谢谢") == ["你好。", "我很好！", "谢谢"]
    assert split_sentences("no punctuation at all") == ["no punctuation at all"]
