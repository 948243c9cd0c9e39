"""Model-name aliases (OpenAI names, tts-1-{lang}), languages and the ASR text clean-up."""

from types import SimpleNamespace

import pytest

from services.asr.engine import _printable
from services.asr.routes import resolve_model, split_sentences
from services.runtime.core.errors import NotFound
from services.runtime.core.languages import ASR
from services.runtime.core.settings import Settings
from services.tts.routes import model_language

GW = SimpleNamespace(settings=Settings())


@pytest.mark.parametrize("model, lang", [("tts-1", None), ("tts-1-hd", None), ("qwen3-tts", None),
                                         ("tts-1-en", "english"), ("tts-1-hd-zh", "chinese"), ("tts-1-ja", "japanese"),
                                         ("Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice", None),
                                         ("/models/Qwen3-TTS-12Hz-1.7B-CustomVoice", None)])
def test_tts_model_names(model, lang):
    assert model_language(GW, model) == lang


@pytest.mark.parametrize("model", ["tts-2", "tts-1-xx", "gpt-4o-mini-tts", ""])
def test_unknown_tts_model_is_404(model):
    with pytest.raises(NotFound) as e:
        model_language(GW, model)
    assert e.value.code == "model_not_found" and "tts-1" in e.value.message


@pytest.mark.parametrize("model", ["whisper-1", "qwen3-asr", "asr", "Qwen/Qwen3-ASR-1.7B", "/models/Qwen3-ASR-1.7B"])
def test_asr_model_names(model):
    resolve_model(GW, model)


def test_unknown_asr_model():
    with pytest.raises(NotFound):
        resolve_model(GW, "whisper-2")


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
