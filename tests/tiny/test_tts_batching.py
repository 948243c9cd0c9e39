"""The TTS continuous-batching loop against the package's own generate, on the tiny checkpoint.

The tiny talker's weights are near zero: batch contamination (a wrong mask, a misaligned cache row)
would move its logits by less than argmax can see. So the talker is re-initialised at std 0.2, and the
EOS row of its head scaled so that some requests stop on EOS and others run to their frame cap. Greedy
decoding (the tiny checkpoint's generation config) makes the package's codes the reference: each
request run through the loop, joining and leaving a running batch at different steps, must give exactly
the codes the package's generate gives for it alone.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

FAMILY = "tts"

TEXTS = [("Hello there, this is a test.", "ryan", "english", None),
         ("Short.", "vivian", "chinese", None),
         ("A third request that is somewhat longer.", "aiden", "auto", "speak softly"),
         ("Numbers 1 2 3.", "ryan", "english", None),
         ("Yes", "dylan", "chinese", None),
         ("What a day it has been", "sohee", "korean", None)]
CAP = 40


@pytest.fixture(scope="module")
def engine(folder):
    import torch

    from services.tts.engine import QwenTTSEngine

    eng = QwenTTSEngine.load(str(folder), "cpu", "float32")
    assert eng.sampling["do_sample"] is False and eng.sampling["subtalker_dosample"] is False
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in eng.tts.model.talker.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        head = eng.tts.model.talker.codec_head.weight
        head[eng._eos] = head[eng._eos] / head[eng._eos].norm() * head.norm(dim=1).mean() * 2.0
    return eng


def package_codes(engine, text, voice, language, instructions, cap):
    """What qwen_tts's own generate_custom_voice makes of the request alone, before decoding: its prompt
    helpers, then the model's generate (max_new_tokens counts talker steps: frames + 1)."""
    tts = engine.tts
    instruct = [tts._tokenize_texts([tts._build_instruct_text(instructions)])[0] if instructions else None]
    codes, _ = tts.model.generate(input_ids=tts._tokenize_texts([tts._build_assistant_text(text)]),
                                  instruct_ids=instruct, languages=[language], speakers=[voice],
                                  non_streaming_mode=True, max_new_tokens=cap + 1, **engine.sampling)
    return codes[0]


@pytest.fixture(scope="module")
def reference(engine):
    """The package's codes for each request alone (batch 1)."""
    import torch

    out = []
    for text, voice, lang, ins in TEXTS:
        with torch.inference_mode():
            out.append(package_codes(engine, text, voice, lang, ins, CAP))
    lengths = [len(c) for c in out]
    assert min(lengths) < CAP and max(lengths) == CAP, lengths  # both ends happen: EOS and the cap
    return out


def _rows(engine, loop, texts, cap=CAP):
    import torch

    from services.tts.batching import Row

    rows, frames, ends = [], [], []
    done = threading.Event()
    for text, voice, lang, ins in texts:
        with torch.inference_mode():
            emb, pad = loop.prompt(text, voice, lang, ins)
        mine: list = []
        end: list = []

        def on_end(reason, err, end=end):
            end.append((reason, err))
            if all(e for e in ends):
                done.set()

        frames.append(mine)
        ends.append(end)
        rows.append(Row(emb, pad, cap, mine.append, on_end))
    return rows, frames, ends, done


def test_every_request_gets_the_codes_the_package_gives_it_alone(engine, reference):
    import torch

    from services.tts.batching import LENGTH, STOP, TalkerLoop

    loop = TalkerLoop(engine.tts, engine.sampling, max_batch_size=8, max_tokens=100_000)
    rows, frames, ends, done = _rows(engine, loop, TEXTS)
    peak, pending, lock = [0], list(rows[1:]), threading.Lock()

    def next_joins():
        with lock:
            row = pending.pop(0) if pending else None
        if row is not None:
            loop.submit(row)

    for r in rows:  # the others join one by one while earlier ones run: every second frame, or when one ends
        def on_frame(frame, add=r.on_frame):
            add(frame)
            peak[0] = max(peak[0], loop.active)
            if sum(map(len, frames)) % 2 == 1:
                next_joins()

        def on_end(reason, err, end=r.on_end):
            end(reason, err)
            next_joins()

        r.on_frame, r.on_end = on_frame, on_end
    loop.submit(rows[0])
    assert done.wait(120)
    loop.close()
    for k, ref in enumerate(reference):
        got = torch.stack(frames[k])
        assert got.shape == ref.shape and torch.equal(got, ref), f"request {k}: {got.shape} vs {ref.shape}"
        assert ends[k] == [(STOP if len(ref) < CAP else LENGTH, None)]
    assert peak[0] >= 4  # they really ran together
    assert loop.step_rows / loop.steps > 2


def test_a_cancelled_request_leaves_at_once_and_the_others_are_untouched(engine, reference):
    import torch

    from services.tts.batching import CANCELLED, TalkerLoop

    loop = TalkerLoop(engine.tts, engine.sampling, max_batch_size=8, max_tokens=100_000)
    rows, frames, ends, done = _rows(engine, loop, TEXTS[:3])
    first = rows[0].on_frame

    def on_frame(frame):  # the client of request 0 goes away after 3 frames
        first(frame)
        if len(frames[0]) == 3:
            rows[0].cancel.set()

    rows[0].on_frame = on_frame
    for r in rows:
        loop.submit(r)
    assert done.wait(120)
    loop.close()
    assert len(frames[0]) == 3 and ends[0] == [(CANCELLED, None)]
    for k in (1, 2):
        assert torch.equal(torch.stack(frames[k]), reference[k])


def test_the_token_budget_holds_a_request_until_it_fits(engine, reference):
    import torch

    from services.tts.batching import TalkerLoop

    probe = TalkerLoop(engine.tts, engine.sampling, max_batch_size=8, max_tokens=100_000)
    rows, *_ = _rows(engine, probe, TEXTS[:2])
    budget = max(r.cost for r in rows) + 1  # one fits, two do not
    loop = TalkerLoop(engine.tts, engine.sampling, max_batch_size=8, max_tokens=budget)
    rows, frames, ends, done = _rows(engine, loop, TEXTS[:2])
    order: list[int] = []
    for k, r in enumerate(rows):
        r.on_frame = (lambda f, k=k, add=r.on_frame: (order.append(k), add(f)))
    for r in rows:
        loop.submit(r)
    assert done.wait(120)
    loop.close()
    assert order == [0] * len(frames[0]) + [1] * len(frames[1])  # one after the other
    assert torch.equal(torch.stack(frames[1]), reference[1])
    too_big = _rows(engine, loop, TEXTS[:1], cap=budget)[0][0]
    with pytest.raises(ValueError, match="budget"):
        loop.submit(too_big)


def test_sampled_codes_equal_the_packages_with_the_same_seed(engine):
    """With the real checkpoint's sampling switched on, one request alone draws the same random numbers in
    the same order as the package's generate (first code, then the code predictor's 15, per frame), so
    the same seed gives the same codes: our processors, warpers and predictor loop are the package's."""
    import torch

    from services.tts.batching import TalkerLoop

    sampling = {**engine.sampling, "do_sample": True, "subtalker_dosample": True}
    sampled = SimpleNamespace(tts=engine.tts, sampling=sampling)
    text, voice, lang, ins = TEXTS[0]
    torch.manual_seed(11)
    with torch.inference_mode():
        ref = package_codes(sampled, text, voice, lang, ins, CAP)
    loop = TalkerLoop(engine.tts, sampling, max_batch_size=8, max_tokens=100_000)
    rows, frames, ends, done = _rows(engine, loop, TEXTS[:1])
    torch.manual_seed(11)
    loop.submit(rows[0])
    assert done.wait(120)
    loop.close()
    got = torch.stack(frames[0])
    assert got.shape == ref.shape and torch.equal(got, ref)
    torch.manual_seed(12)
    with torch.inference_mode():
        other = package_codes(sampled, text, voice, lang, ins, CAP)
    assert not torch.equal(other[: min(len(other), len(ref))], ref[: min(len(other), len(ref))])  # it does sample


def test_an_idle_loop_starts_requests_that_arrive_together_in_one_step(engine):
    """Requests that arrive together (still building their prompts when the first is submitted) join the
    first step together, instead of the first stepping alone and holding the others' join back. The wait
    ends when none is preparing, not at its bound (30 s here: the test would time out)."""
    from services.tts.batching import TalkerLoop

    loop = TalkerLoop(engine.tts, engine.sampling, max_batch_size=8, max_tokens=100_000, gather_seconds=30)
    rows, frames, ends, done = _rows(engine, loop, TEXTS[:4], cap=6)
    steps: list[int] = []
    loop.on_step = steps.append
    preparing = [loop.preparing() for _ in rows]  # four requests arrive; each is counted at once
    for row, p in zip(rows, preparing):
        loop.submit(row)
        time.sleep(0.2)  # building the next prompt takes a while: a loop that did not wait would step now
        assert loop.steps == 0  # the others are still preparing: nothing ran yet
        p.release()
    assert done.wait(20)
    loop.close()
    assert steps[0] == 4, steps


def test_a_request_alone_does_not_wait_for_the_gathering_bound(engine):
    from services.tts.batching import TalkerLoop

    loop = TalkerLoop(engine.tts, engine.sampling, max_batch_size=8, max_tokens=100_000, gather_seconds=30)
    rows, frames, ends, done = _rows(engine, loop, TEXTS[:1], cap=6)
    with loop.preparing():
        loop.submit(rows[0])
    assert done.wait(20)  # not 30 s: nobody else was preparing
    loop.close()
    assert loop.steps >= 1
