"""Tiny Qwen2.5-VL in the layout of Qwen/Qwen2.5-VL-3B-Instruct.

Loads only through the production path:

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder)          # -> Qwen2_5_VLProcessor

Same classes, same special strings, same chat template shape and the same processor settings as the
real repo; only the sizes shrink. The real pixel budget (3136..12845056 px = 4..16384 image tokens)
is cut to 4..16 tokens, so any input image, however big, costs a handful of tokens here.
("real" values in comments are those of the published repo files; the hub is not reachable from
here to re-check them.)
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import (
    init_model,
    output_dir,
    round_up,
    vision_preprocessing,
    vision_tower,
    write_json,
)
from .tokenizer import (
    QWEN25_PLAIN,
    QWEN_SPECIAL,
    TEXT_BY_KEY,
    build_media_tokenizer,
    media_chat_template,
    vision_token_config,
)

SEED = 2501  # own seed: the weights do not depend on what ran before build()

# Qwen2.5 added tokens (ids 151643..151664 in the real vocabulary), in the real order. The tool-call
# tags and the fill-in-the-middle markers are plain (non-special) added tokens in the real tokenizer:
# they must survive decoding.
SPECIAL_TOKENS = QWEN_SPECIAL
PLAIN_TOKENS = QWEN25_PLAIN

# Vision geometry of the real model: 14 px patches, 2x2 patches merged into one LLM token, frames in
# pairs. One image token therefore covers 28x28 px.
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
PX_PER_TOKEN = (PATCH_SIZE * MERGE_SIZE) ** 2  # 784
VISION_GEOMETRY = dict(patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE)
# Real budget: 4..16384 tokens per image. Tiny: 4..16, so a 4000x3000 photo becomes 16 tokens.
MIN_PIXELS = 4 * PX_PER_TOKEN  # 3136, the real minimum
MAX_PIXELS = 16 * PX_PER_TOKEN  # 12544 (real: 12845056)

# CLIP normalisation, as the real preprocessor_config.json.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

# The real Qwen2.5-VL chat template renders to this prompt shape: a default system turn when the
# conversation has none, each image part as <|vision_start|><|image_pad|><|vision_end|> (the processor
# expands <|image_pad|> to one token per merged 28x28 patch), optional "Picture N: " labels.
CHAT_TEMPLATE = media_chat_template(
    default_system="You are a helpful assistant.", vision=True, vision_labels=True, text_test=TEXT_BY_KEY
)


def build(out: Path) -> None:
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = output_dir(out)
    torch.set_num_threads(1)

    tok, ids = build_media_tokenizer(out, SPECIAL_TOKENS, PLAIN_TOKENS, CHAT_TEMPLATE,
                                     extra_corpus=["describe this image", "what is in the picture"])  # fmt: skip
    # Real: 151936 embedding rows for 151665 tokens (rounded up); same idea here.
    vocab_size = round_up(len(tok), 64)

    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=64,  # real 2048
        intermediate_size=128,  # real 11008
        num_hidden_layers=2,  # real 36
        num_attention_heads=2,  # real 16 -> head_dim 32 (real 128)
        num_key_value_heads=1,  # real 2 (GQA kept)
        hidden_act="silu",
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        # 3-D mrope (time, height, width); the sections must sum to head_dim / 2.
        # Real [16, 24, 24] for head_dim 128; scaled by 1/4 for head_dim 32.
        rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},
        use_sliding_window=False,
        sliding_window=32768,
        max_window_layers=2,
        tie_word_embeddings=True,  # the 3B ties lm_head to the embeddings
        attention_dropout=0.0,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    # Real vision tower: depth 32, hidden 1280, intermediate 3420, 16 heads.
    vision_config = vision_tower(
        text_config,
        **VISION_GEOMETRY,
        hidden_act="silu",
        tokens_per_second=2,
        window_size=112,  # real: windowed attention over 112 px = 8 patches = 4 merged tokens
        # Real: full attention every 8th block (7, 15, 23, 31), window attention elsewhere.
        fullatt_block_indexes=[1, 3],
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        **vision_token_config(ids),
        vision_token_id=ids["<|vision_pad|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        tie_word_embeddings=True,
    )
    model = init_model(Qwen2_5_VLForConditionalGeneration, config, SEED)
    model.save_pretrained(out, safe_serialization=True)  # -> config.json, model.safetensors (+ the generation
    # config, rewritten below)
    # Qwen2_5_VLConfig hands `architectures` to its text_config (where save_pretrained leaves it empty): the
    # real file has it on top. vLLM resolves the class from it (without it, the base model: a pooling model
    # with no chat route).
    cfg = json.loads((out / "config.json").read_text())
    cfg["text_config"].pop("architectures", None)
    cfg["architectures"] = [Qwen2_5_VLForConditionalGeneration.__name__]
    write_json(out / "config.json", cfg)
    # The real generation_config.json (transformers 4.49 era): sampling at temperature 1e-6, greedy in
    # effect; no top_k/top_p (transformers' defaults 50 / 1.0 apply when a request samples).
    write_json(out / "generation_config.json", {
        "bos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "do_sample": True,
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "repetition_penalty": 1.05,
        "temperature": 0.000001,
    })

    write_json(
        out / "preprocessor_config.json",
        {
            # Both spellings on purpose: the slow Qwen2VLImageProcessor (no torchvision) ignores a
            # `size` dict and falls back to its 1280-token default unless min/max_pixels are present;
            # the fast one reads either. Writing both gives the same grid on every install.
            "min_pixels": MIN_PIXELS,
            "max_pixels": MAX_PIXELS,
            "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
            **vision_preprocessing(**VISION_GEOMETRY, mean=IMAGE_MEAN, std=IMAGE_STD),
            "resample": 3,  # bicubic
            # AutoProcessor still picks the fast class when torchvision is installed (4.57 default).
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
        },
    )

    # Smoke-load through the production loader: a broken folder must fail the build, not a request.
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor", type(processor)
    assert processor.image_processor.max_pixels == MAX_PIXELS

