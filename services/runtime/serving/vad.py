"""Voice activity: where in the audio someone speaks, as a probability per 32-ms frame.

Silero VAD (`silero-vad` on PyPI, MIT): a small recurrent model whose ONNX export ships inside the wheel, so it
loads offline (nothing to download per deployment). It runs through onnxruntime, one implementation for every
caller: the model services (whole files: `speech_probs`) and the gateway's realtime sessions (audio as it
arrives: `StreamingVAD`), which do not import torch (`import silero_vad` does, so the file is located with
`importlib.util.find_spec`, which finds a top-level package without executing it). It agrees with the
package's own TorchScript model to within 1e-5 per frame (tests/unit/test_realtime_audio.py) and takes about
half its time: ~0.4 s per minute of audio on one thread here. Chosen over energy thresholds because music and
noise are loud without being speech, and over WebRTC's VAD (a GMM on 10-30 ms frames) because Silero's scores
are calibrated probabilities that a segment statistic can report as they are.

`speech_probs(audio)` (float32 mono 16 kHz) -> one probability per FRAME samples.
`StreamingVAD`: the same probabilities for audio fed in pieces of any length.
`no_speech_prob(probs, start, end)`: OpenAI's segment statistic from those frames (see there);
`has_speech(probs, start, end, threshold)`: whether a window is worth decoding (the same rule).
`pack`/`unpack`: the probabilities as a compact string (one byte each) for a contract between processes.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import os

import numpy as np

SAMPLE_RATE = 16000
FRAME = 512  # samples per probability: 32 ms, the model's window at 16 kHz
FRAME_SECONDS = FRAME / SAMPLE_RATE
SMOOTH_FRAMES = 3  # ~100 ms: a single frame's spike is not speech


class VoiceActivity:
    """Speech probabilities of whole recordings. Each call streams its audio through a StreamingVAD of its own
    (state per call: concurrent calls never wait for each other); the session is shared."""

    def __init__(self):
        _session()  # loaded now (~0.05 s), not by the first request

    def speech_probs(self, audio: np.ndarray) -> np.ndarray:
        """One probability per FRAME samples, the last partial frame padded with silence (as Silero's own
        `audio_forward` does)."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if len(audio) == 0:
            return np.zeros(0, np.float32)
        padded = np.concatenate([audio, np.zeros(-len(audio) % FRAME, np.float32)])
        return StreamingVAD().feed(padded)


@functools.cache
def voice_activity() -> VoiceActivity:
    """The process's VoiceActivity, its model loaded on first use."""
    return VoiceActivity()


@functools.cache
def _session():
    """The process's Silero VAD onnxruntime session, made on first use (~0.05 s)."""
    import onnxruntime

    spec = importlib.util.find_spec("silero_vad")  # finds the package without importing it (it imports torch)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the silero-vad package is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "data", "silero_vad.onnx")
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


class StreamingVAD:
    """Speech probability per 32-ms frame of one 16-kHz stream, fed in pieces of any length. The model reads
    FRAME new samples after the previous CONTEXT and carries a recurrent state from frame to frame: the same
    probabilities whatever the pieces. Each StreamingVAD keeps its own state, context and partial frame (one
    per stream); one onnxruntime session (one thread, ~2 MB; `run` is thread-safe) serves them all."""

    FRAME = FRAME  # new samples per probability
    SAMPLE_RATE = SAMPLE_RATE
    FRAME_MS = 32
    CONTEXT = 64  # samples of the previous frame the model reads before each frame

    _SR = np.array(SAMPLE_RATE, dtype=np.int64)

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Back to the start of a stream: no state, silence as context, no partial frame."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(self.CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """`samples` (float32 mono 16 kHz, any length) -> float32 speech probabilities, one per frame completed
        by this call (none while the samples so far fill no new frame); the rest waits for the next call."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        buf = np.concatenate([self._pending, x]) if len(self._pending) else x
        n = len(buf) // self.FRAME
        probs = np.empty(n, dtype=np.float32)
        if n:
            session = _session()
            for i in range(n):
                frame = buf[i * self.FRAME:(i + 1) * self.FRAME]
                window = np.concatenate([self._context, frame]).reshape(1, -1)
                out, self._state = session.run(None, {"input": window, "state": self._state, "sr": self._SR})
                probs[i] = out.reshape(-1)[0]
                self._context = frame[-self.CONTEXT:].copy()
        self._pending = buf[n * self.FRAME:].copy()
        return probs


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
