"""Confidence and review flags of an alignment (services/aligner/review.py) on constructed aligner scores:
the tiny model's scores are random, so the decisions are proven here on values whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from services.aligner import lyrics
from services.aligner.engine import UnitTime
from services.aligner.review import ReviewRules, peak_mass, review_segments, unit_scores

CLASSES = 400


def peaked(at: int, width: float) -> np.ndarray:
    """Probabilities over the time classes: a Gaussian bump at `at` with `width` classes of spread."""
    x = np.exp(-0.5 * ((np.arange(CLASSES) - at) / width) ** 2)
    return x / x.sum()


def test_a_sharp_peak_is_sure_and_a_spread_one_is_not():
    probs = np.stack([peaked(100, 0.6), peaked(100, 40.0), np.full(CLASSES, 1 / CLASSES)])
    chosen, mass = peak_mass(probs)
    assert list(chosen[:2]) == [100, 100]
    assert mass[0] > 0.99 and mass[1] < 0.1 and mass[2] == pytest.approx(3 / CLASSES)  # flat: argmax 0, three classes at the edge
    split = np.zeros(CLASSES)
    split[[200, 201]] = 0.5  # sure, but between two neighbouring classes: still sure
    assert peak_mass(split[None])[1][0] == pytest.approx(1.0)
    edge = np.zeros(CLASSES)
    edge[0] = 1.0  # at the first class: the window is cut, not wrapped
    assert peak_mass(edge[None])[1][0] == pytest.approx(1.0)


def test_a_unit_is_as_sure_as_its_weaker_time_and_aligned_only_if_both_were_kept():
    mass = np.array([0.9, 0.4, 0.8, 0.95])
    raw = np.array([80.0, 160.0, 240.0, 320.0])
    fixed = np.array([80.0, 160.0, 200.0, 320.0])  # the second unit's start was interpolated
    assert unit_scores(mass, raw, fixed) == [(0.4, True), (0.8, False)]


def segments_from(unit_times, lines=("one two", "three four"), duration=20.0):
    units = [line.split() for line in lines]
    return lyrics.rebuild_segments(list(lines), units, unit_times, duration)


def test_each_reason_flags_its_line_and_only_it():
    rules = ReviewRules(min_confidence=0.5, min_unit_seconds=0.08, max_unit_seconds=4.0)
    good = [UnitTime(1.0, 1.4, 0.9, True), UnitTime(1.5, 2.0, 0.8, True)]
    cases = {
        "low_confidence": [UnitTime(3.0, 3.4, 0.3, True), UnitTime(3.5, 3.9, 0.4, True)],
        "interpolated": [UnitTime(3.0, 3.4, 0.9, False), UnitTime(3.5, 3.9, 0.9, True)],
        "too_fast": [UnitTime(3.0, 3.02, 0.9, True), UnitTime(3.02, 3.05, 0.9, True)],
        "too_slow": [UnitTime(3.0, 6.0, 0.9, True), UnitTime(8.0, 12.5, 0.9, True)],
    }
    for reason, second in cases.items():
        segs = segments_from(good + second)
        summary = review_segments(segs, rules)
        assert [s["needs_review"] for s in segs] == [False, True], reason
        assert segs[1]["review"] == [reason] and segs[0]["review"] == []
        assert summary["lines"] == 2 and summary["needs_review"] == 1 and summary["lines_to_review"] == [1]
        assert segs[0]["confidence"] == pytest.approx(0.85)
        assert [w["aligned"] for w in segs[1]["words"]] == [u.aligned for u in second]


def test_a_line_without_words_is_never_flagged_and_old_engines_have_no_scores():
    segs = lyrics.rebuild_segments(["la la", "...", "end"], [["la", "la"], [], ["end"]],
                                   [(1.0, 1.5), (1.6, 2.0), (5.0, 5.5)], duration=10.0)
    summary = review_segments(segs, ReviewRules())
    assert [s["needs_review"] for s in segs] == [False, False, False]
    assert [s["confidence"] for s in segs] == [None, None, None] and summary["mean_confidence"] is None
    assert "confidence" not in segs[0]["words"][0]


def test_the_summary_lists_the_lines_to_review_in_order():
    times = [UnitTime(0.5 * i, 0.5 * i + 0.4, 0.2 if i in (2, 3, 6, 7) else 0.9, True) for i in range(8)]
    segs = segments_from(times, lines=("a b", "c d", "e f", "g h"))
    summary = review_segments(segs, ReviewRules())
    assert summary["lines_to_review"] == [1, 3] and summary["needs_review"] == 2
    assert summary["mean_confidence"] == pytest.approx(np.mean([0.9, 0.2, 0.9, 0.2]), abs=1e-3)
