"""The transcribe -> align pipeline (services/gateway/pipelines/transcribe_align.py), in process with fake ASR
and aligner services that answer their contracts and cross the same error boundary as the real ones
(`remote.guarded` on their side, `remote.call(..., into=...)` on ours)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from services.aligner.contract import Alignment, AlignSpans, Segment, Word
from services.asr.contract import Span, TranscribeOptions, Transcription
from services.gateway.pipelines.transcribe_align import has_words, transcribe
from services.runtime.core.errors import InvalidRequest, QwenError, ServiceUnavailable, Unprocessable
from services.runtime.edge.remote import guarded

AUDIO = np.zeros(16000 * 4, dtype=np.float32)


class FakeASR:
    """transcribe as the ASR service answers it: windows of 2 s holding `texts`."""

    def __init__(self, *texts: str):
        self.texts = texts
        self.calls: list[TranscribeOptions] = []
        self.to_async = SimpleNamespace(transcribe=self.transcribe)

    @guarded("asr")
    async def transcribe(self, audio, options: TranscribeOptions):
        self.calls.append(options)
        spans = [Span(start=2.0 * i, end=2.0 * (i + 1), text=t) for i, t in enumerate(self.texts)]
        return Transcription(text=" ".join(t for t in self.texts if t), language="English",
                             duration=2.0 * len(self.texts), spans=spans).model_dump()


class FakeAligner:
    """align_spans as the aligner service answers it: one segment per line, one word per whitespace token,
    timed evenly inside its span; or `error` raised on its side of the boundary."""

    def __init__(self, error: QwenError | None = None):
        self.error = error
        self.calls: list[AlignSpans] = []
        self.to_async = SimpleNamespace(align_spans=self.align_spans)

    @guarded("aligner")
    async def align_spans(self, audio, text: AlignSpans):
        self.calls.append(text)
        if self.error is not None:
            raise self.error
        segments = []
        for span in text.spans:
            for line in span.lines:
                tokens = line.split()
                step = (span.end - span.start) / max(1, len(tokens))
                words = [Word(text=w, start=span.start + k * step, end=span.start + (k + 1) * step)
                         for k, w in enumerate(tokens)]
                segments.append(Segment(text=line, start=words[0].start, end=words[-1].end, words=words))
        return Alignment(segments=segments, language=text.language or "en", duration=len(audio) / 16000,
                         chunks=1).model_dump()


def gateway(asr: FakeASR, aligner: FakeAligner | None) -> SimpleNamespace:
    return SimpleNamespace(enabled=["asr"] + (["aligner"] if aligner else []), asr=asr, aligner=aligner)


def run(gw, *, timed: bool = True, words: bool = True):
    return asyncio.run(transcribe(gw, AUDIO, TranscribeOptions(), timed=timed, words=words))


def test_words_without_the_aligner_are_a_400_before_the_asr_runs():
    asr = FakeASR("hello there")
    with pytest.raises(InvalidRequest) as e:
        run(gateway(asr, None), words=True)
    assert (e.value.status, e.value.param, e.value.code) == (400, "timestamp_granularities", "timestamps_unavailable")
    assert "aligner" in e.value.message and asr.calls == []


def test_segments_without_the_aligner_are_the_asr_windows_that_hold_text():
    out = run(gateway(FakeASR("hello there", "", "again"), None), words=False)
    assert [(s.start, s.end, s.text, s.words) for s in out.segments] == [(0.0, 2.0, "hello there", []),
                                                                         (4.0, 6.0, "again", [])]
    assert out.words == [] and out.transcription.text == "hello there again"


def test_untimed_answers_ask_only_the_asr():
    aligner = FakeAligner()
    out = run(gateway(FakeASR("hello there"), aligner), timed=False, words=False)
    assert out.segments == [] and aligner.calls == [] and out.transcription.text == "hello there"


def test_words_come_from_the_aligner_sentence_by_sentence():
    aligner = FakeAligner()
    out = run(gateway(FakeASR("One two. Three!", "four five"), aligner))
    (call,) = aligner.calls
    assert [s.lines for s in call.spans] == [["One two.", "Three!"], ["four five"]]
    assert [(s.start, s.end) for s in call.spans] == [(0.0, 2.0), (2.0, 4.0)]
    assert call.language == "en"  # the ASR's "English" as the aligner's code
    assert [s.text for s in out.segments] == ["One two.", "Three!", "four five"]
    assert [w.text for w in out.words] == ["One", "two.", "Three!", "four", "five"]
    assert [(w.start, w.end) for w in out.words] == [(0.0, 1.0), (1.0, 2.0), (0.0, 2.0), (2.0, 3.0), (3.0, 4.0)]


@pytest.mark.parametrize("error", [
    # The aligner finds no unit in a transcript that has words: its splitter and ours disagree. Answered as
    # the aligner's error, never as words=[] (as if the audio held no words).
    Unprocessable("no alignable words in the text", param="lyrics", code="empty_lyrics"),
    ServiceUnavailable("aligner model is loading", retry_after=5),
])
def test_an_aligner_failure_is_the_requests_error_never_an_empty_word_list(error):
    aligner = FakeAligner(error)
    with pytest.raises(QwenError) as e:
        run(gateway(FakeASR("hello there"), aligner))
    assert (e.value.status, e.value.code) == (error.status, error.code) and len(aligner.calls) == 1


def test_a_transcript_without_words_has_no_words_and_does_not_ask_the_aligner():
    aligner = FakeAligner(Unprocessable("must not be called", code="empty_lyrics"))
    out = run(gateway(FakeASR("...", "♪ ♪", ""), aligner))
    assert out.words == [] and aligner.calls == []
    assert [(s.start, s.end, s.text) for s in out.segments] == [(0.0, 2.0, "..."), (2.0, 4.0, "♪ ♪")]


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
