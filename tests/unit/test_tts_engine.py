"""QwenTTSEngine on the tiny Qwen3-TTS CustomVoice checkpoint, loaded through the production loader.

Weights are random: assert shapes, types, counts, equalities between paths and timing order, never
content. The tiny talker never emits EOS, so a call gives exactly max_frames frames of 1920 samples.
The tiny checkpoint's generation_config is greedy and runs in float32, so there a stream equals a
separate synthesize and a batch equals its items alone; the real one samples, so those equalities hold
there only for a stream and a synthesize with the same seed (the `sampled` tests), within tolerance.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from services.tiny import ensure
from services.tts.codec import decode_windows, receptive_frames
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
    """Every request has left the decode loop (a cancelled one at the loop's next step)."""
    for _ in range(1000):
        if engine.loop.active == 0 and engine.loop.waiting == 0:
            return
        time.sleep(0.01)
    raise AssertionError(f"loop not idle: {engine.loop.active} active, {engine.loop.waiting} waiting")


def _decode_spans(engine, frames, spans, context):
    """The streamed decode of `spans` of `frames`, every window in ONE batched decoder call (right-padded
    to the longest), concatenated."""
    windows = [w for a, b in spans for w in decode_windows(a, b, context, engine.codec.chunk_size,
                                                             engine.codec.left_context)]
    with engine._torch.inference_mode():
        return np.concatenate(engine.codec._decode_windows([(frames, w) for w in windows]))


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
    """Greedy (the tiny's generation_config) and float32: a stream equals a separate synthesize. With the
    real checkpoint's sampling this holds only for the same seed: test_sampled_stream_..."""
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

    # 1 layer x 71 frames of attention + 2 (pre_conv) + 10 (upsampling stack): see test_tts_real.py
    assert engine.context_frames == engine.receptive_frames == receptive_frames(engine.codec.decoder) == 83
    n = 310
    codes = torch.randint(0, 2048, (n, 16), generator=torch.Generator().manual_seed(0))
    ref, _ = engine.tts.model.speech_tokenizer.decode([{"audio_codes": codes}])
    frames = list(codes)
    spans = [(0, 2), (2, 150), (150, 296), (296, 305), (305, 310)]  # one span straddles frame 300
    out = _decode_spans(engine, frames, spans, engine.context_frames)  # one call, windows of 2 to 150 frames
    assert out.shape == ref[0].shape
    np.testing.assert_allclose(out, ref[0], atol=1e-3, rtol=0)


def test_stream_closed_early_leaves_the_loop(engine):
    gen = engine.stream(TEXT, "ryan", None, None, 40)
    first = next(gen)
    assert first.shape[0] > 0
    gen.close()  # consumer gone: the request leaves the batch at the loop's next step
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

    monkeypatch.setattr(engine.loop, "_step", boom)
    with pytest.raises(RuntimeError, match="talker exploded"):
        list(engine.stream(TEXT, "sohee", None, None, 5))
    monkeypatch.undo()
    _assert_idle(engine)
    _assert_wav(engine.synthesize("After.", "sohee", None, None, 2), 2)


def test_concurrent_calls_share_the_decode_steps(engine):
    """Two threads released together: their requests run in the same talker steps (continuous batching),
    and each still gets the audio it gets alone (greedy, float32)."""
    alone = {f: engine.synthesize(TEXT, "aiden", "english", None, f) for f in (8, 11)}
    steps, rows = engine.loop.steps, engine.loop.step_rows
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(frames):
        try:
            start.wait()
            results[frames] = engine.synthesize(TEXT, "aiden", "english", None, frames)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(f,)) for f in (8, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for f in (8, 11):
        _assert_wav(results[f], f)
        np.testing.assert_allclose(results[f], alone[f], atol=1e-4, rtol=0)
    d_steps, d_rows = engine.loop.steps - steps, engine.loop.step_rows - rows
    assert d_rows == 8 + 11 - 2  # every frame but each one's last came out of a step...
    assert d_steps < d_rows  # ...and some steps served both requests


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


# --- the codec's reach, with weights that show it --------------------------------------------------------


def _visible(decoder, seed: int = 0):
    """The decoder with weights whose long-range influence shows: the tiny checkpoint's weights hide it
    (layer scales 0.01, ConvNeXt gammas 1e-6: cutting the context 4 frames short of the receptive field
    changes nothing above float noise). Codebooks N(0, 1), every conv/linear weight N(0, 0.2^2), layer
    scales and gammas 1, the last conv scaled so the output sits at RMS 0.2 (the final clamp to [-1, 1]
    would hide differences)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if name.endswith("embedding_sum"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith(("scale", "gamma")):
                p.fill_(1.0)
        for m in decoder.modules():
            if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.2)
                if m.bias is not None:
                    m.bias.zero_()
        captured = {}
        last = decoder.decoder[-1]
        handle = last.register_forward_hook(lambda _m, _i, o: captured.__setitem__("wav", o))
        decoder(torch.randint(0, 2048, (1, 16, 24), generator=g))
        handle.remove()
        last.conv.weight.mul_(0.2 / captured["wav"].std())
    return decoder.eval()


# The tiny codec's own shape (short by 4 frames: the conv stack's reach counts), and 3 layers of window 8
# (short by one layer's reach, 7 frames: the layers multiply the attention's reach).
@pytest.mark.parametrize("layers, window, expected, short", [(1, 72, 83, 4), (3, 8, 33, 7)])
def test_streamed_decode_needs_the_receptive_field(engine, monkeypatch, layers, window, expected, short):
    """Streamed spans decoded with the engine's left context (the receptive field) equal the package
    decode; a few frames less do not."""
    import copy

    import torch

    cfg = copy.deepcopy(engine.codec.decoder.config)
    cfg.num_hidden_layers, cfg.sliding_window = layers, window
    decoder = _visible(type(engine.codec.decoder)._from_config(cfg))
    reach = receptive_frames(decoder)
    assert reach == expected == 10 + layers * (window - 1) + 2
    monkeypatch.setattr(engine.codec, "decoder", decoder)

    n = reach + 40  # < 300: the package decodes it in one call
    codes = torch.randint(0, 2048, (n, 16), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = decoder.chunked_decode(codes.T.unsqueeze(0))[0, 0].numpy()
    frames, a = list(codes), n - 8

    def error(context):
        return float(np.abs(_decode_spans(engine, frames, [(a, n)], context) - ref[a * FRAME :]).max())

    assert error(reach) < 1e-4  # float noise (rotary positions restart at the window start)
    assert error(reach - short) > 1e-3


# --- the real checkpoint samples --------------------------------------------------------------------------


@pytest.fixture()
def sampled(engine):
    """The tiny model with the real checkpoint's sampling switched on (same model, its own settings)."""
    return QwenTTSEngine(engine.tts, sampling={"do_sample": True, "subtalker_dosample": True})


def test_sampled_generation_is_sampled(engine, sampled):
    import torch

    assert engine.sampling["do_sample"] is False  # the tiny generation_config
    assert sampled.sampling == engine.sampling | {"do_sample": True, "subtalker_dosample": True}
    args = ("Hello there.", "ryan", "english", None, 8)
    torch.manual_seed(1)
    first = sampled.synthesize(*args)
    second = sampled.synthesize(*args)
    torch.manual_seed(1)
    again = sampled.synthesize(*args)
    for wav in (first, second, again):
        _assert_wav(wav, 8)
    assert not np.array_equal(first, second)  # 16 codes x 8 frames drawn from top-50: never all equal
    np.testing.assert_allclose(again, first, atol=1e-5, rtol=0)


def test_sampled_stream_equals_synthesize_with_the_same_seed(sampled):
    import torch

    args = (TEXT, "vivian", "english", None, 20)
    torch.manual_seed(7)
    ref = sampled.synthesize(*args)
    torch.manual_seed(7)
    out = np.concatenate(list(sampled.stream(*args)))
    assert out.shape == ref.shape == (20 * FRAME,)
    np.testing.assert_allclose(out, ref, atol=1e-3, rtol=0)
    _assert_idle(sampled)


def test_the_token_budget_bounds_every_step(engine):
    """QWEN_TTS_MAX_BATCH_FRAMES bounds rows x the longest row's tokens (prompt + frame cap) at every step,
    and one request's frame cap."""
    import torch

    with torch.inference_mode():
        prompt = max(engine.loop.prompt(f"Sentence {i}.", "aiden", "auto", None)[0].shape[1] for i in range(4))
    budget = 2 * (prompt + 6)  # two of the requests below fit at once, not three
    budgeted = QwenTTSEngine(engine.tts, max_batch_frames=budget)
    assert budgeted.max_frames_limit == budget  # one request never exceeds the budget
    with pytest.raises(ValueError, match="limit"):
        budgeted.check(SpeechItem("Hi.", "ryan", None, None, budget + 1))
    seen: list[int] = []
    budgeted.loop.on_step = lambda rows: seen.append(rows * max(r.cost for r in budgeted.loop._rows))
    frames = [6, 4, 3, 5]
    wavs = budgeted.synthesize_batch([SpeechItem(f"Sentence {i}.", "aiden", None, None, f)
                                      for i, f in enumerate(frames)])
    for wav, f in zip(wavs, frames):  # in order, each cut to its own max_frames
        _assert_wav(wav, f)
    assert seen and max(seen) <= budget
    assert budgeted.loop.step_rows > budgeted.loop.steps  # two at a time did happen


def test_service_caps_request_frames_at_the_budget(engine):
    """The TTS service sizes each request from its text, capped by QWEN_TTS_MAX_FRAMES and the engine's
    limit, which includes QWEN_TTS_MAX_BATCH_FRAMES (the service's own `_item`, without BentoML)."""
    from types import SimpleNamespace

    from services.runtime.core.settings import TTSSettings
    from services.tts.contract import Utterance
    from services.tts.service import TTS

    budgeted = QwenTTSEngine(engine.tts, max_batch_frames=100)
    svc = SimpleNamespace(cfg=TTSSettings(max_batch_frames=100))
    assert TTS.inner._item(svc, budgeted, Utterance(text="x" * 1000, voice="ryan")).max_frames == 100  # 50 + 4 x 1000 capped
    assert TTS.inner._item(svc, budgeted, Utterance(text="Hi.", voice="ryan")).max_frames == 62  # 50 + 4 x 3
    # the default budget: QWEN_TTS_MAX_FRAMES caps
    assert TTS.inner._item(svc, engine, Utterance(text="x" * 4096, voice="ryan")).max_frames == 8191
