"""Windowed attention for the Qwen3 audio encoders (ASR, forced aligner, Omni captioner).

The real encoders were trained with attention windows of `n_window_infer` mel frames (800: 8 s of
audio, 104 encoder tokens). Their forward builds the window bounds (`cu_seqlens`) and hands them to
the attention function as `cu_seq_lens_q/k`, but only flash-attention-2 reads them: on sdpa and eager
(the only paths without flash-attn, i.e. every CPU and most installs) no mask is passed and each clip
attends across all its windows — a quality loss on every request (upstream QwenLM/Qwen3-ASR issue 213:
about 340 vs 555 words transcribed on a 5-minute clip). In the Omni encoder, which encodes a batch in
one pass, the clips of a batch also attend to each other.

`window_audio_attention(model)` switches every audio encoder inside `model` to `windowed_sdpa`: exact
block-diagonal attention, one sdpa call per run of equal-length windows (so cost is linear in the clip's
length, not quadratic as a dense block mask would be). Imported only inside model loaders (torch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMPLEMENTATION = "qwen_windowed_sdpa"


def windowed_sdpa(module, query, key, value, attention_mask=None, dropout: float = 0.0,
                  scaling: float | None = None, cu_seq_lens_q=None, **kwargs):
    """Attention restricted to the windows `cu_seq_lens_q` delimits.

    query/key/value: (1, heads, tokens, head_dim), the windows laid end to end (the encoders' layout).
    Returns (1, tokens, heads, head_dim), as transformers' attention functions do.
    """
    if cu_seq_lens_q is None:  # not called from a windowed encoder: plain sdpa semantics
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("windowed_sdpa expects the packed (1, heads, tokens, dim) layout")
    bounds = [int(b) for b in cu_seq_lens_q.tolist()]
    heads, dim = query.shape[1], query.shape[3]
    drop = dropout if module.training else 0.0
    outs = []
    i = 0
    while i < len(bounds) - 1:
        length = bounds[i + 1] - bounds[i]
        j = i + 1  # a run of windows of the same length goes through one batched call
        while j < len(bounds) - 1 and bounds[j + 1] - bounds[j] == length:
            j += 1
        n, start, end = j - i, bounds[i], bounds[j]
        if length > 0:
            q, k, v = (t[0, :, start:end].reshape(heads, n, length, dim).transpose(0, 1)
                       for t in (query, key, value))
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=scaling)  # (n, H, L, D)
            outs.append(o.transpose(0, 1).reshape(heads, n * length, dim))
        i = j
    out = torch.cat(outs, dim=1) if outs else query[0, :, :0]
    if out.shape[1] != query.shape[2]:
        raise ValueError(f"window bounds cover {out.shape[1]} of {query.shape[2]} tokens")
    return out.transpose(0, 1).unsqueeze(0).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, windowed_sdpa)


def window_audio_attention(model) -> int:
    """Make every audio encoder in `model` attend within its windows. Returns how many encoders were
    switched (0 means the model has none, which a caller expecting one should treat as an error).

    flash-attention-2 already honours the windows (varlen kernels): an encoder on it is left alone and
    still counted."""
    _register()
    switched = 0
    for module in model.modules():
        if not type(module).__name__.endswith("AudioEncoder"):
            continue
        configs = {id(m.config): m.config for m in module.modules() if hasattr(m, "config")}
        for cfg in configs.values():
            if cfg._attn_implementation != "flash_attention_2":
                cfg._attn_implementation = IMPLEMENTATION
        switched += 1
    return switched


def require_windowed_audio_attention(model) -> None:
    """`window_audio_attention` for a model that must have an audio encoder: a class rename upstream
    must fail the load, not silently bring the cross-window leak back."""
    if window_audio_attention(model) == 0:
        raise RuntimeError(f"{type(model).__name__} has no audio encoder to window (modeling code changed?)")
