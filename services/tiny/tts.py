"""Tiny Qwen3-TTS 12 Hz CustomVoice checkpoint (real: Qwen/Qwen3-TTS-12Hz-1.7B-CustomVoice).

Built from the qwen_tts package's own classes, saved in the real repo layout and meant to be read only
through the production loader:

    Qwen3TTSModel.from_pretrained(folder, device_map="cpu", dtype=torch.float32)
    wavs, sr = model.generate_custom_voice(text=..., speaker="Vivian", language="English")

Layout (as the real repo):
    config.json, model.safetensors            talker (Qwen3TTSForConditionalGeneration, custom_voice)
    tokenizer.json, tokenizer_config.json...  tiny Qwen2 BPE text tokenizer
    generation_config.json                    a plain dict of generate() defaults (see GENERATE_DEFAULTS)
    preprocessor_config.json                  Qwen3TTSProcessor settings (left padding); no chat template
    speech_tokenizer/                          the 12 Hz codec (Qwen3TTSTokenizerV2Model + Mimi encoder)

Everything the engine can observe is real: the 9 voices and their codec ids, the dialect flags, the
language table, the codec control ids, the 3072-entry codec vocabulary with 2048-entry codebooks, 16
code groups, 24 kHz output and 1920 samples per frame (12.5 frames/s). Only widths and depths shrink.
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import output_dir
from .tokenizer import AUDIO_TTS_SPECIAL, build_qwen_tokenizer, single_token_id, token_ids, tts_token_config

SEED = 0

# --- Real codec-side tables (the published CustomVoice config, tests/fixtures/real) -----------------------------------
SPEAKER_IDS = {
    "serena": 3066,
    "vivian": 3065,
    "uncle_fu": 3010,
    "ryan": 3061,
    "aiden": 2861,
    "ono_anna": 2873,
    "sohee": 2864,
    "eric": 2875,
    "dylan": 2878,
}
# qwen_tts indexes this table with every speaker whenever the language is chinese/auto, so every voice
# needs an entry: False, or the dialect language whose id replaces the Chinese one.
SPEAKER_DIALECT: dict[str, str | bool] = {name: False for name in SPEAKER_IDS}
SPEAKER_DIALECT.update(eric="sichuan_dialect", dylan="beijing_dialect")
LANGUAGE_IDS = {
    "chinese": 2055,
    "english": 2050,
    "german": 2053,
    "italian": 2070,
    "portuguese": 2071,
    "spanish": 2054,
    "japanese": 2058,
    "korean": 2064,
    "french": 2061,
    "russian": 2069,
    # Dialect entries are hidden from get_supported_languages() (names containing "dialect") and only
    # reached through SPEAKER_DIALECT.
    "beijing_dialect": 2074,
    "sichuan_dialect": 2062,
}
CODEC_IDS = dict(
    codec_pad_id=2148,
    codec_bos_id=2149,
    codec_eos_token_id=2150,
    codec_think_id=2154,
    codec_nothink_id=2155,
    codec_think_bos_id=2156,
    codec_think_eos_id=2157,
)
CODEC_VOCAB = 3072  # talker codec vocabulary: 2048 codes + 1024 control/speaker/language slots
CODEBOOK_SIZE = 2048  # per code group; generate() suppresses ids >= 3072-1024 except EOS
NUM_CODE_GROUPS = 16
SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 1920  # = prod(upsample_rates + upsampling_ratios) = 8*5*4*3 * 2*2
TARGET_RMS = 0.2  # tiny codec output level: clearly audible, rarely clipped by the decoder's clamp

# Text-side specials of the Qwen3 vocabulary that the TTS prompt uses, in their real order (real ids
# 151669..151675). <tts_pad>/<tts_text_bos>/<tts_text_eod> are the config's tts_{pad,bos,eos}_token_id.
TTS_SPECIALS = AUDIO_TTS_SPECIAL

# generation_config.json is read by Qwen3TTSModel as a plain dict of defaults for generate_custom_voice
# (it is not a transformers GenerationConfig there). The real file samples (do_sample true, temperature
# 0.9, top_k 50, repetition_penalty 1.05, max_new_tokens 8192). For the tiny one:
#   * greedy for the talker and the sub-talker, so output is identical on every call without seeding
#     (callers can still pass do_sample=True / subtalker_dosample=True to exercise sampling);
#   * max_new_tokens 25 -> at most 24 frames (1.92 s) per call: generate() turns the token sampled at
#     the last step into no frame, so frames <= max_new_tokens - 1 (and max_new_tokens=1 crashes);
#   * the sampling keys keep the real values so flipping do_sample on behaves like the real defaults.
GENERATE_DEFAULTS = {
    "do_sample": False,
    "top_k": 50,
    "top_p": 1.0,
    "temperature": 0.9,
    "repetition_penalty": 1.05,
    "subtalker_dosample": False,
    "subtalker_top_k": 50,
    "subtalker_top_p": 1.0,
    "subtalker_temperature": 0.9,
    "max_new_tokens": 25,
}


# The real tokenizer_config.json names the media tokens of the Qwen3-Omni vocabulary it shares (qwen_tts
# reads none of them); the tiny vocabulary holds the audio ones only, so only those are named.
EXTRA_SPECIAL_TOKENS = {"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
                        "audio_eos_token": "<|audio_end|>"}
# The real repo's preprocessor_config.json (Qwen3TTSProcessor: left padding).
PROCESSOR_CONFIG = {"padding_side": "left", "padding_value": 0.0, "processor_class": "Qwen3TTSProcessor",
                    "return_attention_mask": True}


def _tokenizer(out: Path):
    # The real TTS repo has no chat template (the prompt is built by qwen_tts itself).
    tok = build_qwen_tokenizer(out, special_tokens=TTS_SPECIALS, chat_template=None,
                               init_kwargs={"extra_special_tokens": dict(EXTRA_SPECIAL_TOKENS)})
    # generate() slices the prompt `<|im_start|>assistant\n{text}<|im_end|>\n<|im_start|>assistant\n`
    # at fixed positions ([:3] role, [3:-5] text), so each of these must be one token.
    ids = tok.encode("<|im_start|>assistant\nHi.<|im_end|>\n<|im_start|>assistant\n")
    assert ids[:3] == [single_token_id(tok, t) for t in ("<|im_start|>", "assistant", "\n")], ids
    assert len(ids) == 3 + len(tok.encode("Hi.")) + 5, ids
    return tok


def _talker_config(tok):
    from qwen_tts.core.models import Qwen3TTSConfig

    ids = token_ids(tok, ("<|im_start|>", "<|im_end|>", *TTS_SPECIALS))
    head_dim = 16
    # Init scale only (real 0.02, a training-time knob): at 0.02 a tiny talker's attention is nearly
    # uniform and the speaker/language/text tokens barely move the greedy codes; 0.1 lets the prompt
    # steer them, so different requests give different audio.
    init_std = 0.1
    talker = dict(
        initializer_range=init_std,
        # real 1.7B: hidden 2048 (= text_hidden_size), 28 layers, 16/8 heads of 128
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=head_dim,
        hidden_act="silu",
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000,
        # real: interleaved M-RoPE with sections [24, 20, 20] summing to head_dim/2 = 64
        rope_scaling={"interleaved": True, "mrope_section": [4, 2, 2], "rope_type": "default", "type": "default"},
        position_id_per_seconds=13,
        vocab_size=CODEC_VOCAB,
        num_code_groups=NUM_CODE_GROUPS,
        text_hidden_size=32,
        text_vocab_size=len(tok),  # real 151936 (the Qwen3 vocabulary); here the tiny BPE
        spk_id=SPEAKER_IDS,
        spk_is_dialect=SPEAKER_DIALECT,
        codec_language_id=LANGUAGE_IDS,
        **CODEC_IDS,
        code_predictor_config=dict(
            # real: hidden 1024 (< talker 2048, so small_to_mtp_projection is a Linear), 5 layers
            initializer_range=init_std,
            vocab_size=CODEBOOK_SIZE,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=65536,
            rope_theta=1_000_000,
            rms_norm_eps=1e-6,
            num_code_groups=NUM_CODE_GROUPS,
        ),
    )
    return Qwen3TTSConfig(
        talker_config=talker,
        tokenizer_type="qwen3_tts_tokenizer_12hz",
        # generate_custom_voice drops `instruct` when `tts_model_size in "0b6"` (a substring test, so an
        # empty/None-ish size would drop it too): the 1.7B size is the one that accepts instructions.
        tts_model_size="1b7",
        tts_model_type="custom_voice",
        **tts_token_config(ids),
        assistant_token_id=single_token_id(tok, "assistant"),
    )


def _codec_config():
    from qwen_tts.core import Qwen3TTSTokenizerV2Config

    # The codec's encoder and decoder transformers share one tiny size (real: hidden 512, 8 layers each).
    transformer = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
    )
    encoder = dict(
        # Mimi encoder (real: 64 filters, hidden 512, 8 layers, codebook_dim 256, 32 quantizers). Only
        # voice cloning (Base model) encodes audio; it ships in every speech_tokenizer/ all the same.
        # Left at the package init: encode() works (13 frames per second of audio) but returns all-zero
        # codes, which CustomVoice never needs.
        frame_rate=12.5,  # real `_frame_rate`; 24000 / (8*6*5*4) = 25 Hz, halved by the downsample conv
        sampling_rate=SAMPLE_RATE,
        upsampling_ratios=[8, 6, 5, 4],
        num_filters=2,
        **transformer,
        sliding_window=250,
        codebook_size=CODEBOOK_SIZE,
        codebook_dim=8,
        vector_quantization_hidden_dimension=8,
        num_quantizers=32,
        num_semantic_quantizers=1,
        upsample_groups=16,  # grouped conv in Mimi's (unused here) upsample: must divide hidden_size
        use_causal_conv=True,
        normalize=False,  # real keys the config class does not declare (kept as they are)
        dtype="float32",
    )
    decoder = dict(
        # real: latent 1024, codebook_dim 512, decoder_dim 1536, hidden 512, 8 layers of 16x64 heads
        codebook_size=CODEBOOK_SIZE,
        codebook_dim=16,
        latent_dim=16,
        decoder_dim=32,  # halves per upsample block: 32 -> 16 -> 8 -> 4 -> 2 channels
        **transformer,
        sliding_window=72,  # real: the decoder transformer attends over 72 frames (matters for streaming)
        max_position_embeddings=8000,
        num_quantizers=NUM_CODE_GROUPS,
        num_semantic_quantizers=1,
        semantic_codebook_size=4096,
        vector_quantization_hidden_dimension=16,
        upsample_rates=[8, 5, 4, 3],  # real; with upsampling_ratios: 8*5*4*3*2*2 = 1920 samples/frame
        upsampling_ratios=[2, 2],
        layer_scale_initial_scale=0.01,
        rms_norm_eps=1e-5,
    )
    return Qwen3TTSTokenizerV2Config(
        encoder_config=encoder,
        decoder_config=decoder,
        encoder_valid_num_quantizers=NUM_CODE_GROUPS,
        input_sample_rate=SAMPLE_RATE,
        output_sample_rate=SAMPLE_RATE,
        decode_upsample_rate=SAMPLES_PER_FRAME,
        encode_downsample_rate=SAMPLES_PER_FRAME,
    )


def _make_codec_audible(codec, gen) -> None:
    """Random weights that give a waveform instead of silence.

    The package's init leaves every codebook at zero (`embedding_sum` zeros), so all codes decode to the
    same zero vector and the output is ~1e-9. Give the codebooks unit-variance vectors and every
    conv/linear in the decoder a fan-in-scaled init so the signal neither vanishes nor explodes through
    the upsampling stack; the final clamp to [-1, 1] bounds the rest.
    """
    import torch
    from torch import nn

    dec = codec.decoder
    for name, p in dec.named_parameters():
        if name.endswith("_codebook.embedding_sum"):
            p.data.copy_(torch.randn(p.shape, generator=gen))
    for m in dec.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d, nn.Linear)):
            w = m.weight
            if isinstance(m, nn.ConvTranspose1d):
                fan_in = w.shape[0] * w.shape[2] / m.stride[0]
            elif isinstance(m, nn.Conv1d):
                fan_in = w.shape[1] * w.shape[2]
            else:
                fan_in = w.shape[1]
            w.data.copy_(torch.randn(w.shape, generator=gen) / fan_in**0.5)
            if m.bias is not None:
                m.bias.data.zero_()

    # The residual units add up, so the raw output has a std of tens and the final clamp would turn it
    # into a square wave. Calibrate the last conv on random codes so the waveform sits at TARGET_RMS.
    captured = {}
    last = dec.decoder[-1]
    handle = last.register_forward_hook(lambda _m, _i, o: captured.__setitem__("wav", o))
    with torch.no_grad():
        dec(torch.randint(0, CODEBOOK_SIZE, (1, NUM_CODE_GROUPS, 24), generator=gen))
        handle.remove()
        last.conv.weight.mul_(TARGET_RMS / captured["wav"].std())


def _make_eos_unreachable(model) -> None:
    """The tiny talker never stops on its own: one frame per step up to max_new_tokens - 1.

    With random weights, EOS would be a coin toss per step; a zero EOS row in the codec head gives EOS
    logit 0 while the top of 2048 random code logits is well above 0, so greedy never picks it and
    neither does sampling with the default top_k 50 (only top_k=0 sampling could, rarely). Tests then
    know the length: (max_new_tokens - 1) * 1920 samples.
    """
    model.talker.codec_head.weight.data[CODEC_IDS["codec_eos_token_id"]].zero_()


def build(out: Path) -> None:
    import torch
    from qwen_tts.core import Qwen3TTSTokenizerV2Model
    from qwen_tts.core.models import Qwen3TTSForConditionalGeneration
    from transformers import EncodecFeatureExtractor

    out = output_dir(out)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)

    tok = _tokenizer(out)

    model = Qwen3TTSForConditionalGeneration(_talker_config(tok)).eval()
    _make_eos_unreachable(model)
    model.save_pretrained(str(out), safe_serialization=True)

    # save_pretrained writes `"speaker_encoder_config": {"model_type": "", ...}`, which reload rejects.
    # CustomVoice builds no speaker encoder (only the Base model clones voices), so the block carries
    # nothing the model reads: drop it and let the config class fall back to its defaults.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("speaker_encoder_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    # Real generation_config.json is a plain dict of generate_custom_voice defaults (replaces the
    # transformers GenerationConfig that save_pretrained just wrote).
    (out / "generation_config.json").write_text(json.dumps(GENERATE_DEFAULTS, indent=2) + "\n")
    (out / "preprocessor_config.json").write_text(json.dumps(PROCESSOR_CONFIG, indent=2) + "\n")

    codec = Qwen3TTSTokenizerV2Model(_codec_config()).eval()
    _make_codec_audible(codec, gen)
    st = out / "speech_tokenizer"
    codec.save_pretrained(str(st), safe_serialization=True)
    # Mimi's feature extractor (mono, 24 kHz, returns the padding_mask encode() needs).
    EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0).save_pretrained(
        str(st)
    )
