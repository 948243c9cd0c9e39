"""Pure lyric logic: language detection, per-line units, long-audio chunk plans, lines rebuilt from units.

The forced aligner times "units" (a word, or one CJK character; punctuation dropped; Japanese via nagisa,
Korean via soynlp) — not lines. We compute each line's units with the aligner's own unit splitter, align
the concatenation, and give every line the span of its own units, so a repeated line gets the times of
its own occurrence and a blank or punctuation-only line (no units) is kept, timed in the gap around it.
"""

from __future__ import annotations

import unicodedata
from typing import Callable, Sequence

import numpy as np

from services.runtime.codecs.chunking import Chunk, frame_rms

# Function words that tell the Latin-script languages apart in lyrics.
_STOPWORDS = {
    "English": {"the", "and", "you", "i", "to", "a", "of", "my", "is", "in", "me", "it", "your", "love", "we"},
    "French": {"le", "la", "les", "et", "je", "tu", "de", "des", "un", "une", "est", "pas", "que", "mon", "toi"},
    "German": {"der", "die", "das", "und", "ich", "du", "nicht", "ist", "ein", "eine", "mich", "dich", "mein"},
    "Italian": {"il", "la", "e", "che", "di", "non", "per", "un", "sono", "mi", "ti", "amore", "con", "gli"},
    "Portuguese": {"o", "a", "e", "que", "de", "não", "eu", "um", "uma", "meu", "você", "com", "se", "do"},
    "Spanish": {"el", "la", "y", "que", "de", "no", "yo", "tu", "un", "una", "mi", "te", "con", "amor", "es"},
}


def detect_language(text: str) -> str:
    """Script first (kana -> Japanese, Hangul -> Korean, Han -> Chinese, Cyrillic -> Russian), then
    function words for Latin script; English when nothing tells.

    For the aligner the language only selects the unit splitter (Japanese, Korean, or whitespace/CJK for
    all others), so a Latin-script guess never changes the alignment itself; it is reported back."""
    counts = {"kana": 0, "hangul": 0, "han": 0, "cyrillic": 0, "latin": 0}
    for ch in text:
        o = ord(ch)
        if 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF:
            counts["kana"] += 1
        elif 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F:
            counts["hangul"] += 1
        elif 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF:
            counts["han"] += 1
        elif 0x0400 <= o <= 0x04FF:
            counts["cyrillic"] += 1
        elif ch.isalpha() and unicodedata.name(ch, "").startswith("LATIN"):
            counts["latin"] += 1
    if counts["kana"]:
        return "Japanese"
    if counts["hangul"] >= max(counts["han"], counts["latin"], 1) * 0.3:
        return "Korean"
    if counts["han"] and counts["han"] * 2 >= counts["latin"]:
        return "Chinese"
    if counts["cyrillic"] > counts["latin"]:
        return "Russian"
    words = [w.strip(".,!?;:'\"()").lower() for w in text.split()]
    scores = {lang: sum(w in sw for w in words) for lang, sw in _STOPWORDS.items()}
    best = max(scores, key=lambda k: scores[k])
    return best if scores[best] > scores["English"] else "English"


# -- long audio ----------------------------------------------------------------------------------------
def voiced_weights(samples: np.ndarray, chunks: Sequence[Chunk], sr: int,
                   energy: tuple[np.ndarray, int] | None = None) -> list[float]:
    """How much of each chunk is sound above the song's quiet floor (a proxy for how much is sung in it)."""
    rms, hop = energy if energy is not None else frame_rms(samples, sr)
    if len(rms) == 0:
        return [1.0 for _ in chunks]
    voiced = rms > np.percentile(rms, 20) * 2 + 1e-4
    out = []
    for c in chunks:
        a, b = c.start // hop, max(c.start // hop + 1, c.end // hop)
        out.append(float(voiced[a:b].sum()) + 1e-3 * (b - a))
    return out


def assign_lines(unit_counts: Sequence[int], weights: Sequence[float]) -> list[tuple[int, int]]:
    """Give each chunk a contiguous range of lines [a, b) so that its share of units follows its weight.

    Lines are never split across chunks; a line goes to the chunk where its middle unit falls."""
    total = sum(unit_counts)
    k = len(weights)
    if k == 1 or total == 0:
        return [(0, len(unit_counts))] + [(len(unit_counts), len(unit_counts))] * (k - 1)
    wsum = sum(weights)
    bounds = np.cumsum([w / wsum for w in weights]) * total  # unit index where each chunk ends
    ranges, line, acc = [], 0, 0
    for ci in range(k):
        a = line
        while line < len(unit_counts) and (ci == k - 1 or acc + unit_counts[line] / 2 <= bounds[ci]):
            acc += unit_counts[line]
            line += 1
        ranges.append((a, line))
    return ranges


# -- lines from units ----------------------------------------------------------------------------------
def rebuild_segments(
    lines: Sequence[str],
    line_units: Sequence[Sequence[str]],
    unit_times: Sequence[tuple],
    duration: float,
) -> list[dict]:
    """Segments (one per input line, same order) from the flat list of unit times: (start, end) pairs, or
    engine.UnitTime with the unit's confidence and whether it was aligned (then kept on each word)."""
    assert sum(len(u) for u in line_units) == len(unit_times), "one time pair per unit"
    segs: list[dict] = []
    pos = 0
    for text, units in zip(lines, line_units):
        times = unit_times[pos : pos + len(units)]
        pos += len(units)
        words = []
        for u, (s, e, *scores) in zip(units, times):
            word = {"text": u, "start": _r(min(max(s, 0.0), duration)), "end": _r(min(max(e, s, 0.0), duration))}
            if scores and scores[0] is not None:
                word["confidence"], word["aligned"] = scores[0], scores[1]
            words.append(word)
        segs.append({"text": text, "start": None, "end": None, "words": words})
    # Monotonic word times across the whole song (chunk borders included).
    last = 0.0
    for seg in segs:
        for w in seg["words"]:
            w["start"] = max(w["start"], last)
            w["end"] = max(w["end"], w["start"])
            last = w["start"]
        if seg["words"]:
            seg["start"], seg["end"] = seg["words"][0]["start"], seg["words"][-1]["end"]
    # Lines without units sit in the gap between their timed neighbours.
    timed = [s["start"] is not None for s in segs]
    for i, seg in enumerate(segs):
        if timed[i]:
            continue
        prev_end = next((segs[j]["end"] for j in range(i - 1, -1, -1) if timed[j]), 0.0)
        next_start = next((segs[j]["start"] for j in range(i + 1, len(segs)) if timed[j]), None)
        seg["start"] = prev_end
        seg["end"] = max(prev_end, next_start if next_start is not None else min(duration, prev_end))
    return segs


def _r(t: float) -> float:
    return round(float(t), 3)


def units_for_lines(lines: Sequence[str], language: str, units_fn: Callable[[str, str], list[str]]) -> list[list[str]]:
    return [units_fn(line, language) if line.strip() else [] for line in lines]


def split_lines(segments: Sequence[dict], *, max_units: int = 10, min_gap: float = 0.6) -> list[dict]:
    """Heard text as lyric lines: each timed segment (a sentence) is cut before a word that follows a pause
    of `min_gap` seconds, and after `max_units` words. A line's text is the slice of the segment's text
    from its first word to the next line's first word (punctuation and spacing kept); its words keep
    their times and scores. Segments without words are dropped (nothing was heard to place)."""
    out: list[dict] = []
    for seg in segments:
        words = list(seg.get("words") or [])
        if not words:
            continue
        groups: list[list[dict]] = [[]]
        for w in words:
            cur = groups[-1]
            if cur and (len(cur) >= max_units or w["start"] - cur[-1]["end"] >= min_gap):
                groups.append([])
            groups[-1].append(w)
        text, cursor, starts = seg["text"], 0, []
        for g in groups:  # where each group's first word is in the text
            at = text.find(g[0]["text"], cursor)
            at = cursor if at < 0 else at
            starts.append(at)
            for w in g:
                found = text.find(w["text"], cursor)
                cursor = found + len(w["text"]) if found >= 0 else cursor
        starts.append(len(text))
        for k, g in enumerate(groups):
            line = text[starts[k]:starts[k + 1]].strip() or " ".join(w["text"] for w in g)
            out.append({"text": line, "start": g[0]["start"], "end": g[-1]["end"], "words": g})
    return out
