"""QwenTTSEngine on the tiny Qwen3-TTS CustomVoice checkpoint, loaded through the production loader.

Weights are random: assert shapes, types, counts, equalities between paths and timing order, never
content. The tiny talker never emits EOS, so a call gives exactly max_frames frames of 1920 samples.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from services.tiny import ensure
from services.tts.engine import QwenTTSEngine, SpeechItem

SR = 24000
FRAME = 1920
VOICES = ["aiden", "dylan", "eric", "ono_anna", "ryan", "serena", "sohee", "uncle_fu", "vivian"]
LANGUAGES = [
    "auto", "chinese", "english", "french", "german", "italian",
    "japanese", "korean", "portuguese", "russian", "spanish",
]  # fmt: skip
TEXT = "Hello there, this is a streaming test."


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    folder = ensure("tts", root=tmp_path_factory.mktemp("tiny"))
    return QwenTTSEngine.load(str(folder), "cpu", "float32", threads=1)


def _assert_idle(engine):
    assert not engine._lock.locked()
    assert not engine.tts.model.talker._forward_hooks  # the streaming hook is gone


def _assert_wav(wav, frames):
    assert isinstance(wav, np.ndarray) and wav.dtype == np.float32 and wav.ndim == 1
    assert wav.shape[0] == frames * FRAME
    assert np.isfinite(wav).all()


def test_metadata(engine):
    assert engine.sample_rate == SR and engine.samples_per_frame == FRAME
    assert [v.id for v in engine.voices] == VOICES
    assert engine.languages == LANGUAGES
    vivian = next(v for v in engine.voices if v.id == "vivian")
    assert vivian.name == "Vivian" and vivian.language == "chinese" and vivian.description
    dylan = next(v for v in engine.voices if v.id == "dylan")
    assert "Beijing" in dylan.description
    assert engine.supports_instructions  # the tiny checkpoint is "1b7"


def test_synthesize_is_the_package_output(engine):
    wav = engine.synthesize(TEXT, "Vivian", "English", None, 12)
    _assert_wav(wav, 12)
    ref, sr = engine.tts.generate_custom_voice(text=TEXT, speaker="Vivian", language="English", max_new_tokens=13)
    assert sr == SR and np.array_equal(wav, ref[0])


def test_all_voices_case_insensitive(engine):
    items = [SpeechItem("Hi.", v.upper() if i % 2 else v.title(), "AUTO", None, 1) for i, v in enumerate(VOICES)]
    wavs = engine.synthesize_batch(items)
    assert len(wavs) == len(VOICES)
    for wav in wavs:
        _assert_wav(wav, 1)
    _assert_wav(engine.synthesize("Hi.", "Uncle_Fu", "Chinese", "Speak slowly.", 1), 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(voice="nobody"), "vivian"),  # the message lists the valid voices
        (dict(voice=""), "valid voices"),
        (dict(text=""), "empty"),
        (dict(text="  \n\t "), "empty"),
        (dict(language="klingon"), "valid languages"),
        (dict(max_frames=0), ">= 1"),
        (dict(max_frames=10**6), "limit"),
    ],
)
def test_validation(engine, kwargs, match):
    args = dict(text="Hello.", voice="ryan", language=None, instructions=None, max_frames=2) | kwargs
    with pytest.raises(ValueError, match=match):
        engine.synthesize(**args)
    with pytest.raises(ValueError, match=match):
        engine.stream(**args)  # eager: raises before any iteration
    _assert_idle(engine)


def test_stream_equals_synthesize_and_starts_early(engine):
    args = (TEXT, "vivian", "english", None, 60)
    ref = engine.synthesize(*args)
    _assert_wav(ref, 60)

    start = time.perf_counter()
    chunks, first = [], None
    for chunk in engine.stream(*args):
        if first is None:
            first = time.perf_counter() - start
        assert chunk.dtype == np.float32 and chunk.ndim == 1 and chunk.shape[0] % FRAME == 0
        chunks.append(chunk)
    total = time.perf_counter() - start

    assert len(chunks) >= 2
    assert chunks[0].shape[0] >= engine.first_chunk_frames * FRAME  # more if frames queued up meanwhile
    out = np.concatenate(chunks)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=0)
    assert first < total / 2, (first, total)
    _assert_idle(engine)


def test_stream_decode_matches_package_across_its_300_frame_chunks(engine):
    """The package decodes >300 frames in 300-frame chunks with 25 frames of left context: the streamed
    spans (bounded left context = the codec's receptive field) reproduce that, past the boundary too."""
    import torch

    assert engine.context_frames == engine.receptive_frames >= 72  # > one sliding window (72)
    n = 310
    codes = torch.randint(0, 2048, (n, 16), generator=torch.Generator().manual_seed(0))
    ref, _ = engine.tts.model.speech_tokenizer.decode([{"audio_codes": codes}])
    frames = list(codes)
    spans = [(0, 2), (2, 150), (150, 296), (296, 305), (305, 310)]  # one span straddles frame 300
    out = np.concatenate([engine._decode_span(frames, a, b, engine.context_frames) for a, b in spans])
    assert out.shape == ref[0].shape
    np.testing.assert_allclose(out, ref[0], atol=1e-3, rtol=0)


def test_stream_closed_early_releases_the_lock(engine):
    gen = engine.stream(TEXT, "ryan", None, None, 40)
    first = next(gen)
    assert first.shape[0] > 0
    gen.close()  # consumer gone: the hook raises, the worker ends, the lock is released
    _assert_idle(engine)
    _assert_wav(engine.synthesize("After.", "ryan", None, None, 3), 3)


def test_stream_cancel_event(engine):
    cancel = threading.Event()
    got = 0
    for _ in engine.stream(TEXT, "serena", "chinese", None, 40, cancel):
        got += 1
        cancel.set()
    assert got == 1
    _assert_idle(engine)
    _assert_wav(engine.synthesize("After.", "serena", None, None, 2), 2)


def test_stream_reraises_worker_errors(engine, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("talker exploded")

    monkeypatch.setattr(engine, "_generate_codes", boom)
    with pytest.raises(RuntimeError, match="talker exploded"):
        list(engine.stream(TEXT, "sohee", None, None, 5))
    monkeypatch.undo()
    _assert_idle(engine)
    _assert_wav(engine.synthesize("After.", "sohee", None, None, 2), 2)


def test_concurrent_calls_are_serialised(engine):
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def run(frames):
        try:
            results[frames] = engine.synthesize(TEXT, "aiden", "english", None, frames)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(f,)) for f in (8, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _assert_wav(results[8], 8)
    _assert_wav(results[11], 11)


def test_synthesize_batch(engine):
    wavs = engine.synthesize_batch(
        [
            SpeechItem("Hi there.", "vivian", "english", None, 6),
            SpeechItem("A second, longer sentence to pad against.", "eric", None, "Speak softly.", 4),
        ]
    )
    assert len(wavs) == 2
    for wav in wavs:
        assert wav.dtype == np.float32 and wav.ndim == 1 and wav.shape[0] % FRAME == 0
    assert [w.shape[0] // FRAME for w in wavs] == [6, 4]  # each cut to its own max_frames
    assert engine.synthesize_batch([]) == []
