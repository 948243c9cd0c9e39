"""Tiny Qwen3-Omni captioner in the layout of Qwen/Qwen3-Omni-30B-A3B-Captioner (thinker only).

Loads only through the production path:

    model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder)                   # -> Qwen3OmniMoeProcessor

The real captioner is the Qwen3-Omni thinker (audio encoder + vision encoder + MoE text decoder)
without talker/code2wav: `enable_audio_output=False`, so `generate(..., return_audio=False)` returns
`(token_ids, None)`. One user turn holding one audio part, no text prompt. ("real" values in
comments are those of the published repo files; the hub is not reachable to re-check.)
"""

from __future__ import annotations

from pathlib import Path

from .common import audio_encoder, init_model, output_dir, round_up, vision_tower, write_json
from .tokenizer import (
    AUDIO_TTS_SPECIAL,
    QWEN3_PLAIN,
    QWEN_SPECIAL,
    TEXT_BY_KEY,
    build_media_tokenizer,
    media_chat_template,
    role_ids,
    tts_token_config,
    vision_token_config,
)

SEED = 3303
SAMPLING_RATE = 16000

# Qwen3-Omni added tokens in the real order (ids 151643..151675): the Qwen3 set, then the audio and
# TTS markers. Tool/think tags are plain added tokens in the real tokenizer.
SPECIAL_TOKENS = [*QWEN_SPECIAL, *AUDIO_TTS_SPECIAL]
PLAIN_TOKENS = QWEN3_PLAIN
# Qwen3OmniMoeProcessor.__init__ reads these attributes off the tokenizer (AttributeError otherwise);
# the real tokenizer_config.json names them.
MEDIA_TOKEN_NAMES = {
    "audio_bos_token": "<|audio_start|>",
    "audio_eos_token": "<|audio_end|>",
    "audio_token": "<|audio_pad|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}

# Vision geometry shared with Qwen3-VL: 16 px patches, 2x2 merge -> one token per 32x32 px.
PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
PX_PER_TOKEN = (PATCH_SIZE * MERGE_SIZE) ** 2
VISION_GEOMETRY = dict(patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE)
MIN_PIXELS = 4 * PX_PER_TOKEN  # tiny budget 4..16 tokens per image (the captioner never sees images)
MAX_PIXELS = 16 * PX_PER_TOKEN

# Whisper-style log-mel front end as in the real repo: 128 mel bins, 10 ms hop, 25 ms window. The
# window is 300 s (n_samples 4.8M): the feature extractor truncates anything longer *silently*.
MEL_BINS = 128
CHUNK_LENGTH_S = 300

# Real generation defaults of the captioner (its model card / generation_config.json): sampling at
# temperature 0.6, top_p 0.95, top_k 20. HF's thinker.generate does not read them (it builds its own
# greedy config from the thinker config); vLLM does, so they live in generation_config.json.
GENERATION_DEFAULTS = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}

# Renders like the real Qwen3-Omni template: ChatML turns, no default system turn, audio parts as
# <|audio_start|><|audio_pad|><|audio_end|> (the processor expands <|audio_pad|> to one token per
# 80 ms, 13 per second), images/videos as <|vision_start|><|image_pad|/|video_pad|><|vision_end|>.
CHAT_TEMPLATE = media_chat_template(audio=True, vision=True, text_test=TEXT_BY_KEY)


def build(out: Path) -> None:
    import torch
    from transformers import (
        AutoProcessor,
        GenerationConfig,
        Qwen2VLImageProcessor,
        Qwen3OmniMoeConfig,
        Qwen3OmniMoeForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    out = output_dir(out)
    torch.set_num_threads(1)

    tok, ids = build_media_tokenizer(
        out,
        SPECIAL_TOKENS,
        PLAIN_TOKENS,
        CHAT_TEMPLATE,
        extra_corpus=["a man speaks calmly over soft piano music", "birds sing in the background"],
        init_kwargs={"extra_special_tokens": dict(MEDIA_TOKEN_NAMES)},
    )
    # The talker path slices the prompt by role tokens (config system/user/assistant_token_id); the
    # real vocabulary has them as single tokens (8948, 872, 77091), so must the tiny one.
    roles = role_ids(tok)
    vocab_size = round_up(len(tok), 64)  # real: 152064 rows

    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=64,  # real 2048
        intermediate_size=128,  # dense MLP width, used only by mlp_only_layers (none, as real)
        num_hidden_layers=2,  # real 48
        num_attention_heads=2,  # real 32
        num_key_value_heads=1,  # real 4
        head_dim=32,  # real 128
        hidden_act="silu",
        max_position_embeddings=65536,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        # Interleaved 3-D mrope; sections sum to head_dim / 2. Real [24, 20, 20] / 4.
        rope_scaling={"rope_type": "default", "mrope_section": [6, 5, 5], "interleaved": True,
                      "mrope_interleaved": True},  # fmt: skip
        attention_bias=False,
        tie_word_embeddings=False,
        # Sparse MoE in every layer like the real 30B-A3B (128 experts, top-8); tiny: 4 experts, top-2.
        decoder_sparse_step=1,
        mlp_only_layers=[],
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,  # real 768
        norm_topk_prob=True,
    )
    # Real audio encoder: d_model 1280, 32 layers, 20 heads, ffn 5120.
    audio_config = audio_encoder(MEL_BINS, text_config["hidden_size"])
    # Real vision tower: depth 27, hidden 1152, intermediate 4304, 16 heads.
    vision_config = vision_tower(
        text_config,
        **VISION_GEOMETRY,
        hidden_act="gelu_pytorch_tanh",
        num_position_embeddings=2304,
        deepstack_visual_indexes=[1, 2],  # real [8, 16, 24]
        # Keys of the real config.json that transformers' config class does not declare (it keeps them)
        # but vLLM's Qwen3-Omni vision tower reads: (768 / 16)^2 = 2304 position embeddings, as real.
        image_size=768,
        apply_vit_abs_pos_embed=True,
    )

    thinker_config = dict(
        text_config=text_config,
        audio_config=audio_config,
        vision_config=vision_config,
        audio_token_id=ids["<|audio_pad|>"],
        audio_start_token_id=ids["<|audio_start|>"],
        audio_end_token_id=ids["<|audio_end|>"],
        # vision_start_token_id is read by get_rope_index; not a named argument of the thinker config.
        **vision_token_config(ids),
        user_token_id=roles["user"],
        position_id_per_seconds=13,  # real: 13 temporal position ids per second (audio 80 ms/token)
        seconds_per_chunk=2,
    )
    config = Qwen3OmniMoeConfig(
        thinker_config=thinker_config,
        enable_audio_output=False,  # captioner: text out only, no talker/code2wav weights
        **tts_token_config(ids),
        system_token_id=roles["system"],
        user_token_id=roles["user"],
        assistant_token_id=roles["assistant"],
    )
    model = init_model(Qwen3OmniMoeForConditionalGeneration, config, SEED)
    assert not hasattr(model, "talker")
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        **GENERATION_DEFAULTS,
    )
    model.save_pretrained(out, safe_serialization=True)

    image_processor = Qwen2VLImageProcessor(
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        **VISION_GEOMETRY,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    feature_extractor = WhisperFeatureExtractor(
        feature_size=MEL_BINS,
        sampling_rate=SAMPLING_RATE,
        hop_length=160,
        n_fft=400,
        chunk_length=CHUNK_LENGTH_S,
        padding_value=0.0,
        return_attention_mask=True,
        dither=0.0,
    )
    # Image processor and feature extractor both own preprocessor_config.json; saving them one after
    # the other keeps only the last. The real repo holds the merged dict, each loader picking its keys.
    merged = {**image_processor.to_dict(), **feature_extractor.to_dict()}
    merged["size"] = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    merged["image_processor_type"] = type(image_processor).__name__
    merged["feature_extractor_type"] = type(feature_extractor).__name__
    merged["processor_class"] = "Qwen3OmniMoeProcessor"
    merged.pop("_processor_class", None)
    write_json(out / "preprocessor_config.json", dict(sorted(merged.items())))

    # Smoke-load through the production loader: a broken folder fails the build, not a request.
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "Qwen3OmniMoeProcessor", type(processor)
    assert processor.feature_extractor.feature_size == MEL_BINS
    assert processor.audio_token == "<|audio_pad|>"

