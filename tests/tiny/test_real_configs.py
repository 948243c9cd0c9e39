"""The tiny checkpoints against the published files of the real models (no weights).

For the four models with vendored files (tests/fixtures/real/): every config is loaded through the class
the production loader uses and compared key by key, nested configs included. The key sets must match;
each value must be equal, except the keys listed here with their reason:

* SIZE keys: widths, depths, heads, vocabulary rows... (the point of a tiny model; listed per model);
* TOKEN keys: token ids, compared by the token they name (the tiny vocabulary is 600 entries, not 151k);
* DIFFER keys: deliberate value differences, each with its reason (the list fails when one vanishes).

Qwen3-VL-2B (diagram) and the Omni captioner have no vendored files: their engine-read values are checked
against the references named in tests/real_configs.py.
"""

from __future__ import annotations

import json

import pytest

from tests import real_configs as real

# Values that are tables: compared whole, not flattened key by key.
TABLES = {"spk_id", "spk_is_dialect", "codec_language_id", "id2label", "label2id", "extra_special_tokens"}


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in TABLES:
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def tokens(value, names) -> object:
    """A token id (or list of ids) as the token text(s) it names; None stays None."""
    if value is None:
        return None
    if isinstance(value, list):
        return sorted(tokens(v, names) for v in value)
    return names(int(value))


def tiny_names(folder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return lambda i: tok.convert_ids_to_tokens(i)


def compare(real_cfg: dict, tiny_cfg: dict, *, real_names, tiny_names, sizes=(), token_keys=(), differ=None,
            real_only=(), tiny_only=()) -> None:
    """Key sets equal (but the listed one-sided keys); token keys name the same tokens; sizes are skipped;
    every other value equal. Every listed key must exist, and every DIFFER key must really differ."""
    r, t = flat(real_cfg), flat(tiny_cfg)
    differ = differ or {}
    assert sorted(set(r) - set(t)) == sorted(real_only), "keys only the real config has"
    assert sorted(set(t) - set(r)) == sorted(tiny_only), "keys only the tiny config has"
    listed = [*sizes, *token_keys, *differ]
    assert len(listed) == len(set(listed)), "a key is listed twice"
    missing = [k for k in listed if k not in r or k not in t]
    assert not missing, f"listed keys that are not in both configs: {missing}"
    for key in token_keys:
        assert tokens(r[key], real_names) == tokens(t[key], tiny_names), key
    stale = [k for k in differ if r[k] == t[k]]
    assert not stale, f"DIFFER entries that are equal now (drop them): {stale}"
    skip = set(sizes) | set(token_keys) | set(differ)
    unequal = {k: (r[k], t[k]) for k in r.keys() & t.keys() if k not in skip and r[k] != t[k]}
    assert not unequal, f"values that differ from the real config: {unequal}"


def raw(folder, name) -> dict:
    return json.loads((folder / name).read_text())


def real_lookup(folder):
    names = real.real_token_names(folder)
    return lambda i: names[i]


# --- Qwen3-ASR and the forced aligner (qwen_asr's Qwen3ASRConfig) ----------------------------------------

T = "thinker_config."
# Sizes of the thinker both models share: the audio encoder (real: d_model 1024 x 24 layers of 16 heads,
# FFN 4096, 480 conv channels) and the Qwen3 decoder (real 0.6B: 1024 x 28; 1.7B: 2048 x 28; 16/8 heads
# of 128). The mrope sections sum to head_dim / 2 (real [24, 20, 20] of 128; tiny [4, 2, 2] of 16).
# output_dim is the text hidden size (audio features are scattered into the text embeddings).
THINKER_SIZES = [
    *(T + "audio_config." + k for k in ("d_model", "encoder_layers", "num_hidden_layers", "encoder_attention_heads",
                                        "encoder_ffn_dim", "downsample_hidden_size", "output_dim")),
    *(T + "text_config." + k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                       "num_key_value_heads", "head_dim", "vocab_size", "rope_scaling.mrope_section")),
]
THINKER_TOKENS = [T + k for k in ("audio_token_id", "audio_start_token_id", "audio_end_token_id", "user_token_id")]
THINKER_DIFFER = {
    # Where save_pretrained records the checkpoint dtype: the real file on the thinker, the tiny one (saved
    # by transformers 4.57.6) on the top level. No engine reads it: services pass the dtype explicitly.
    "dtype": "recorded at the top level by the tiny's save_pretrained; not read (dtype passed explicitly)",
    T + "dtype": "recorded on the thinker in the real file; not read (dtype passed explicitly)",
}


def test_aligner_config_matches_the_real_one(tiny_folder):
    folder = tiny_folder("aligner")
    r, t = real.asr_config(real.ALIGNER), real.asr_config(folder)
    compare(
        r.to_dict(), t.to_dict(), real_names=real_lookup(real.ALIGNER), tiny_names=tiny_names(folder),
        # classify_num is read by the engine (max_seconds = (classify_num - 1) x 80 ms): real 5000 classes
        # (399.92 s per pass); the tiny head has 7600 so that a 10-minute file fits one pass in the tests
        # (services/tiny/aligner.py). Every other engine-read value is equal, asserted below.
        sizes=[*THINKER_SIZES, T + "classify_num"],
        token_keys=[*THINKER_TOKENS, "timestamp_token_id"],
        differ={
            **THINKER_DIFFER,
            # The audio encoder has no word embeddings: the flag (a PretrainedConfig default) is not read.
            T + "audio_config.tie_word_embeddings": "not read by the audio encoder (nothing to tie)",
        },
    )
    # What the package reads to build and run the aligner: a classify_num-wide head ("forced_aligner" in
    # the thinker's model_type), 80 ms per class, the <timestamp> token, the language list.
    assert t.thinker_config.model_type == r.thinker_config.model_type == "qwen3_forced_aligner"
    assert t.timestamp_segment_time == r.timestamp_segment_time == 80
    assert t.support_languages == r.support_languages


def test_asr_config_matches_the_real_one(tiny_folder):
    folder = tiny_folder("asr")
    r, t = real.asr_config(real.ASR), real.asr_config(folder)
    compare(
        r.to_dict(), t.to_dict(), real_names=real_lookup(real.ASR), tiny_names=tiny_names(folder),
        sizes=THINKER_SIZES,
        token_keys=THINKER_TOKENS,
        differ={
            **THINKER_DIFFER,
            # qwen_asr's generate passes eos_token_id=[151645, 151643] (the real ids) explicitly; the tiny
            # vocabulary cannot emit those, so the thinker's own generation config gets the tiny ids of the
            # same tokens, else transformers pads with 151645 (services/tiny/asr.py).
            T + "eos_token_id": "tiny <|im_end|>/<|endoftext|> ids for the thinker's generation config",
            T + "pad_token_id": "tiny <|endoftext|> id for the thinker's generation config",
        },
    )
    assert t.thinker_config.model_type == r.thinker_config.model_type  # no "forced_aligner": vocabulary head
    assert t.support_languages == r.support_languages


@pytest.mark.parametrize("family,folder", [("aligner", real.ALIGNER), ("asr", real.ASR)])
def test_asr_family_side_files_match(tiny_folder, family, folder):
    from transformers import WhisperFeatureExtractor

    tiny = tiny_folder(family)
    # generation_config.json: eos/pad sets by token, the rest equal.
    rg, tg = raw(folder, "generation_config.json"), raw(tiny, "generation_config.json")
    compare(rg, tg, real_names=real_lookup(folder), tiny_names=tiny_names(tiny),
            token_keys=["eos_token_id", "pad_token_id"])
    # The feature extractor the processor builds: every attribute equal (16 kHz, 128 mel bins, 10 ms hop,
    # 25 ms window, 30 s chunks, no dither).
    rf = WhisperFeatureExtractor.from_pretrained(str(folder)).to_dict()
    tf = WhisperFeatureExtractor.from_pretrained(str(tiny)).to_dict()
    assert rf == tf
    assert (rf["sampling_rate"], rf["feature_size"], rf["hop_length"], rf["n_fft"], rf["chunk_length"]) == (
        16000, 128, 160, 400, 30)
    # The file itself: the tiny's save adds sampling_rate, which the real file leaves at the class default
    # (16000, equal above).
    compare(raw(folder, "preprocessor_config.json"), raw(tiny, "preprocessor_config.json"),
            real_names=None, tiny_names=None, tiny_only=["sampling_rate"])


# --- Qwen3-TTS CustomVoice (qwen_tts's Qwen3TTSConfig) and its 12 Hz codec --------------------------------

TK = "talker_config."
CP = TK + "code_predictor_config."


def test_tts_config_matches_the_real_one(tiny_folder):
    folder = tiny_folder("tts")
    r, t = real.tts_config(real.TTS), real.tts_config(folder)
    compare(
        r.to_dict(), t.to_dict(), real_names=real_lookup(real.TTS), tiny_names=tiny_names(folder),
        sizes=[
            # Talker (real: Qwen3-1.7B-sized, 2048 x 28, 16/8 heads of 128, MLP 6144) and the text side it
            # embeds (real: the 151936-row Qwen3 vocabulary of width 2048).
            *(TK + k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                               "num_key_value_heads", "head_dim", "text_hidden_size", "text_vocab_size",
                               "rope_scaling.mrope_section")),
            # Code predictor (real: 1024 x 5 layers, 16/8 heads of 128, MLP 3072); layer_types has one
            # entry per layer.
            *(CP + k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                               "num_key_value_heads", "head_dim", "layer_types")),
        ],
        token_keys=["im_start_token_id", "im_end_token_id", "tts_pad_token_id", "tts_bos_token_id",
                    "tts_eos_token_id", "assistant_token_id"],
        differ={
            "dtype": "recorded by the tiny's save_pretrained; not read (dtype passed explicitly)",
            # Init scale only (read by _init_weights, never at inference): at 0.02 a tiny talker's attention
            # is nearly uniform and the prompt barely steers the greedy codes (services/tiny/tts.py).
            TK + "initializer_range": "init-time only: 0.1 lets the tiny prompt steer the codes",
            CP + "initializer_range": "init-time only, as the talker's",
        },
    )
    # Everything the engine and the package read is equal: the 9 voices and their codec ids, dialect flags,
    # the language table, codec control ids, 3072-entry codec vocabulary, 2048-entry codebooks, 16 groups.
    rt, tt = r.talker_config, t.talker_config
    assert tt.spk_id == rt.spk_id and len(rt.spk_id) == 9
    assert tt.spk_is_dialect == rt.spk_is_dialect and tt.codec_language_id == rt.codec_language_id
    assert (tt.codec_eos_token_id, tt.codec_pad_id, tt.codec_bos_id) == (2150, 2148, 2149)
    assert (tt.vocab_size, tt.num_code_groups, tt.code_predictor_config.vocab_size) == (3072, 16, 2048)
    assert (t.tts_model_type, t.tts_model_size, t.tokenizer_type) == (r.tts_model_type, r.tts_model_size,
                                                                      r.tokenizer_type)


def test_tts_codec_config_matches_the_real_one(tiny_folder):
    folder = tiny_folder("tts") / "speech_tokenizer"
    r, t = real.codec_config(real.TTS / "speech_tokenizer"), real.codec_config(folder)
    dec, enc = "decoder_config.", "encoder_config."
    compare(
        r.to_dict(), t.to_dict(), real_names=None, tiny_names=None,
        sizes=[
            # Decoder (real: latent 1024, codebook_dim 512, decoder_dim 1536, transformer 512 x 8 layers of
            # 16 heads of 64, MLP 1024). Its sliding window (72), upsampling rates and codebook sizes are
            # equal: they fix the samples per frame (1920) and the receptive field per layer.
            *(dec + k for k in ("latent_dim", "codebook_dim", "decoder_dim", "hidden_size", "intermediate_size",
                                "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                                "vector_quantization_hidden_dimension")),
            # Mimi encoder (real: 64 filters, 512 x 8 layers, codebook_dim 256; upsample_groups must divide
            # hidden_size). Only voice cloning encodes audio; CustomVoice never does.
            *(enc + k for k in ("num_filters", "hidden_size", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "num_key_value_heads", "head_dim", "codebook_dim",
                                "vector_quantization_hidden_dimension", "upsample_groups")),
        ],
        differ={"dtype": "recorded by the tiny's save_pretrained; not read (dtype passed explicitly)"},
    )
    assert (t.output_sample_rate, t.decode_upsample_rate, t.decoder_config.sliding_window) == (24000, 1920, 72)
    assert raw(folder, "preprocessor_config.json") == raw(real.TTS / "speech_tokenizer", "preprocessor_config.json")


def test_tts_side_files_match(tiny_folder):
    from services.tiny import tts as tiny_tts

    folder = tiny_folder("tts")
    # generation_config.json is a plain dict of generate_custom_voice defaults (not a GenerationConfig).
    compare(raw(real.TTS, "generation_config.json"), raw(folder, "generation_config.json"), real_names=None,
            tiny_names=None, differ={
                # Greedy and short on the tiny (services/tiny/tts.py GENERATE_DEFAULTS): the real model
                # SAMPLES (talker and sub-talker), so real output differs between identical requests.
                "do_sample": "tiny is greedy: identical output per call (real samples)",
                "subtalker_dosample": "tiny sub-talker is greedy too",
                "max_new_tokens": "tiny 25 steps (24 frames) per call; real 8192",
            })
    assert raw(real.TTS, "generation_config.json")["do_sample"] is True
    assert raw(folder, "preprocessor_config.json") == raw(real.TTS, "preprocessor_config.json")
    # The engine's own limit is the real default: 8192 steps -> 8191 frames.
    from services.tts.engine import MAX_FRAMES_LIMIT

    assert MAX_FRAMES_LIMIT == raw(real.TTS, "generation_config.json")["max_new_tokens"] - 1
    assert tiny_tts.SAMPLES_PER_FRAME == raw(real.TTS / "speech_tokenizer", "config.json")["decode_upsample_rate"]
    assert not (folder / "chat_template.jinja").exists() and not (folder / "chat_template.json").exists()


def test_tts_engine_tables_are_the_real_ones():
    """The voices and languages the gateway lists and validates without loading the model."""
    from services.runtime.core.languages import TTS_LANGUAGES as LANGUAGES
    from services.tts.voices import VOICES

    talker = real.read_json(real.TTS / "config.json")["talker_config"]
    assert sorted(v.id for v in VOICES) == sorted(talker["spk_id"])
    # Dialect entries are not languages a request names (qwen_tts hides names containing "dialect").
    assert LANGUAGES[0] == "auto"
    assert sorted(LANGUAGES[1:]) == sorted(k for k in talker["codec_language_id"] if "dialect" not in k)
    dialects = {v.id for v in VOICES if "dialect" in v.description.lower()}
    assert dialects == {k for k, v in talker["spk_is_dialect"].items() if v}


# --- Qwen2.5-VL-3B-Instruct (transformers' Qwen2_5_VLConfig) ------------------------------------------------

# The published config.json is in the flat pre-4.45 layout (transformers 4.41.2): text keys at the top.
# transformers 4.57.6 copies them into text_config (compared there) and keeps the originals as
# attributes; the tiny one is saved by 4.57.6, nested only. Likewise the vision tower's old key names.
VL_LEGACY = ["attention_dropout", "hidden_act", "hidden_size", "initializer_range", "intermediate_size",
             "max_position_embeddings", "max_window_layers", "num_attention_heads", "num_hidden_layers",
             "num_key_value_heads", "rms_norm_eps", "rope_scaling.type", "rope_scaling.mrope_section",
             "rope_scaling.rope_type", "rope_theta", "sliding_window", "use_cache", "use_sliding_window",
             "vocab_size", "text_config.vision_token_id", "vision_config.in_chans", "vision_config.spatial_patch_size"]


def test_vl_config_matches_the_real_one(tiny_folder):
    folder = tiny_folder("vl")
    r, t = real.vl_config(real.VL), real.vl_config(folder)
    rd = r.to_dict()
    compare(
        rd, t.to_dict(), real_names=real_lookup(real.VL), tiny_names=tiny_names(folder),
        real_only=VL_LEGACY,
        sizes=[
            # Text decoder (real: 2048 x 36 layers, 16/2 heads of 128, MLP 11008, 151936 rows; the mrope
            # sections [16, 24, 24] sum to head_dim / 2). layer_types has one entry per layer;
            # max_window_layers only matters with use_sliding_window (false on both).
            *("text_config." + k for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                           "num_attention_heads", "num_key_value_heads", "vocab_size", "layer_types",
                                           "max_window_layers", "rope_scaling.mrope_section")),
            # Vision tower (real: depth 32, width 1280, MLP 3420, 16 heads; full attention every 8th block).
            # Its geometry (14 px patches, 2x2 merge, 2 frames, 112 px windows, 2 tokens/s) is equal.
            *("vision_config." + k for k in ("depth", "hidden_size", "intermediate_size", "num_heads",
                                             "out_hidden_size", "fullatt_block_indexes")),
        ],
        token_keys=["bos_token_id", "eos_token_id", "image_token_id", "video_token_id", "vision_start_token_id",
                    "vision_end_token_id", "vision_token_id", "text_config.bos_token_id", "text_config.eos_token_id"],
        differ={
            "dtype": "real bfloat16 weights; the tiny's are float32 (not read: dtype passed explicitly)",
            "text_config.dtype": "copied from the flat file's torch_dtype by 4.57.6 (not read)",
            "text_config.architectures": "copied from the flat file's top level by 4.57.6 (not read)",
        },
    )
    # The class read the flat file right: every legacy top-level text key landed in text_config.
    flat_real = flat(rd)
    for key in VL_LEGACY:
        # sliding_window: 4.57.6 stores None while use_sliding_window is false (both false).
        if key.startswith(("vision_config.", "text_config.")) or key == "sliding_window":
            continue
        assert flat_real["text_config." + key] == flat_real[key], key
    assert (r.vision_config.patch_size, r.vision_config.spatial_merge_size, r.vision_config.temporal_patch_size) == (
        14, 2, 2)


def test_vl_side_files_match(tiny_folder):
    from transformers import AutoImageProcessor

    folder = tiny_folder("vl")
    compare(raw(real.VL, "generation_config.json"), raw(folder, "generation_config.json"),
            real_names=real_lookup(real.VL), tiny_names=tiny_names(folder),
            token_keys=["bos_token_id", "pad_token_id", "eos_token_id"],
            # The real file records the transformers version that wrote it; the tiny's is hand-written.
            real_only=["transformers_version"])
    # Sampling at temperature 1e-6 (greedy in effect) and repetition penalty 1.05, no top_k/top_p: a
    # request that samples gets transformers' defaults for those unless it sets them.
    assert "top_k" not in raw(real.VL, "generation_config.json")
    # The image processor the engine gets, slow and fast: every attribute equal but the pixel budget.
    # Real 3136..12845056 px (4..16384 tokens of 28x28 px); tiny 4..16 tokens, so any image costs a few.
    for use_fast in (False, True):
        rp = AutoImageProcessor.from_pretrained(str(real.VL), use_fast=use_fast).to_dict()
        tp = AutoImageProcessor.from_pretrained(str(folder), use_fast=use_fast).to_dict()
        assert (rp["max_pixels"], rp["size"]["longest_edge"]) == (12845056, 12845056)
        assert (tp["max_pixels"], tp["size"]["longest_edge"]) == (16 * 28 * 28, 16 * 28 * 28)
        for d in (rp, tp):
            d.pop("max_pixels"), d["size"].pop("longest_edge")
        assert rp == tp, use_fast
    # The tiny file spells out the processor defaults the real one relies on (equal above), and `size`
    # besides min/max_pixels so that the slow and the fast processor give one grid.
    compare(raw(real.VL, "preprocessor_config.json"), raw(folder, "preprocessor_config.json"), real_names=None,
            tiny_names=None, tiny_only=["do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "resample",
                                        "rescale_factor", "size.shortest_edge", "size.longest_edge"],
            differ={"max_pixels": "tiny budget 16 tokens (real 16384)"})


# --- Tokenizers and chat templates (the four vendored models) -------------------------------------------

# Added tokens the real vocabularies have and the tiny ones leave out, per model, because no prompt the
# engines build contains them and the tiny models could only emit them at random:
VISION = ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
          "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN3_TAGS = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
TTS_MARKERS = ["<tts_pad>", "<tts_text_bos>", "<tts_text_eod>", "<tts_text_bos_single>"]
# <non_speech> is a PLAIN token of the real ASR vocabulary: if the real model emits it, decoding with
# skip_special_tokens keeps it in the text. <blank1>..<blank27> are special (dropped when decoding).
BLANKS = [f"<blank{i}>" for i in range(1, 28)]
LEFT_OUT = {
    "aligner": [*VISION, *QWEN3_TAGS, *TTS_MARKERS, "<non_speech>", *BLANKS],
    "asr": [*VISION, *QWEN3_TAGS, *TTS_MARKERS, "<non_speech>", *BLANKS],
    "tts": [*VISION, *QWEN3_TAGS],
    "vl": [],
}
FOLDERS = {"aligner": real.ALIGNER, "asr": real.ASR, "tts": real.TTS, "vl": real.VL}
# tokenizer_config.json entries that differ, per model (everything else equal): the real audio models'
# tokenizers name the media tokens of the Qwen3-Omni vocabulary they come from; the tiny vocabularies
# hold the audio ones only (the processors read only those).
OMNI_NAMES = ["image_token", "video_token", "vision_bos_token", "vision_eos_token"]
TOKENIZER_DIFFER = {
    "aligner": {"additional_special_tokens": "tiny vocabulary: ChatML + audio markers only",
                "extra_special_tokens": "tiny names the audio tokens only (Qwen3ASRProcessor reads those)"},
    "asr": {"additional_special_tokens": "tiny vocabulary: ChatML + audio markers only",
            "extra_special_tokens": "tiny names the audio tokens only (Qwen3ASRProcessor reads those)"},
    "tts": {"additional_special_tokens": "tiny vocabulary: ChatML + audio/TTS markers only",
            "extra_special_tokens": "tiny names the audio tokens only (qwen_tts reads none)"},
    "vl": {},
}


@pytest.mark.parametrize("family", list(FOLDERS))
def test_added_tokens_keep_the_real_flags_and_order(tiny_folder, family):
    """Every added token of a tiny tokenizer exists in the real one with the same `special` flag (what
    skip_special_tokens drops), specials and plain tokens each in the real relative order; the real
    tokens it leaves out are exactly LEFT_OUT."""
    real_added = real.real_added_tokens(FOLDERS[family])
    tiny_cfg = raw(tiny_folder(family), "tokenizer_config.json")
    tiny_added = [(t["content"], t["special"]) for _, t in sorted(tiny_cfg["added_tokens_decoder"].items(),
                                                                   key=lambda kv: int(kv[0]))]
    assert set(tiny_added) <= set(real_added)
    for special in (True, False):
        mine = [tok for tok, s in tiny_added if s is special]
        assert mine == [tok for tok, s in real_added if s is special and tok in mine]
    assert sorted({tok for tok, _ in real_added} - {tok for tok, _ in tiny_added}) == sorted(LEFT_OUT[family])


@pytest.mark.parametrize("family", list(FOLDERS))
def test_tokenizer_config_matches_the_real_one(tiny_folder, family):
    r = raw(FOLDERS[family], "tokenizer_config.json")
    t = raw(tiny_folder(family), "tokenizer_config.json")
    for d in (r, t):
        d.pop("added_tokens_decoder")  # compared token by token above
        d.pop("chat_template", None)  # compared by rendering below
    compare(r, t, real_names=None, tiny_names=None, differ=TOKENIZER_DIFFER[family],
            real_only=OMNI_NAMES if family != "vl" else [],
            # transformers 4.57.6 writes an empty extra_special_tokens where the real file has none.
            tiny_only=["extra_special_tokens"] if family == "vl" else [])
    assert (t["eos_token"], t["pad_token"], t["bos_token"]) == ("<|im_end|>", "<|endoftext|>", None)


def render(folder, template: str, messages: list[dict], **kwargs) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return tok.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True,
                                   **kwargs)


@pytest.mark.parametrize("family", ["aligner", "asr"])
def test_asr_chat_template_renders_like_the_real_one(tiny_folder, family):
    folder = tiny_folder(family)
    real_t = real.read_json(FOLDERS[family] / "chat_template.json")["chat_template"]
    tiny_t = raw(folder, "chat_template.json")["chat_template"]
    # The messages qwen_asr builds for every request (Qwen3ASRModel._build_messages): the context as the
    # system turn (empty or not), the audio as the user turn.
    for context in ("", "Names: Qwen, BentoML."):
        messages = [{"role": "system", "content": context}, {"role": "user", "content": [{"type": "audio", "audio": ""}]}]
        assert render(folder, tiny_t, messages) == render(folder, real_t, messages)


def test_vl_chat_template_renders_like_the_real_one(tiny_folder):
    folder = tiny_folder("vl")
    real_t = real.read_json(real.VL / "chat_template.json")["chat_template"]
    tiny_t = raw(folder, "chat_template.json")["chat_template"]
    assert raw(folder, "tokenizer_config.json")["chat_template"] == tiny_t
    image, text = {"type": "image"}, {"type": "text", "text": "What is in the picture?"}
    conversations = [
        [{"role": "user", "content": [image, text]}],  # the VL routes' /generate
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [image, image, text]}],
        [{"role": "user", "content": [text]}, {"role": "assistant", "content": "A cat."},
         {"role": "user", "content": [image, text]}],  # chat completions with history
        [{"role": "user", "content": "plain text"}],
    ]
    for messages in conversations:
        for vision_id in (False, True):
            assert render(folder, tiny_t, messages, add_vision_id=vision_id) == render(
                folder, real_t, messages, add_vision_id=vision_id), (messages, vision_id)


# --- Language lists the services validate against ------------------------------------------------------


def test_service_language_lists_are_the_real_ones():
    from services.runtime.core.languages import ALIGNER, ASR

    assert ASR.names == real.read_json(real.ASR / "config.json")["support_languages"]
    assert sorted(ALIGNER.names) == sorted(real.read_json(real.ALIGNER / "config.json")["support_languages"])


# --- Qwen3-VL-2B (diagram) and the Omni captioner: no vendored files -----------------------------------


def _names(folder):
    names = tiny_names(folder)
    return lambda value: tokens(value, names)


def test_diagram_engine_values_match_the_references(tiny_folder):
    """Checked against transformers 4.57.6's Qwen3VLConfig defaults (token ids), the Qwen3-VL model card
    and the family's published processor/generation files (tests/real_configs.py)."""
    from transformers import AutoProcessor, Qwen3VLConfig

    folder = tiny_folder("diagram")
    cfg = Qwen3VLConfig.from_pretrained(str(folder))
    name = _names(folder)
    defaults = Qwen3VLConfig()
    vl_names = real.real_token_names(real.VL)  # the Qwen2.5/Qwen3 vocabulary's ids of the same tokens
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert name(getattr(cfg, key)) == vl_names[getattr(defaults, key)], key
    text, vision = cfg.text_config, cfg.vision_config
    assert (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size) == (16, 2, 2)
    assert vision.num_position_embeddings == defaults.vision_config.num_position_embeddings == 2304
    assert text.rope_theta == real.QWEN3_VL_2B_TEXT["rope_theta"]
    assert text.max_position_embeddings == real.QWEN3_VL_2B_TEXT["max_position_embeddings"]
    assert text.rope_scaling["mrope_interleaved"] is True and cfg.tie_word_embeddings is True
    assert sum(text.rope_scaling["mrope_section"]) == text.head_dim // 2
    # Image processor: the published geometry and normalisation; the pixel budget is the tiny one
    # (4..16 tokens of 32x32 px; real 64..16384, size 65536..16777216 px).
    proc = AutoProcessor.from_pretrained(str(folder))
    ip = proc.image_processor
    ref = real.QWEN3_VL_PROCESSOR
    assert (ip.patch_size, ip.merge_size, ip.temporal_patch_size) == (ref["patch_size"], ref["merge_size"],
                                                                      ref["temporal_patch_size"])
    assert list(ip.image_mean) == ref["image_mean"] and list(ip.image_std) == ref["image_std"]
    assert ip.size == {"shortest_edge": 4 * 32 * 32, "longest_edge": 16 * 32 * 32} != ref["size"]
    # Generation: the family's generation_config.json (stop on <|im_end|>/<|endoftext|>, pad <|endoftext|>).
    from transformers import GenerationConfig

    gen = GenerationConfig.from_pretrained(str(folder))
    assert name(gen.eos_token_id) == ["<|endoftext|>", "<|im_end|>"] and name(gen.pad_token_id) == "<|endoftext|>"
    assert {k: getattr(gen, k) for k in real.QWEN3_VL_GENERATION} == real.QWEN3_VL_GENERATION


def test_captioner_engine_values_match_the_references(tiny_folder):
    """Checked against the Qwen3-Omni-30B-A3B-Instruct thinker's published config (the Captioner's own
    file could not be vendored; same thinker) and the Qwen3-Omni repos' processor values."""
    from transformers import AutoProcessor, Qwen3OmniMoeConfig

    from services.runtime.core.settings import CaptionerSettings
    from services.tiny import captioner as tiny_captioner

    folder = tiny_folder("captioner")
    cfg = Qwen3OmniMoeConfig.from_pretrained(str(folder))
    name = _names(folder)
    thinker = cfg.thinker_config
    assert cfg.enable_audio_output is False  # captioner: no talker, no code2wav
    for key, token in real.OMNI_TOKEN_NAMES.items():
        assert name(getattr(thinker, key)) == token, key
    for key, token in real.OMNI_TOP_TOKEN_NAMES.items():
        assert name(getattr(cfg, key)) == token, key
    assert {k: getattr(thinker, k) for k in real.OMNI_THINKER} == real.OMNI_THINKER
    assert {k: getattr(thinker.audio_config, k) for k in real.OMNI_AUDIO} == real.OMNI_AUDIO
    # transformers' own defaults differ here (Qwen2.5-Omni's values): a config that omitted these keys
    # would silently get 100/400 and 25.
    from transformers.models.qwen3_omni_moe.configuration_qwen3_omni_moe import Qwen3OmniMoeAudioEncoderConfig

    assert Qwen3OmniMoeAudioEncoderConfig().n_window_infer != real.OMNI_AUDIO["n_window_infer"]
    fe = AutoProcessor.from_pretrained(str(folder)).feature_extractor
    assert {k: getattr(fe, k) for k in real.OMNI_FEATURES} == real.OMNI_FEATURES
    # The sampling defaults: one set, in the tiny's generation_config.json and the service settings.
    settings = CaptionerSettings()
    gen = raw(folder, "generation_config.json")
    assert (gen["temperature"], gen["top_p"], gen["top_k"]) == (settings.temperature, settings.top_p, settings.top_k)
    assert tiny_captioner.GENERATION_DEFAULTS["do_sample"] is True


def test_diagram_adapter_keys_fit_the_real_module_paths(tiny_folder):
    """The tiny adapters' weight keys (what peft matches against the model, and what a mismatch check sees)
    are exactly the keys peft gives the real-size Qwen3-VL-2B for the same targets, restricted to the tiny's
    layers: an adapter trained on the real model uses the same prefixes."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors import safe_open
    from transformers import Qwen3VLForConditionalGeneration

    folder = tiny_folder("diagram")
    adapter = raw(folder / "adapters" / "default", "adapter_config.json")
    model = real.on_meta(Qwen3VLForConditionalGeneration, real.qwen3_vl_2b_config())
    peft_model = get_peft_model(model, LoraConfig(r=adapter["r"], lora_alpha=adapter["lora_alpha"],
                                                  target_modules=adapter["target_modules"], task_type="CAUSAL_LM"))
    real_keys = set(get_peft_model_state_dict(peft_model))
    layers = raw(folder, "config.json")["text_config"]["num_hidden_layers"]
    expected = {k for k in real_keys if int(k.split(".layers.")[1].split(".")[0]) < layers}
    for name in ("default", "alt"):
        with safe_open(str(folder / "adapters" / name / "adapter_model.safetensors"), "pt") as f:
            assert set(f.keys()) == expected, name
