"""Long audio into windows a model can take, cut where nobody speaks and, among those points, the quietest
(shared by aligner and ASR)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    start: int  # sample index, inclusive
    end: int  # exclusive


FRAME_S = 0.05


def frame_rms(samples: np.ndarray, sr: int, frame_s: float = FRAME_S) -> tuple[np.ndarray, int]:
    """RMS energy per frame (and the frame hop in samples), without a full-size temporary copy."""
    hop = max(1, int(frame_s * sr))
    frames = len(samples) // hop
    view = np.asarray(samples[: frames * hop], dtype=np.float32).reshape(frames, hop)
    return np.sqrt(np.einsum("ij,ij->i", view, view) / hop), hop


def plan_chunks(samples: np.ndarray, sr: int, window_s: float, energy: tuple[np.ndarray, int] | None = None,
                speech: tuple[np.ndarray, float] | None = None) -> list[Chunk]:
    """Split audio into pieces of at most `window_s`, each cut in the last 40% of the window at the frame
    least likely to be speech and, among those, the quietest (a breath or a gap between phrases), so no
    word is cut in two where it can be avoided.

    `speech`: voice activity as (probability per frame, seconds per frame), e.g. runtime.serving.vad's. Music
    and noise are loud without being speech, so without it the quietest frame can fall inside a word said
    over a loud background; with it, frames are first ranked by speech probability (in tenths, the highest
    within ~100 ms either side: a cut keeps that much margin from speech), energy only breaks ties."""
    n = len(samples)
    win = int(window_s * sr)
    if n <= win:
        return [Chunk(0, n)]
    rms, hop = energy if energy is not None else frame_rms(samples, sr)
    score = rms / (float(rms.max()) + 1e-9) if len(rms) else rms  # in [0, 1): energy only orders within a class
    if speech is not None:
        score = score + np.floor(_speech_per_frame(speech, len(rms), hop / sr) * 10)
    chunks, start = [], 0
    while n - start > win:
        lo = (start + int(win * 0.6)) // hop
        hi = (start + win) // hop
        cut_frame = lo + int(np.argmin(score[lo:hi])) if hi > lo else hi
        cut = min(max(cut_frame * hop + hop // 2, start + hop), start + win)
        chunks.append(Chunk(start, cut))
        start = cut
    chunks.append(Chunk(start, n))
    return chunks


MARGIN_S = 0.1


def _speech_per_frame(speech: tuple[np.ndarray, float], frames: int, frame_s: float) -> np.ndarray:
    """The highest speech probability within MARGIN_S of each energy frame (0 past the probabilities' end)."""
    probs, prob_s = speech
    probs = np.asarray(probs, dtype=np.float32)
    out = np.zeros(frames, dtype=np.float32)
    if probs.size == 0:
        return out
    centers = (np.arange(frames) + 0.5) * frame_s
    lo = np.clip(((centers - MARGIN_S) / prob_s).astype(int), 0, probs.size)
    hi = np.clip(np.ceil((centers + MARGIN_S) / prob_s).astype(int), 0, probs.size)
    # The maximum over [lo, hi) of each frame, one shifted copy per position: the spans are a few frames wide.
    width = int((hi - lo).max()) if frames else 0
    padded = np.concatenate([probs, np.zeros(max(width, 1), np.float32)])
    stack = np.stack([padded[np.minimum(lo + k, probs.size)] * (lo + k < hi) for k in range(max(width, 1))])
    return stack.max(axis=0)
