"""The audio encoders attend within their 8-second windows, as the real models were trained.

qwen_asr builds the window bounds but, on sdpa/eager, never applies them: each window of audio passed to
the model was encoded as one attention span. The guard changes only the last 8 s of a 16-s clip and
checks the first 8 s of encoder output do not move, through the engines' own load paths.

The tiny checkpoints' weights are near zero (std 0.02 over a few dims): through them the leak across
windows is ~1e-8, below any tolerance, so this test would pass on the unfixed code and prove nothing.
The encoders are re-initialised at std 0.2 (fixed seed): then the unfixed code moves the first 8 s by
~1e-2 while a fixed one moves it by 0 (float32 rounding). A positive control checks the change does
reach the second window, and the mel features of the first 8 s are checked identical (the feature
extractor normalises by the clip's maximum, which the change must not move).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tiny.helpers import noise

SR = 16000
WINDOW_TOKENS = 104  # n_window_infer 800 mel frames = 8 s; 100 frames (1 s) -> 13 tokens after the CNN
LEAK_TOLERANCE = 1e-5


def _clips() -> tuple[np.ndarray, np.ndarray]:
    """Two 16-s clips equal in their first 8 s (plus one STFT window, 25 ms, past it) and different after.
    The first half is louder, so the clip's maximum (the log-mel floor) is the same in both."""
    first = 4 * noise(8.0, seed=1)
    cut = 8 * SR + 400
    a = np.concatenate([first, noise(8.0, seed=2)])
    b = a.copy()
    b[cut:] = noise(16.0, seed=3)[cut:]
    return a, b


def _reinit_loud(encoder: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in encoder.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _encoder_outputs(encoder: torch.nn.Module, run) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input features, output states) of every encoder call while `run()` goes through the engine."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module, args, kwargs, output):
        features = args[0] if args else kwargs["input_features"]
        seen.append((features.detach().clone(), output.last_hidden_state.detach().clone()))

    handle = encoder.register_forward_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen


def _assert_windowed(encoder, run_a, run_b) -> None:
    (feat_a, out_a), = _encoder_outputs(encoder, run_a)
    (feat_b, out_b), = _encoder_outputs(encoder, run_b)
    assert out_a.shape[0] == 2 * WINDOW_TOKENS, out_a.shape  # 16 s -> two whole windows
    assert torch.equal(feat_a[..., :800], feat_b[..., :800]), "the first 8 s of features must be equal"
    second = (out_a[WINDOW_TOKENS:] - out_b[WINDOW_TOKENS:]).abs().max().item()
    assert second > 1e-2, f"the change must reach the second window (moved {second})"  # positive control
    first = (out_a[:WINDOW_TOKENS] - out_b[:WINDOW_TOKENS]).abs().max().item()
    assert first < LEAK_TOLERANCE, f"changing the last 8 s moved the first 8 s by {first}"


def test_asr_encoder_attends_within_windows(tiny_folder):
    from services.asr.engine import ASRItem, QwenASREngine

    engine = QwenASREngine.load(str(tiny_folder("asr")), device="cpu",
                                dtype="float32", max_new_tokens=2)
    encoder = engine.model.model.thinker.audio_tower
    assert encoder.config.n_window_infer == 800 and encoder.config.n_window == 50
    _reinit_loud(encoder)
    a, b = _clips()
    _assert_windowed(encoder, lambda: engine.transcribe([ASRItem(a)]), lambda: engine.transcribe([ASRItem(b)]))


def test_aligner_encoder_attends_within_windows(tiny_folder):
    from services.aligner.engine import AlignJob, QwenForcedAlignerEngine

    engine = QwenForcedAlignerEngine.load(str(tiny_folder("aligner")), device="cpu", dtype="float32")
    encoder = engine.wrapper.model.thinker.audio_tower
    assert encoder.config.n_window_infer == 800 and encoder.config.n_window == 50
    _reinit_loud(encoder)
    a, b = _clips()
    units = ["one", "two", "three"]
    _assert_windowed(encoder, lambda: engine.align([AlignJob(a, units)]), lambda: engine.align([AlignJob(b, units)]))


def test_captioner_encoder_attends_within_windows(tiny_folder):
    """transformers' Qwen3-Omni audio encoder (the captioner's fallback engine) has the same leak."""
    from services.captioner.engine import GenParams, TransformersCaptionEngine

    engine = TransformersCaptionEngine.load(str(tiny_folder("captioner")), "cpu", "float32", max_model_len=4096)
    encoder = engine.model.thinker.audio_tower
    assert encoder.config.n_window_infer == 800 and encoder.config.n_window == 50
    _reinit_loud(encoder)
    a, b = _clips()
    params = GenParams(max_tokens=1, temperature=0.0, top_p=1.0, top_k=-1)
    _assert_windowed(encoder, lambda: engine.complete_sync(a, params), lambda: engine.complete_sync(b, params))


def test_windowed_sdpa_equals_dense_block_mask():
    """The windowed function equals sdpa with the encoders' own block-diagonal mask (ragged windows)."""
    from services.runtime.serving.encoder_attention import windowed_sdpa

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 250, 8, generator=gen) for _ in range(3))
    cu = torch.tensor([0, 104, 208, 230, 250], dtype=torch.int32)  # two full windows, two tails
    mask = torch.full((1, 1, 250, 250), float("-inf"))
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        mask[..., s:e, s:e] = 0
    dense = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
    module = torch.nn.Module().eval()
    out, _ = windowed_sdpa(module, q, k, v, scaling=0.3, cu_seq_lens_q=cu)
    assert out.shape == (1, 250, 4, 8)
    torch.testing.assert_close(out, dense.transpose(1, 2), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        windowed_sdpa(module, q, k, v, cu_seq_lens_q=torch.tensor([0, 100], dtype=torch.int32))
