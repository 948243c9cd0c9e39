"""The aligner engine's confidence and `aligned` flags come from the model's own time-class scores: on the
tiny aligner with its classifier set so the answer is known (its random weights give near-flat scores),
a sharp head gives confident, aligned units at the class it favours, and a flat head gives unsure ones.
The decisions built on them are unit-tested in tests/unit/test_align_review.py."""

from __future__ import annotations

import numpy as np
import pytest

FAMILY = "aligner"


@pytest.fixture
def engine(folder):
    from services.aligner.engine import QwenForcedAlignerEngine

    return QwenForcedAlignerEngine.load(str(folder), device="cpu", dtype="float32")


def head(engine):
    thinker = engine.wrapper.model.thinker
    return thinker.lm_head if hasattr(thinker, "lm_head") else thinker.get_output_embeddings()


def run(engine):
    from services.aligner.engine import AlignJob

    audio = np.random.default_rng(0).normal(0, 0.05, 16000 * 3).astype(np.float32)
    (times,) = engine.align([AlignJob(audio, ["one", "two", "three"])])
    return times


def test_a_sharp_time_class_is_confident_and_aligned(engine):
    import torch

    lm = head(engine)
    with torch.no_grad():
        lm.weight.zero_()
        bias = torch.zeros(lm.weight.shape[0])
        bias[10] = 30.0  # every timestamp: class 10, with all the mass
        if lm.bias is None:
            lm.bias = torch.nn.Parameter(bias)
        else:
            lm.bias.copy_(bias)
    times = run(engine)
    assert len(times) == 3
    assert all(t.confidence > 0.99 and t.aligned for t in times), times
    assert all(t.start == pytest.approx(10 * engine.segment_ms / 1000) for t in times)


def test_a_flat_head_is_unsure(engine):
    import torch

    lm = head(engine)
    with torch.no_grad():
        lm.weight.zero_()
        if lm.bias is not None:
            lm.bias.zero_()
    times = run(engine)
    classes = lm.weight.shape[0]
    assert all(t.confidence <= 5 / classes + 1e-6 for t in times), (times, classes)
