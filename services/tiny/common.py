"""Helpers shared by the tiny builders: sizes, weights, generation defaults, JSON files."""

from __future__ import annotations

import json
from pathlib import Path


def output_dir(out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def spread_weights(model, seed: int, std: float = 0.2) -> None:
    """Re-draw every matrix with a wide normal distribution (norm layers keep their ones).

    At the real initializer_range (0.02) a tiny random model collapses onto one token whatever the
    input, which would make "batched == sequential" and "adapter changes the output" vacuous. With
    std 0.2 greedy outputs depend on the prompt, the image and the audio, and the top-2 logit margins
    (~0.1) dwarf the ~1e-6 float32 noise that left padding introduces. config.json keeps the real
    initializer_range.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def init_model(model_class, config, seed: int):
    """model_class(config) in float32 eval mode: seeded, then its weights spread (see spread_weights)."""
    import torch

    config.architectures = [model_class.__name__]
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    spread_weights(model, seed)
    return model


def set_chatml_generation(model, ids: dict[str, int], **sampling) -> None:
    """The real VL generation_config.json: stop on <|im_end|> or <|endoftext|>, pad with <|endoftext|>,
    plus the repo's own sampling defaults."""
    gen = model.generation_config
    gen.bos_token_id = ids["<|endoftext|>"]
    gen.pad_token_id = ids["<|endoftext|>"]
    gen.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    for key, value in sampling.items():
        setattr(gen, key, value)


def vision_preprocessing(*, patch_size: int, temporal_patch_size: int, merge_size: int, mean, std) -> dict:
    """The image-processor keys the Qwen2-VL family's preprocessor_config.json files share, in their order."""
    return dict(
        patch_size=patch_size,
        temporal_patch_size=temporal_patch_size,
        merge_size=merge_size,
        image_mean=mean,
        image_std=std,
        do_resize=True,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        do_convert_rgb=True,
    )


def audio_encoder(num_mel_bins: int, output_dim: int) -> dict:
    """The tiny Qwen3 audio encoder (Qwen3-ASR, the aligner and the Omni thinker share the design).

    num_mel_bins must equal the feature extractor's feature_size. Audio features are scattered into
    the text embeddings, so output_dim is the text hidden size.
    """
    return dict(
        num_mel_bins=num_mel_bins,
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        # Real 480 conv channels; the conv stack shape (3 stride-2 convs: 8x time reduction per chunk)
        # is unchanged.
        downsample_hidden_size=8,
        output_dim=output_dim,
        max_source_positions=1500,
        # Chunking of the mel frames: 2 * n_window = 100 frames (1 s) per conv chunk. The processor's
        # token count (13 tokens per 100 frames) hard-codes this, so n_window must stay 50.
        n_window=50,
        # Real: attention in windows of 800 frames (8 s). In transformers 4.57 only the
        # flash_attention_2 path honours these windows; sdpa/eager attend across the whole input.
        n_window_infer=800,
        conv_chunksize=500,
        activation_function="gelu",
        scale_embedding=False,
    )


def vision_tower(
    text_config: dict, *, patch_size: int, merge_size: int, temporal_patch_size: int, hidden_act: str, **extra
) -> dict:
    """The tiny vision encoder of the VL/Omni families: 4 blocks of width 32 (MLP 64), 2 heads, RGB.

    Its merger projects into the LLM width (text_config's hidden_size). DeepStack (Qwen3-VL/Omni,
    `deepstack_visual_indexes` in extra) adds the features of those vision blocks to the first
    len(...) decoder layers, so each index must be < depth and there must be no more of them than
    text layers.
    """
    config = dict(
        depth=4,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        hidden_act=hidden_act,
        in_channels=3,
        patch_size=patch_size,
        spatial_merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
        out_hidden_size=text_config["hidden_size"],
        **extra,
    )
    deepstack = config.get("deepstack_visual_indexes", [])
    assert all(i < config["depth"] for i in deepstack)
    assert len(deepstack) <= text_config["num_hidden_layers"]
    return config
