"""The published configuration files of the real models (tests/fixtures/real/, provenance in its README)
and the helpers the weightless guards share: loading them through the production config classes,
naming token ids, and the reference values of the two models that have no vendored files.
"""

from __future__ import annotations

import json
from pathlib import Path

REAL = Path(__file__).resolve().parent / "fixtures" / "real"

ALIGNER = REAL / "Qwen3-ForcedAligner-0.6B"
ASR = REAL / "Qwen3-ASR-1.7B"
TTS = REAL / "Qwen3-TTS-12Hz-1.7B-CustomVoice"
VL = REAL / "Qwen2.5-VL-3B-Instruct"

# The ChatML role names are ordinary BPE entries of the Qwen2/2.5/3 vocabulary (not added tokens, so
# they are absent from tokenizer_config.json): the ids the real configs use for them.
ROLE_IDS = {8948: "system", 872: "user", 77091: "assistant"}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def real_token_names(folder: Path) -> dict[int, str]:
    """id -> token text for the real tokenizer: its added tokens (tokenizer_config.json) and the roles."""
    added = read_json(folder / "tokenizer_config.json")["added_tokens_decoder"]
    return {**ROLE_IDS, **{int(i): t["content"] for i, t in added.items()}}


def real_added_tokens(folder: Path) -> list[tuple[str, bool]]:
    """(text, special) of the real tokenizer's added tokens, in id order."""
    added = read_json(folder / "tokenizer_config.json")["added_tokens_decoder"]
    return [(added[i]["content"], added[i]["special"]) for i in sorted(added, key=int)]


def on_meta(model_class, config):
    """`model_class(config)` on PyTorch's meta device: real shapes, no memory, no weights."""
    import torch

    with torch.device("meta"):
        model = model_class(config)
    assert all(p.is_meta for p in model.parameters())
    return model


def asr_config(folder: Path):
    from qwen_asr.core.transformers_backend import Qwen3ASRConfig

    return Qwen3ASRConfig.from_pretrained(str(folder))


def tts_config(folder: Path):
    from qwen_tts.core.models import Qwen3TTSConfig

    return Qwen3TTSConfig.from_pretrained(str(folder))


def codec_config(folder: Path):
    from qwen_tts.core import Qwen3TTSTokenizerV2Config

    return Qwen3TTSTokenizerV2Config.from_pretrained(str(folder))


def vl_config(folder: Path):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig.from_pretrained(str(folder))


# --- Qwen3-VL-2B-Instruct (diagram): no published file could be vendored -------------------------------
# Sizes from the model card (2B: Qwen3-1.7B-sized decoder, 28 layers of width 2048, 16 query / 8 KV
# heads of 128, MLP 6144, tied embeddings, 256K context; 24-block vision tower of width 1024 with
# DeepStack taps 5/11/17). Everything not named here is transformers 4.57.6's Qwen3VLConfig default
# (token ids 151652/151653/151655/151656, patch 16, merge 2, temporal patch 2, 2304 position embeddings).
QWEN3_VL_2B_TEXT = dict(
    vocab_size=151936,
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=262144,
    rope_theta=5000000.0,
    rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
    tie_word_embeddings=True,
)
QWEN3_VL_2B_VISION = dict(
    depth=24,
    hidden_size=1024,
    intermediate_size=4096,
    num_heads=16,
    out_hidden_size=2048,
    deepstack_visual_indexes=[5, 11, 17],
)


def qwen3_vl_2b_config():
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(text_config=dict(QWEN3_VL_2B_TEXT), vision_config=dict(QWEN3_VL_2B_VISION),
                         tie_word_embeddings=True)


# Qwen3-VL's published image/video processor settings (the family's preprocessor_config.json and
# video_preprocessor_config.json, as the Qwen3-VL model cards and every Qwen3-VL repo ship them).
QWEN3_VL_PROCESSOR = dict(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5, 0.5, 0.5],
                          image_std=[0.5, 0.5, 0.5], size={"shortest_edge": 65536, "longest_edge": 16777216})
QWEN3_VL_VIDEO_SIZE = {"shortest_edge": 4096, "longest_edge": 25165824}
# Qwen3-VL Instruct's generation_config.json (the model card's recommended VL sampling).
QWEN3_VL_GENERATION = dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.0)

# --- Qwen3-Omni-30B-A3B-Captioner: no published file could be vendored -----------------------------------
# The Captioner is the Qwen3-Omni-30B-A3B-Instruct thinker fine-tuned for audio captioning, with the
# talker removed (enable_audio_output false). Its thinker settings are checked against the published
# Qwen3-Omni-30B-A3B-Instruct config.json (same thinker). transformers 4.57.6's class defaults are NOT
# the real values here (audio n_window 100 / n_window_infer 400, position_id_per_seconds 25,
# audio_token_id 151646 are Qwen2.5-Omni's), so they are not used as the reference.
OMNI_THINKER = dict(position_id_per_seconds=13, seconds_per_chunk=2)
OMNI_AUDIO = dict(num_mel_bins=128, n_window=50, n_window_infer=800, conv_chunksize=500, max_source_positions=1500)
OMNI_TOKEN_NAMES = {  # thinker config key -> token (Instruct config.json ids 151675/151669/151670/...)
    "audio_token_id": "<|audio_pad|>",
    "audio_start_token_id": "<|audio_start|>",
    "audio_end_token_id": "<|audio_end|>",
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
    "user_token_id": "user",
}
OMNI_TOP_TOKEN_NAMES = {
    "im_start_token_id": "<|im_start|>",
    "im_end_token_id": "<|im_end|>",
    "tts_pad_token_id": "<tts_pad>",
    "tts_bos_token_id": "<tts_text_bos>",
    "tts_eos_token_id": "<tts_text_eod>",
    "system_token_id": "system",
    "user_token_id": "user",
    "assistant_token_id": "assistant",
}
# The Qwen3-Omni repos' preprocessor_config.json: Whisper front end with a 300 s window.
OMNI_FEATURES = dict(sampling_rate=16000, feature_size=128, hop_length=160, n_fft=400, n_samples=4_800_000,
                     nb_max_frames=30000)
