"""Messages between the gateway and the ASR service, imported by both sides of the process boundary.

`ASR.transcribe(audio, options: TranscribeOptions)` takes the decoded samples (float32 mono 16 kHz, their own
parameter) and answers `Transcription(...).model_dump()`; the gateway reads it with
`remote.call(..., into=Transcription)`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class TranscribeOptions(BaseModel):
    prompt: str = Field("", description="context for the model (names, terms): OpenAI's `prompt`")
    language: str | None = Field(None, description="ISO code or name; forces the language; None: detected")
    statistics: bool = Field(False, description="also answer what segment statistics need: voice activity per "
                             "32-ms frame (Transcription.speech) and each window's tokens (Span.tokens...)")


class Span(BaseModel):
    """One window of the audio (seconds) and what was heard in it ("" for nothing). With
    options.statistics (and a backend that has them, transformers): the transcript's token ids, each
    one's log-probability, and where each ends in `text` (characters); else empty."""

    start: float
    end: float
    text: str
    tokens: list[int] = Field(default_factory=list)
    logprobs: list[float] = Field(default_factory=list)
    token_ends: list[int] = Field(default_factory=list)


class Transcription(BaseModel):
    text: str  # the windows' texts joined (with spaces unless the language writes none)
    language: str  # qwen_asr's name ("English"), "" when the model gave none
    duration: float  # seconds of audio
    spans: list[Span]  # the windows, in order, covering the whole audio
    # With options.statistics: the speech probability of every 32-ms frame of the audio
    # (runtime.serving.vad.pack: one byte each, base64); "" otherwise.
    speech: str = ""
