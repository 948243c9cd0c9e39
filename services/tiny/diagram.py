"""Tiny Qwen3-VL in the layout of Qwen/Qwen3-VL-2B-Instruct, plus two LoRA adapters (peft).

    folder/                       base model, real repo layout
    folder/adapters/default/      adapter_config.json + adapter_model.safetensors
    folder/adapters/alt/          a second adapter (other seed) to exercise adapter switching

Loads only through the production path:

    model = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder)                       # -> Qwen3VLProcessor
    model = PeftModel.from_pretrained(model, folder / "adapters/default", adapter_name="default")
    model.load_adapter(folder / "adapters/alt", adapter_name="alt"); model.set_adapter("alt")

The adapters target the language model's q/k/v/o/gate/up/down projections only, like the diagram
service's fine-tune (vLLM ignores LoRA on the vision tower anyway). `init_lora_weights=False` keeps
both LoRA matrices random, so an adapter measurably changes logits and greedy outputs. ("real"
values in comments are those of the published repo files; the hub is not reachable to re-check.)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from .common import (
    init_model,
    output_dir,
    round_up,
    set_chatml_generation,
    vision_preprocessing,
    vision_tower,
    write_json,
)
from .tokenizer import (
    QWEN3_PLAIN,
    QWEN_SPECIAL,
    TEXT_BY_KEY,
    build_media_tokenizer,
    media_chat_template,
    vision_token_config,
)

SEED = 3002
ADAPTERS = {"default": 3101, "alt": 3202}  # adapter name -> seed of its LoRA matrices
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_RANK = 8
LORA_ALPHA = 16

# Qwen3 added tokens in the real order (ids 151643..151668 in the real vocabulary). Tool and think
# tags are plain added tokens in the real tokenizer (decoded, not skipped as special).
SPECIAL_TOKENS = QWEN_SPECIAL
PLAIN_TOKENS = QWEN3_PLAIN

# Qwen3-VL vision geometry: 16 px patches, 2x2 merged per LLM token -> one token per 32x32 px.
PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
PX_PER_TOKEN = (PATCH_SIZE * MERGE_SIZE) ** 2  # 1024
VISION_GEOMETRY = dict(patch_size=PATCH_SIZE, merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE)
# Real image budget: size = {shortest_edge: 65536, longest_edge: 16777216} = 64..16384 tokens.
# Tiny: 4..16 tokens per image.
MIN_PIXELS = 4 * PX_PER_TOKEN  # 4096
MAX_PIXELS = 16 * PX_PER_TOKEN  # 16384
# Real video budget: {shortest_edge: 4096, longest_edge: 25165824} over all frames. Tiny: 64 tokens.
VIDEO_MIN_PIXELS = 4096
VIDEO_MAX_PIXELS = 64 * PX_PER_TOKEN * TEMPORAL_PATCH_SIZE
IMAGE_MEAN = [0.5, 0.5, 0.5]  # Qwen3-VL normalises with 0.5/0.5 (not CLIP's mean/std)
IMAGE_STD = [0.5, 0.5, 0.5]

# Renders like the real Qwen3-VL template: no default system turn, each image part as
# <|vision_start|><|image_pad|><|vision_end|> (expanded by the processor to one token per 32x32 px),
# optional "Picture N: " labels, ChatML turns.
CHAT_TEMPLATE = media_chat_template(vision=True, vision_labels=True, text_test=TEXT_BY_KEY)


def build(out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    out = output_dir(out)
    torch.set_num_threads(1)

    tok, ids = build_media_tokenizer(out, SPECIAL_TOKENS, PLAIN_TOKENS, CHAT_TEMPLATE,
                                     extra_corpus=["recognise this diagram", "| step | action | role |"])  # fmt: skip
    vocab_size = round_up(len(tok), 64)  # real: 151936 rows for 151669 tokens

    text_layers = 3  # real 28
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=64,  # real 2048
        intermediate_size=128,  # real 6144
        num_hidden_layers=text_layers,
        num_attention_heads=2,  # real 16
        num_key_value_heads=1,  # real 8 (GQA kept)
        head_dim=32,  # real 128
        hidden_act="silu",
        max_position_embeddings=262144,
        rms_norm_eps=1e-6,
        rope_theta=5000000.0,
        # Interleaved 3-D mrope; sections sum to head_dim / 2. Real [24, 20, 20] (head_dim 128) / 4.
        rope_scaling={"rope_type": "default", "mrope_section": [6, 5, 5], "mrope_interleaved": True},
        attention_bias=False,
        tie_word_embeddings=True,  # the 2B ties lm_head to the embeddings
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    # Real vision tower: depth 24, hidden 1024, intermediate 4096, 16 heads.
    vision_config = vision_tower(
        text_config,
        **VISION_GEOMETRY,
        hidden_act="gelu_pytorch_tanh",
        num_position_embeddings=2304,  # real: a learned 48x48 grid, interpolated to each image
        # DeepStack: real [5, 11, 17] of 24 blocks into 28 layers; tiny: 3 of 4 blocks into 3 layers.
        deepstack_visual_indexes=[0, 1, 2],
    )

    config = Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        **vision_token_config(ids),
        tie_word_embeddings=True,
    )
    base = init_model(Qwen3VLForConditionalGeneration, config, SEED)
    # Real generation_config.json samples (temperature 0.7, top_p 0.8, top_k 20). Tests pass do_sample=False.
    set_chatml_generation(base, ids, do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.0)
    base.save_pretrained(out, safe_serialization=True)

    common = dict(
        **vision_preprocessing(**VISION_GEOMETRY, mean=IMAGE_MEAN, std=IMAGE_STD),
        processor_class="Qwen3VLProcessor",
    )
    write_json(
        out / "preprocessor_config.json",
        {
            # The real file has only the `size` dict, which the fast processor reads. The slow
            # Qwen2VLImageProcessor (no torchvision) discards `size` and uses its own 1280-token
            # default unless min/max_pixels are present, so both spellings are written.
            "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
            "min_pixels": MIN_PIXELS,
            "max_pixels": MAX_PIXELS,
            **common,
            "image_processor_type": "Qwen2VLImageProcessorFast",
        },
    )
    write_json(
        out / "video_preprocessor_config.json",
        {
            "size": {"shortest_edge": VIDEO_MIN_PIXELS, "longest_edge": VIDEO_MAX_PIXELS},
            **common,
            "video_processor_type": "Qwen3VLVideoProcessor",
        },
    )

    for name, seed in ADAPTERS.items():
        lora = LoraConfig(
            r=LORA_RANK,
            lora_alpha=LORA_ALPHA,
            lora_dropout=0.0,
            bias="none",
            # Plain module names: only the text decoder has *_proj linears (the Qwen3-VL vision
            # tower uses qkv/proj/linear_fc1/linear_fc2), checked below.
            target_modules=LORA_TARGETS,
            init_lora_weights=False,  # random A and B: the adapter must change outputs
            task_type="CAUSAL_LM",
        )
        torch.manual_seed(seed)  # peft draws the LoRA matrices from torch's global RNG
        peft_model = get_peft_model(copy.deepcopy(base), lora)
        wrapped = [n for n, _ in peft_model.named_modules() if n.endswith(".lora_A")]
        assert wrapped and all(".language_model." in n for n in wrapped), wrapped[:3]
        assert len(wrapped) == text_layers * len(LORA_TARGETS), len(wrapped)
        target = out / "adapters" / name
        peft_model.save_pretrained(target, safe_serialization=True)
        (target / "README.md").unlink(missing_ok=True)  # peft's model-card stub; not part of the layout
        # peft keeps target_modules as a set, so its JSON order follows the per-process string hash:
        # write the list in a fixed order so that identical builds give identical files.
        cfg_path = target / "adapter_config.json"
        adapter_cfg = json.loads(cfg_path.read_text())
        adapter_cfg["target_modules"] = list(LORA_TARGETS)
        write_json(cfg_path, adapter_cfg)
        del peft_model

    # Smoke-load the processor through the production loader: a broken folder fails the build.
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "Qwen3VLProcessor", type(processor)
    assert processor.image_processor.size["longest_edge"] == MAX_PIXELS

