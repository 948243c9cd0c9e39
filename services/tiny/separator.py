"""A tiny Hybrid Transformer Demucs (demucs 4.1.0's `HTDemucs`) in the layout of its Hugging Face repos.

`adefossez/HTDemucs` holds `htdemucs.yaml` (the bag: `models: [signature]`) and one `<signature>.safetensors`
per model, whose metadata names the class and its init arguments as JSON (`klass`, `args`, `kwargs`; the
`segment` fraction as {"_type": "fraction"}); `demucs.hf.load_safetensors_model` reads exactly that. Here the
same class, sources, sample rate, segment, STFT size and depth as the real model, with 2 channels and one
transformer layer: random weights, so what it separates is noise, but every line of Demucs's separation code
(STFT, both branches, the cross-domain transformer, overlap-add of segments) runs.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

from .common import output_dir

SIGNATURE = "00000000"
NAME = "htdemucs"
SOURCES = ["drums", "bass", "other", "vocals"]  # the real model's order
KWARGS = dict(sources=SOURCES, audio_channels=2, samplerate=44100, segment=Fraction(39, 5), nfft=4096, depth=4,
              channels=2, t_layers=1, t_heads=1, t_hidden_scale=1.0, dconv_comp=2)


def encode(value):
    """demucs.hf's JSON encoding of init arguments (fractions tagged)."""
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def write_model(out: Path, model_class: str, kwargs: dict, state: dict, name: str = NAME,
                signature: str = SIGNATURE) -> None:
    """One-model bag `name` in demucs's hub layout (also used by tests to write models of their own)."""
    from safetensors.torch import save_file

    out = output_dir(out)
    (out / f"{name}.yaml").write_text(f"models: ['{signature}']\n")
    meta = {"klass": model_class, "args": "[]", "kwargs": json.dumps(encode(kwargs))}
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / f"{signature}.safetensors"), metadata=meta)


def build(out: Path) -> None:
    from demucs.htdemucs import HTDemucs

    model = HTDemucs(**KWARGS)
    write_model(out, "demucs.htdemucs.HTDemucs", KWARGS, model.state_dict())
