"""Voice activity on real speech (Debian's espeak-ng) between tones and noise: the frames of the speech
score high, the rest low, and the segment statistic follows."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pytest

from services.runtime.serving.vad import FRAME_SECONDS, VoiceActivity, no_speech_prob, pack, unpack

SR = 16000


@pytest.fixture(scope="module")
def vad():
    return VoiceActivity()


def speech(text: str) -> np.ndarray:
    from services.runtime.codecs.audio import decode_audio

    assert shutil.which("espeak-ng"), "espeak-ng is installed by `make sysdeps`"
    wav = subprocess.run(["espeak-ng", "--stdout", "-s", "150", text], capture_output=True, check=True).stdout
    return decode_audio(wav, sample_rate=SR).samples


def tone_and_noise(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.5 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def clip():
    """3 s of tone + noise, a spoken sentence, 3 s more: (audio, speech start, speech end) in seconds."""
    words = speech("The quick brown fox jumps over the lazy dog near the river bank.")
    before, after = tone_and_noise(3.0, 1), tone_and_noise(3.0, 2)
    return np.concatenate([before, words, after]), 3.0, 3.0 + len(words) / SR


def test_speech_frames_score_high_and_tone_and_noise_low(vad, clip):
    audio, start, end = clip
    probs = vad.speech_probs(audio)
    assert probs.dtype == np.float32 and abs(len(probs) - len(audio) / SR / FRAME_SECONDS) <= 1
    inside = probs[int((start + 0.3) / FRAME_SECONDS): int((end - 0.3) / FRAME_SECONDS)]
    outside = np.concatenate([probs[: int((start - 0.3) / FRAME_SECONDS)], probs[int((end + 0.5) / FRAME_SECONDS):]])
    assert inside.size > 30 and outside.size > 100
    assert float(np.mean(inside > 0.5)) > 0.6, np.round(inside, 2)
    assert float(np.mean(outside > 0.5)) < 0.05


def test_no_speech_prob_is_high_on_the_silent_part_and_low_on_the_speech(vad, clip):
    audio, start, end = clip
    probs = vad.speech_probs(audio)
    assert no_speech_prob(probs, start, end) < 0.2
    assert no_speech_prob(probs, 0.0, start - 0.3) > 0.8
    assert no_speech_prob(probs, end + 0.5, len(audio) / SR) > 0.8
    assert no_speech_prob(probs, 100.0, 101.0) == 1.0  # past the audio: nothing was heard


def test_pure_noise_has_no_speech_anywhere(vad):
    probs = vad.speech_probs(tone_and_noise(10.0, 3))
    assert no_speech_prob(probs, 0.0, 10.0) > 0.8


def test_pack_round_trips_within_a_byte(vad, clip):
    probs = vad.speech_probs(clip[0])
    back = unpack(pack(probs))
    assert back.shape == probs.shape and float(np.abs(back - probs).max()) <= 1 / 255 + 1e-6
