"""Pure writers for aligned lyrics: LRC, enhanced (A2) LRC, SRT, WebVTT and JSON.

Input is the aligner's segment list: [{"text", "start", "end", "words": [{"text", "start", "end"}]}],
times in seconds, in lyric order. Blank lines are kept in LRC (an empty timed line clears the display
during instrumental breaks) and in JSON, and skipped in SRT/VTT, where an empty cue is invalid.
"""

from __future__ import annotations

import json
from typing import Any

from services.runtime.codecs.subtitles import clean_line, clock_time, to_srt, to_vtt  # noqa: F401 - re-exported

FORMATS = ("lrc", "lrc_enhanced", "json", "srt", "vtt")

MEDIA_TYPES = {
    "lrc": "text/plain; charset=utf-8",
    "lrc_enhanced": "text/plain; charset=utf-8",
    "json": "application/json",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
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
    raise ValueError(f"unknown format {fmt!r}")
