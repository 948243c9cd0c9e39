"""Synthesised test audio of known length: tone bursts ("sung phrases") separated by silences; real speech
(Debian's espeak-ng) and tone + noise around it for voice activity."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np

SPEECH_SR = 16000


def song(seconds: float, sr: int = 44100, phrase: float = 2.0, gap: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = np.zeros(n, dtype=np.float32)
    period = phrase + gap
    on = (t % period) < phrase
    freq = 200 + 100 * np.floor(t / period) % 5
    out[on] = (0.3 * np.sin(2 * np.pi * freq[on] * t[on])).astype(np.float32)
    out += (0.003 * rng.standard_normal(n)).astype(np.float32)
    return out


def speech(text: str) -> np.ndarray:
    """`text` spoken by espeak-ng, float32 mono 16 kHz."""
    from services.runtime.codecs.audio import decode_audio

    assert shutil.which("espeak-ng"), "espeak-ng is installed by `make sysdeps`"
    wav = subprocess.run(["espeak-ng", "--stdout", "-s", "150", text], capture_output=True, check=True).stdout
    return decode_audio(wav, sample_rate=SPEECH_SR).samples


def tone_and_noise(seconds: float, seed: int = 0) -> np.ndarray:
    """A 440 Hz tone swelling and fading every second, over white noise (16 kHz): loud, and not speech."""
    t = np.arange(int(seconds * SPEECH_SR)) / SPEECH_SR
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.5 * t)
            + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def encode(samples: np.ndarray, sr: int, fmt: str) -> bytes:
    """WAV/FLAC/OGG/MP3 through soundfile; AAC/M4A through PyAV."""
    if fmt in ("wav", "flac", "ogg", "mp3"):
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, samples, sr, format=fmt.upper())
        return buf.getvalue()
    import av

    buf = io.BytesIO()
    container_fmt, codec = {"m4a": ("mp4", "aac"), "aac": ("adts", "aac"), "opus": ("ogg", "libopus")}[fmt]
    with av.open(buf, mode="w", format=container_fmt) as c:
        rate = 48000 if codec == "libopus" else sr
        st = c.add_stream(codec, rate=rate)
        st.layout = "mono"
        if rate != sr:
            idx = np.linspace(0, len(samples) - 1, int(len(samples) * rate / sr))
            samples = np.interp(idx, np.arange(len(samples)), samples).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        for p in st.encode(frame):
            c.mux(p)
        for p in st.encode(None):
            c.mux(p)
    return buf.getvalue()
