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

The session's voice activity (server VAD) is services/runtime/serving/vad.py's `StreamingVAD`, fed as the
audio arrives.
"""

from __future__ import annotations

import functools

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
