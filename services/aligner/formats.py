"""Pure writers for aligned lyrics: LRC, enhanced (A2) LRC, SRT, WebVTT, JSON, TTML and ASS.

Input is the aligner's segment list: [{"text", "start", "end", "words": [{"text", "start", "end"}]}],
times in seconds, in lyric order. Blank lines are kept in LRC (an empty timed line clears the display
during instrumental breaks) and in JSON, and skipped in SRT/VTT/TTML/ASS, where an empty cue is invalid.

TTML is the word-timed flavour Apple's players read (`itunes:timing="Word"`): one `<p>` per line, one
`<span>` per aligned unit inside it — a word, or a character where the script has no spaces (CJK), so
there each span is a syllable — with the line's own text (spaces, punctuation) kept between the spans.
Line times are absolute under TTML's rules (no time on the enclosing `<div>`); span times are absolute
too, as Apple's lyrics files have them (a strict TTML reader would add the line's begin).
ASS is the karaoke format of Aegisub and libass players: one Dialogue per line, `{\kNN}` before each
unit (its length in centiseconds), gaps between units as empty `{\kNN}` syllables, so the `\k` of a
line add up to its length.
"""

from __future__ import annotations

import json
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from services.runtime.codecs.subtitles import clean_line, clock_time, to_srt, to_vtt  # noqa: F401 - re-exported

FORMATS = ("lrc", "lrc_enhanced", "json", "srt", "vtt", "ttml", "ass")

MEDIA_TYPES = {
    "lrc": "text/plain; charset=utf-8",
    "lrc_enhanced": "text/plain; charset=utf-8",
    "json": "application/json",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "ttml": "application/ttml+xml; charset=utf-8",
    "ass": "text/x-ssa; charset=utf-8",
}


def _centis(t: float) -> int:
    return max(0, int(round(float(t) * 100)))


def lrc_time(t: float) -> str:
    """[mm:ss.xx] body: minutes are not wrapped into hours (LRC has no hour field), so 75:12.34 is valid."""
    cs = _centis(t)
    return f"{cs // 6000:02d}:{(cs % 6000) // 100:02d}.{cs % 100:02d}"


def _header(metadata: dict[str, Any] | None, duration: float | None) -> list[str]:
    md = metadata or {}
    out = []
    for tag, key in (("ti", "title"), ("ar", "artist"), ("al", "album"), ("by", "by")):
        value = md.get(key)
        if value:
            out.append(f"[{tag}:{clean_line(value)}]")
    if duration is not None:
        cs = _centis(duration)
        out.append(f"[length:{cs // 6000:02d}:{(cs % 6000) // 100:02d}]")
    offset = md.get("offset_ms")
    if offset:
        out.append(f"[offset:{int(offset):+d}]")
    return out


def to_lrc(segments: list[dict], metadata: dict | None = None, duration: float | None = None) -> str:
    lines = _header(metadata, duration)
    for seg in segments:
        text = clean_line(seg["text"])
        lines.append(f"[{lrc_time(seg['start'])}]{(' ' + text) if text else ''}")
    return "\n".join(lines) + "\n"


def to_lrc_enhanced(segments: list[dict], metadata: dict | None = None, duration: float | None = None) -> str:
    """A2 extension: [mm:ss.xx] <mm:ss.xx> word <mm:ss.xx> word ... <mm:ss.xx> (last tag = line end)."""
    lines = _header(metadata, duration)
    for seg in segments:
        words = seg.get("words") or []
        if not words:
            text = clean_line(seg["text"])
            lines.append(f"[{lrc_time(seg['start'])}]{(' ' + text) if text else ''}")
            continue
        parts = [f"[{lrc_time(seg['start'])}]"]
        for w in words:
            parts.append(f"<{lrc_time(w['start'])}> {clean_line(w['text'])}")
        parts.append(f"<{lrc_time(seg['end'])}>")
        lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


def _pieces(seg: dict) -> list[tuple[str, dict | None]]:
    """The line as (text, word) pieces in order: each aligned unit where it is found in the line's text
    (word None: the text between units, spaces and punctuation), so the line reads exactly as written."""
    line = clean_line(seg["text"])
    out: list[tuple[str, dict | None]] = []
    cursor = 0
    for w in seg.get("words") or []:
        at = line.find(w["text"], cursor) if w["text"] else -1
        if at < 0:
            continue
        if at > cursor:
            out.append((line[cursor:at], None))
        out.append((w["text"], w))
        cursor = at + len(w["text"])
    if cursor < len(line):
        out.append((line[cursor:], None))
    return out


def to_ttml(segments: list[dict], metadata: dict | None = None, duration: float | None = None,
            language: str | None = None) -> str:
    def t(x: float) -> str:
        return clock_time(x, ".")

    lines = [s for s in segments if clean_line(s["text"])]
    worded = any(s.get("words") for s in lines)
    md = metadata or {}
    head = ""
    if md.get("title") or md.get("artist"):
        parts = [f"<ttm:title>{escape(clean_line(md['title']))}</ttm:title>" if md.get("title") else "",
                 f'<ttm:agent type="person" xml:id="v1"><ttm:name type="full">{escape(clean_line(md["artist"]))}'
                 "</ttm:name></ttm:agent>" if md.get("artist") else ""]
        head = f"<head><metadata>{''.join(parts)}</metadata></head>"
    body_dur = f" dur={quoteattr(t(duration))}" if duration is not None else ""
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           '<tt xmlns="http://www.w3.org/ns/ttml" xmlns:ttm="http://www.w3.org/ns/ttml#metadata" '
           'xmlns:itunes="http://music.apple.com/lyric-ttml-internal" '
           f'itunes:timing="{"Word" if worded else "Line"}" xml:lang={quoteattr(language or "und")}>',
           head + f"<body{body_dur}>"]
    if lines:
        # No begin on <div>: TTML times are relative to the parent's begin, so the lines' times stay
        # absolute for strict readers; span times are absolute, as in Apple's lyrics TTML.
        out.append("<div>")
        for i, seg in enumerate(lines, 1):
            inner = "".join(
                f'<span begin="{t(w["start"])}" end="{t(w["end"])}">{escape(text)}</span>' if w is not None
                else escape(text) for text, w in _pieces(seg))
            out.append(f'<p begin="{t(seg["start"])}" end="{t(seg["end"])}" itunes:key="L{i}">{inner}</p>')
        out.append("</div>")
    out.append("</body></tt>")
    return "\n".join(out) + "\n"


ASS_HEADER = """[Script Info]
; aligned by qwen-bento
Title: {title}
ScriptType: v4.00+
PlayResX: 1920
PlayResY: 1080
WrapStyle: 0
ScaledBorderAndShadow: yes

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, \
Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, \
MarginV, Encoding
Style: Karaoke,Arial,72,&H0000D8FF,&H00FFFFFF,&H00000000,&H64000000,-1,0,0,0,100,100,0,0,1,3,0,2,60,60,80,1

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
""".replace("\\\n", "")


def _ass_time(t: float) -> str:
    cs = _centis(t)
    return f"{cs // 360000}:{cs // 6000 % 60:02d}:{cs // 100 % 60:02d}.{cs % 100:02d}"


def _ass_text(text: str) -> str:
    return text.replace("\\", "/").replace("{", "(").replace("}", ")")  # braces start override blocks


def to_ass(segments: list[dict], metadata: dict | None = None, duration: float | None = None) -> str:
    title = clean_line((metadata or {}).get("title") or "lyrics")
    out = [ASS_HEADER.format(title=_ass_text(title)).rstrip("\n")]
    for seg in segments:
        if not clean_line(seg["text"]):
            continue
        start, end = _centis(seg["start"]), max(_centis(seg["end"]), _centis(seg["start"]))
        parts, at = [], start  # at: centiseconds reached so far
        for text, w in _pieces(seg):
            if w is None:
                if parts:
                    parts[-1] += _ass_text(text)
                else:
                    parts.append(_ass_text(text))  # text before the first unit: shown at once
                continue
            ws, we = min(max(_centis(w["start"]), at), end), min(max(_centis(w["end"]), _centis(w["start"]), at), end)
            if ws > at:
                parts.append(f"{{\\k{ws - at}}}")  # a gap: nothing sung
            parts.append(f"{{\\k{we - ws}}}{_ass_text(text)}")
            at = we
        if at < end and seg.get("words"):
            parts.append(f"{{\\k{end - at}}}")
        out.append(f"Dialogue: 0,{_ass_time(start / 100)},{_ass_time(end / 100)},Karaoke,,0,0,0,,{''.join(parts)}")
    return "\n".join(out) + "\n"


def to_json(segments: list[dict], language: str | None, duration: float | None) -> str:
    return json.dumps({"segments": segments, "language": language, "duration": duration}, ensure_ascii=False)


def render(fmt: str, segments: list[dict], *, language: str | None, duration: float | None,
           metadata: dict | None = None) -> str:
    if fmt == "lrc":
        return to_lrc(segments, metadata, duration)
    if fmt == "lrc_enhanced":
        return to_lrc_enhanced(segments, metadata, duration)
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    if fmt == "json":
        return to_json(segments, language, duration)
    if fmt == "ttml":
        return to_ttml(segments, metadata, duration, language)
    if fmt == "ass":
        return to_ass(segments, metadata, duration)
    raise ValueError(f"unknown format {fmt!r}")
