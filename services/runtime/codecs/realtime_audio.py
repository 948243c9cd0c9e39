"""Audio of a realtime transcription WebSocket (OpenAI Realtime's input formats), decoded and scored for speech
in the gateway, without torch.

`decode_input(data, fmt)`: one chunk of `input_audio_buffer.append` audio -> mono float32 in [-1, 1] at
INPUT_RATES[fmt]. The formats are headerless and stateless, so chunks decode one at a time and concatenate:
- pcm16: signed 16-bit little-endian samples, 24 kHz; a sample is value / 32768.
- g711_ulaw / g711_alaw: ITU-T G.711 µ-law / A-law, one byte a sample, 8 kHz. Decoded by PyAV's ffmpeg
  decoders (`pcm_mulaw` / `pcm_alaw`), but only once: G.711 maps each byte to a sample on its own, so the
  decoder's output for the 256 byte values is the whole codec, kept as a table (16-bit sample / 32768) that a
  chunk indexes. Chosen over a codec context per chunk because ffmpeg takes an empty packet for end of stream
  (b"" raises EOFError instead of giving no samples) and because a context and frame per 20-ms chunk cost
  ~15 µs against ~1 µs for the lookup; chosen over a table computed here from the G.711 formulas so the values
  are ffmpeg's (µ-law spans ±32124, A-law ±32256; µ-law 0xFF/0x7F and A-law 0xD5/0x55 are the codes nearest 0).

`StreamingVAD`: Silero VAD, the model the model services run as TorchScript through the `silero-vad` package
(services/runtime/serving/vad.py), run here through onnxruntime on the ONNX export that ships in the same
wheel, because the gateway does not import torch (and `import silero_vad` does). The file is located with
`importlib.util.find_spec`, which finds a top-level package without executing it. The model reads 512 new
16-kHz samples (32 ms) after the previous 64 and carries a recurrent state from frame to frame; `feed` takes
audio in pieces of any length and gives one speech probability per frame it completes, the same
probabilities whatever the pieces (and the same frames as `VoiceActivity.speech_probs` on the whole audio).
One onnxruntime session (one thread, ~2 MB) serves every StreamingVAD of the process: `run` is thread-safe,
and each StreamingVAD keeps its own state, context and partial frame (one StreamingVAD per stream).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import numpy as np

INPUT_RATES = {"pcm16": 24000, "g711_ulaw": 8000, "g711_alaw": 8000}

_G711_CODECS = {"g711_ulaw": "pcm_mulaw", "g711_alaw": "pcm_alaw"}


@functools.cache
def _g711_table(fmt: str) -> np.ndarray:
    """float32[256]: the sample each byte value decodes to under `fmt`, by ffmpeg's decoder."""
    import av

    ctx = av.CodecContext.create(_G711_CODECS[fmt], "r")
    ctx.sample_rate = 8000
    ctx.layout = "mono"
    frames = ctx.decode(av.Packet(bytes(range(256)))) + ctx.decode(None)
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    if pcm.dtype != np.int16 or pcm.shape != (256,):
        raise RuntimeError(f"{fmt}: ffmpeg decoded the 256 byte values to {pcm.dtype} {pcm.shape}, not 256 int16")
    table = pcm.astype(np.float32) / 32768.0
    table.flags.writeable = False
    return table


def decode_input(data: bytes, fmt: str) -> np.ndarray:
    """One chunk of realtime input audio (`fmt`: a key of INPUT_RATES) -> mono float32 in [-1, 1] at
    INPUT_RATES[fmt]. ValueError for an unknown format or a pcm16 chunk of an odd number of bytes."""
    if fmt == "pcm16":
        if len(data) % 2:
            raise ValueError(f"pcm16 audio is 2 bytes a sample; got {len(data)} bytes, an odd number")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    if fmt in _G711_CODECS:
        return _g711_table(fmt)[np.frombuffer(data, dtype=np.uint8)]
    raise ValueError(f"unknown audio format {fmt!r}; expected one of {', '.join(INPUT_RATES)}")


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
    """Speech probability per 32-ms frame of one 16-kHz stream, fed in pieces of any length."""

    FRAME = 512  # new samples per probability
    SAMPLE_RATE = 16000
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
