"""Line-start accuracy of the lyrics aligner on a labelled set, through a running gateway (a real host: the
tiny model's times are random, so this is not part of `make test` or `make bench`).

The set is a folder of songs, each as three files with one stem: the audio (`.mp3`, `.wav`, `.flac`,
`.ogg` or `.m4a`), its lyrics (`.txt`, one line per line) and the reference line starts (`.csv` with a
header holding `start` — seconds — and optionally `end` and `text`; one row per non-blank lyric line, in
order). JamendoLyrics (20 songs in several languages, Creative Commons audio, line-level annotations)
has this shape once its line annotations are saved per song; DALI's line level can be exported to it.

Prints, over all lines: the mean and median absolute line-start error, the share of lines within 0.3 /
0.5 / 1.0 s, and how well `needs_review` finds the bad lines (error over 1 s): the share of flagged
lines that are bad (precision) and of bad lines that are flagged (recall) — the figures that tell
whether a person checking only the flagged lines catches the errors.

    .venv/bin/python bench/align_accuracy.py DATASET --url http://127.0.0.1:3000 [--key KEY] [--language en]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

AUDIO = (".mp3", ".wav", ".flac", ".ogg", ".m4a")
BAD_SECONDS = 1.0


def reference_starts(path: Path) -> list[float]:
    with path.open(newline="", encoding="utf-8") as f:
        return [float(row["start"]) for row in csv.DictReader(f)]


def score(lines: list[tuple[float, float, bool]]) -> dict:
    """(predicted start, reference start, flagged) per line -> the figures printed."""
    if not lines:
        return {"lines": 0}
    errors = [abs(p - r) for p, r, _ in lines]
    bad = [e > BAD_SECONDS for e in errors]
    flagged = [f for _, _, f in lines]
    hits = sum(b and f for b, f in zip(bad, flagged))
    return {
        "lines": len(lines),
        "mean_abs_error_s": round(statistics.fmean(errors), 3),
        "median_abs_error_s": round(statistics.median(errors), 3),
        **{f"within_{t}s": round(sum(e <= t for e in errors) / len(errors), 3) for t in (0.3, 0.5, 1.0)},
        "review_precision": round(hits / sum(flagged), 3) if any(flagged) else None,
        "review_recall": round(hits / sum(bad), 3) if any(bad) else None,
    }


def pair(segments: list[dict], starts: list[float]) -> list[tuple[float, float, bool]]:
    """The aligned non-blank lines against the reference starts, in order."""
    sung = [s for s in segments if s["text"].strip()]
    if len(sung) != len(starts):
        raise ValueError(f"{len(sung)} non-blank lines aligned, {len(starts)} reference starts")
    return [(s["start"], r, bool(s.get("needs_review"))) for s, r in zip(sung, starts)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--url", default="http://127.0.0.1:3000")
    ap.add_argument("--key", default=None)
    ap.add_argument("--language", default=None)
    args = ap.parse_args()
    import httpx

    headers = {"X-API-Key": args.key} if args.key else {}
    lines: list[tuple[float, float, bool]] = []
    with httpx.Client(base_url=args.url, headers=headers, timeout=1800) as client:
        for audio in sorted(p for p in args.dataset.iterdir() if p.suffix.lower() in AUDIO):
            lyrics = audio.with_suffix(".txt").read_text(encoding="utf-8").splitlines()
            data = {"lyrics": json.dumps(lyrics), "format": "json",
                    **({"language": args.language} if args.language else {})}
            r = client.post("/api/v1/align", files={"audio": (audio.name, audio.read_bytes())}, data=data)
            r.raise_for_status()
            song = pair(r.json()["segments"], reference_starts(audio.with_suffix(".csv")))
            print(f"{audio.stem}: {json.dumps(score(song))}", file=sys.stderr)
            lines += song
    print(json.dumps(score(lines), indent=2))


if __name__ == "__main__":
    main()
