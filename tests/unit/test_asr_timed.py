"""ASR -> aligner timing of a transcript (segments and words), in process with a fake aligner service that
crosses the same error boundary as the real one (`remote.guarded` on its side, `remote.call` on ours)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from services.asr.routes import _timed, has_words
from services.runtime.core.errors import InvalidRequest, QwenError, ServiceUnavailable, Unprocessable
from services.runtime.edge.remote import guarded

AUDIO = np.zeros(16000 * 4, dtype=np.float32)


def transcript(*texts: str) -> dict:
    """The ASR service's answer for windows of 2 s holding `texts`."""
    spans = [{"start": 2.0 * i, "end": 2.0 * (i + 1), "text": t} for i, t in enumerate(texts)]
    return {"text": " ".join(t for t in texts if t), "language": "English", "duration": 2.0 * len(texts),
            "spans": spans}


class FakeAligner:
    """align_spans as the aligner service answers it: one segment per line, one word per whitespace token,
    timed evenly inside its span; or `error` raised on its side of the boundary."""

    def __init__(self, error: QwenError | None = None):
        self.error = error
        self.calls: list[dict] = []
        self.to_async = SimpleNamespace(align_spans=self.align_spans)

    @guarded("aligner")
    async def align_spans(self, audio, spans, language=None):
        self.calls.append({"spans": spans, "language": language})
        if self.error is not None:
            raise self.error
        segments = []
        for span in spans:
            for line in span["lines"]:
                tokens = line.split()
                step = (span["end"] - span["start"]) / max(1, len(tokens))
                words = [{"text": w, "start": span["start"] + k * step, "end": span["start"] + (k + 1) * step}
                         for k, w in enumerate(tokens)]
                segments.append({"text": line, "start": words[0]["start"], "end": words[-1]["end"], "words": words})
        return {"segments": segments, "language": language, "duration": float(len(audio)) / 16000, "chunks": 1}


def gateway(aligner: FakeAligner | None) -> SimpleNamespace:
    return SimpleNamespace(enabled=["asr"] + (["aligner"] if aligner else []), aligner=aligner)


def timed(gw, result, want_words):
    return asyncio.run(_timed(gw, AUDIO, result, want_words))


def test_words_without_the_aligner_are_a_400_naming_the_parameter():
    with pytest.raises(InvalidRequest) as e:
        timed(gateway(None), transcript("hello there"), want_words=True)
    assert (e.value.status, e.value.param, e.value.code) == (400, "timestamp_granularities", "timestamps_unavailable")
    assert "aligner" in e.value.message


def test_segments_without_the_aligner_are_the_asr_windows():
    segments, words = timed(gateway(None), transcript("hello there", "", "again"), want_words=False)
    assert segments == [{"start": 0.0, "end": 2.0, "text": "hello there"}, {"start": 4.0, "end": 6.0, "text": "again"}]
    assert words == []


def test_words_come_from_the_aligner_sentence_by_sentence():
    aligner = FakeAligner()
    segments, words = timed(gateway(aligner), transcript("One two. Three!", "four five"), want_words=True)
    assert [s["lines"] for s in aligner.calls[0]["spans"]] == [["One two.", "Three!"], ["four five"]]
    assert aligner.calls[0]["language"] == "en"
    assert [s["text"] for s in segments] == ["One two.", "Three!", "four five"]
    assert [w["word"] for w in words] == ["One", "two.", "Three!", "four", "five"]
    assert all(set(w) == {"word", "start", "end"} and w["start"] <= w["end"] for w in words)


@pytest.mark.parametrize("error", [
    # The aligner finds no unit in a transcript that has words: its splitter and ours disagree. Before, this
    # was answered with words=[] as if the audio held no words.
    Unprocessable("no alignable words in the text", param="lyrics", code="empty_lyrics"),
    ServiceUnavailable("aligner model is loading", retry_after=5),
])
def test_an_aligner_failure_is_the_requests_error_never_an_empty_word_list(error):
    aligner = FakeAligner(error)
    with pytest.raises(QwenError) as e:
        timed(gateway(aligner), transcript("hello there"), want_words=True)
    assert (e.value.status, e.value.code) == (error.status, error.code) and len(aligner.calls) == 1


def test_a_transcript_without_words_has_no_words_and_does_not_ask_the_aligner():
    aligner = FakeAligner(Unprocessable("must not be called", code="empty_lyrics"))
    segments, words = timed(gateway(aligner), transcript("...", "♪ ♪", ""), want_words=True)
    assert words == [] and aligner.calls == []
    assert segments == [{"start": 0.0, "end": 2.0, "text": "..."}, {"start": 2.0, "end": 4.0, "text": "♪ ♪"}]


@pytest.mark.parametrize("text, language", [
    ("Hello darkness", "English"), ("...!?", "English"), ("♪ ♪ ♪", "English"), ("- -", "English"),
    ("42", "English"), ("'", "English"), ("¿¡", "Spanish"), ("我们", "Chinese"), ("。！？", "Chinese"),
    ("こんにちは", "Japanese"), ("「」、。", "Japanese"), ("사랑해요", "Korean"), ("…", "Korean"),
    ("привет", "Russian"), ("สวัสดี", "Thai"), ("١٢٣", "Arabic"), ("\ufffd\ufffd", "English"), ("", "English"),
])
def test_has_words_is_the_aligners_own_unit_rule(text, language):
    """has_words(text) is True exactly when the aligner's unit splitter (the package's, every language
    path: whitespace/CJK, Japanese via nagisa, Korean via soynlp) finds a unit in it."""
    from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor

    units = Qwen3ForceAlignProcessor().encode_timestamp(text, language)[0]
    assert has_words(text) == bool(units), units
