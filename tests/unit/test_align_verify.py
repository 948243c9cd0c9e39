"""Lyrics that don't match the audio (services/aligner/verify.py), on constructed alignments and transcripts:
a line nobody sang is `not_found`, a sung line the lyrics lack is `extra_audio`, and a line sung a little
differently (a word misheard, early or late within the margin) is still found."""

from __future__ import annotations

from services.aligner.review import ReviewRules, review_segments, summarize
from services.aligner.verify import VerifyRules, tokens, verify


def line(text: str, start: float, step: float = 0.4) -> dict:
    words = [{"text": w, "start": start + step * i, "end": start + step * i + 0.3} for i, w in enumerate(text.split())]
    return {"text": text, "start": start, "end": words[-1]["end"] if words else start, "words": words}


LYRICS = [line("Morning light on the water", 2.0), line("We sing the long way home", 6.0),
          line("This line is never sung", 10.0), line("And the night comes after", 14.0)]
HEARD = [line("morning light on the water", 2.1), line("we sing the long way hom", 6.2),  # one word misheard
         line("and the night comes after", 14.3), line("somebody shouts something extra here", 20.0)]


def test_tokens_compare_words_and_cjk_characters():
    assert tokens("Don't STOP, me-now!") == ["dont", "stop", "me", "now"]
    assert tokens("你好 world") == ["你", "好", "world"]


def test_a_line_nobody_sang_is_not_found_and_a_line_the_lyrics_lack_is_extra_audio():
    segs = [dict(s, words=[dict(w) for w in s["words"]]) for s in LYRICS]
    review_segments(segs, ReviewRules(min_confidence=0.0))
    extra = verify(segs, HEARD, VerifyRules())
    assert [s["found"] for s in segs] == [True, True, False, True]
    assert [s["review"] for s in segs] == [[], [], ["not_found"], []]
    assert summarize(segs)["lines_to_review"] == [2]
    assert extra == [{"start": 20.0, "end": 21.9, "text": "somebody shouts something extra here"}]


def test_heard_words_count_only_near_the_line_and_only_once():
    segs = [line("la la la", 2.0), line("la la la", 30.0)]  # a repeated line: each needs its own hearing
    extra = verify(segs, [line("la la la", 2.0)], VerifyRules())
    assert [s["found"] for s in segs] == [True, False] and extra == []


def test_short_stray_words_are_not_extra_audio_and_blank_lines_are_not_judged():
    segs = [line("hello there", 1.0), {"text": "", "start": 2.0, "end": 3.0, "words": []}]
    extra = verify(segs, [line("hello there", 1.0), line("uh oh", 8.0)], VerifyRules(min_extra_words=3))
    assert [s["found"] for s in segs] == [True, None] and extra == []
