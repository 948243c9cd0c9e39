"""The tiny Qwen3-ASR loads and transcribes through the production loader only.

Weights are random: assert types, counts and control flow, never the transcribed text.
"""

from __future__ import annotations

import json

import pytest

from tests.tiny.helpers import noise

FAMILY = "asr"
SR = 16000
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def model(folder):
    import torch
    from qwen_asr import Qwen3ASRModel

    return Qwen3ASRModel.from_pretrained(
        str(folder), max_new_tokens=MAX_NEW_TOKENS, dtype=torch.float32, device_map="cpu"
    )


def test_real_layout(folder, model):
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_asr"
    assert "forced_aligner" not in cfg["thinker_config"]["model_type"]
    text_cfg = cfg["thinker_config"]["text_config"]
    assert sum(text_cfg["rope_scaling"]["mrope_section"]) == text_cfg["head_dim"] // 2
    thinker = model.model.thinker
    assert thinker.lm_head.out_features == text_cfg["vocab_size"]

    tok = model.processor.tokenizer
    assert len(tok) <= text_cfg["vocab_size"]
    assert len(tok.encode("<asr_text>", add_special_tokens=False)) == 1
    assert "<asr_text>" not in tok.all_special_tokens  # must survive skip_special_tokens=True
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert set(tok_cfg["extra_special_tokens"]) == {"audio_token", "audio_bos_token", "audio_eos_token"}

    prompt = model._build_text_prompt(context="ctx", force_language="English")
    assert prompt == (
        "<|im_start|>system\nctx<|im_end|>\n"
        "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n"
        "<|im_start|>assistant\nlanguage English<asr_text>"
    )


def test_transcribe_auto_language(model):
    from qwen_asr.inference.qwen3_asr import ASRTranscription

    results = model.transcribe(audio=(noise(2.0), SR), language=None, context="")
    assert isinstance(results, list) and len(results) == 1
    assert isinstance(results[0], ASRTranscription)
    assert isinstance(results[0].language, str) and isinstance(results[0].text, str)
    assert results[0].time_stamps is None


def test_transcribe_forced_language_and_batch(model):
    results = model.transcribe(audio=(noise(1.0, 1), SR), language="English", context="")
    assert len(results) == 1 and results[0].language == "English"  # forced, not generated
    assert isinstance(results[0].text, str)

    batch = model.transcribe(
        audio=[(noise(1.5, 2), SR), (noise(0.7, 3), SR)], language=[None, "english"], context="names: Ada"
    )
    assert len(batch) == 2
    assert all(isinstance(r.language, str) and isinstance(r.text, str) for r in batch)
    assert batch[1].language == "English"


def test_tiny_generation_runs_to_max_new_tokens(model):
    """The hard-coded real EOS ids (151645/151643) are outside the tiny vocabulary: no early stop."""
    import torch

    prompt = model._build_text_prompt(context="", force_language=None)
    inputs = model.processor(text=[prompt], audio=[noise(1.0)], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
    new = out.sequences[:, inputs["input_ids"].shape[1] :]
    assert new.shape == (1, MAX_NEW_TOKENS)
    assert int(new.max()) < model.model.thinker.lm_head.out_features


def test_two_transcribe_calls_at_once_on_one_engine_give_what_each_gives_alone(folder):
    """The scheduler runs a short request beside a long one's batch on the same engine. The thinker keeps
    `rope_deltas` (one per batch row) on the module between decode steps: without per-thread state, a
    call of 3 rows reads a 1-row call's deltas (or the reverse) — a shape error or shifted positions.
    Many rounds, so the calls' steps interleave; the results must equal each call made alone."""
    import threading

    import numpy as np

    from services.asr.engine import ASRItem, QwenASREngine

    engine = QwenASREngine.load(str(folder), backend="transformers", device="cpu", dtype="float32",
                                max_new_tokens=MAX_NEW_TOKENS)
    one = [ASRItem(noise(1.0, seed=1))]
    three = [ASRItem(noise(s, seed=k)) for k, s in enumerate((0.7, 2.0, 3.1))]
    alone = (engine.transcribe(one), engine.transcribe(three))
    got: dict[str, list] = {"one": [], "three": []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def call(name, items):
        try:
            start.wait()
            for _ in range(6):
                got[name].append(engine.transcribe(items))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=("one", one)), threading.Thread(target=call, args=("three", three))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert got["one"] == [alone[0]] * 6 and got["three"] == [alone[1]] * 6
