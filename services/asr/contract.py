"""Messages between the gateway and the ASR service, imported by both sides of the process boundary.

`ASR.transcribe(audio, options: TranscribeOptions)` takes the decoded samples (float32 mono 16 kHz, their own
parameter) and answers `Transcription(...).model_dump()`; the gateway reads it with
`remote.call(..., into=Transcription)`.

`ASR.stream(audio, options)` answers the header line (runtime.edge.remote.stream_ok / stream_error), then
one JSON line per event: `TextDelta`s, then `StreamDone`; the gateway reads them with `events(body)`.
"""

from __future__ import annotations

from typing import AsyncIterator

from pydantic import BaseModel, Field


class TranscribeOptions(BaseModel):
    prompt: str = Field("", description="context for the model (names, terms): OpenAI's `prompt`")
    language: str | None = Field(None, description="ISO code or name; forces the language; None: detected")
    logprobs: bool = Field(False, description="also answer each window's tokens with their log-probabilities "
                           "(Span.token_logprobs)")
    statistics: bool = Field(False, description="also answer what segment statistics need: voice activity per "
                             "32-ms frame (Transcription.speech) and each window's tokens (Span.tokens...)")
    vad: bool | None = Field(None, description="voice activity plans the windows (cuts where nobody speaks, "
                             "windows without speech not decoded); None: the service's QWEN_ASR_VAD")
    vad_threshold: float | None = Field(None, gt=0, lt=1, description="speech probability a window needs to "
                                        "be decoded; None: the service's QWEN_ASR_VAD_THRESHOLD")


class TokenLogprob(BaseModel):
    """One generated token as OpenAI's `logprobs` entries give it: its text, log-probability and bytes."""

    token: str
    logprob: float
    bytes: list[int]


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
    token_logprobs: list[TokenLogprob] = Field(default_factory=list)  # with options.logprobs
    # False: voice activity heard no speech in the window, so it was not decoded (text "").
    decoded: bool = True


class Transcription(BaseModel):
    text: str  # the windows' texts joined (with spaces unless the language writes none)
    language: str  # qwen_asr's name ("English"), "" when the model gave none
    duration: float  # seconds of audio
    spans: list[Span]  # the windows, in order, covering the whole audio
    # With options.statistics: the speech probability of every 32-ms frame of the audio
    # (runtime.serving.vad.pack: one byte each, base64); "" otherwise.
    speech: str = ""


class TextDelta(BaseModel):
    """Text decoded since the last delta (the windows in order; the separator between windows is a delta).
    With options.logprobs: the window's tokens generated since its previous delta (TokenLogprob), so the
    deltas' logprobs concatenate to the done event's; a delta may then have text "" (tokens whose text was
    dropped, e.g. trailing whitespace)."""

    delta: str
    logprobs: list[TokenLogprob] = Field(default_factory=list)

    def line(self) -> bytes:
        return self.model_dump_json().encode() + b"\n"


class StreamDone(BaseModel):
    """The whole result, last. Tokens: the model's prompt (text and audio) and what it generated, summed
    over the windows (0 where the backend does not count them: vLLM)."""

    transcription: Transcription
    input_tokens: int = 0
    output_tokens: int = 0

    def line(self) -> bytes:
        return self.model_dump_json().encode() + b"\n"


async def events(body) -> "AsyncIterator[TextDelta | StreamDone]":
    """The stream's events from its bytes (after the header line), whatever the chunking."""
    import json

    from services.runtime.edge.remote import lines

    async for line in lines(body):
        obj = json.loads(line)
        yield StreamDone.model_validate(obj) if "transcription" in obj else TextDelta.model_validate(obj)
