"""bench/align_accuracy.py's figures on constructed lines (the script itself needs a real host)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("align_accuracy", Path(__file__).parents[2] / "bench/align_accuracy.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_errors_shares_and_how_well_the_review_finds_bad_lines():
    lines = [(1.0, 1.1, False), (5.0, 5.4, False), (9.0, 11.0, True), (14.0, 14.0, True), (20.0, 23.0, False)]
    got = bench.score(lines)
    assert got["lines"] == 5 and got["median_abs_error_s"] == 0.4
    assert got["mean_abs_error_s"] == pytest.approx((0.1 + 0.4 + 2.0 + 0.0 + 3.0) / 5, abs=1e-3)
    assert (got["within_0.3s"], got["within_0.5s"], got["within_1.0s"]) == (0.4, 0.6, 0.6)
    assert got["review_precision"] == 0.5 and got["review_recall"] == 0.5  # 1 of 2 flagged is bad; 1 of 2 bad


def test_reference_and_answer_are_paired_by_their_non_blank_lines(tmp_path):
    ref = tmp_path / "song.csv"
    ref.write_text("start,end,text\n1.5,3.0,one\n4.0,6.0,two\n")
    segs = [{"text": "one", "start": 1.4, "needs_review": False}, {"text": "", "start": 3.0},
            {"text": "two", "start": 4.5, "needs_review": True}]
    assert bench.pair(segs, bench.reference_starts(ref)) == [(1.4, 1.5, False), (4.5, 4.0, True)]
    with pytest.raises(ValueError, match="2 non-blank lines aligned, 1 reference"):
        bench.pair(segs, [1.0])
