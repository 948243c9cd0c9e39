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

from .tokenizer import build_qwen_tokenizer, single_token_id

SEED = 2501  # own seed: the weights do not depend on what ran before build()

# Qwen2.5 added tokens (ids 151643..151664 in the real vocabulary), in the real order. The tool-call
# tags are plain (non-special) added tokens in the real tokenizer: they must survive decoding.
SPECIAL_TOKENS = [
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip
PLAIN_TOKENS = ["<tool_call>", "</tool_call>"]

# Vision geometry of the real model: 14 px patches, 2x2 patches merged into one LLM token, frames in
# pairs. One image token therefore covers 28x28 px.
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
PX_PER_TOKEN = (PATCH_SIZE * MERGE_SIZE) ** 2  # 784
# Real budget: 4..16384 tokens per image. Tiny: 4..16, so a 4000x3000 photo becomes 16 tokens.
MIN_PIXELS = 4 * PX_PER_TOKEN  # 3136, the real minimum
MAX_PIXELS = 16 * PX_PER_TOKEN  # 12544 (real: 12845056)

# CLIP normalisation, as the real preprocessor_config.json.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

# The real Qwen2.5-VL chat template renders to this prompt shape: a default system turn when the
# conversation has none, each image part as <|vision_start|><|image_pad|><|vision_end|> (the processor
# expands <|image_pad|> to one token per merged 28x28 patch), optional "Picture N: " labels.
CHAT_TEMPLATE = (
    "{% set counts = namespace(image=0, video=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{% set counts.image = counts.image + 1 %}"
    "{% if add_vision_id %}{{ 'Picture ' ~ counts.image ~ ': ' }}{% endif %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "{% set counts.video = counts.video + 1 %}"
    "{% if add_vision_id %}{{ 'Video ' ~ counts.video ~ ': ' }}{% endif %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def build(out: Path) -> None:
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    tok = build_qwen_tokenizer(
        special_tokens=SPECIAL_TOKENS,
        plain_tokens=PLAIN_TOKENS,
        chat_template=CHAT_TEMPLATE,
        extra_corpus=["describe this image", "what is in the picture"],
    )
    # Real layout: the template sits inline in tokenizer_config.json and in the processor's
    # chat_template.json; 4.57 would otherwise write a chat_template.jinja the real repo lacks.
    tok.save_pretrained(out, save_jinja_files=False)
    ids = {t: single_token_id(tok, t) for t in ["<|endoftext|>", "<|im_end|>", "<|vision_start|>",
                                                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                                                "<|video_pad|>"]}  # fmt: skip
    for word in ("system", "user", "assistant"):
        single_token_id(tok, word)  # ChatML role names are single tokens in the real vocabulary
    # Real: 151936 embedding rows for 151665 tokens (rounded up); same idea here.
    vocab_size = _round_up(len(tok), 64)

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
    vision_config = dict(
        depth=4,  # real 32
        hidden_size=32,  # real 1280
        intermediate_size=64,  # real 3420
        num_heads=2,  # real 16
        hidden_act="silu",
        in_channels=3,
        patch_size=PATCH_SIZE,
        spatial_merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        tokens_per_second=2,
        window_size=112,  # real: windowed attention over 112 px = 8 patches = 4 merged tokens
        # Real: full attention every 8th block (7, 15, 23, 31), window attention elsewhere.
        fullatt_block_indexes=[1, 3],
        out_hidden_size=text_config["hidden_size"],  # the merger projects into the LLM width
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        tie_word_embeddings=True,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]

    torch.manual_seed(SEED)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    spread_weights(model, SEED)
    # Real generation_config.json: sampling so constrained (top_k=1) that it is greedy in effect,
    # stop on <|im_end|> or <|endoftext|>, pad with <|endoftext|>.
    gen = model.generation_config
    gen.bos_token_id = ids["<|endoftext|>"]
    gen.pad_token_id = ids["<|endoftext|>"]
    gen.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    gen.do_sample = True
    gen.temperature = 0.1
    gen.top_p = 0.001
    gen.top_k = 1
    gen.repetition_penalty = 1.05
    model.save_pretrained(out, safe_serialization=True)  # -> config.json, generation_config.json, model.safetensors

    _write_json(
        out / "preprocessor_config.json",
        {
            # Both spellings on purpose: the slow Qwen2VLImageProcessor (no torchvision) ignores a
            # `size` dict and falls back to its 1280-token default unless min/max_pixels are present;
            # the fast one reads either. Writing both gives the same grid on every install.
            "min_pixels": MIN_PIXELS,
            "max_pixels": MAX_PIXELS,
            "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
            "patch_size": PATCH_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH_SIZE,
            "merge_size": MERGE_SIZE,
            "image_mean": IMAGE_MEAN,
            "image_std": IMAGE_STD,
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "do_convert_rgb": True,
            "resample": 3,  # bicubic
            # AutoProcessor still picks the fast class when torchvision is installed (4.57 default).
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
        },
    )
    # The real repo has the processor template in chat_template.json (beside tokenizer_config.json's).
    _write_json(out / "chat_template.json", {"chat_template": CHAT_TEMPLATE})

    # Smoke-load through the production loader: a broken folder must fail the build, not a request.
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor", type(processor)
    assert processor.image_processor.max_pixels == MAX_PIXELS


def spread_weights(model, seed: int, std: float = 0.2) -> None:
    """Re-draw every matrix with a wide normal distribution (norm layers keep their ones).

    At the real initializer_range (0.02) a tiny random model collapses onto one token whatever the
    input, which would make "batched == sequential" and "adapter changes the output" vacuous. With
    std 0.2 greedy outputs depend on the prompt and the image, and the top-2 logit margins (~0.1)
    dwarf the ~1e-6 float32 noise that left padding introduces. config.json keeps the real value.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
