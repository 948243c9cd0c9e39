"""What crosses between the gateway and the TTS service (services.tts.service), imported by both sides.

* `Utterance` (gateway -> `synthesize` and `stream`): what to speak. `Utterance.checked()` applies the
  request rules, one function each: the gateway before it calls, the service again (a split deployment
  serves it on its own port).
* `Speech` (`synthesize` -> gateway): float32 mono samples and their rate. The samples cross as base64 of
  float32 little-endian (`model_dump(mode="json")`), so the same dict goes through pickle and JSON.
* `StreamHeader`: the fields of `stream`'s header line (runtime.edge.remote.open_stream) beside "ok": the
  rate of the float32 little-endian PCM that follows.
* `Finish`: how the generation ended (`finish_reason` "stop" on EOS, "length" at the frame cap: the audio
  is cut) and its token counts; in `Speech`, and as the last record of a stream.
* Stream body after the header: records `kind (1 byte) + length (4 bytes LE) + payload`: b"A" float32
  little-endian PCM, then one b"E" with the `Finish` as JSON (`pack_audio`, `pack_finish`, `records`).
"""

from __future__ import annotations

import base64
import struct
from typing import Annotated, Any, AsyncIterator, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from services.runtime.core.errors import InvalidRequest, PayloadTooLarge
from services.runtime.core.languages import TTS_LANGUAGES

from .voices import VOICE_BY_ID


def check_voice(voice: str) -> str:
    """The voice's id (case-insensitive), or 400 invalid_voice listing the valid ones."""
    found = voice.strip().lower()
    if found not in VOICE_BY_ID:
        raise InvalidRequest(f"unknown voice {voice!r}; valid voices: {', '.join(sorted(VOICE_BY_ID))}",
                             param="voice", code="invalid_voice")
    return found


def check_language(language: str | None) -> str | None:
    """qwen_tts's name of the language (lower case, "auto" included), None when not given; else 400."""
    if language is None:
        return None
    name = language.strip().lower()
    if name not in TTS_LANGUAGES:
        raise InvalidRequest(f"unknown language {language!r}; valid: {', '.join(TTS_LANGUAGES)}",
                             param="language", code="invalid_value")
    return name


def check_input(text: str, max_chars: int) -> str:
    """The text stripped; 400 when nothing is left, 413 when it has more than `max_chars` characters."""
    if not text.strip():
        raise InvalidRequest("input is empty", param="input", code="empty_input")
    if len(text) > max_chars:
        raise PayloadTooLarge(f"input is {len(text)} characters; the limit is {max_chars}",
                              param="input", code="input_too_long")
    return text.strip()


class Utterance(BaseModel):
    text: str
    voice: str
    language: str | None = None  # qwen_tts's lower-case name or "auto"; None: auto
    instructions: str | None = None  # a style instruction ("speak softly"), 1.7B CustomVoice only

    def checked(self, max_chars: int) -> "Utterance":
        """This utterance normalised (text stripped, voice and language lower case), or the client's error.
        Language, then input, then voice: the first broken rule answers."""
        language = check_language(self.language)
        text = check_input(self.text, max_chars)
        return Utterance(text=text, voice=check_voice(self.voice), language=language,
                         instructions=self.instructions)


def _samples(value: Any) -> np.ndarray:
    if isinstance(value, str):  # the JSON form
        return np.frombuffer(base64.b64decode(value), dtype="<f4").astype(np.float32)
    return np.asarray(value, dtype=np.float32)


def _base64(samples: np.ndarray) -> str:
    return base64.b64encode(np.asarray(samples, dtype="<f4").tobytes()).decode()


Samples = Annotated[np.ndarray, BeforeValidator(_samples), PlainSerializer(_base64, when_used="json")]


class Finish(BaseModel):
    finish_reason: Literal["stop", "length"]
    input_tokens: int = Field(ge=0)  # the talker's prompt
    output_tokens: int = Field(ge=0)  # frames (80 ms each)


class Speech(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    audio: Samples  # float32 mono
    sample_rate: int = Field(gt=0)
    finish: Finish


_AUDIO, _FINISH = b"A", b"E"


def pack_audio(samples: np.ndarray) -> bytes:
    data = np.asarray(samples, dtype="<f4").tobytes()
    return _AUDIO + struct.pack("<I", len(data)) + data


def pack_finish(finish: Finish) -> bytes:
    data = finish.model_dump_json().encode()
    return _FINISH + struct.pack("<I", len(data)) + data


async def records(body: AsyncIterator[bytes]) -> AsyncIterator[bytes | Finish]:
    """The stream body (any chunking) as PCM bytes and, last, the Finish."""
    buf = b""
    async for chunk in body:
        buf += chunk
        while len(buf) >= 5:
            size = struct.unpack("<I", buf[1:5])[0]
            if len(buf) < 5 + size:
                break
            kind, payload, buf = buf[:1], buf[5 : 5 + size], buf[5 + size :]
            yield Finish.model_validate_json(payload) if kind == _FINISH else payload
    if buf:
        raise ValueError("the TTS stream ended inside a record")


class StreamHeader(BaseModel):
    sample_rate: int = Field(gt=0)
