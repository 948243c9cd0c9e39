"""TTS facts of the real Qwen3-TTS-12Hz-1.7B-CustomVoice that the tiny checkpoint cannot show, checked
without weights against its published config files (tests/fixtures/real/, provenance in its README):
the codec decoder's receptive field (the real-size decoder built on PyTorch's meta device), what
streaming re-decodes for it, the generation memory per frame, and that the real model samples.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from services.tts.codec import decode_windows, receptive_frames
from services.tts.engine import MAX_FRAMES_LIMIT
from services.tts.talker import SAMPLING_KEYS, kv_bytes_per_token, sampling_kwargs
from tests.real_configs import TTS, codec_config, read_json, tts_config

GiB = 2**30


@pytest.fixture(scope="module")
def real_decoder():
    """The real-size 12 Hz codec decoder (114M parameters) on the meta device: shapes, no memory."""
    import torch
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Decoder

    cfg = codec_config(TTS / "speech_tokenizer").decoder_config
    with torch.device("meta"):
        decoder = Qwen3TTSTokenizerV2Decoder._from_config(cfg)
    assert next(decoder.parameters()).is_meta
    return decoder


def test_real_codec_receptive_field(real_decoder):
    cfg = real_decoder.config
    assert (cfg.num_hidden_layers, cfg.sliding_window) == (8, 72)
    assert (cfg.upsampling_ratios, cfg.upsample_rates) == ([2, 2], [8, 5, 4, 3])
    # Independent derivation, walking back from the first sample of a frame (1920 per frame): final conv
    # k7 -6; block 3 (rate x3): residual convs k7 at dilations 1/3/9 -78, transposed k6 s3 -> -29 at the
    # rate before; block 2 (x4) -107 -> -28; block 1 (x5) -106 -> -23; block 0 (x8) -101 -> -14 at 4x
    # the frame rate; decoder input conv k7 -20; ConvNeXt k7 -26; transposed k2 s2 -> -13; ConvNeXt k7
    # -19; transposed k2 s2 -> 10 frames back. Then 8 attention layers reaching 71 frames each
    # (transformers' sliding mask keeps kv > q - 72) and pre_conv k3: 10 + 568 + 2.
    assert receptive_frames(real_decoder) == 580


def test_streaming_left_context_covers_the_real_codec(real_decoder):
    """The engine's default left context (the receptive field) keeps streamed decoding exact on the real
    codec: 580 frames reach past the package's own window (chunks of 300 with 25 frames of context), so
    every streamed span is decoded from its package window start, exactly as chunked_decode does."""
    params = inspect.signature(real_decoder.chunked_decode).parameters
    size, left = params["chunk_size"].default, params["left_context_size"].default
    assert (size, left) == (300, 25)
    context = receptive_frames(real_decoder)
    assert context > size + left
    for a, b in _stream_spans(2000, first=2, chunk=6):
        windows = decode_windows(a, b, context, size, left)
        assert windows == decode_windows(a, b, None, size, left)  # the package window binds
        assert sum(end - first for _, first, end in windows) == b - a  # every frame once, in order
        for start, first, _ in windows:  # enough context, or the package's own window start
            assert first - start >= context or start == max(first // size * size - left, 0)


def _stream_spans(n: int, first: int, chunk: int) -> list[tuple[int, int]]:
    """The spans a stream decodes when decoding keeps up: `first` frames, then `chunk` at a time."""
    edges = [0, *range(first, n, chunk), n]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def redecode_ratio(n: int, context: int | None, chunk: int = 6, first: int = 2) -> float:
    """Frames decoded per streamed frame over a stream of n frames (package window 300 + 25)."""
    spans = _stream_spans(n, first, chunk)
    decoded = sum(end - start for a, b in spans for start, _, end in decode_windows(a, b, context, 300, 25))
    return decoded / n


def test_streaming_redecode_on_the_real_codec_is_bounded(real_decoder):
    """What streaming costs on the real codec (default 6-frame chunks): ~30 frames decoded per streamed
    frame, flat in the stream's length (the package window bounds it), against ~1.1 non-streamed and
    ~14 on the tiny codec (83-frame receptive field)."""
    real = receptive_frames(real_decoder)
    ratios = {n: redecode_ratio(n, real) for n in (600, 2048, MAX_FRAMES_LIMIT)}
    assert all(27 < r < 31 for r in ratios.values()), ratios
    assert redecode_ratio(MAX_FRAMES_LIMIT, real, chunk=12) < 16  # larger chunks: about half
    assert redecode_ratio(MAX_FRAMES_LIMIT, 83) < 16  # the tiny codec's receptive field
    non_streamed = sum(end - start for start, _, end in decode_windows(0, MAX_FRAMES_LIMIT, None, 300, 25))
    assert non_streamed / MAX_FRAMES_LIMIT < 1.1


def test_kv_memory_per_token_on_the_real_talker():
    talker = tts_config(TTS).talker_config
    assert (talker.hidden_size, talker.num_hidden_layers, talker.num_key_value_heads, talker.head_dim) == (
        2048, 28, 8, 128)
    fp16 = kv_bytes_per_token(talker, 2)
    assert fp16 == 28 * 2 * 8 * 128 * 2 == 114_688  # 112 KiB
    assert kv_bytes_per_token(talker, 4) == 2 * fp16
    # The default budget (8191 tokens over the batch) is 0.9 GiB of KV cache in float16: inside the 0.45
    # share of a 15 GiB T4 that the README's ASR + TTS layout gives the TTS, beside its ~3.9 GB weights.
    assert 0.85 * GiB < MAX_FRAMES_LIMIT * fp16 < 0.9 * GiB
    assert MAX_FRAMES_LIMIT * fp16 + 3.9e9 < 0.45 * 15 * GiB


def test_the_real_model_samples_and_the_engine_passes_it_explicitly():
    real = read_json(TTS / "generation_config.json")
    from qwen_tts import Qwen3TTSModel

    # The package's own merge rule, applied to the real file (a stand-in for the loaded wrapper).
    wrapper = SimpleNamespace(generate_defaults=real)
    wrapper._merge_generate_kwargs = lambda **kw: Qwen3TTSModel._merge_generate_kwargs(wrapper, **kw)
    sampling = sampling_kwargs(wrapper)
    assert sampling == {"do_sample": True, "top_k": 50, "top_p": 1.0, "temperature": 0.9,
                        "repetition_penalty": 1.05, "subtalker_dosample": True, "subtalker_top_k": 50,
                        "subtalker_top_p": 1.0, "subtalker_temperature": 0.9}
    assert set(sampling) == set(SAMPLING_KEYS) and "max_new_tokens" not in sampling
    assert sampling_kwargs(wrapper, {"do_sample": False})["do_sample"] is False
    with pytest.raises(ValueError, match="seed"):
        sampling_kwargs(wrapper, {"seed": 1})


def test_tts_settings_budget(monkeypatch):
    from services.runtime.core.settings import TTSSettings

    cfg = TTSSettings()
    assert cfg.max_batch_frames == MAX_FRAMES_LIMIT and cfg.stream_context_frames is None
    monkeypatch.setenv("QWEN_TTS_MAX_BATCH_FRAMES", "4096")
    monkeypatch.setenv("QWEN_TTS_STREAM_CONTEXT_FRAMES", "100")
    cfg = TTSSettings()
    assert (cfg.max_batch_frames, cfg.stream_context_frames) == (4096, 100)
    monkeypatch.setenv("QWEN_TTS_MAX_BATCH_FRAMES", "1")
    with pytest.raises(ValueError):
        TTSSettings()


def test_the_real_code_predictor_has_nothing_generate_would_add_to_our_loop():
    """services.tts.batching runs the code predictor as a plain loop (sampling warpers only). That equals the
    package's `code_predictor.generate` only while the predictor's config brings no processor or stop of
    its own: no EOS/pad/BOS (no early stop), no suppressed, bad or forced tokens, no repetition penalty."""
    cp = tts_config(TTS).talker_config.code_predictor_config
    for field in ("eos_token_id", "pad_token_id", "bos_token_id", "suppress_tokens", "begin_suppress_tokens",
                  "bad_words_ids", "forced_bos_token_id", "forced_eos_token_id"):
        assert getattr(cp, field, None) is None, field
    assert getattr(cp, "repetition_penalty", 1.0) in (None, 1.0)
    assert cp.num_code_groups == 16  # 15 codes predicted per frame
