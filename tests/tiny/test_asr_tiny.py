"""The tiny Qwen3-ASR loads and transcribes through the production loader only.

Weights are random: assert types, counts and control flow, never the transcribed text.
"""

from __future__ import annotations

import json

import numpy as np

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

    engine = QwenASREngine.load(str(folder), device="cpu", dtype="float32",
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


# The engine runs the package's transcribe steps itself (services/asr/engine.py): same text and language,
# plus the transcript's tokens, their log-probabilities and the text while it is generated.


@pytest.fixture(scope="module")
def engine(folder):
    from services.asr.engine import QwenASREngine

    return QwenASREngine.load(str(folder), device="cpu", dtype="float32",
                              max_new_tokens=MAX_NEW_TOKENS)


def _windows():
    """Three windows: detected language; a forced one (package name in another case) with a context,
    shorter than the package's 0.5-s minimum; a loud one (peaks over 1: the package rescales it)."""
    from services.asr.engine import ASRItem

    return [ASRItem(noise(1.2, seed=4)), ASRItem(noise(0.3, seed=5), context="names: Ada", language="english"),
            ASRItem(noise(2.1, seed=6) * 30, context="names: Ada")]


def test_engine_gives_the_package_transcribe_texts_and_languages(engine):
    from services.asr.engine import MIN_SAMPLES, _printable

    items = _windows()
    got = engine.transcribe(items)
    padded = [(np.pad(it.audio, (0, max(0, MIN_SAMPLES - len(it.audio)))), SR) for it in items]
    want = engine.model.transcribe(audio=padded, context=[it.context for it in items],
                                   language=[it.language for it in items])
    assert [(r.language, r.text) for r in got] == [(o.language or "", _printable(o.text)) for o in want]
    assert got[1].language == "English"


def _transcript_positions(ids: list[int], forced: bool, tokenizer) -> list[int]:
    """The spec of ASRResult.tokens, restated: generated positions after the <asr_text> token (all when
    the language is forced or no <asr_text> came), special tokens left out."""
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    tag = tokenizer.convert_tokens_to_ids("<asr_text>")
    start = 0 if forced or tag not in ids else ids.index(tag) + 1
    return [p for p in range(start, len(ids)) if ids[p] not in special]


def test_tokens_and_logprobs_are_the_transcripts_and_match_recomputations(engine):
    """Log-probabilities: the engine keeps one step's scores at a time; checked against transformers'
    compute_transition_scores over a generate with output_scores=True (processed scores), and against
    one forward pass per window alone over its prompt and generated tokens (the model's logits, no
    logits processor: Qwen3-ASR's generation config has none, so the two must agree)."""
    import math

    import torch
    from qwen_asr.inference.utils import normalize_audios, parse_asr_output

    from services.asr.engine import MIN_SAMPLES, _printable

    items = _windows()
    results = engine.transcribe(items)
    asr = engine.model
    tok = asr.processor.tokenizer
    wavs = normalize_audios([(np.pad(it.audio, (0, max(0, MIN_SAMPLES - len(it.audio)))), SR) for it in items])
    langs = [None, "English", None]
    prompts = [asr._build_text_prompt(context=it.context, force_language=lang) for it, lang in zip(items, langs)]
    with torch.no_grad():
        inputs = asr.processor(text=prompts, audio=wavs, return_tensors="pt", padding=True)
        out = asr.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, output_scores=True)
        steps = asr.model.thinker.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    generated = out.sequences[:, inputs["input_ids"].shape[1]:]

    for row, (r, lang) in enumerate(zip(results, langs)):
        assert len(r.tokens) == len(r.logprobs)
        assert all(isinstance(t, int) for t in r.tokens)
        assert all(math.isfinite(lp) and lp <= 0 for lp in r.logprobs)
        ids = generated[row].tolist()
        keep = _transcript_positions(ids, lang is not None, tok)
        assert r.tokens == [ids[p] for p in keep]
        assert r.logprobs == pytest.approx([float(steps[row, p]) for p in keep], abs=5e-5)
        if r.tokens:  # the tokens decode to the text (before the package's clean-up)
            raw = tok.decode(r.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            assert _printable(parse_asr_output(raw, user_language="English")[1]) == r.text

        # One window alone: prompt + every generated token in one forward pass.
        with torch.no_grad():
            alone = asr.processor(text=[prompts[row]], audio=[wavs[row]], return_tensors="pt", padding=True)
            n = alone["input_ids"].shape[1]
            full = torch.cat([alone["input_ids"], generated[row : row + 1]], dim=1)
            logits = asr.model.thinker(input_ids=full, attention_mask=torch.ones_like(full),
                                       input_features=alone["input_features"],
                                       feature_attention_mask=alone["feature_attention_mask"]).logits
        logp = torch.log_softmax(logits[0, n - 1 : -1].float(), dim=-1)
        recomputed = [float(logp[p, ids[p]]) for p in keep]
        assert r.logprobs == pytest.approx(recomputed, abs=5e-5)


def test_streamed_pieces_concatenate_to_each_text_and_come_while_generating(engine):
    import threading

    items = _windows()
    alone = engine.transcribe(items)
    model = engine.model.model
    generating = threading.Event()
    calls: list[tuple[int, str, bool, int]] = []
    generate = model.generate

    def watched(*args, **kwargs):
        generating.set()
        try:
            return generate(*args, **kwargs)
        finally:
            generating.clear()

    model.generate = watched
    try:
        results = engine.transcribe(items, on_text=lambda i, p, tokens: calls.append(
            (i, p, generating.is_set(), threading.get_ident(), tokens)))
    finally:
        del model.generate
    assert results == alone  # streaming changes nothing in the results
    assert {c[3] for c in calls} == {threading.get_ident()}
    assert all(isinstance(p, str) and (p or tokens) for _, p, _, _, tokens in calls)
    for i, r in enumerate(results):
        assert "".join(p for j, p, _, _, _ in calls if j == i) == r.text
        # Each piece's tokens are those generated since the previous piece: together, the window's
        # transcript tokens with their log-probabilities, in order (what include[]=logprobs' deltas carry).
        handed = [t for j, _, _, _, tokens in calls if j == i for t in tokens]
        assert r.tokens and handed == list(zip(r.tokens, r.logprobs))
    # The forced-language window's text is all transcript: it streams during generate.
    assert any(during for i, _, during, _, _ in calls if i == 1)
    # ... and its tokens with it: some piece during generate hands over tokens.
    assert any(during and tokens for i, _, during, _, tokens in calls if i == 1)


def test_batch_order_is_kept(engine):
    """Rows forced to different languages come back in the order given, each with its own tokens."""
    from services.asr.engine import ASRItem

    langs = ["French", "English", "German"]
    items = [ASRItem(noise(s, seed=10 + k), language=lang) for k, (s, lang) in enumerate(zip((1.1, 0.6, 2.4), langs))]
    batch = engine.transcribe(items)
    assert [r.language for r in batch] == langs
    for item, r in zip(items, batch):
        (single,) = engine.transcribe([item])
        assert single.language == r.language and len(single.tokens) == len(r.tokens)


# TranscriptStream: what it streams is always the beginning of the package's final text.

def _stream(raw: str, forced: bool, sizes) -> tuple[list[str], str]:
    """Feed `raw` in pieces of the given sizes (cycled); returns (pieces before finish, final text)."""
    from qwen_asr.inference.utils import parse_asr_output

    from services.asr.engine import TranscriptStream, _printable

    stream = TranscriptStream(forced=forced)
    pieces, at, k = [], 0, 0
    while at < len(raw):
        step = sizes[k % len(sizes)]
        piece = stream.feed(raw[at : at + step])
        if piece:
            pieces.append(piece)
        at, k = at + step, k + 1
    final = _printable(parse_asr_output(raw, user_language="English" if forced else None)[1])
    done = "".join(pieces)
    assert final.startswith(done), (raw, done, final)
    assert done + stream.finish(final) == final and "".join(stream.emitted) == final
    return pieces, final


def test_stream_holds_the_language_prefix_and_surrounding_whitespace():
    pieces, final = _stream(" language English<asr_text> Hello world. Bye \n", forced=False, sizes=[3, 1, 4])
    assert final == "Hello world. Bye"
    assert "".join(pieces) == "Hello world. Bye"  # all of it before finish: nothing was in doubt
    pieces, final = _stream("language None<asr_text>", forced=False, sizes=[2])
    assert pieces == [] and final == ""
    pieces, final = _stream("no tag at all", forced=False, sizes=[2])  # the whole output is the text
    assert pieces == [] and final == "no tag at all"
    pieces, final = _stream("\x00 language English<asr_text>z", forced=True, sizes=[5])
    assert final == "language English<asr_text>z" and "".join(pieces) == final


def test_stream_never_sends_what_the_repetition_fix_removes():
    """Random outputs with loops (runs of one character, patterns repeated around the package's 20
    times), split at random: what is streamed before the end is always a prefix of the final text."""
    import random

    from qwen_asr.inference.utils import detect_and_fix_repetitions

    rng = random.Random(0)
    words = ["hello ", "ab", "a", "b", " ", "\n", "x.", "é", "\x07", "<asr_text>", "<asr", "_text>", "语"]
    changed = 0
    for case in range(400):
        parts = ["language English<asr_text>"] if rng.random() < 0.6 else []
        for _ in range(rng.randint(1, 8)):
            roll = rng.random()
            if roll < 0.3:
                pattern = "".join(rng.choice("ab c") for _ in range(rng.randint(1, 6)))
                parts.append(pattern * rng.randint(12, 45))
            elif roll < 0.45:
                parts.append(rng.choice("ab ") * rng.randint(15, 30))
            else:
                parts.append(rng.choice(words))
        raw = "".join(parts)
        changed += detect_and_fix_repetitions(raw.strip()) != raw.strip()
        _stream(raw, forced=rng.random() < 0.3, sizes=[rng.randint(1, 6) for _ in range(5)])
    assert changed > 100  # the cases exercise the fix


def test_token_ends_place_every_token_inside_its_windows_text(engine):
    """verbose_json gives each sentence the tokens that end inside it: the offsets must rise, stay inside
    the text, and the last must close it (the tiny model's random text is ordinary text: no repetition
    was collapsed)."""
    from services.asr.engine import ASRItem

    results = engine.transcribe([ASRItem(noise(2.0, seed=5)), ASRItem(noise(1.0, seed=6), language="English")])
    checked = 0
    for r in results:
        ends = engine.token_ends(r.tokens, r.text)
        assert len(ends) == len(r.tokens)
        assert ends == sorted(ends) and all(0 <= e <= len(r.text) for e in ends)
        if r.tokens and r.text:
            assert ends[-1] == len(r.text), (ends, r.text)
            tokenizer = engine.model.processor.tokenizer
            head = tokenizer.decode(r.tokens[:1], skip_special_tokens=True).strip()
            assert r.text.startswith(head[: ends[0]]) and ends[0] <= len(head) + 1
            checked += 1
    assert checked >= 1


def test_token_bytes_add_up_to_the_decoded_tokens(engine):
    """include[]=logprobs gives each token's bytes: joined, they are exactly what the tokens decode to."""
    from services.asr.engine import ASRItem

    (r,) = engine.transcribe([ASRItem(noise(2.0, seed=8))])
    assert r.tokens
    parts = engine.token_bytes(r.tokens)
    assert len(parts) == len(r.tokens) and all(isinstance(p, bytes) and p for p in parts)
    tokenizer = engine.model.processor.tokenizer
    decoded = tokenizer.decode(r.tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert b"".join(parts).decode("utf-8", errors="replace") == decoded
