"""The tiny HTDemucs through demucs's own loader and separation code (what it separates is noise: its weights
are random; tests/unit/test_separation.py checks the stage with a model whose stems are known)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from services.aligner.separation import OUT_RATE, VocalSeparator
from tests.audio_fixtures import encode, song

FAMILY = "separator"


def test_tiny_htdemucs_loads_in_the_hub_layout_and_separates_past_one_segment(folder):
    sep = VocalSeparator.load(folder, "cpu")
    model = sep.bag.models[0]
    assert type(model).__name__ == "HTDemucs" and model.segment == Fraction(39, 5)
    assert list(sep.bag.sources) == ["drums", "bass", "other", "vocals"] and sep.index == 3
    assert (sep.rate, sep.channels) == (44100, 2)
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in sep.bag.parameters())
    seconds = 10.0  # past the 7.8-s segment: overlap-add of two
    vocals = sep.vocals_of_file(encode(song(seconds), 44100, "wav"), max_seconds=60)
    assert vocals.dtype == np.float32 and abs(len(vocals) - seconds * OUT_RATE) <= 2
    assert np.isfinite(vocals).all() and np.abs(vocals).max() > 0
