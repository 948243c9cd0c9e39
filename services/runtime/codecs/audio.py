"""Decoding any common audio format (by content, not by name) to mono float32 at a target rate.

PyAV's bundled ffmpeg reads wav/flac/mp3/ogg/opus/aac/m4a/webm...; the duration cap (`check_duration`, the
one rule for every audio limit) is checked on the container header before decoding (a 10-hour header is
refused at once), while decoding (headers can lie, so memory stays bounded by the cap) and on the result.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from services.runtime.core.errors import InvalidRequest, PayloadTooLarge, UnsupportedMedia

# Codecs pad: a file of exactly the limit can decode a little longer (encoder delay, a last partial frame).
DURATION_SLACK_SECONDS = 1.0
# A container header's duration is an estimate (VBR mp3 without a table): refused before decoding only when
# over the cap by this factor as well.
HEADER_TOLERANCE = 1.02


def check_duration(seconds: float, max_seconds: float, *, param: str) -> None:
    """The audio length cap: a 413 `audio_too_long` naming `param` (the field the audio came in) past
    `max_seconds` (plus DURATION_SLACK_SECONDS). The gateway's decoding and the model services apply this one
    rule, so audio the gateway accepted is never refused by the service behind it."""
    if seconds > max_seconds + DURATION_SLACK_SECONDS:
        raise PayloadTooLarge(f"{param}: audio is longer than the {max_seconds:.0f}-second limit", param=param,
                              code="audio_too_long")


@dataclass
class DecodedAudio:
    samples: np.ndarray  # float32 in [-1, 1]: (n,) mono, or (n, channels)
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


def decode_audio(
    data: bytes, *, sample_rate: int = 16000, max_seconds: float | None = None, param: str = "file",
    truncate: bool = False, channels: int = 1,
) -> DecodedAudio:
    """Mono float32 at `sample_rate` (with `channels=2`: stereo, shape (n, 2), a mono file duplicated). Past
    `max_seconds`: a 413, or with `truncate` the first `max_seconds` (decoding stops there)."""
    import av

    if not data:
        raise InvalidRequest(f"{param} is empty", param=param, code="empty_audio")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.InvalidDataError, av.error.EOFError, UnicodeDecodeError, ValueError):
        raise UnsupportedMedia(f"{param} is not a recognised audio format", param=param) from None
    except av.error.FFmpegError as exc:
        raise UnsupportedMedia(f"{param} could not be opened as audio: {exc.strerror or type(exc).__name__}",
                               param=param) from None
    with container:
        streams = [s for s in container.streams if s.type == "audio"]
        if not streams:
            raise UnsupportedMedia(f"{param} has no audio stream", param=param)
        stream = streams[0]
        if max_seconds is not None:
            declared = None
            if stream.duration is not None and stream.time_base is not None:
                declared = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                declared = container.duration / 1_000_000
            if declared is not None and not truncate:
                check_duration(declared / HEADER_TOLERANCE, max_seconds, param=param)
        resampler = av.AudioResampler(format="flt", layout={1: "mono", 2: "stereo"}[channels], rate=sample_rate)
        # Counted in samples of all channels (packed: one row of n x channels values per frame).
        limit = None if max_seconds is None else int(max_seconds * sample_rate * channels)
        chunks: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().reshape(-1)
                    chunks.append(arr)
                    total += arr.size
                if limit is not None and total > limit:
                    if truncate:
                        break
                    check_duration(total / channels / sample_rate, max_seconds, param=param)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            if not chunks:
                raise InvalidRequest(f"{param}: corrupt audio ({exc.strerror or type(exc).__name__})",
                                     param=param, code="corrupt_audio") from None
            # A damaged tail after good audio: keep what decoded (players do the same).
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if channels > 1:
        samples = samples[: samples.size // channels * channels].reshape(-1, channels)
    if truncate and max_seconds is not None:
        samples = samples[: int(max_seconds * sample_rate)]
    elif max_seconds is not None:
        check_duration(len(samples) / sample_rate, max_seconds, param=param)
    if samples.size == 0:
        raise InvalidRequest(f"{param}: no audio samples could be decoded", param=param, code="corrupt_audio")
    if not np.isfinite(samples).all():
        samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
    np.clip(samples, -1.0, 1.0, out=samples)
    return DecodedAudio(samples, sample_rate)


class Resampler:
    """Mono float32 from one rate to another, chunk by chunk (ffmpeg's resampler through PyAV, the decoder's
    own): for audio that arrives in pieces (synthesized speech, a realtime stream). `flush()` gives the
    resampler's last samples."""

    def __init__(self, rate: int, to_rate: int):
        import av

        self.rate, self.to_rate = rate, to_rate
        self._r = None if rate == to_rate else av.AudioResampler(format="flt", layout="mono", rate=to_rate)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        if self._r is None or samples.size == 0:
            return samples
        import av

        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.rate
        return self._out(self._r.resample(frame))

    def flush(self) -> np.ndarray:
        return np.zeros(0, np.float32) if self._r is None else self._out(self._r.resample(None))

    @staticmethod
    def _out(frames) -> np.ndarray:
        parts = [f.to_ndarray().reshape(-1) for f in frames]
        return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


def resample(samples: np.ndarray, rate: int, to_rate: int) -> np.ndarray:
    """Whole mono float32 audio at `to_rate`."""
    r = Resampler(rate, to_rate)
    return np.concatenate([r.feed(samples), r.flush()])
