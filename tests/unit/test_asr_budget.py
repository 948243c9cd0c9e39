"""ASR token budgets: the default follows the window, settings a vLLM context cannot hold are refused."""

from __future__ import annotations

import pytest

from services.asr import budget
from services.runtime.core.settings import ASRSettings


def test_default_budget_follows_the_window_and_covers_fast_speech():
    cfg = ASRSettings()
    assert cfg.max_new_tokens is None
    # The old fixed 512 per 120-s window was ~4 tokens/s; upstream's own examples use 1024.
    assert budget.effective_max_new_tokens(cfg) == 1232 >= 1024
    assert budget.effective_max_new_tokens(ASRSettings(window_seconds=30)) == 332
    assert budget.effective_max_new_tokens(ASRSettings(max_new_tokens=700)) == 700
    assert budget.check_budget(cfg, vllm=False) == []


def test_audio_tokens_bound_the_encoders_own_count():
    """The encoder's real length formula (qwen_asr), for mel frames of whole and partial seconds."""
    from qwen_asr.core.transformers_backend.modeling_qwen3_asr import _get_feat_extract_output_lengths
    import torch

    for seconds in (0.5, 1.0, 7.3, 120.0, 300.0):
        frames = int(seconds * 100) + 1  # hop 160 at 16 kHz, centred frames
        real = int(_get_feat_extract_output_lengths(torch.tensor(frames)))
        assert real <= budget.audio_tokens(seconds) <= real + 2 * budget.AUDIO_TOKENS_PER_SECOND


def test_a_budget_under_ordinary_speech_is_warned_about():
    (warning,) = budget.check_budget(ASRSettings(max_new_tokens=24), vllm=False)
    assert "QWEN_ASR_MAX_NEW_TOKENS=24" in warning and "cut off" in warning


def test_vllm_context_that_cannot_hold_a_window_is_refused():
    assert budget.check_budget(ASRSettings(), vllm=True) == []  # the defaults fit 4096
    with pytest.raises(ValueError, match="QWEN_ASR_VLLM_MAX_MODEL_LEN is 4096"):
        budget.check_budget(ASRSettings(window_seconds=300), vllm=True)
    with pytest.raises(ValueError, match="prompt 4000"):
        budget.check_budget(ASRSettings(max_prompt_tokens=4000), vllm=True)
    # The transformers backend has no such context limit at these sizes.
    assert budget.check_budget(ASRSettings(window_seconds=300), vllm=False) == []


def test_load_refuses_before_fetching(monkeypatch):
    """check_settings runs first in the load: the reason reaches /health, nothing is downloaded."""
    from services.runtime.serving import modelservice

    calls = []

    class Svc(modelservice.ModelService):
        key = "asr"

        def check_settings(self):
            calls.append("check")
            raise ValueError("refused")

    monkeypatch.setattr(modelservice, "place", lambda *a: calls.append("place"))
    svc = Svc.__new__(Svc)
    with pytest.raises(ValueError, match="refused"):
        svc._load()
    assert calls == ["check"]
