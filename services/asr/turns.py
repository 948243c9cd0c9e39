"""The turns of a realtime transcription session: the audio not yet committed and, with server VAD, where
speech starts and stops. Pure bookkeeping over 16 kHz samples (no I/O): the WebSocket session
(services.asr.realtime) turns what it returns into events.

Server VAD follows OpenAI's `server_vad` semantics: a turn starts at the first 32-ms frame whose speech
probability reaches `threshold`, its audio begins `prefix_padding_ms` earlier (`audio_start_ms` includes
the padding); it stops once `silence_duration_ms` of frames stay under the threshold (`audio_end_ms`
includes that silence), and the turn's audio is committed. A turn longer than `max_turn` samples is
committed at that length and the next turn starts at once. Between turns only the padding is kept, so
memory stays bounded however long a session is silent. Without VAD the buffer grows until the client
commits it (or clears it), up to `max_turn` samples.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16000
MIN_COMMIT_SAMPLES = SAMPLE_RATE // 10  # OpenAI refuses to commit less than 100 ms of audio


def ms(samples: int) -> int:
    return int(samples * 1000 // SAMPLE_RATE)


def new_item_id() -> str:
    return f"item_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class VADConfig:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class Started:
    item_id: str
    audio_start_ms: int


@dataclass(frozen=True)
class Stopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class Committed:
    item_id: str
    audio: np.ndarray = field(repr=False)


class BufferFull(Exception):
    """A manual buffer would pass the longest turn: the append is refused."""


class Turns:
    def __init__(self, vad: VADConfig | None, max_turn: int, frame: int, probs=None, origin: int = 0):
        """`probs(samples) -> probabilities` gives one speech probability per `frame` samples, statefully
        (services.runtime.serving.vad.StreamingVAD.feed); needed only with `vad`. `origin`: the
        session's clock (samples) when these turns begin (a session that changes its settings goes on)."""
        self.vad, self.max_turn, self.frame, self._probs = vad, max_turn, frame, probs
        self.total = origin  # samples received since the session started
        self._chunks: list[np.ndarray] = []
        self._start = origin  # absolute sample where the kept audio begins
        self._frame_at = origin  # absolute sample where the next VAD frame begins
        self.item_id: str | None = None  # the turn in speech (server VAD)
        self._turn_start = 0
        self._silence = 0

    @property
    def buffered(self) -> int:
        return self.total - self._start

    def feed(self, samples: np.ndarray) -> list:
        """Take more audio; the events it causes (Started, Stopped, Committed) in order."""
        samples = np.asarray(samples, dtype=np.float32)
        if self.vad is None and self.buffered + len(samples) > self.max_turn:
            raise BufferFull()
        self._chunks.append(samples)
        self.total += len(samples)
        if self.vad is None or not len(samples):
            return []
        out: list = []
        for p in self._probs(samples):
            f, self._frame_at = self._frame_at, self._frame_at + self.frame
            end = f + self.frame
            if self.item_id is None:
                if p >= self.vad.threshold:
                    self._begin(max(self._start, f - self.vad.prefix_padding_ms * SAMPLE_RATE // 1000), out)
                continue
            self._silence = self._silence + self.frame if p < self.vad.threshold else 0
            if self._silence >= self.vad.silence_duration_ms * SAMPLE_RATE // 1000:
                out += self._end(end)
            elif end - self._turn_start >= self.max_turn:
                out += self._end(end)
                self._begin(end, out)
        if self.item_id is None:
            self._trim(self.total - self.vad.prefix_padding_ms * SAMPLE_RATE // 1000)
        return out

    def commit(self) -> Committed | None:
        """Commit everything buffered (the client's `commit`); None when under 100 ms."""
        if self.buffered < MIN_COMMIT_SAMPLES:
            return None
        item_id, self.item_id = self.item_id or new_item_id(), None
        self._silence = 0
        return Committed(item_id, self._take(self.total))

    def clear(self) -> None:
        self._take(self.total)
        self.item_id, self._silence = None, 0

    def _begin(self, start: int, out: list) -> None:
        self.item_id, self._turn_start, self._silence = new_item_id(), start, 0
        self._trim(start)
        out.append(Started(self.item_id, ms(start)))

    def _end(self, end: int) -> list:
        item_id, self.item_id = self.item_id, None
        self._trim(self._turn_start)
        return [Stopped(item_id, ms(end)), Committed(item_id, self._take(end))]

    def _audio(self) -> np.ndarray:
        if len(self._chunks) != 1:
            self._chunks = [np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)]
        return self._chunks[0]

    def _take(self, end: int) -> np.ndarray:
        """The kept audio up to absolute sample `end`, removed from the buffer."""
        audio = self._audio()
        cut = max(0, min(len(audio), end - self._start))
        taken, self._chunks = audio[:cut].copy(), [audio[cut:]]
        self._start += cut
        return taken

    def _trim(self, keep_from: int) -> None:
        if keep_from > self._start:
            self._take(keep_from)
