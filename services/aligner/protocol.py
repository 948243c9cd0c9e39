"""Wire format of POST /api/v1/align (the seed "Qwen3 Alignment Service" fields, extended).

JSON body, or multipart/form-data with the audio as an `audio` file part and the same fields as form
fields (`lyrics` as a JSON array or newline-separated text, `metadata` as JSON).
"""

from __future__ import annotations

import math

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.runtime.core.languages import ALIGNER as LANGUAGES

from .contract import ExtraAudio, ReviewSummary, Segment

AlignFormat = Literal["lrc", "json", "srt", "vtt", "lrc_enhanced", "ttml", "ass"]


class LyricsMetadata(BaseModel):
    """Written as LRC header tags ([ti:] [ar:] [al:] [by:] [offset:])."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, max_length=500)
    artist: str | None = Field(None, max_length=500)
    album: str | None = Field(None, max_length=500)
    by: str | None = Field(None, max_length=200, description="LRC author tag")
    offset_ms: int | None = Field(None, ge=-600_000, le=600_000, description="LRC [offset:] in milliseconds")


class AlignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    audio_url: str | None = Field(
        None, description="http(s):// URL or s3://bucket/key of the song (JSON requests; multipart sends `audio`)"
    )
    lyrics: list[str] | None = Field(
        None, description="Lyric lines in order. A single string is split on newlines. Blank lines are kept. "
                          "Omitted: the ASR service hears the vocals and the aligner times what it heard."
    )
    format: AlignFormat = Field("lrc", description="lrc | json | srt | vtt | lrc_enhanced | ttml (word-timed, "
                                                  "Apple style) | ass (karaoke \\k tags)")
    language: str | None = Field(
        None, description=f"ISO code or name ({' '.join(LANGUAGES.codes)}); detected from the lyrics if omitted"
    )
    metadata: LyricsMetadata | None = None
    verify: bool = Field(False, description="also compare the lyrics with what the ASR hears: lines nobody sang "
                                            "are flagged not_found, sung stretches the lyrics lack are extra_audio")
    separate: bool = Field(False, description="separate the vocals from the music first (Demucs), for songs whose "
                                              "accompaniment drowns the voice; needs QWEN_ALIGNER_SEPARATOR")

    @field_validator("lyrics", mode="before")
    @classmethod
    def _split_text(cls, v):
        if isinstance(v, str):
            return v.splitlines()
        return v

    @field_validator("lyrics")
    @classmethod
    def _lines(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [line.rstrip("\r") for line in v]


class AlignResponse(BaseModel):
    """format=json. Other formats are text (LRC, SRT, VTT)."""

    segments: list[Segment]
    language: str
    duration: float
    review: ReviewSummary | None = None  # which lines to check (services/aligner/review.py)
    extra_audio: list[ExtraAudio] | None = None  # with verify: sung stretches the lyrics lack


MAX_SECONDS = 86400.0


class ConvertRequest(BaseModel):
    """POST /api/v1/align/convert: an alignment already made (the JSON answer, maybe edited) in another format."""

    model_config = ConfigDict(extra="forbid")

    segments: list[Segment] = Field(..., min_length=1, max_length=5000)
    format: AlignFormat
    language: str | None = Field(None, max_length=20)
    duration: float | None = Field(None, ge=0)
    metadata: LyricsMetadata | None = None
    review: ReviewSummary | None = None  # accepted (a JSON answer as it came) and kept in json

    @model_validator(mode="after")
    def _times_are_times(self) -> "ConvertRequest":
        """Every time a finite number of seconds from 0 to a day (JSON parsers accept NaN and Infinity)."""
        for i, seg in enumerate(self.segments):
            for where, t in [("start", seg.start), ("end", seg.end)] + [
                    (f"words[{k}].{e}", getattr(w, e)) for k, w in enumerate(seg.words) for e in ("start", "end")]:
                if not (math.isfinite(t) and 0 <= t <= MAX_SECONDS):
                    raise ValueError(f"segments[{i}].{where}: {t} is not a time from 0 to {MAX_SECONDS:g} s")
        return self
