"""SRT and WebVTT from timed segments [{"text", "start", "end"}] (aligner lyrics, ASR transcripts)."""

from __future__ import annotations

from typing import Iterable


def _millis(t: float) -> int:
    return max(0, int(round(float(t) * 1000)))


def clock_time(t: float, sep: str) -> str:
    """HH:MM:SS{sep}mmm for SRT (sep=',') and VTT (sep='.')."""
    ms = _millis(t)
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def clean_line(text: str) -> str:
    # One output line: newlines inside a segment would start a bogus cue or LRC tag.
    return " ".join(str(text).split())


def _cues(segments: Iterable[dict]) -> list[tuple[float, float, str]]:
    cues = []
    for seg in segments:
        text = clean_line(seg["text"])
        if not text:
            continue
        start, end = float(seg["start"]), float(seg["end"])
        if end <= start:  # zero-length cues are dropped by players: give them one frame
            end = start + 0.01
        cues.append((start, end, text))
    return cues


def to_srt(segments: list[dict]) -> str:
    blocks = [
        f"{i}\n{clock_time(s, ',')} --> {clock_time(e, ',')}\n{text}\n"
        for i, (s, e, text) in enumerate(_cues(segments), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: list[dict]) -> str:
    blocks = ["WEBVTT\n"]
    blocks += [f"{clock_time(s, '.')} --> {clock_time(e, '.')}\n{text}\n" for s, e, text in _cues(segments)]
    return "\n".join(blocks)
