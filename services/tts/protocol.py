"""Wire format of POST /v1/audio/speech: OpenAI's JSON fields, in OpenAI's order."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.runtime.core.languages import TTS_MODEL_LANGUAGES

from .voices import VOICES


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="tts-1, tts-1-hd, qwen3-tts, tts-1-{lang}/tts-1-hd-{lang} "
                                        f"({' '.join(TTS_MODEL_LANGUAGES)}: forces the language), or the model id")
    input: str = Field(..., description="the text to speak")
    voice: str = Field(..., description=f"{' '.join(v.id for v in VOICES)} (case-insensitive); "
                                        "see GET /v1/audio/voices")
    instructions: str | None = Field(None, max_length=2000, description="style instruction (1.7B CustomVoice)")
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0, description="0.25-4.0, time-stretched without pitch change")
    stream_format: Literal["audio", "sse"] | None = Field(
        None, description="stream while synthesising: raw audio bytes, or SSE speech.audio.delta events")
    stream: bool = Field(False, description="alias of stream_format=audio")
    language: str | None = Field(None, description="output language (auto when omitted); overrides the model suffix")
    timestamps: bool = Field(False, description="word timings by the forced aligner (extension): with stream_format "
                                                "sse, speech.audio.words events; not streamed, a JSON answer with "
                                                "the audio (base64) and its words")
