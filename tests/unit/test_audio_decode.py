import numpy as np
import pytest

from services.runtime.codecs.audio import decode_audio
from services.runtime.core.errors import InvalidRequest, PayloadTooLarge, UnsupportedMedia
from tests.audio_fixtures import encode, song


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "m4a", "aac", "opus"])
def test_common_formats_decode_to_16k_mono_float32(fmt):
    x = song(3.0, sr=44100)
    d = decode_audio(encode(x, 44100, fmt), max_seconds=60)
    assert d.sample_rate == 16000 and d.samples.dtype == np.float32 and d.samples.ndim == 1
    assert abs(d.duration - 3.0) < 0.1
    assert np.abs(d.samples).max() <= 1.0


@pytest.mark.parametrize("data", [b"not audio at all", b"RIFF\x00\x00\x00\x00WAVEfmt ", b"\x89PNG\r\n\x1a\n" * 10])
def test_garbage_is_415(data):
    with pytest.raises(UnsupportedMedia):
        decode_audio(data)


def test_empty_is_400():
    with pytest.raises(InvalidRequest):
        decode_audio(b"")


def test_too_long_is_413_from_the_header_or_while_decoding():
    data = encode(song(5.0, sr=8000), 8000, "wav")
    with pytest.raises(PayloadTooLarge):
        decode_audio(data, max_seconds=2)


def test_lying_header_claiming_hours_costs_only_the_real_data():
    import struct

    # A WAV header declaring ~10 hours of 16-bit mono 16 kHz, followed by a second of data.
    n = 16000 * 3600 * 10 * 2
    hdr = b"RIFF" + struct.pack("<I", 36 + n) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    hdr += b"data" + struct.pack("<I", n)
    d = decode_audio(hdr + b"\x01\x00" * 16000, max_seconds=600)
    assert abs(d.duration - 1.0) < 0.05  # ffmpeg times the file by its real size, not the header


def test_truncated_file_keeps_what_decoded_or_says_corrupt():
    data = encode(song(4.0, sr=16000), 16000, "mp3")
    d = decode_audio(data[: len(data) // 2], max_seconds=60)
    assert 0 < d.duration < 4.0


def test_truncate_keeps_the_first_seconds_instead_of_413():
    data = encode(song(5.0, sr=8000), 8000, "wav")
    d = decode_audio(data, max_seconds=2, truncate=True)
    assert d.duration == 2.0


def test_base64_and_data_urls():
    import base64

    from services.runtime.edge.media import decode_base64

    raw = b"\x00\x01binary"
    assert decode_base64(base64.b64encode(raw).decode(), max_bytes=100, param="p") == raw
    assert decode_base64("data:audio/wav;base64," + base64.b64encode(raw).decode(), max_bytes=100, param="p") == raw
    with pytest.raises(InvalidRequest):
        decode_base64("not base64!!", max_bytes=100, param="p")
    with pytest.raises(PayloadTooLarge):
        decode_base64(base64.b64encode(b"x" * 200).decode(), max_bytes=100, param="p")


@pytest.mark.parametrize("seconds", [4.0, 4.9])
def test_what_decoding_accepts_the_model_services_cap_accepts_too(seconds):
    """One rule (`check_duration`) for the gateway's decoding and the services' own check: audio up to the cap
    plus its slack decodes, and the decoded samples pass the same check the ASR and aligner services make."""
    from services.runtime.codecs.audio import check_duration

    d = decode_audio(encode(song(seconds, sr=16000), 16000, "flac"), max_seconds=4.0, param="audio_url")
    check_duration(d.duration, 4.0, param="audio")
    with pytest.raises(PayloadTooLarge) as e:
        decode_audio(encode(song(5.5, sr=16000), 16000, "flac"), max_seconds=4.0, param="audio_url")
    assert (e.value.param, e.value.code) == ("audio_url", "audio_too_long")
