import io
import struct

import numpy as np
import pytest

from services.runtime.codecs.audio_encode import (
    FORMATS,
    MEDIA_TYPES,
    StreamingEncoder,
    check_speech_format,
    encode_audio,
)

SR = 24000
SPEEDS = [1.0, 0.5, 2.0, 0.25, 4.0]
UNEVEN = [1, 0, 7, 333, 1920, 4801, 2, 0, 96, 12345]  # includes 1-sample and zero-length chunks
# Codec padding on top of the exact length: encoder delay + last-frame padding (mp3 ~56 ms, aac ~70 ms
# streamed); atempo is ±50 ms on a 12 s stretch. Lossless/opus formats land within a few ms.
LOSSY_SLACK = {"mp3": 0.1, "aac": 0.1}


def tone(seconds: float, freq: float = 440.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def feed_in(enc: StreamingEncoder, x: np.ndarray, sizes) -> tuple[list[bytes], bytes]:
    parts, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        parts.append(enc.feed(x[i:i + n]))
        i += n
        k += 1
    return parts, enc.close()


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Decode with PyAV (pcm: int16 little-endian at 24 kHz by contract)."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, SR
    import av

    with av.open(io.BytesIO(data)) as c:
        chunks, rate = [], None
        for frame in c.decode(audio=0):
            a = frame.to_ndarray().reshape(-1)
            chunks.append(a.astype(np.float32) / 32768 if a.dtype == np.int16 else a)  # wav/flac: s16
            rate = frame.sample_rate
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate


def dominant_hz(y: np.ndarray, sr: int) -> float:
    y = y[len(y) // 4: 3 * len(y) // 4]  # away from codec/atempo edges
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.argmax(spec) * sr / len(y))


@pytest.mark.parametrize("speed", SPEEDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_stream_roundtrip_duration_and_rate(fmt, speed):
    x = tone(3.0)
    enc = StreamingEncoder(fmt, SR, speed)
    parts, tail = feed_in(enc, x, UNEVEN)
    y, rate = decode(b"".join(parts) + tail, fmt)
    assert rate == (48000 if fmt == "opus" else 24000) == enc.sample_rate
    expected = 3.0 / speed
    slack = LOSSY_SLACK.get(fmt, 0.02) + (0.06 if speed != 1.0 else 0.0)
    assert abs(len(y) / rate - expected) < slack, (len(y) / rate, expected)
    assert np.abs(y).max() > 0.3  # it is the tone, not silence


def test_media_types_follow_openai():
    assert set(MEDIA_TYPES) == set(FORMATS) == {"mp3", "opus", "aac", "flac", "wav", "pcm"}
    assert MEDIA_TYPES["mp3"] == "audio/mpeg" and MEDIA_TYPES["opus"] == "audio/ogg"
    assert MEDIA_TYPES["aac"] == "audio/aac" and MEDIA_TYPES["pcm"] == "audio/pcm"
    assert StreamingEncoder("flac", SR).media_type == "audio/flac"


@pytest.mark.parametrize("fmt", FORMATS)
def test_bytes_flow_before_close(fmt):
    # 10 s fed in 0.5 s chunks: every chunk yields audio, the tail is only the codec's flush.
    # Measured share before close(): pcm/wav 1.00, flac 0.998, aac/mp3 0.986, opus 0.976.
    x = tone(10.0)
    for speed, floor in ((1.0, 0.95), (2.0, 0.9)):  # at 2.0: 0.95-0.99 measured
        parts, tail = feed_in(StreamingEncoder(fmt, SR, speed), x, [SR // 2])
        total = sum(map(len, parts)) + len(tail)
        assert sum(map(len, parts)) / total > floor, (speed, sum(map(len, parts)) / total)
        assert all(len(p) > 100 for p in parts), [len(p) for p in parts]  # from the very first chunk


def test_tts_sized_chunks_give_bytes_within_a_quarter_second():
    # Qwen3-TTS emits 1920-sample (80 ms) frames; the first audio bytes must not wait for the end.
    x = tone(2.0)
    for fmt in FORMATS:
        enc = StreamingEncoder(fmt, SR)
        header = len(enc.feed(np.zeros(0, np.float32)))
        got = [len(enc.feed(x[i:i + 1920])) for i in range(0, 6 * 1920, 1920)]
        assert sum(got) > header + 100, (fmt, header, got)
        enc.close()


def test_speed_changes_tempo_not_pitch():
    for speed in (2.0, 0.5):
        y, rate = decode(encode_audio(tone(3.0), SR, "wav", speed), "wav")
        assert abs(len(y) / rate - 3.0 / speed) < 0.05
        assert abs(dominant_hz(y, rate) - 440) < 5
    y, rate = decode(encode_audio(tone(3.0), SR, "mp3", 2.0), "mp3")
    assert abs(dominant_hz(y, rate) - 440) < 5


def test_chunking_does_not_change_the_bytes():
    x = tone(1.5)
    for fmt in FORMATS:
        whole = StreamingEncoder(fmt, SR)
        one = whole.feed(x) + whole.close()
        parts, tail = feed_in(StreamingEncoder(fmt, SR), x, UNEVEN)
        assert b"".join(parts) + tail == one, fmt


def test_wav_stream_header_and_soundfile():
    import soundfile as sf

    x = tone(1.0)
    parts, tail = feed_in(StreamingEncoder("wav", SR), x, UNEVEN)
    data = b"".join(parts) + tail
    # Sizes unknown while streaming: ffmpeg's 0xFFFFFFFF placeholders, plain 44-byte header.
    assert data[:4] == b"RIFF" and struct.unpack("<I", data[4:8])[0] == 0xFFFFFFFF
    assert data[36:40] == b"data" and struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF
    y, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == SR and len(y) == len(x) and np.abs(y - x).max() <= 1 / 32768
    # Whole-buffer encoding can seek back and writes the real sizes.
    whole = encode_audio(x, SR, "wav")
    assert struct.unpack("<I", whole[40:44])[0] == 2 * len(x) and len(whole) == 44 + 2 * len(x)


def test_flac_stream_is_lossless_and_whole_file_reads_with_soundfile():
    import soundfile as sf

    x = tone(1.0)
    parts, tail = feed_in(StreamingEncoder("flac", SR), x, UNEVEN)
    y, rate = decode(b"".join(parts) + tail, "flac")
    assert rate == SR and len(y) == len(x) and np.abs(y - x).max() <= 1 / 32768  # s16 quantisation only
    # Streamed STREAMINFO says "length unknown" (valid FLAC, PyAV/ffmpeg fine; libsndfile can't seek it),
    # encode_audio fills in the length, so soundfile reads that one.
    y, rate = sf.read(io.BytesIO(encode_audio(x, SR, "flac")), dtype="float32")
    assert rate == SR and len(y) == len(x)


def test_whole_mp3_is_gapless():
    # The seekable path writes a Xing/LAME header, so decoders trim encoder delay and padding exactly.
    y, rate = decode(encode_audio(tone(1.0), SR, "mp3"), "mp3")
    assert rate == SR and len(y) == SR


def test_pcm_is_raw_s16le_at_input_rate():
    x = tone(0.5)
    data = encode_audio(x, SR, "pcm")
    assert len(data) == 2 * len(x)
    assert np.abs(np.frombuffer(data, "<i2") / 32768 - x).max() <= 1 / 32768


def test_empty_stream_and_zero_length_chunks():
    for fmt in FORMATS:
        enc = StreamingEncoder(fmt, SR)
        data = enc.feed(np.zeros(0, np.float32)) + enc.feed([]) + enc.close()
        assert enc.close() == b""  # idempotent
        if fmt == "wav":
            assert len(data) == 44
        if fmt == "pcm":
            assert data == b""
        with pytest.raises(RuntimeError):
            enc.feed(np.zeros(10, np.float32))


def test_input_is_sanitised():
    x = np.concatenate([tone(0.2), [np.nan, np.inf, -np.inf, 3.0, -3.0]]).astype(np.float64)
    y, _ = decode(encode_audio(x[:, None], SR, "pcm"), "pcm")  # (n, 1), float64 accepted
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0 and len(y) == len(x)
    with pytest.raises(ValueError):
        StreamingEncoder("wav", SR).feed(np.zeros((2, 100), np.float32))


@pytest.mark.parametrize("speed", [0.24, 4.01, 0.0, -1.0, float("nan"), float("inf"), True, "fast", "1.0"])
def test_bad_speed_is_value_error(speed):
    with pytest.raises(ValueError, match="speed"):
        StreamingEncoder("mp3", SR, speed)


@pytest.mark.parametrize("fmt", ["ogg", "", "mp4", "m4a", "wave", 3])
def test_bad_format_is_value_error(fmt):
    with pytest.raises(ValueError, match="response_format"):
        encode_audio(tone(0.1), SR, fmt)


def test_check_speech_format_normalises():
    assert check_speech_format(None, None) == ("mp3", 1.0)
    assert check_speech_format(" MP3 ", 4) == ("mp3", 4.0)
    assert check_speech_format("opus", np.float32(0.25)) == ("opus", 0.25)
    with pytest.raises(ValueError):
        StreamingEncoder("wav", 0)
