"""Messages between the gateway and the aligner service, and the aligner's input limits.

`Aligner.align(audio, text: AlignLines)` times lyric lines against the whole audio; `Aligner.align_spans(audio,
text: AlignSpans)` times text already known per stretch of the audio (ASR windows). Both take the decoded
samples (float32 mono 16 kHz) as their own parameter and answer `Alignment(...).model_dump()`; the gateway
reads it with `remote.call(..., into=Alignment)`.

The limits are one function per rule, called by the gateway before any work (or task) starts and by the
service, which a split deployment exposes on its own.
"""

from __future__ import annotations

from typing import Annotated, Sequence

import numpy as np
from pydantic import BaseModel, Field

from services.runtime.codecs.audio import check_duration
from services.runtime.core.errors import PayloadTooLarge, Unprocessable
from services.runtime.core.settings import AlignerSettings

from .engine import SAMPLE_RATE

# The error code of text without anything the aligner can time (blank lines, punctuation only).
EMPTY_LYRICS = "empty_lyrics"


# A language's ISO code or name; None: QWEN_ALIGNER_DEFAULT_LANGUAGE, else detected from the text.
Language = Annotated[str | None, Field(description="ISO code or name; None: the default, else detected")]


class AlignLines(BaseModel):
    lines: list[str] = Field(..., description="lyric lines in order; blank lines are kept (timed in the gaps)")
    language: Language = None


class TextSpan(BaseModel):
    """A stretch of the audio (seconds) and the lines said inside it."""

    start: float
    end: float
    lines: list[str]


class AlignSpans(BaseModel):
    spans: list[TextSpan]
    language: Language = None


class Word(BaseModel):
    """One unit the aligner times: a word, or one CJK character."""

    text: str
    start: float
    end: float
    # How sure the aligner is of this unit's times (0-1), and whether both are its own predictions (False:
    # placed by the repair of non-monotonic predictions). None from an engine without scores. review.py.
    confidence: float | None = None
    aligned: bool | None = None


class Segment(BaseModel):
    """One input line with its time span and its units' times (none for a line without units), how sure
    the aligner is of it, and whether a person should check it (the reasons in `review`)."""

    text: str
    start: float
    end: float
    words: list[Word]
    confidence: float | None = None
    needs_review: bool = False
    review: list[str] = Field(default_factory=list)
    found: bool | None = None  # with verify: whether the ASR heard the line where it was placed


class ExtraAudio(BaseModel):
    """Something sung (heard by the ASR) that no lyric line accounts for."""

    start: float
    end: float
    text: str


class ReviewSummary(BaseModel):
    lines: int
    needs_review: int
    lines_to_review: list[int]  # indices into segments
    mean_confidence: float | None


class Alignment(BaseModel):
    segments: list[Segment]  # one per line, in input order
    language: str  # ISO code
    duration: float  # seconds of audio
    chunks: int  # aligner passes the audio took
    review: ReviewSummary | None = None
    extra_audio: list[ExtraAudio] | None = None  # with verify


def check_lyrics(lines: Sequence[str], cfg: AlignerSettings) -> None:
    """Lyrics hold some text (422), at most `max_lines` lines and `max_lyrics_chars` characters (413)."""
    if not any(line.strip() for line in lines):
        raise Unprocessable("lyrics are empty", param="lyrics", code=EMPTY_LYRICS)
    if len(lines) > cfg.max_lines:
        raise PayloadTooLarge(f"lyrics have {len(lines)} lines; the limit is {cfg.max_lines}", param="lyrics",
                              code="lyrics_too_long")
    if sum(len(line) for line in lines) > cfg.max_lyrics_chars:
        raise PayloadTooLarge(f"lyrics exceed {cfg.max_lyrics_chars} characters", param="lyrics",
                              code="lyrics_too_long")


def check_audio(samples: np.ndarray, cfg: AlignerSettings, *, param: str = "audio") -> None:
    """At most `max_audio_seconds` of audio (the gateway applies the same cap while decoding)."""
    check_duration(len(samples) / SAMPLE_RATE, cfg.max_audio_seconds, param=param)
