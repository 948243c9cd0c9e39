"""Lyrics that don't match the audio: each lyric line compared with what the ASR heard where the aligner
put it. Pure decisions over constructed inputs (unit-tested: the tiny models hear random words).

`heard` is the ASR's transcript timed by the aligner (lines with timed words, as the no-lyrics mode makes
them). A lyric line is **not found** when fewer than `min_found` of its words are among the words heard
within `margin` seconds of its span (compared as lower-case letters and digits; one unit per CJK
character): the aligner placed it, but nobody sang it there — the line gets `not_found` in its review
reasons and `found: false`, and its time is kept only as where the aligner would have put it. Heard
words that no lyric line accounts for, in runs of at least `min_extra_words` with pauses under
`max_gap` seconds, are **extra audio**: something sung that the lyrics lack, reported as spans with
the heard text.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class VerifyRules:
    min_found: float = 0.34
    margin: float = 1.5
    min_extra_words: int = 3
    max_gap: float = 1.5


def tokens(text: str) -> list[str]:
    """Comparable units: lower-case runs of letters/digits (apostrophes dropped), one per CJK character."""
    out: list[str] = []
    cur = ""
    for ch in text.lower():
        if _cjk(ch):
            if cur:
                out.append(cur)
                cur = ""
            out.append(ch)
        elif unicodedata.category(ch)[0] in "LN":
            cur += ch
        elif ch != "'" and cur:
            out.append(cur)
            cur = ""
    if cur:
        out.append(cur)
    return out


def _cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x4E00 <= o <= 0x9FFF or 0x3040 <= o <= 0x30FF or 0xAC00 <= o <= 0xD7AF or 0x3400 <= o <= 0x4DBF


def verify(segments: list[dict], heard: list[dict], rules: VerifyRules) -> list[dict]:
    """Marks each lyric segment with words `found` (and `not_found` in `review`, `needs_review`); returns
    the extra-audio spans [{"start", "end", "text"}]."""
    heard_words = [(t, w) for line in heard for w in line.get("words") or [] for t in tokens(w["text"])]
    used = [False] * len(heard_words)
    for seg in segments:
        want = Counter(t for w in seg.get("words") or [] for t in tokens(w["text"]))
        if not want:
            seg["found"] = None
            continue
        lo, hi = seg["start"] - rules.margin, seg["end"] + rules.margin
        got = 0
        for k, (t, w) in enumerate(heard_words):
            if not used[k] and want[t] > 0 and w["end"] >= lo and w["start"] <= hi:
                want[t] -= 1
                used[k] = True
                got += 1
        total = got + sum(want.values())
        seg["found"] = got / total >= rules.min_found
        if not seg["found"]:
            seg["review"] = [*seg.get("review", []), "not_found"]
            seg["needs_review"] = True
    extra: list[dict] = []
    run: list[dict] = []

    def close() -> None:
        if len(run) >= rules.min_extra_words:
            extra.append({"start": round(run[0]["start"], 3), "end": round(run[-1]["end"], 3),
                          "text": " ".join(w["text"] for w in run)})
        run.clear()

    seen: set[int] = set()
    for k, (_, w) in enumerate(heard_words):
        if id(w) in seen:  # a word split into several tokens counts once
            continue
        seen.add(id(w))
        if used[k]:
            close()
            continue
        if run and w["start"] - run[-1]["end"] > rules.max_gap:
            close()
        run.append(w)
    close()
    return extra
