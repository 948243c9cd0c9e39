"""The tiny Qwen3-ForcedAligner loads and aligns through the production loader only.

Weights are random: assert counts, types, ranges and ordering, never which times come out.
"""

from __future__ import annotations

import json

import pytest

from services.tiny import aligner as tiny_aligner
from tests.tiny.helpers import assert_rebuild_identical, noise

FAMILY = "aligner"
SR = 16000


@pytest.fixture(scope="module")
def model(folder):
    import torch
    from qwen_asr import Qwen3ForcedAligner

    return Qwen3ForcedAligner.from_pretrained(str(folder), dtype=torch.float32, device_map="cpu")


def _assert_spans(result, units, limit):
    assert [it.text for it in result.items] == units
    prev_start = 0.0
    for it in result.items:
        assert isinstance(it.start_time, float) and isinstance(it.end_time, float)
        assert 0.0 <= it.start_time <= it.end_time <= limit
        assert it.start_time >= prev_start  # the package repairs the raw classes into a rising run
        prev_start = it.start_time


def test_real_layout(folder, model):
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_asr"
    assert cfg["thinker_config"]["model_type"] == "qwen3_forced_aligner"  # else reload builds a vocab head
    assert cfg["thinker_config"]["classify_num"] == tiny_aligner.CLASSIFY_NUM
    assert cfg["thinker_config"]["audio_config"]["n_window"] == 50
    assert cfg["thinker_config"]["audio_config"]["n_window_infer"] == 800
    text = cfg["thinker_config"]["text_config"]
    assert sum(text["rope_scaling"]["mrope_section"]) == text["head_dim"] // 2
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["feature_size"] == cfg["thinker_config"]["audio_config"]["num_mel_bins"]

    assert model.model.thinker.lm_head.out_features == tiny_aligner.CLASSIFY_NUM
    assert model.timestamp_segment_time == tiny_aligner.TIMESTAMP_SEGMENT_MS
    assert tiny_aligner.MAX_ALIGN_SECONDS >= 600.0
    assert model.get_supported_languages() == sorted(x.lower() for x in tiny_aligner.LANGUAGES)
    assert len(model.get_supported_languages()) == 11

    tok = model.processor.tokenizer
    assert tok.convert_ids_to_tokens(model.timestamp_token_id) == "<timestamp>"
    assert "<timestamp>" not in tok.all_special_tokens


def test_align_one_english_sample(model):
    text = "Hello world, this is a tiny aligner test."
    units = model.aligner_processor.encode_timestamp(text, "English")[0]
    results = model.align(audio=[(noise(3.0), SR)], text=[text], language=["English"])
    assert len(results) == 1 and len(results[0]) == len(units) == 8
    _assert_spans(results[0], units, tiny_aligner.MAX_ALIGN_SECONDS)


def test_align_batch_with_cjk_and_empty_text(model):
    texts = ["你好世界 hello", "le chat dort", ""]
    langs = ["Chinese", "French", "English"]
    audios = [(noise(2.0, 1), SR), (noise(1.5, 2), SR), (noise(1.0, 3), SR)]
    results = model.align(audio=audios, text=texts, language=langs)
    assert len(results) == 3
    for result, text, lang in zip(results, texts, langs):
        units = model.aligner_processor.encode_timestamp(text, lang)[0]
        assert len(result) == len(units)
        _assert_spans(result, units, tiny_aligner.MAX_ALIGN_SECONDS)
    assert [it.text for it in results[0].items] == ["你", "好", "世", "界", "hello"]
    assert results[2].items == []


def test_build_is_deterministic(folder, tmp_path):
    assert_rebuild_identical(tiny_aligner.build, folder, tmp_path)


@pytest.mark.slow
def test_ten_minute_file_stays_in_range(model):
    seconds = 600.0
    text = " ".join(["word"] * 1500)
    results = model.align(audio=[(noise(seconds), SR)], text=[text], language=["English"])
    units = model.aligner_processor.encode_timestamp(text, "English")[0]
    assert len(results[0]) == len(units) == 1500
    _assert_spans(results[0], units, seconds + 8.0)
