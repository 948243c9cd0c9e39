import re

import pytest

from services.aligner import formats


def seg(text, start, end, words=None):
    return {"text": text, "start": start, "end": end, "words": words or []}


@pytest.mark.parametrize(
    "t, expected",
    [(0, "00:00.00"), (1.234, "00:01.23"), (1.235, "00:01.24"), (59.999, "01:00.00"), (61.5, "01:01.50"),
     (3600 + 5.25, "60:05.25"), (4512.34, "75:12.34"), (-0.2, "00:00.00")],
)
def test_lrc_time_rounds_to_hundredths_and_keeps_minutes_past_an_hour(t, expected):
    assert formats.lrc_time(t) == expected


@pytest.mark.parametrize(
    "t, srt, vtt",
    [(0, "00:00:00,000", "00:00:00.000"), (3661.2345, "01:01:01,234", "01:01:01.234"),
     (59.9996, "00:01:00,000", "00:01:00.000"), (36000.5, "10:00:00,500", "10:00:00.500")],
)
def test_clock_time(t, srt, vtt):
    assert formats.clock_time(t, ",") == srt
    assert formats.clock_time(t, ".") == vtt


def test_lrc_header_lines_and_blank_lines_kept():
    out = formats.to_lrc(
        [seg("One", 1.5, 2), seg("", 2, 3), seg("Two\nlines", 3.456, 4)],
        {"title": "T", "artist": "A", "album": "B", "offset_ms": -250},
        duration=225.4,
    )
    assert out.splitlines() == [
        "[ti:T]", "[ar:A]", "[al:B]", "[length:03:45]", "[offset:-250]",
        "[00:01.50] One", "[00:02.00]", "[00:03.46] Two lines",
    ]


def test_enhanced_lrc_word_tags_and_line_end_tag():
    words = [{"text": "Hel", "start": 1.0, "end": 1.4}, {"text": "lo", "start": 1.4, "end": 2.0}]
    out = formats.to_lrc_enhanced([seg("Hello", 1.0, 2.0, words), seg("", 2.0, 2.0)])
    assert out.splitlines() == ["[00:01.00] <00:01.00> Hel <00:01.40> lo <00:02.00>", "[00:02.00]"]


def test_srt_numbering_skips_blank_lines_and_orders_cues():
    out = formats.to_srt([seg("A", 0.5, 1.0), seg("", 1, 1), seg("B", 3700.0, 3700.0)])
    blocks = out.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["1", "2"]
    assert blocks[1].splitlines()[1] == "01:01:40,000 --> 01:01:40,010"  # zero-length cue widened
    assert blocks[0].splitlines()[2] == "A"


def test_vtt_header_and_cue_syntax():
    out = formats.to_vtt([seg("A", 0.5, 1.0), seg("B", 1.0, 2.25)])
    assert out.startswith("WEBVTT\n\n")
    cues = re.findall(r"^(\d\d:\d\d:\d\d\.\d\d\d) --> (\d\d:\d\d:\d\d\.\d\d\d)$", out, re.M)
    assert cues == [("00:00:00.500", "00:00:01.000"), ("00:00:01.000", "00:00:02.250")]


def test_render_rejects_unknown_format():
    with pytest.raises(ValueError):
        formats.render("txt", [], language="en", duration=1.0)
