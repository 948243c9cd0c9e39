"""Encoding mono float32 audio to every OpenAI speech `response_format`, chunk by chunk.

One code path for all six formats: samples -> (optional `atempo` filter graph for `speed`) -> PyAV
encoder -> PyAV muxer -> a write-only sink. The sink has no `seek`/`tell`, so ffmpeg treats the output
as a pipe: every muxer then writes in stream order and never goes back to patch a header, which is what
lets bytes leave after each `feed()` instead of at the end:

- mp3:  raw MPEG audio frames (no ID3 tag; a Xing/LAME header only when the whole file is encoded at
        once, see `encode_audio`, which also makes decoders trim the encoder delay exactly).
- opus: Ogg Opus, encoded at 48 kHz (the rate every Opus decoder outputs); Ogg pages are cut every
        100 ms instead of ffmpeg's 1 s, so audio leaves ~0.2 s after it arrives, for ~6% more bytes at 32 kbit/s.
- aac:  ADTS (every frame carries its own header: decodable from any point, no moov atom at the end).
- flac: native FLAC stream, no 8 KB padding block; STREAMINFO keeps "total samples = 0 (unknown)" and
        an empty MD5, which the format allows: ffmpeg/PyAV decode it, libsndfile (soundfile) cannot,
        since it seeks. `encode_audio` writes the real length and MD5.
- wav:  plain 44-byte header with RIFF/data sizes 0xFFFFFFFF (ffmpeg's placeholder when it cannot
        seek back); PyAV and soundfile read such a file up to its end. `encode_audio` writes real sizes.
- pcm:  raw s16le mono at the input rate (OpenAI's pcm is 24 kHz s16le; our TTS is 24 kHz).

Validation (format, speed, rate) happens in the constructor, before any byte is produced, and raises
ValueError; the HTTP layer maps that to 400. See also `check_speech_format` to validate early.
"""

from __future__ import annotations

import io
import math
import numbers
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

DEFAULT_FORMAT = "mp3"
SPEED_MIN, SPEED_MAX = 0.25, 4.0


@dataclass(frozen=True)
class _Spec:
    codec: str
    muxer: str
    media_type: str
    rate: int | None = None  # fixed output rate; None = keep the input rate
    bit_rate: int | None = None  # lossy codecs only; sized for mono speech at 24 kHz
    muxer_options: dict[str, str] = field(default_factory=dict)


_SPECS: dict[str, _Spec] = {
    # ID3v2 off: the output is plain MPEG frames, so streamed chunks can be concatenated/appended freely.
    "mp3": _Spec("libmp3lame", "mp3", "audio/mpeg", bit_rate=64_000, muxer_options={"id3v2_version": "0"}),
    # Opus decoders always run at 48 kHz; encoding at 48 kHz keeps the OpusHead "input rate" honest.
    # page_duration: ffmpeg's default holds 1 s of audio per Ogg page, i.e. 1 s before any byte leaves.
    "opus": _Spec("libopus", "opus", "audio/ogg", rate=48_000, bit_rate=32_000,
                  muxer_options={"page_duration": "100000"}),
    "aac": _Spec("aac", "adts", "audio/aac", bit_rate=64_000),
    "flac": _Spec("flac", "flac", "audio/flac", muxer_options={"metadata_header_padding": "0"}),
    "wav": _Spec("pcm_s16le", "wav", "audio/wav"),
    "pcm": _Spec("pcm_s16le", "s16le", "audio/pcm"),
}

# Content-Type per response_format. Opus is Ogg-encapsulated, hence audio/ogg (RFC 7845), not
# audio/opus (RFC 7587 names the bare RTP payload).
MEDIA_TYPES: dict[str, str] = {name: spec.media_type for name, spec in _SPECS.items()}
FORMATS: tuple[str, ...] = tuple(_SPECS)


def check_speech_format(fmt: str | None, speed: float | None = 1.0) -> tuple[str, float]:
    """Validate `response_format` and `speed`; return them normalised. Raises ValueError."""
    name = DEFAULT_FORMAT if fmt is None else str(fmt).strip().lower()
    if name not in _SPECS:
        raise ValueError(f"response_format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if speed is None:
        speed = 1.0
    if isinstance(speed, bool) or not isinstance(speed, numbers.Real):
        raise ValueError(f"speed must be a number between {SPEED_MIN} and {SPEED_MAX}; got {speed!r}")
    value = float(speed)
    if not (SPEED_MIN <= value <= SPEED_MAX):  # also rejects NaN
        raise ValueError(f"speed must be between {SPEED_MIN} and {SPEED_MAX}; got {speed!r}")
    return name, value


def _atempo_chain(speed: float) -> list[float]:
    """Split `speed` into atempo factors within [0.5, 2.0].

    The bundled ffmpeg accepts 0.5..100 per instance (0.25 is refused), and above 2.0 atempo drops
    samples instead of overlap-adding them (ffmpeg docs), so chaining keeps 4.0 as clean as 2.0.
    """
    factors: list[float] = []
    while speed > 2.0:
        factors.append(2.0)
        speed /= 2.0
    while speed < 0.5:
        factors.append(0.5)
        speed /= 0.5
    if not math.isclose(speed, 1.0, abs_tol=1e-9):
        factors.append(speed)
    return factors


class _PipeSink:
    """Write-only file object. No seek/tell, so PyAV registers no seek callback and every muxer takes
    its streaming (pipe) path; bytes accumulate here until the encoder hands them out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class StreamingEncoder:
    """Encode a mono float32 stream into one `response_format`, returning bytes as soon as they exist.

    `feed(chunk)` returns whatever the muxer has finished (possibly b""); `close()` flushes the filter,
    the encoder and the muxer and returns the tail. Concatenating all returned bytes gives one valid
    file. Chunks of any length work (zero-length included). Not thread-safe: one per response. An
    encoder dropped without close() (client gone) just gets freed; nothing else holds it.

    `seekable=True` is for whole-buffer encoding only (`encode_audio`): the muxer may then go back and
    fill in what a stream cannot know up front (WAV sizes, FLAC STREAMINFO length/MD5, MP3 Xing/LAME
    header with gapless info), and everything is returned by `close()`.
    """

    def __init__(self, fmt: str, sample_rate: int, speed: float = 1.0, *, seekable: bool = False):
        import av

        self.format, self.speed = check_speech_format(fmt, speed)
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer; got {sample_rate!r}")
        self.input_rate = int(sample_rate)
        spec = _SPECS[self.format]
        self.media_type = spec.media_type
        self.sample_rate = spec.rate or _supported_rate(spec.codec, self.input_rate)

        factors = _atempo_chain(self.speed)
        self._graph = self._build_tempo_graph(factors) if factors else None
        self._tempo_slice = max(64, self.input_rate // 50)  # 20 ms, see feed()

        self._seekable = seekable
        self._sink: _PipeSink | io.BytesIO = io.BytesIO() if seekable else _PipeSink()
        options = {
            "flush_packets": "1",  # hand each muxed packet to the sink now, not when 32 KB accumulate
            "fflags": "+bitexact",  # no "Lavf" LIST/vendor tags, fixed Ogg serial: same input, same bytes
            **spec.muxer_options,
        }
        self._container = av.open(self._sink, mode="w", format=spec.muxer, options=options)
        try:
            self._stream = self._container.add_stream(spec.codec, rate=self.sample_rate, layout="mono")
            if spec.bit_rate:
                self._stream.codec_context.bit_rate = spec.bit_rate
            # Writes the header now: codec/muxer problems surface here, before a response starts, and
            # an empty input still yields a valid (empty) file. PyAV's encoder converts flt -> the codec's
            # sample format, resamples (opus) and re-frames to the codec's frame size by itself.
            self._container.start_encoding()
        except Exception:
            self._container.close()
            raise
        self._out_samples = 0  # pts of the next frame given to the encoder, in 1/input_rate
        self._in_samples = 0
        self._closed = False

    def _build_tempo_graph(self, factors: list[float]):
        """abuffer -> atempo[ -> atempo] -> abuffersink, kept for the whole stream: atempo's WSOLA
        state spans chunk boundaries, so stretching chunk by chunk would click at every seam."""
        import av

        graph = av.filter.Graph()
        nodes = [graph.add_abuffer(sample_rate=self.input_rate, format="flt", layout="mono",
                                   time_base=Fraction(1, self.input_rate))]
        nodes += [graph.add("atempo", f"{f:.6f}") for f in factors]
        nodes.append(graph.add("abuffersink"))
        graph.link_nodes(*nodes)
        graph.configure()
        return graph

    # -- public API -------------------------------------------------------------------------------------

    def feed(self, samples: np.ndarray) -> bytes:
        """Encode one chunk (float32 mono in [-1, 1]); return the bytes ready so far (may be b"")."""
        if self._closed:
            raise RuntimeError("StreamingEncoder.feed() after close()")
        chunk = _as_mono_float32(samples)
        if self._graph is None:
            if chunk.size:
                self._encode(self._frame(chunk))
        else:
            # atempo sizes each output frame from its input frame (n_in / tempo) and releases it only
            # once full, so a 1 s chunk at speed 0.25 would sit in the filter as 4 s of audio until the
            # next feed. Short slices keep that hold-back to tens of milliseconds.
            for start in range(0, chunk.size, self._tempo_slice):
                self._graph.push(self._frame(chunk[start:start + self._tempo_slice]))
                self._drain_graph()
        return self._take()

    def close(self) -> bytes:
        """Flush filter, encoder and muxer; return the remaining bytes. Idempotent."""
        if self._closed:
            return b""
        self._closed = True
        try:
            if self._graph is not None:
                self._graph.push(None)
                self._drain_graph()
            self._encode(None)
        finally:
            self._container.close()  # writes the trailer (Ogg last page, FLAC/WAV fix-ups if seekable)
        if self._seekable:
            return self._sink.getvalue()  # type: ignore[union-attr]
        return self._take()

    # -- internals ---------------------------------------------------------------------------------------

    def _frame(self, chunk: np.ndarray):
        import av

        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
        frame.sample_rate = self.input_rate
        frame.time_base = Fraction(1, self.input_rate)
        frame.pts = self._in_samples
        self._in_samples += chunk.size
        return frame

    def _drain_graph(self) -> None:
        import av

        while True:
            try:
                out = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return  # needs more input / fully flushed
            self._encode(out)

    def _encode(self, frame) -> None:
        if frame is not None:
            # atempo's output pts follow the input clock; renumber by output sample count so the
            # encoder and muxer see one gap-free, monotonic timeline whatever the speed.
            frame.pts = self._out_samples
            frame.time_base = Fraction(1, self.input_rate)
            self._out_samples += frame.samples
        self._container.mux(self._stream.encode(frame))

    def _take(self) -> bytes:
        if self._seekable:
            return b""  # the muxer may still rewrite earlier bytes
        return self._sink.take()  # type: ignore[union-attr]


def encode_audio(samples: np.ndarray, sample_rate: int, fmt: str = DEFAULT_FORMAT, speed: float = 1.0) -> bytes:
    """Encode a whole buffer at once. Same pipeline as streaming, but into a seekable buffer so headers
    carry exact sizes (WAV), total samples + MD5 (FLAC) and gapless info (MP3 Xing/LAME)."""
    encoder = StreamingEncoder(fmt, sample_rate, speed, seekable=True)
    encoder.feed(samples)
    return encoder.close()


def _supported_rate(codec_name: str, rate: int) -> int:
    """The input rate if the codec takes it, else the nearest rate above it (or the highest one)."""
    import av

    rates = av.codec.Codec(codec_name, "w").audio_rates
    if not rates or rate in rates:
        return rate
    above = [r for r in rates if r >= rate]
    return min(above) if above else max(rates)


def _as_mono_float32(samples: np.ndarray) -> np.ndarray:
    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"expected mono samples (1-D), got shape {arr.shape}")
    # A fresh array (the caller's buffer stays untouched); NaN/inf would turn into full-scale clicks.
    arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=-1.0)
    np.clip(arr, -1.0, 1.0, out=arr)
    return np.ascontiguousarray(arr)
