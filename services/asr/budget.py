"""Token budgets of one ASR window: how many tokens it may write, and whether it fits vLLM's context.

A window of `window_seconds` of audio is prompted as: chat template + the request's context (OpenAI
`prompt`) + one encoder token per 1/13 s of audio; the model then writes `language X<asr_text>` and
the transcript. A budget below fast speech truncates silently (generation just stops: the old fixed
512 tokens per 120-s window was ~4 tokens/s, under fast speech); on vLLM a prompt + audio + budget over
`max_model_len` fails the request — and with it every request batched beside it. So the budget follows
the window, settings that cannot fit are refused at load, and each request's prompt is checked before
it is batched. Pure arithmetic: importable anywhere.
"""

from __future__ import annotations

import math

# The encoder turns each 100 mel frames (1 s of audio at 16 kHz, hop 160) into 13 tokens
# (qwen_asr's _get_feat_extract_output_lengths; the real processor and config agree).
AUDIO_TOKENS_PER_SECOND = 13
# Transcript tokens per second of audio the default budget allows. Fast read speech is ~4-5 words/s
# (~6-7 Qwen tokens/s in English; Chinese ~5-7 characters/s, about one token each): 10 leaves headroom.
TRANSCRIPT_TOKENS_PER_SECOND = 10
# Below this rate a budget truncates ordinary speech (~2.5 words/s): warned about at load.
MIN_TOKENS_PER_SECOND = 5
# Chat template, audio start/end markers and the model's `language X<asr_text>` prefix.
PROMPT_OVERHEAD_TOKENS = 32


def audio_tokens(seconds: float) -> int:
    """Encoder tokens for `seconds` of audio (an upper bound: whole seconds, plus one for a tail)."""
    return AUDIO_TOKENS_PER_SECOND * (math.ceil(seconds) + 1)


def new_token_budget(window_seconds: float) -> int:
    """Tokens one window may write by default: a fast speaker's transcript plus the language prefix."""
    return math.ceil(window_seconds * TRANSCRIPT_TOKENS_PER_SECOND) + PROMPT_OVERHEAD_TOKENS


def effective_max_new_tokens(cfg) -> int:
    """The setting when given, else the budget derived from the window."""
    return cfg.max_new_tokens or new_token_budget(cfg.window_seconds)


def check_budget(cfg, *, vllm: bool) -> list[str]:
    """Refuse (ValueError) settings a vLLM context cannot hold (`vllm`: the backend is vLLM); return
    warnings for risky ones."""
    budget = effective_max_new_tokens(cfg)
    warnings = []
    floor = math.ceil(cfg.window_seconds * MIN_TOKENS_PER_SECOND)
    if budget < floor:
        warnings.append(
            f"QWEN_ASR_MAX_NEW_TOKENS={budget} is below {MIN_TOKENS_PER_SECOND} tokens/s for "
            f"{cfg.window_seconds:g}-s windows ({floor}): speech in a window will be cut off silently; "
            "unset it to derive the budget from the window")
    if vllm:
        need = PROMPT_OVERHEAD_TOKENS + cfg.max_prompt_tokens + audio_tokens(cfg.window_seconds) + budget
        if need > cfg.vllm_max_model_len:
            raise ValueError(
                f"an ASR window needs up to {need} tokens (template {PROMPT_OVERHEAD_TOKENS} + prompt "
                f"{cfg.max_prompt_tokens} + audio {audio_tokens(cfg.window_seconds)} for "
                f"{cfg.window_seconds:g} s + output {budget}) but QWEN_ASR_VLLM_MAX_MODEL_LEN is "
                f"{cfg.vllm_max_model_len}: raise it, or lower QWEN_ASR_WINDOW_SECONDS / "
                "QWEN_ASR_MAX_PROMPT_TOKENS")
    return warnings
