"""Transcribe, then time the transcript with the forced aligner: POST /v1/audio/transcriptions' segments and
words.

The ASR service transcribes the decoded samples window by window (`Transcription.spans`); the aligner times
each window's sentences inside that window (`align_spans`). Both services receive the samples: each may run
in its own process or machine, and neither calls the other. Without the aligner, the segments are the ASR
windows and word timestamps are refused (400) before any model runs.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from services.aligner import lyrics, review, verify
from services.aligner.contract import AlignLines, Alignment, AlignSpans, Segment, TextSpan, Word
from services.asr.contract import TranscribeOptions, Transcription
from services.runtime.core.errors import InvalidRequest, Unprocessable
from services.runtime.core.languages import ALIGNER as ALIGNER_LANGUAGES
from services.runtime.edge import remote

# Sentence ends: Latin punctuation followed by a space, or CJK punctuation.
_SENTENCE = re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])")


@dataclass(frozen=True)
class Transcript:
    transcription: Transcription
    # Sentences timed by the aligner (with their words), else the ASR windows that hold text (no words);
    # [] when timing was not asked for.
    segments: list[Segment]
    # Where each segment's text is in the transcription: (index in transcription.spans, start, end) in
    # characters of that span's text (its sentence, or all of it). Same length as segments.
    sources: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def has_words(text: str) -> bool:
    """Whether `text` holds a unit the forced aligner can time. Its unit splitter (qwen_asr's
    Qwen3ForceAlignProcessor, every language) keeps letters, digits (Unicode L* and N*) and apostrophes
    and drops everything else: a transcript without any (noise or music written as punctuation) has no
    word to time."""
    return any(ch == "'" or unicodedata.category(ch)[0] in "LN" for ch in text)


def check(gw, *, words: bool, param: str = "timestamp_granularities") -> None:
    """Refuse what this gateway cannot do, before any model runs: word timestamps (transcripts', speech's)
    need the aligner; `param` names the field that asked for them."""
    if words and "aligner" not in gw.enabled:
        raise InvalidRequest("word timestamps need the aligner service, which is not enabled (QWEN_SERVICES)",
                             param=param, code="timestamps_unavailable")


async def transcribe(gw, samples: np.ndarray, options: TranscribeOptions, *, timed: bool, words: bool) -> Transcript:
    """The transcript of `samples`; with `timed`, its segments (and words, when the aligner runs here)."""
    check(gw, words=words)
    result = await remote.call("asr", lambda: gw.asr.to_async.transcribe(audio=samples, options=options),
                               into=Transcription)
    if not timed:
        return Transcript(result, [])
    segments, sources = await align(gw, samples, result)
    return Transcript(result, segments, sources)


async def align(gw, samples: np.ndarray, result: Transcription) -> tuple[list[Segment], list[tuple[int, int, int]]]:
    """Sentence segments timed by the aligner, window by window; without it, one segment per ASR window.
    With them, where each segment's text sits in its window (Transcript.sources).

    Words are [] only when the transcript has no word (`has_words`); then the aligner is not asked. Any
    error of the aligner is the request's error: a failed timing never becomes an empty word list."""
    spans = [(i, s) for i, s in enumerate(result.spans) if s.text]
    if "aligner" not in gw.enabled or not any(has_words(s.text) for _, s in spans):
        return ([Segment(text=s.text, start=s.start, end=s.end, words=[]) for _, s in spans],
                [(i, 0, len(s.text)) for i, s in spans])
    lines = [(i, split_sentences(s.text)) for i, s in spans]
    aligned = await align_sentences(gw, samples, result, lines)
    sources = []
    for i, sentences in lines:  # the aligner answers one segment per line, in order
        cursor, span_text = 0, result.spans[i].text
        for sentence in sentences:
            a = span_text.find(sentence, cursor)
            a = cursor if a < 0 else a
            cursor = a + len(sentence)
            sources.append((i, a, cursor))
    return aligned.segments, sources


async def align_sentences(gw, samples: np.ndarray, result: Transcription,
                          lines: list[tuple[int, list[str]]]) -> Alignment:
    """The aligner's timing of each listed ASR window's sentences inside that window (one segment per
    sentence, in order; confidence and review flags included)."""
    text = AlignSpans(spans=[TextSpan(start=result.spans[i].start, end=result.spans[i].end, lines=ls)
                             for i, ls in lines],
                      language=ALIGNER_LANGUAGES.code(result.language))  # None: the aligner detects it
    return await remote.call("aligner", lambda: gw.aligner.to_async.align_spans(audio=samples, text=text),
                             into=Alignment)


async def heard_lines(gw, samples: np.ndarray, language: str | None) -> tuple[Alignment | None, list[dict]]:
    """What the ASR hears in the song, timed by the aligner and cut into lines (lyrics.split_lines): (the
    aligner's answer, the lines); (None, []) when nothing with words was heard."""
    result = await remote.call("asr", lambda: gw.asr.to_async.transcribe(
        audio=samples, options=TranscribeOptions(language=language)), into=Transcription)
    heard = [(i, split_sentences(s.text)) for i, s in enumerate(result.spans) if s.text and has_words(s.text)]
    if not heard:
        return None, []
    aligned = await align_sentences(gw, samples, result, heard)
    return aligned, lyrics.split_lines([seg.model_dump() for seg in aligned.segments])


async def lyrics_from_audio(gw, samples: np.ndarray, language: str | None, rules: review.ReviewRules) -> Alignment:
    """No lyrics at hand: the heard lines are the lyrics, each with its confidence and review flags. 422
    `no_lyrics_heard` when nothing with words was heard."""
    aligned, lines = await heard_lines(gw, samples, language)
    if aligned is None:
        raise Unprocessable("no sung words were heard in the audio: send the lyrics", param="lyrics",
                            code="no_lyrics_heard")
    summary = review.review_segments(lines, rules)
    return aligned.model_copy(update={"segments": [Segment.model_validate(seg) for seg in lines],
                                      "review": summary})


async def verified(gw, samples: np.ndarray, lines: list[str], language: str | None) -> Alignment:
    """The lyrics aligned, and compared with what the ASR hears (verify.py): lines nobody sang are marked
    `not_found`, sung stretches the lyrics lack are `extra_audio`. The two run at once."""
    import asyncio

    aligned, (_, heard) = await asyncio.gather(
        remote.call("aligner", lambda: gw.aligner.to_async.align(
            audio=samples, text=AlignLines(lines=lines, language=language)), into=Alignment),
        heard_lines(gw, samples, language))
    segments = [seg.model_dump() for seg in aligned.segments]
    extra = verify.verify(segments, heard, verify.VerifyRules())
    return aligned.model_copy(update={"segments": [Segment.model_validate(seg) for seg in segments],
                                      "review": review.summarize(segments), "extra_audio": extra})
