"""Long audio into windows a model can take, cut at quiet points (shared by aligner and ASR)."""

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
                ) -> list[Chunk]:
    """Split audio into pieces of at most `window_s`, each cut at the quietest frame of the last 40% of
    the window (a breath or a gap between phrases), so no word is cut in two where it can be avoided."""
    n = len(samples)
    win = int(window_s * sr)
    if n <= win:
        return [Chunk(0, n)]
    rms, hop = energy if energy is not None else frame_rms(samples, sr)
    chunks, start = [], 0
    while n - start > win:
        lo = (start + int(win * 0.6)) // hop
        hi = (start + win) // hop
        cut_frame = lo + int(np.argmin(rms[lo:hi])) if hi > lo else hi
        cut = min(max(cut_frame * hop + hop // 2, start + hop), start + win)
        chunks.append(Chunk(start, cut))
        start = cut
    chunks.append(Chunk(start, n))
    return chunks
