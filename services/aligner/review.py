"""How sure the aligner is, and which lines a person should check: pure decisions over the aligner's own
scores, unit-tested on constructed values (the tiny model's scores are random).

The forced aligner classifies each unit's start and end into one of its time classes (80 ms each on the
real head). A unit's **confidence** is the probability mass its two predictions put within
`PEAK_RADIUS` classes (±160 ms) of the chosen class, the smaller of the two: a sharp peak is a time the
model is sure of; mass spread over the song is a guess. Mass near the peak rather than the peak's own
probability, so that a sure prediction split over two neighbouring classes still counts as sure. A unit
is **aligned** when both its times are the model's own predictions; qwen_asr's repair of non-monotonic
predictions replaces the others by interpolation (the "interpolated instead of aligned" words of the
lyric tools), and they are marked.

A line **needs review** for any of these reasons, each named in `review`:
- `low_confidence`: its words' mean confidence is under `min_confidence`;
- `interpolated`: at least half of its words were placed by the repair, not by the model;
- `too_fast`: under `min_unit_seconds` per word (a line squeezed into a gap, or into nothing);
- `too_slow`: over `max_unit_seconds` per word (a line stretched over an instrumental);
- `not_found` (with `verify`, verify.py): the ASR did not hear the line where it was placed.
A line without words (blank, punctuation) is never flagged: it has no time of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PEAK_RADIUS = 2


@dataclass(frozen=True)
class ReviewRules:
    min_confidence: float = 0.5
    min_unit_seconds: float = 0.08
    max_unit_seconds: float = 4.0


def peak_mass(probs: np.ndarray, radius: int = PEAK_RADIUS) -> tuple[np.ndarray, np.ndarray]:
    """(the chosen class, the probability mass within `radius` classes of it) for each row of `probs`
    (rows: predictions; columns: time classes; each row sums to 1)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    chosen = probs.argmax(axis=1)
    cum = np.concatenate([np.zeros((probs.shape[0], 1)), np.cumsum(probs, axis=1)], axis=1)
    lo = np.clip(chosen - radius, 0, probs.shape[1])
    hi = np.clip(chosen + radius + 1, 0, probs.shape[1])
    rows = np.arange(probs.shape[0])
    return chosen, np.clip(cum[rows, hi] - cum[rows, lo], 0.0, 1.0)


def unit_scores(mass: np.ndarray, raw_ms: np.ndarray, fixed_ms: np.ndarray) -> list[tuple[float, bool]]:
    """(confidence, aligned) per unit from its two predictions (start, end, start, end, ...): the smaller
    mass of the two, and whether the repair kept both predicted times."""
    n = len(mass) // 2
    kept = np.isclose(np.asarray(raw_ms, float)[: 2 * n], np.asarray(fixed_ms, float)[: 2 * n])
    return [(round(float(min(mass[2 * k], mass[2 * k + 1])), 3), bool(kept[2 * k] and kept[2 * k + 1]))
            for k in range(n)]


def review_segments(segments: list[dict], rules: ReviewRules) -> dict:
    """Adds `confidence`, `needs_review` and `review` (reasons) to each segment (words carry `confidence`
    and `aligned` already, when the aligner gave them); returns the summary."""
    for seg in segments:
        words = seg.get("words") or []
        scored = [w for w in words if w.get("confidence") is not None]
        seg["confidence"] = round(float(np.mean([w["confidence"] for w in scored])), 3) if scored else None
        reasons: list[str] = []
        if words:
            if seg["confidence"] is not None:
                if seg["confidence"] < rules.min_confidence:
                    reasons.append("low_confidence")
            if sum(w.get("aligned") is False for w in words) * 2 >= len(words):
                reasons.append("interpolated")
            per_unit = (seg["end"] - seg["start"]) / len(words)
            if per_unit < rules.min_unit_seconds:
                reasons.append("too_fast")
            elif per_unit > rules.max_unit_seconds:
                reasons.append("too_slow")
        seg["needs_review"] = bool(reasons)
        seg["review"] = reasons
    return summarize(segments)


def summarize(segments: list[dict]) -> dict:
    """The review summary of segments already marked (by review_segments, and verify.verify after it)."""
    flagged = [i for i, seg in enumerate(segments) if seg.get("needs_review")]
    confidences = [seg["confidence"] for seg in segments if seg.get("words") and seg.get("confidence") is not None]
    return {"lines": len(segments), "needs_review": len(flagged), "lines_to_review": flagged,
            "mean_confidence": round(float(np.mean(confidences)), 3) if confidences else None}


def review_rules(settings) -> ReviewRules:
    """The rules of QWEN_ALIGNER_REVIEW_* (the aligner service and the gateway's no-lyrics mode)."""
    cfg = settings.aligner
    return ReviewRules(min_confidence=cfg.review_min_confidence, min_unit_seconds=cfg.review_min_word_seconds,
                       max_unit_seconds=cfg.review_max_word_seconds)
