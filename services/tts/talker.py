"""What the talker's generation costs and how it samples: KV memory per token, the sampling arguments.

* Memory: `kv_bytes_per_token()`: the batch's KV cache holds rows x the longest row's tokens (rows are
  right-aligned, shorter ones left-padded), bounded by the engine's `max_batch_frames`; the engine's
  `max_frames_limit` (also capped by the budget) bounds one request (default 8191 frames ~ 10.9 min, the
  real checkpoint's own default).
* Sampling: the real generation_config.json samples (talker and sub-talker: temperature 0.9, top_k 50,
  top_p 1.0; repetition_penalty 1.05). `sampling_kwargs()` resolves those values once at load with the
  package's own merge rule and every generate passes them explicitly; the tiny checkpoint's file is
  greedy.
"""

from __future__ import annotations

def kv_bytes_per_token(talker_config, dtype_bytes: int) -> int:
    """Device memory one token (prompt or frame) of one batch row holds in the talker's KV cache while
    its request runs: layers x 2 (keys, values) x kv_heads x head_dim. Real 1.7B talker: 28 x 2 x 8 x 128 x
    2 bytes = 112 KiB in float16 (8191 tokens: 0.9 GiB). Our loop keeps nothing else per step; the
    package's own generate also keeps every step's hidden states of all layers (another 116 KiB).
    """
    c = talker_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim * int(dtype_bytes)


SAMPLING_KEYS = ("do_sample", "top_k", "top_p", "temperature", "repetition_penalty",
                 "subtalker_dosample", "subtalker_top_k", "subtalker_top_p", "subtalker_temperature")


def sampling_kwargs(tts, overrides: dict | None = None) -> dict:
    """The talker's and sub-talker's sampling arguments: `overrides`, else the checkpoint's
    generation_config.json, else the package's hard defaults (the package's own merge rule). The real
    CustomVoice file samples: do_sample true, temperature 0.9, top_k 50, top_p 1.0, repetition_penalty
    1.05, the sub-talker likewise."""
    unknown = set(overrides or {}) - set(SAMPLING_KEYS)
    if unknown:
        raise ValueError(f"unknown sampling argument(s) {sorted(unknown)}; known: {', '.join(SAMPLING_KEYS)}")
    merged = tts._merge_generate_kwargs(**(overrides or {}))
    return {k: merged[k] for k in SAMPLING_KEYS}
