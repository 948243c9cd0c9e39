"""Voice activity: where in the audio someone speaks, as a probability per 32-ms frame.

Silero VAD (`silero-vad` on PyPI, MIT): a small recurrent model whose TorchScript weights ship inside the
wheel, so it loads offline (no hub, nothing to download per deployment) and needs only torch, which every
model service has. Chosen over energy thresholds because music and noise are loud without being speech,
and over WebRTC's VAD (a GMM on 10-30 ms frames) because Silero's scores are calibrated probabilities that
a segment statistic can report as they are. Cost on one CPU thread here: ~0.7 s per minute of audio (bench/speech.py).

`speech_probs(audio)` (float32 mono 16 kHz) -> one probability per FRAME samples.
`no_speech_prob(probs, start, end)`: OpenAI's segment statistic from those frames (see there);
`has_speech(probs, start, end, threshold)`: whether a window is worth decoding (the same rule).
`pack`/`unpack`: the probabilities as a compact string (one byte each) for a contract between processes.
"""

from __future__ import annotations

import base64
import functools
import queue

import numpy as np

SAMPLE_RATE = 16000
FRAME = 512  # samples per probability: 32 ms, the model's window at 16 kHz
FRAME_SECONDS = FRAME / SAMPLE_RATE
SMOOTH_FRAMES = 3  # ~100 ms: a single frame's spike is not speech


class VoiceActivity:
    """Silero VAD models, one per call running at once: the model carries state from frame to frame, so a
    call takes a model of its own from a pool (made on demand, ~2 MB and ~0.1 s each) instead of waiting
    for a lock held by another request's call."""

    def __init__(self):
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._free.put(self._load())

    @staticmethod
    def _load():
        from silero_vad import load_silero_vad

        return load_silero_vad()  # TorchScript, from the package's own data

    def speech_probs(self, audio: np.ndarray) -> np.ndarray:
        import torch

        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio) == 0:
            return np.zeros(0, np.float32)
        try:
            model = self._free.get_nowait()
        except queue.Empty:
            model = self._load()
        try:
            with torch.inference_mode():
                probs = model.audio_forward(torch.from_numpy(audio), SAMPLE_RATE)  # resets its state first
        finally:
            self._free.put(model)
        return probs.reshape(-1).float().numpy()


@functools.cache
def voice_activity() -> VoiceActivity:
    """The process's VoiceActivity (its pool serves every caller), loaded on first use (~0.1 s)."""
    return VoiceActivity()


def no_speech_prob(probs: np.ndarray, start: float, end: float) -> float:
    """Probability that the segment [start, end) (seconds) holds no speech: 1 minus the highest speech
    probability over its frames, smoothed over ~100 ms. Whisper reports its <|nospeech|> token's
    probability here; clients read it the same way (high: silence or music, low: speech)."""
    a = max(0, int(start / FRAME_SECONDS))
    b = max(a + 1, int(np.ceil(end / FRAME_SECONDS)))
    span = np.asarray(probs[a:b], dtype=np.float32)
    if span.size == 0:
        return 1.0
    if span.size >= SMOOTH_FRAMES:
        span = np.convolve(span, np.ones(SMOOTH_FRAMES, np.float32) / SMOOTH_FRAMES, mode="valid")
    return round(float(1.0 - span.max()), 4)


def has_speech(probs: np.ndarray, start: float, end: float, threshold: float) -> bool:
    """Whether someone speaks in [start, end) (seconds): its smoothed speech probability reaches `threshold`
    somewhere (Silero's own default threshold is 0.5). A window without is not decoded: the model invents
    text on silence and music."""
    return 1.0 - no_speech_prob(probs, start, end) >= threshold


def pack(probs: np.ndarray) -> str:
    """One byte per frame (probability x 255, rounded), base64."""
    q = np.clip(np.rint(np.asarray(probs, np.float32) * 255), 0, 255).astype(np.uint8)
    return base64.b64encode(q.tobytes()).decode("ascii")


def unpack(data: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data), dtype=np.uint8).astype(np.float32) / 255.0
