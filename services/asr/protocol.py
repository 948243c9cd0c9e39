"""Wire format of POST /v1/audio/transcriptions: OpenAI's multipart fields, in OpenAI's order."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import UploadFile
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import WithJsonSchema

from services.runtime.core.errors import InvalidRequest

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
Granularity = Literal["word", "segment"]


def _file_is_required(schema: dict) -> None:
    # `file` is optional to pydantic so that its absence is our own 400 (missing_file); the form needs it.
    schema["required"] = ["file", *schema.get("required", [])]


class TranscriptionRequest(BaseModel):
    """The form: the audio as the `file` part and OpenAI's fields (FastAPI `Form()` model)."""

    # loc_by_alias=False: errors name `timestamp_granularities`, whichever spelling the client sent.
    model_config = ConfigDict(extra="forbid", loc_by_alias=False, json_schema_extra=_file_is_required)

    file: Annotated[UploadFile | None, WithJsonSchema({"type": "string", "format": "binary"})] = Field(
        None, description="the audio, any common format (decoded by content)")
    model: str = Field(..., description="model id, a short alias (qwen3-asr, asr) or whisper-1")
    language: str | None = Field(None, description="ISO-639-1 code or name; forces the language when given")
    prompt: str | None = Field(None, max_length=4000, description="context for the model (names, terms)")
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0, description="accepted for compatibility; decoding is greedy")
    # OpenAI's clients send `timestamp_granularities[]` (one part per value); the plain name is accepted too.
    timestamp_granularities: list[Granularity] = Field(
        default_factory=list, validation_alias=AliasChoices("timestamp_granularities[]", "timestamp_granularities"),
        description="word and/or segment; only with response_format=verbose_json",
    )
    stream: bool = Field(False, description="stream the text as it is decoded (SSE: transcript.text.delta, "
                         "then transcript.text.done); response_format json or text")
    # OpenAI's `include[]`: "logprobs" adds each token's log-probability (json, and the stream's done event).
    include: list[Literal["logprobs"]] = Field(
        default_factory=list, validation_alias=AliasChoices("include[]", "include"),
        description="logprobs: each token's log-probability (response_format json)")

    # OpenAI's `chunking_strategy`: "auto", or a server_vad object, which the SDK sends as bracketed parts
    # (`chunking_strategy[type]=server_vad`, `chunking_strategy[threshold]=0.6`...) and other clients as JSON.
    # Either turns voice activity on for the request (QWEN_ASR_VAD is its default); `threshold` is the speech
    # probability a window needs to be decoded. prefix_padding_ms and silence_duration_ms are validated and
    # not used: windows are cut where voice activity is lowest, with 100 ms of margin.
    chunking_strategy: str | None = Field(None, max_length=1000, description='"auto" or a server_vad object '
                                          "(JSON): voice activity cuts the windows and skips those without speech")
    chunking_type: str | None = Field(None, validation_alias="chunking_strategy[type]")
    chunking_threshold: str | None = Field(None, validation_alias="chunking_strategy[threshold]")
    chunking_prefix_padding_ms: str | None = Field(None, validation_alias="chunking_strategy[prefix_padding_ms]")
    chunking_silence_duration_ms: str | None = Field(None, validation_alias="chunking_strategy[silence_duration_ms]")

    def vad(self) -> tuple[bool | None, float | None]:
        """(voice activity on, threshold) from `chunking_strategy`; (None, None): the service's default.
        A malformed strategy is a 400 naming `chunking_strategy`."""
        parts = {k: v for k, v in (("type", self.chunking_type), ("threshold", self.chunking_threshold),
                                   ("prefix_padding_ms", self.chunking_prefix_padding_ms),
                                   ("silence_duration_ms", self.chunking_silence_duration_ms)) if v is not None}
        raw = self.chunking_strategy
        if raw is None and not parts:
            return None, None
        if raw == "auto" and not parts:
            return True, None
        try:
            data = parts if raw is None else json.loads(raw)
            if parts and raw is not None:
                raise ValueError("both forms given")
            config = VadConfig.model_validate(data)
        except (ValueError, ValidationError, RecursionError):
            raise InvalidRequest('chunking_strategy must be "auto" or {"type": "server_vad", "threshold": 0..1, '
                                 '"prefix_padding_ms": int, "silence_duration_ms": int}',
                                 param="chunking_strategy", code="invalid_value") from None
        return True, config.threshold

    def openai_rule_violation(self) -> tuple[str, str] | None:
        """(param, message) when the fields break a rule OpenAI enforces across fields."""
        if self.timestamp_granularities and self.response_format != "verbose_json":
            return "timestamp_granularities", "timestamp_granularities requires response_format=verbose_json"
        if self.include and self.response_format != "json":
            return "include", "include[]=logprobs works with response_format json"
        if self.stream and self.response_format not in ("json", "text"):
            return "stream", "stream=true works with response_format json or text"
        return None


class VadConfig(BaseModel):
    """OpenAI's server_vad chunking strategy."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["server_vad"]
    threshold: float = Field(0.5, gt=0, lt=1)
    prefix_padding_ms: int = Field(300, ge=0)
    silence_duration_ms: int = Field(200, ge=0)


class Word(BaseModel):
    word: str
    start: float
    end: float


def compression_ratio(text: str) -> float:
    """Whisper's compression ratio of a segment's text: UTF-8 bytes over their zlib-compressed size. Above
    ~2.4 the text repeats itself (a decoder loop), which OpenAI's docs tell clients to treat as failed."""
    import zlib

    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def segment_tokens(tokens: list[int], logprobs: list[float], ends: list[int], a: int, b: int
                   ) -> tuple[list[int], float | None]:
    """A segment's tokens and `avg_logprob`: the tokens of its window whose text ends inside the segment's
    characters (a, b] of the window's text, and their mean log-probability. A segment no token ends in
    (offsets off after a collapsed repetition) gets the window's mean and no tokens; a window without
    tokens (the vLLM backend) gives None."""
    picked = [(t, lp) for t, lp, e in zip(tokens, logprobs, ends) if a < e <= b]
    if picked:
        return [t for t, _ in picked], round(sum(lp for _, lp in picked) / len(picked), 5)
    if logprobs:
        return [], round(sum(logprobs) / len(logprobs), 5)
    return [], None


class Segment(BaseModel):
    """OpenAI's segment fields. `compression_ratio` is computed from the text, `no_speech_prob` from the
    voice activity of the segment's audio (runtime.serving.vad), `tokens` and `avg_logprob` from the
    decoder's tokens (segment_tokens; absent on the vLLM backend, which does not return them yet)."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int] = Field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None


class TranscriptionVerbose(BaseModel):
    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[Segment] | None = None
    words: list[Word] | None = None
