"""Realtime input audio: pcm16 and G.711 (µ-law, A-law) decoding against the standard's own formulas, and the
onnxruntime Silero VAD (every VAD of the suite) against the package's own TorchScript model, on real speech
(Debian's espeak-ng), fed in pieces, without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.runtime.codecs.realtime_audio import INPUT_RATES, decode_input
from services.runtime.serving.vad import StreamingVAD, VoiceActivity
from tests.audio_fixtures import speech

ROOT = Path(__file__).resolve().parents[2]
SR = 16000


# --- pcm16 -------------------------------------------------------------------------------------------------

def test_pcm16_is_signed_16_bit_little_endian_over_32768():
    values = np.array([0, 1, -1, 2, 12345, -12345, 32767, -32768, 256, -256], dtype=np.int16)
    data = b"".join(int(v).to_bytes(2, "little", signed=True) for v in values)
    out = decode_input(data, "pcm16")
    assert out.dtype == np.float32
    assert out.tolist() == [v / 32768 for v in values.tolist()]  # exact: every int16 / 2^15 is a float32
    assert out.min() == -1.0 and out.max() < 1.0
    assert decode_input(b"", "pcm16").shape == (0,)
    assert INPUT_RATES == {"pcm16": 24000, "g711_ulaw": 8000, "g711_alaw": 8000}


def test_pcm16_of_an_odd_number_of_bytes_is_refused():
    with pytest.raises(ValueError, match="odd"):
        decode_input(b"\x00\x01\x02", "pcm16")


@pytest.mark.parametrize("fmt", ["pcm24", "PCM16", "ulaw", "", "g711"])
def test_unknown_format_is_refused(fmt):
    with pytest.raises(ValueError, match="unknown audio format"):
        decode_input(b"\x00\x00", fmt)


# --- G.711: a reference codec written from the standard's formulas (as in the classic g711.c) -------------

def ulaw_decode_ref(u: int) -> int:
    u = ~u & 0xFF
    sign, exponent, mantissa = u & 0x80, (u >> 4) & 0x07, u & 0x0F
    t = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -t if sign else t


def ulaw_encode_ref(s: int) -> int:
    sign = 0x80 if s < 0 else 0
    s = min(-s if s < 0 else s, 32635) + 0x84
    exponent = s.bit_length() - 8  # the segment: 0..7
    mantissa = (s >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def alaw_decode_ref(a: int) -> int:
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def alaw_encode_ref(s: int) -> int:
    s >>= 3  # 13 bits
    if s >= 0:
        mask = 0xD5
    else:
        mask, s = 0x55, -s - 1
    seg = next((i for i, end in enumerate((0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)) if s <= end), 8)
    if seg >= 8:
        return 0x7F ^ mask
    aval = (seg << 4) | ((s >> 1) & 0x0F if seg < 2 else (s >> seg) & 0x0F)
    return aval ^ mask


REF = {"g711_ulaw": (ulaw_encode_ref, ulaw_decode_ref), "g711_alaw": (alaw_encode_ref, alaw_decode_ref)}
ALL_BYTES = bytes(range(256))


@pytest.mark.parametrize("fmt", ["g711_ulaw", "g711_alaw"])
def test_g711_decodes_every_byte_to_the_standard_value(fmt):
    out = decode_input(ALL_BYTES, fmt)
    assert out.dtype == np.float32 and out.shape == (256,)
    expected = np.array([REF[fmt][1](b) for b in range(256)], dtype=np.float32) / 32768
    np.testing.assert_array_equal(out, expected)
    assert decode_input(b"", fmt).shape == (0,)


def test_ulaw_structure_and_known_values():
    d = decode_input(ALL_BYTES, "g711_ulaw") * 32768
    neg, pos = d[:128], d[128:]
    assert np.all(neg <= 0) and np.all(np.diff(neg) > 0)  # 0x00 most negative, rising to 0x7F = 0
    assert np.all(pos >= 0) and np.all(np.diff(pos) < 0)  # 0x80 most positive, falling to 0xFF = 0
    np.testing.assert_array_equal(pos, -neg)  # the sign bit only
    assert d[0xFF] == 0 and d[0x7F] == 0
    assert d[0x00] == -32124 and d[0x80] == 32124  # µ-law's largest magnitude
    assert d[0xFE] == 8 and d[0x7E] == -8  # the smallest step


def test_alaw_structure_and_known_values():
    d = decode_input(ALL_BYTES, "g711_alaw") * 32768
    ordered = d[np.arange(256) ^ 0x55]  # undo the even-bit inversion: sign bit, then 7 bits of magnitude
    neg, pos = ordered[:128], ordered[128:]
    assert np.all(neg < 0) and np.all(np.diff(neg) < 0)
    assert np.all(pos > 0) and np.all(np.diff(pos) > 0)
    np.testing.assert_array_equal(pos, -neg)
    assert d[0xD5] == 8 and d[0x55] == -8  # A-law has no zero: the codes nearest 0
    assert d[0xAA] == 32256 and d[0x2A] == -32256  # A-law's largest magnitude


@pytest.mark.parametrize("fmt", ["g711_ulaw", "g711_alaw"])
def test_g711_round_trip_of_a_sine_is_within_quantization_error(fmt):
    t = np.arange(8000) / 8000
    x = 0.9 * np.sin(2 * np.pi * 440 * t) * np.linspace(0.001, 1, len(t))  # quiet to loud: every segment
    pcm = np.round(x * 32767).astype(np.int16)
    encode = REF[fmt][0]
    data = bytes(encode(int(s)) for s in pcm)
    y = decode_input(data, fmt)
    assert y.shape == x.shape and y.dtype == np.float32
    ref = pcm / 32768
    err = np.abs(y - ref)
    # G.711 steps are 1/16 of a segment whose start is ~half its values: half a step <= |x|/32 (+ the
    # smallest segment's fixed step)
    assert np.all(err <= np.abs(ref) / 32 + 16 / 32768), err.max()
    snr = 10 * np.log10(np.sum(ref ** 2) / np.sum(err ** 2))
    assert snr > 30, snr  # G.711's ~38 dB
    # every byte is the reference decoder's value too (the encoder agrees with the table)
    np.testing.assert_array_equal(y, np.array([REF[fmt][1](b) for b in data], dtype=np.float32) / 32768)


def test_chunks_decode_independently():
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 1001, dtype=np.uint8).tobytes()
    for fmt in ("g711_ulaw", "g711_alaw"):
        whole = decode_input(data, fmt)
        parts = np.concatenate([decode_input(data[a:b], fmt) for a, b in [(0, 1), (1, 160), (160, 161), (161, 1001)]])
        np.testing.assert_array_equal(whole, parts)
    whole = decode_input(data[:1000], "pcm16")
    parts = np.concatenate([decode_input(data[a:b], "pcm16") for a, b in [(0, 2), (2, 480), (480, 1000)]])
    np.testing.assert_array_equal(whole, parts)


# --- StreamingVAD ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip():
    """1 s of silence, a spoken sentence, 1 s of silence (16 kHz): (audio, speech start, speech end) in samples."""
    words = speech("Hello there, this is a test of voice activity.")
    silence = np.zeros(SR, np.float32)
    return np.concatenate([silence, words, silence]), SR, SR + len(words)


def test_constants():
    assert (StreamingVAD.FRAME, StreamingVAD.SAMPLE_RATE, StreamingVAD.FRAME_MS) == (512, 16000, 32)
    assert StreamingVAD.FRAME * 1000 == StreamingVAD.FRAME_MS * StreamingVAD.SAMPLE_RATE


def test_probabilities_do_not_depend_on_how_the_audio_is_cut(clip):
    audio = clip[0]
    whole = StreamingVAD().feed(audio)
    assert whole.dtype == np.float32 and len(whole) == len(audio) // 512

    rng = np.random.default_rng(0)
    vad = StreamingVAD()
    outs, fed = [], 0
    while fed < len(audio):
        n = int(rng.choice([0, 1, 63, 64, 511, 512, 513, int(rng.integers(1, 3000))]))
        out = vad.feed(audio[fed:fed + n])
        assert len(out) == (fed + len(audio[fed:fed + n])) // 512 - fed // 512  # the frames this call completed
        outs.append(out)
        fed += n
    np.testing.assert_array_equal(np.concatenate(outs), whole)

    vad.reset()  # a new stream: the same as a new StreamingVAD
    np.testing.assert_array_equal(vad.feed(audio), whole)


def test_instances_keep_their_own_state(clip):
    audio = clip[0]
    whole = StreamingVAD().feed(audio)
    a, b = StreamingVAD(), StreamingVAD()
    half = len(audio) // 2
    out_a1 = a.feed(audio[:half])
    b.feed(np.random.default_rng(2).standard_normal(50_000).astype(np.float32) * 0.3)  # another stream between
    out_a2 = a.feed(audio[half:])
    np.testing.assert_array_equal(np.concatenate([out_a1, out_a2]), whole)


def test_matches_silero_s_own_torchscript_model(clip):
    """Our framing of the ONNX model (context, state, padding) against the reference: silero-vad's TorchScript
    model through its own `audio_forward`, on a length that is not a whole number of frames."""
    import torch
    from silero_vad import load_silero_vad

    audio = clip[0][: len(clip[0]) // 512 * 512 - 100]
    with torch.inference_mode():
        reference = load_silero_vad().audio_forward(torch.from_numpy(audio), SR).reshape(-1).numpy()
    ours = VoiceActivity().speech_probs(audio)
    assert len(ours) == len(reference) == -(-len(audio) // 512)  # the last partial frame padded, as Silero does
    diff = np.abs(ours - reference).max()
    assert diff < 1e-4, diff  # measured: 9.5e-07 on this clip, 6.7e-06 over 10 minutes (onnxruntime 1.31.1)
    np.testing.assert_array_equal(StreamingVAD().feed(audio), ours[:-1])  # the stream waits for the last frame


def test_speech_scores_high_and_silence_low(clip):
    audio, start, end = clip
    probs = StreamingVAD().feed(audio)
    frame_start = np.arange(len(probs)) * 512
    silent = (frame_start + 512 <= start) | (frame_start >= end)
    spoken = (frame_start >= start) & (frame_start + 512 <= end)
    assert silent.sum() >= 55 and spoken.sum() >= 100
    assert probs[silent].max() < 0.2, probs[silent].max()
    assert probs[spoken].max() > 0.5
    assert np.mean(probs[spoken] > 0.5) > 0.5  # most of the sentence, not one spike


def test_does_not_import_torch():
    code = """
import json, sys
import numpy as np
from services.runtime.codecs.realtime_audio import decode_input
from services.runtime.serving.vad import StreamingVAD, voice_activity
t = np.arange(48000) / 24000
pcm = (np.sin(2 * np.pi * 220 * t) * 8000).astype('<i2').tobytes()
audio = decode_input(pcm, "pcm16")[::3]  # 24 -> 16 kHz is not the point here: any 16-kHz samples
probs = StreamingVAD().feed(np.concatenate([audio, np.zeros(8000, np.float32)]))
assert len(voice_activity().speech_probs(audio)) == 16000 // 512 + 1
decode_input(bytes(range(256)), "g711_ulaw")
print(json.dumps({"frames": len(probs), "torch": "torch" in sys.modules,
                  "silero_vad": "silero_vad" in sys.modules}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"frames": (16000 + 8000) // 512, "torch": False, "silero_vad": False}
