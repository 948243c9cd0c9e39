"""Tiny Qwen3-ForcedAligner (real: Qwen/Qwen3-ForcedAligner-0.6B), built with qwen_asr's own classes.

Only the production loader reads the folder:

    aligner = qwen_asr.Qwen3ForcedAligner.from_pretrained(folder, dtype=torch.float32, device_map="cpu")
    aligner.align(audio=[(wav_16k_float32, 16000)], text=["..."], language=["English"])

The real aligner is the Qwen3-ASR network with its vocabulary head swapped for a classifier: every
`<timestamp>` position of the prompt is classified into one of `classify_num` classes, and class k
means k * `timestamp_segment_time` ms. Everything the package reads is kept in the real layout (token
names, config keys, feature extractor, window sizes); only widths, depths and the vocabulary shrink.

This module also holds the pieces the tiny Qwen3-ASR (services/tiny/asr.py) shares with it: the
tokenizer, the feature extractor, the chat template and the thinker sub-config.
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import audio_encoder, output_dir, round_up
from .tokenizer import build_qwen_tokenizer, media_chat_template, single_token_id, token_ids

SEED = 0

# --- Values engine code may rely on -------------------------------------------------------------
# Real: 80 ms per class. Kept, so seconds = class * 0.08 exactly as in production.
TIMESTAMP_SEGMENT_MS = 80
# Real: 5000 classes => last class 399.92 s. The tiny head has 7600 classes so that a 10-minute file
# (600 s) is still inside the range: last class = 7599 * 80 ms = 607.92 s. At hidden size 32 the head
# is 7600 x 32 weights (~0.5 MB in bf16), most of the folder.
CLASSIFY_NUM = 7600
MAX_ALIGN_SECONDS = (CLASSIFY_NUM - 1) * TIMESTAMP_SEGMENT_MS / 1000.0
# The aligner's 11 languages in the real config's order; the package reads them from
# config.support_languages (Qwen3ASRForConditionalGeneration.get_support_languages).
LANGUAGES = [
    "Chinese", "Cantonese", "English", "German", "Spanish", "French",
    "Italian", "Portuguese", "Russian", "Korean", "Japanese",
]
# Real 0.6B aligner: the text decoder's position table is 8192 (the 1.7B ASR's 65536).
ALIGNER_MAX_POSITIONS = 8192

# --- Shared Qwen3-ASR layout (also used by asr.py) -------------------------------------------------
# Real special strings, in the real relative order (ids 151669 < 151670 < 151676 in the 151k vocab).
AUDIO_START, AUDIO_END, AUDIO_PAD = "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>"
# `<asr_text>` and `<timestamp>` are plain added tokens in the real vocabulary: the ASR output is
# decoded with skip_special_tokens=True and must keep `<asr_text>` so parse_asr_output can split it.
ASR_TEXT, TIMESTAMP = "<asr_text>", "<timestamp>"
# Qwen3ASRProcessor.__init__ reads tokenizer.audio_token / audio_bos_token / audio_eos_token.
EXTRA_SPECIAL_TOKENS = {"audio_token": AUDIO_PAD, "audio_bos_token": AUDIO_START, "audio_eos_token": AUDIO_END}

# The Qwen3-ASR chat layout that Qwen3ASRModel._build_text_prompt renders through
# processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False):
#   <|im_start|>system\n{context}<|im_end|>\n
#   <|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n
#   <|im_start|>assistant\n
# Our own Jinja; an audio part becomes the single <|audio_pad|> the processor expands per frame.
CHAT_TEMPLATE = media_chat_template(audio=True)

# Real: 128 mel bins (WhisperFeatureExtractor feature_size == audio_config.num_mel_bins). Kept: the
# encoder's conv stack and the processor's length formula (13 tokens per 100 frames) depend on it.
NUM_MEL_BINS = 128
TEXT_HIDDEN = 32
HEAD_DIM = 16
# Real [24, 20, 20] for head_dim 128 (sum 64 = head_dim / 2); same shape of split for head_dim 16.
MROPE_SECTION = [4, 2, 2]
# The real thinker's rope_scaling keys, all of them: qwen_asr reads rope_type/mrope_section (and always
# interleaves); vLLM's M-RoPE reads mrope_interleaved.
ROPE_SCALING = {"interleaved": True, "mrope_interleaved": True, "mrope_section": list(MROPE_SECTION),
                "rope_type": "default", "type": "default"}
ARCHITECTURES = ["Qwen3ASRForConditionalGeneration"]


def build_tokenizer(*, timestamp: bool = True):
    """The tiny Qwen2 BPE tokenizer with the Qwen3-ASR special tokens (not saved). `<timestamp>` is the
    aligner's (the real ASR vocabulary ends at `<asr_text>`)."""
    plain = [ASR_TEXT, TIMESTAMP] if timestamp else [ASR_TEXT]
    tok = build_qwen_tokenizer(
        special_tokens=[AUDIO_START, AUDIO_END, AUDIO_PAD],
        plain_tokens=plain,
        init_kwargs={"extra_special_tokens": dict(EXTRA_SPECIAL_TOKENS)},
        chat_template=CHAT_TEMPLATE,
    )
    token_ids(tok, (AUDIO_START, AUDIO_END, AUDIO_PAD, *plain))
    return tok


def padded_vocab_size(tok, multiple: int = 64) -> int:
    # Real embeddings are padded past the tokenizer (151936 / 152064 rows for ~151.7k tokens); keep
    # a few unused rows so code paths that meet ids without a token (decode skips them) are exercised.
    return round_up(len(tok), multiple) + multiple


def feature_extractor():
    """WhisperFeatureExtractor with the real Qwen3-ASR settings (16 kHz, 10 ms hop, 25 ms window)."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=NUM_MEL_BINS,
        sampling_rate=16000,
        hop_length=160,
        chunk_length=30,
        n_fft=400,
        padding_value=0.0,
        dither=0.0,
        return_attention_mask=True,
    )


def thinker_config(tok, *, max_positions: int = 65536, tie_word_embeddings: bool = False, head_dim: int = HEAD_DIM,
                   **extra) -> dict:
    """The thinker sub-config (audio encoder + Qwen3 text decoder) as the real repos store it.

    max_positions / tie_word_embeddings: the text decoder's values (real 1.7B ASR: 65536, tied; real 0.6B
    aligner: 8192, untied). head_dim: the decoder's (real 128); the M-RoPE split keeps its shape.
    """
    scale = head_dim // HEAD_DIM
    return dict(
        architectures=list(ARCHITECTURES),
        audio_config=audio_encoder(NUM_MEL_BINS, TEXT_HIDDEN),
        text_config=dict(
            vocab_size=padded_vocab_size(tok),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,  # grouped-query attention, as the real 16/8 heads
            head_dim=head_dim,
            hidden_act="silu",
            max_position_embeddings=max_positions,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            # The rotary module calls rope_scaling.get(...): it must be a dict, never None.
            rope_scaling=dict(ROPE_SCALING, mrope_section=[n * scale for n in MROPE_SECTION]),
            attention_bias=False,
            tie_word_embeddings=tie_word_embeddings,
            use_cache=True,
        ),
        audio_token_id=single_token_id(tok, AUDIO_PAD),
        audio_start_token_id=single_token_id(tok, AUDIO_START),
        audio_end_token_id=single_token_id(tok, AUDIO_END),
        user_token_id=single_token_id(tok, "user"),
        initializer_range=0.02,
        **extra,
    )


def save_processor(out: Path, tok) -> None:
    """Tokenizer + preprocessor_config.json + chat_template.json, the files AutoProcessor reads."""
    from qwen_asr.core.transformers_backend import Qwen3ASRProcessor

    processor = Qwen3ASRProcessor(feature_extractor=feature_extractor(), tokenizer=tok, chat_template=CHAT_TEMPLATE)
    # save_jinja_files=False writes chat_template.json, the file name the real repos ship.
    processor.save_pretrained(str(out), save_jinja_files=False)


def _unit_gain_init(model) -> None:
    """Re-draw every Linear/Embedding weight as N(0, 1/fan_in) (embeddings N(0, 1)), biases 0.

    The package's own init (std 0.02) leaves a 32-wide network nearly input-independent: every
    `<timestamp>` slot got the same class and ASR repeated one token. Unit-gain random weights make
    outputs depend on the audio and the text, so the LIS repair, chunk merging and parsing paths see
    varied values. Still random, still seeded.
    """
    import torch
    from torch import nn

    # A head tied to the embeddings (real ASR: tie_word_embeddings) is the embedding matrix: keep N(0, 1).
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 1.0)
            elif isinstance(module, nn.Linear) and id(module.weight) not in embeddings:
                module.weight.normal_(0.0, module.in_features**-0.5)
                if module.bias is not None:
                    module.bias.zero_()


def save_model(out: Path, config, *, thinker_model_type: str, generation: dict, tokens: int | None = None) -> None:
    """Random weights (fixed seed) saved as bf16 safetensors, the real checkpoints' dtype; config.json and
    generation_config.json as the real repo has them.

    thinker_model_type: the thinker's model_type in config.json. PretrainedConfig.to_dict writes the
    class's ("qwen3_asr_thinker"); the real files say "qwen3_forced_aligner" (the aligner: without it,
    reload builds a vocabulary head and drops the classifier weights) or "qwen3_asr".
    generation: the real generation_config.json with the tiny ids of its tokens (the real file is
    `_from_model_config` and holds no transformers_version).
    tokens: the tokenizer's size; embedding rows past it (the vocabulary is padded, as the real one is)
    are zeroed. A real model never predicts them (trained); with a head tied to unit-gain random
    embeddings the tiny ASR otherwise kept predicting one padding id, which decodes to nothing. With a
    tied head the residual stream also makes the last input token the best next one (an endless
    repeat): the final norm's gains get random signs, so the head no longer mirrors the input.
    """
    import torch
    from qwen_asr.core.transformers_backend import Qwen3ASRForConditionalGeneration

    torch.manual_seed(SEED)
    model = Qwen3ASRForConditionalGeneration(config).eval()
    _unit_gain_init(model.thinker)
    if tokens is not None:
        with torch.no_grad():
            model.thinker.get_input_embeddings().weight[tokens:].zero_()
            if config.thinker_config.text_config.tie_word_embeddings:
                norm = model.thinker.model.norm.weight
                norm.copy_(torch.randn(norm.shape, generator=torch.Generator().manual_seed(SEED)))
    model.to(torch.bfloat16).save_pretrained(str(out), safe_serialization=True)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["thinker_config"]["model_type"] = thinker_model_type
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"_from_model_config": True, **generation}, indent=2) + "\n")


def generation_defaults(tok, **extra) -> dict:
    """The real Qwen3-ASR/aligner generation_config.json: stop on <|endoftext|> or <|im_end|>, pad with
    <|endoftext|>, greedy."""
    endoftext = single_token_id(tok, "<|endoftext|>")
    return {"eos_token_id": [endoftext, single_token_id(tok, "<|im_end|>")], "pad_token_id": endoftext,
            "do_sample": False, **extra}


def build(out: Path) -> None:
    from qwen_asr.core.transformers_backend import Qwen3ASRConfig

    out = output_dir(out)
    tok = build_tokenizer()
    config = Qwen3ASRConfig(
        # "forced_aligner" in the thinker's model_type is what makes the thinker build a
        # classify_num-wide head instead of a vocabulary-wide one.
        thinker_config=thinker_config(tok, max_positions=ALIGNER_MAX_POSITIONS, model_type="qwen3_forced_aligner",
                                      classify_num=CLASSIFY_NUM),
        support_languages=list(LANGUAGES),
        # Top-level keys read by Qwen3ForcedAligner.__init__ (model.config.*), as in the real config.
        timestamp_token_id=single_token_id(tok, TIMESTAMP),
        timestamp_segment_time=TIMESTAMP_SEGMENT_MS,
        architectures=list(ARCHITECTURES),
    )
    save_model(out, config, thinker_model_type="qwen3_forced_aligner", generation=generation_defaults(tok))
    save_processor(out, tok)
