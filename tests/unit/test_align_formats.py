"""TTML (word-timed, Apple style) and ASS (karaoke \\k) from aligned lyrics, read back by an independent
library (pysubs2: its ASS and TTML readers) and, for the word spans, by the standard XML parser."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pysubs2
import pytest

from services.aligner import formats

SEGMENTS = [
    {"text": "Morning light, on the water", "start": 1.0, "end": 3.5, "words": [
        {"text": "Morning", "start": 1.0, "end": 1.4}, {"text": "light", "start": 1.5, "end": 2.0},
        {"text": "on", "start": 2.2, "end": 2.4}, {"text": "the", "start": 2.4, "end": 2.6},
        {"text": "water", "start": 2.7, "end": 3.4}]},
    {"text": "", "start": 3.5, "end": 4.0, "words": []},  # a blank line: no cue
    {"text": "你好 {x} & <y>", "start": 4.0, "end": 5.0, "words": [
        {"text": "你", "start": 4.0, "end": 4.4}, {"text": "好", "start": 4.5, "end": 5.0}]},
    {"text": "Morning light, on the water", "start": 70.25, "end": 72.0, "words": [  # a repeated line
        {"text": "Morning", "start": 70.25, "end": 70.6}, {"text": "light", "start": 70.6, "end": 71.0},
        {"text": "on", "start": 71.0, "end": 71.2}, {"text": "the", "start": 71.2, "end": 71.3},
        {"text": "water", "start": 71.3, "end": 72.0}]},
]
SHOWN = [s for s in SEGMENTS if s["text"]]


def test_ass_reads_back_with_its_lines_times_and_karaoke_syllables():
    subs = pysubs2.SSAFile.from_string(formats.render("ass", SEGMENTS, language="en", duration=80.0,
                                                      metadata={"title": "Song"}))
    assert subs.info["Title"] == "Song" and "Karaoke" in subs.styles
    assert [(e.start, e.end) for e in subs.events] == [(int(s["start"] * 1000), int(s["end"] * 1000)) for s in SHOWN]
    assert [e.plaintext for e in subs.events] == ["Morning light, on the water", "你好 (x) & <y>",
                                                  "Morning light, on the water"]
    for event, seg in zip(subs.events, SHOWN):
        ks = [int(k) for k in re.findall(r"\\k(\d+)", event.text)]
        assert sum(ks) * 10 == event.end - event.start  # the syllables fill the line exactly
        # each unit starts where its \k syllables say (the sum of the \k before it), and reads as the unit
        at, starts = event.start, []
        for k, text in re.findall(r"\{\\k(\d+)\}([^{]*)", event.text):
            if text.strip():
                starts.append((text, at))
            at += int(k) * 10
        assert [t.startswith(w["text"]) for (t, _), w in zip(starts, seg["words"])] == [True] * len(seg["words"])
        assert [a for _, a in starts] == [int(round(w["start"] * 1000)) for w in seg["words"]], event.text


def test_ttml_lines_read_back_with_pysubs2_and_word_spans_with_xml():
    text = formats.render("ttml", SEGMENTS, language="en", duration=80.0, metadata={"title": "Song", "artist": "Me"})
    subs = pysubs2.SSAFile.from_string(text, format_="ttml")
    assert [(e.start, e.end) for e in subs.events] == [(int(s["start"] * 1000), int(s["end"] * 1000)) for s in SHOWN]
    # (pysubs2 keeps text in SubStation form, where {...} is an override block: it drops it)
    assert [e.plaintext for e in subs.events] == [re.sub(r"\{[^}]*\}", "", s["text"]) for s in SHOWN]
    ns = {"tt": "http://www.w3.org/ns/ttml", "itunes": "http://music.apple.com/lyric-ttml-internal"}
    root = ET.fromstring(text.encode())
    assert root.get("{http://music.apple.com/lyric-ttml-internal}timing") == "Word"
    assert root.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"

    def secs(clock: str) -> float:
        h, m, s = clock.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    paragraphs = root.findall(".//tt:p", ns)
    assert len(paragraphs) == len(SHOWN)
    for p, seg in zip(paragraphs, SHOWN):
        spans = p.findall("tt:span", ns)
        assert [s.text for s in spans] == [w["text"] for w in seg["words"]]
        assert [secs(s.get("begin")) for s in spans] == pytest.approx([w["start"] for w in seg["words"]])
        assert "".join(p.itertext()) == seg["text"]  # the line reads as written between the spans


def test_a_song_without_word_times_is_line_timed():
    lines = [{"text": s["text"], "start": s["start"], "end": s["end"], "words": []} for s in SEGMENTS]
    root = ET.fromstring(formats.to_ttml(lines, None, 80.0, "en").encode())
    assert root.get("{http://music.apple.com/lyric-ttml-internal}timing") == "Line"
    subs = pysubs2.SSAFile.from_string(formats.to_ass(lines))
    assert [e.plaintext for e in subs.events] == [s["text"].replace("{", "(").replace("}", ")") for s in SHOWN]
    assert all("\\k" not in e.text for e in subs.events)
