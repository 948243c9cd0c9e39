"""Voice activity on real speech (Debian's espeak-ng) between tones and noise: the frames of the speech
score high, the rest low, and the segment statistic follows."""

from __future__ import annotations

import numpy as np
import pytest

from tests.audio_fixtures import speech, tone_and_noise
from services.runtime.serving.vad import FRAME_SECONDS, VoiceActivity, no_speech_prob, pack, unpack

SR = 16000


@pytest.fixture(scope="module")
def vad():
    return VoiceActivity()


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


@pytest.fixture(scope="module")
def long_clip():
    """7 s of tone + noise, a spoken sentence, 7 s more (windows of 8 s: three); the sentence's span is
    from its first to its last audible sample (espeak-ng pads its output with silence)."""
    words = speech("The quick brown fox jumps over the lazy dog near the river bank.")
    before, after = tone_and_noise(7.0, 4), tone_and_noise(7.0, 5)
    audible = np.flatnonzero(np.abs(words) > 0.01)
    return (np.concatenate([before, words, after]), 7.0 + audible[0] / SR, 7.0 + audible[-1] / SR)


def test_asr_windows_are_cut_outside_the_speech_and_only_the_speech_is_decoded(vad, long_clip):
    from services.asr.service import plan_windows

    audio, start, end = long_clip
    chunks, decoded = plan_windows(audio, 8.0, vad.speech_probs(audio), threshold=0.5)
    cuts = [c.end / SR for c in chunks[:-1]]
    assert len(chunks) == 3 and chunks[-1].end == len(audio)
    assert all(not (start < t < end) for t in cuts), (cuts, start, end)
    # The windows of tone and noise are not decoded; the one holding the sentence is.
    spoken = [c.start / SR < end and c.end / SR > start for c in chunks]
    assert decoded == spoken and decoded.count(True) == 1, (decoded, cuts)
    # Without voice activity every window is decoded, and the quietest point falls inside the sentence
    # (a pause between words): what the guard above is for.
    plain, all_decoded = plan_windows(audio, 8.0, None, threshold=0.5)
    assert all(all_decoded) and any(start < c.end / SR < end for c in plain[:-1]), [c.end / SR for c in plain]


def test_pure_tone_and_noise_decodes_no_window(vad):
    from services.asr.service import plan_windows

    audio = tone_and_noise(30.0, 6)
    chunks, decoded = plan_windows(audio, 8.0, vad.speech_probs(audio), threshold=0.5)
    assert len(chunks) >= 4 and not any(decoded)


def test_the_pool_serves_concurrent_calls_each_with_its_own_state(vad, long_clip):
    """Two calls at once (each takes its own model from the pool) give what each gives alone."""
    import concurrent.futures

    audio = long_clip[0]
    other = tone_and_noise(20.0, 7)
    alone = vad.speech_probs(audio), vad.speech_probs(other)
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        together = list(ex.map(vad.speech_probs, [audio, other, audio, other]))
    for got, want in zip(together, alone * 2):
        np.testing.assert_array_equal(got, want)
