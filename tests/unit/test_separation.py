"""Vocal separation (services/aligner/separation.py) with a stand-in model whose stems are known.

The tiny HTDemucs separates noise, so what the stage must get right is checked here with a Demucs-layout model
(a safetensors file with its class and arguments in the metadata, read by demucs's own loader) whose output
is a known function of the mix: the vocals stem is `mix + (left - right)`, the other stems a fraction of the
mix. Picking the stem by name, keeping the stereo image (left - right is zero after a mono downmix), and
keeping time (a 440 Hz tone shifted by one 16 kHz sample loses 1.5% of its projection) all show in one figure.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from services.aligner.separation import OUT_RATE, VocalSeparator, fit_length, load_bag
from services.runtime.codecs.audio import decode_audio
from services.tiny.separator import write_model

SOURCES = ["vocals", "drums", "bass", "other"]  # not HTDemucs's order: the stem is found by name


class KnownStems(nn.Module):
    """Stem k = gain[k] * mix + side[k] * (left - right), for any (batch, 2, time) mix."""

    def __init__(self, sources, samplerate=44100, audio_channels=2, segment=4.0):
        super().__init__()
        self.sources, self.samplerate, self.audio_channels, self.segment = sources, samplerate, audio_channels, segment
        self.gain = nn.Parameter(torch.zeros(len(sources)))
        self.side = nn.Parameter(torch.zeros(len(sources)))

    def forward(self, mix):
        side = mix[:, :1] - mix[:, 1:2]
        return self.gain[None, :, None, None] * mix[:, None] + self.side[None, :, None, None] * side[:, None]


def known_stems(folder, sources=SOURCES):
    model = KnownStems(sources)
    with torch.no_grad():
        model.gain.copy_(torch.tensor([1.0 if s == "vocals" else 0.25 for s in sources]))
        model.side.copy_(torch.tensor([1.0 if s == "vocals" else 0.0 for s in sources]))
    write_model(folder, f"{__name__}.KnownStems", {"sources": sources}, model.state_dict())
    return folder


def wav(left: np.ndarray, right: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.stack([left, right], axis=1), sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_decode_keeps_both_channels_when_asked():
    sr = 44100
    t = np.arange(sr) / sr
    data = wav((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), np.zeros(sr, np.float32), sr)
    stereo = decode_audio(data, sample_rate=sr, channels=2).samples
    mono = decode_audio(data, sample_rate=sr).samples
    assert stereo.shape == (sr, 2)
    assert np.abs(stereo[:, 1]).max() < 1e-4 < 0.4 < np.abs(stereo[:, 0]).max()
    assert mono.shape == (sr,)
    assert decode_audio(data, sample_rate=sr, channels=2).duration == pytest.approx(1.0)


def test_vocals_are_the_named_stem_of_the_stereo_file_at_its_rate_and_in_time(tmp_path):
    sep = VocalSeparator.load(known_stems(tmp_path / "bag"), "cpu")
    assert (sep.rate, sep.channels, sep.index) == (44100, 2, 0)
    sr, seconds = 44100, 6.0  # longer than the 4-s segment: overlap-add runs
    t = np.arange(int(sr * seconds)) / sr
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    noise = 0.05 * np.random.default_rng(0).standard_normal(len(t))
    data = wav((tone + noise).astype(np.float32), (-tone + noise).astype(np.float32), sr)

    vocals = sep.vocals_of_file(data, max_seconds=60)
    gateway = decode_audio(data, sample_rate=OUT_RATE).samples  # what the vocals replace
    assert vocals.dtype == np.float32 and abs(len(vocals) - len(gateway)) <= 2
    # mono of the vocals stem = (left + right) / 2 + (left - right) = noise + 2 * tone
    t16 = np.arange(len(vocals)) / OUT_RATE
    ref = 0.3 * np.sin(2 * np.pi * 440 * t16)
    inner = slice(OUT_RATE // 10, -OUT_RATE // 10)  # the resamplers' edges aside
    coef = float(vocals[inner] @ ref[inner] / (ref[inner] @ ref[inner]))
    assert coef == pytest.approx(2.0, abs=0.02)
    # The 16 kHz mono decode has no tone at all (left + right cancels it): separation saw the stereo file.
    assert abs(float(gateway[inner] @ ref[inner] / (ref[inner] @ ref[inner]))) < 0.02


def test_a_bag_without_vocals_or_without_a_bag_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no 'vocals' stem"):
        VocalSeparator.load(known_stems(tmp_path / "a", ["drums", "bass", "other", "guitar"]), "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="expected one Demucs bag"):
        load_bag(tmp_path / "empty")


def test_fit_length_cuts_or_pads_with_silence():
    x = np.ones(5, np.float32)
    assert fit_length(x, 3).tolist() == [1, 1, 1]
    assert fit_length(x, 7).tolist() == [1, 1, 1, 1, 1, 0, 0]


def test_a_fine_tuned_bag_runs_only_the_models_the_vocals_come_from(tmp_path):
    """HTDemucs-ft's shape: one model per stem, each weighted 1 for its own stem and 0 for the rest. The vocals
    come from one model, so the others are not run (a quarter of the cost), and the vocals are unchanged."""
    folder = known_stems(tmp_path / "bag")
    (folder / "00000000.safetensors").rename(folder / "aaaaaaaa.safetensors")
    loud = KnownStems(SOURCES)
    with torch.no_grad():
        loud.gain.fill_(5.0)  # what would come out if this model's vocals counted
    write_model(folder, f"{__name__}.KnownStems", {"sources": SOURCES}, loud.state_dict(), signature="bbbbbbbb")
    (folder / "htdemucs.yaml").write_text(
        "models: ['aaaaaaaa', 'bbbbbbbb']\nweights: [[1., 0., 0., 0.], [0., 1., 1., 1.]]\n")
    bag = load_bag(folder)
    assert len(bag.models) == 2
    sep = VocalSeparator(bag, "cpu")
    assert len(sep.bag.models) == 1 and float(sep.bag.models[0].gain[0]) == 1.0
    sr = 44100
    t = np.arange(2 * sr) / sr
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    vocals = sep.vocals(np.stack([tone, -tone], axis=1))
    assert np.allclose(vocals, 2 * tone, atol=1e-4)  # mono of mix + (left - right): 0 + 2 x tone
