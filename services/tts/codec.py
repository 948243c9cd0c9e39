"""Decoding the 12 Hz codec while streaming, exactly as the package's own decode does.

The package decodes through `decoder.chunked_decode`: chunks of 300 frames, each re-decoded with 25 frames
of left context and positions restarting at the window start. The codec decoder is causal (causal convs,
causal sliding-window attention), so a frame's samples depend only on earlier frames of its package chunk
window. A streamed span of frames [a, b) is decoded from `max(package window start, a - context_frames)`
and only its new samples are kept (`decode_windows()`). Exactness needs `context_frames` >= the decoder's
receptive field in frames (`receptive_frames()`, computed from the loaded codec): layers x (sliding_window
- 1) for the transformer, 2 for the conv before it and 10 for the upsampling stack after it. 83 frames on
the tiny codec (1 layer); 8 x 71 + 12 = 580 on the real 12 Hz codec, more than the package's 325-frame
window, so there each streamed span is re-decoded from the package chunk start (at most 325 frames per
decode): with 6-frame chunks ~30 frames are decoded per streamed frame (~14 on the tiny), against ~1.1 for
the non-streamed decode; the real decoder costs ~5 GFLOP per decoded frame. The engine's default context
is that receptive field: exact on any codec. A smaller value bounds decode cost at the price of
exactness; larger chunks cut the re-decoding too.
"""

from __future__ import annotations


def receptive_frames(decoder) -> int | None:
    """How many earlier frames influence a frame's samples in the 12 Hz codec decoder (exact).

    Walks back from the first sample of frame t, output to input, in the units of each layer's input:
    a causal conv (effective kernel K = (kernel - 1) * dilation + 1, stride s, left-padded by K - s)
    reaches input sample i * s - K + s; a transposed conv (kernel k, stride s, right-trimmed) reaches
    input sample ceil((j - k + 1) / s); each sliding-window attention layer reaches `sliding_window - 1`
    frames back. Convs are visited in reverse registration order: the decoder's upsampling stack is
    registered in forward order, and the conv before the transformer (`pre_conv`) runs at the frame rate
    like the transformer, so where it falls among them does not matter. Real 12 Hz codec: 10 frames
    (upsampling stack) + 8 x 71 (attention) + 2 (pre_conv) = 580; the tiny codec (1 layer): 83.
    None if the attention is not windowed (unbounded).
    """
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import (
        Qwen3TTSTokenizerV2CausalConvNet as CausalConv,
        Qwen3TTSTokenizerV2CausalTransConvNet as CausalTransConv,
    )

    cfg = decoder.config
    window = getattr(cfg, "sliding_window", None)
    if not window:
        return None
    pos = 0  # earliest input sample reached, relative to the first sample of frame t (<= 0)
    for mod in reversed([m for m in decoder.modules() if isinstance(m, (CausalConv, CausalTransConv))]):
        if isinstance(mod, CausalTransConv):
            k, s = mod.conv.kernel_size[0], mod.conv.stride[0]
            pos = -((k - 1 - pos) // s)  # ceil((pos - k + 1) / s)
        else:
            pos = pos * mod.stride - mod.kernel_size + mod.stride  # mod.kernel_size: the dilated span
    return -pos + cfg.num_hidden_layers * (window - 1)


def decode_windows(
    a: int, b: int, context: int | None, chunk_size: int, left_context: int
) -> list[tuple[int, int, int]]:
    """The codec calls that give frames [a, b) as the package's `chunked_decode` of all frames does.

    Each (start, first, end): decode frames [start, end) and keep the samples of [first, end).
    `chunked_decode` decodes chunk [c, c + chunk_size) from c - left_context (0 for the first chunk); a
    span inside it starts at max(that, a - context), `context` None: at the chunk's own start.
    """
    out = []
    while a < b:
        chunk = (a // chunk_size) * chunk_size
        window = chunk - (left_context if chunk - left_context > 0 else chunk)  # chunked_decode's rule
        end = min(b, chunk + chunk_size)
        out.append((window if context is None else max(window, a - context), a, end))
        a = end
    return out
