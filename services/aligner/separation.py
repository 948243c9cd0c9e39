"""Optional vocal separation before alignment: Demucs v4 (demucs 4.1.0) keeps the vocals stem of a song.

A loud accompaniment is what the aligner (and the ASR of the no-lyrics and verify modes) hears besides the
voice; with `separate: true` they get the vocals instead. The model is a Demucs "bag" in the layout of its
Hugging Face repositories (`adefossez/HTDemucs`: `<name>.yaml` listing model signatures, one
`<signature>.safetensors` each, class and init arguments in the safetensors metadata), read by demucs's own
`load_safetensors_model`; QWEN_ALIGNER_SEPARATOR names it (a hub id, downloaded once per deployment into the
model cache like the models, or a local folder). Off unless set.

Separation runs on the uploaded file decoded at the model's rate and channels (44.1 kHz stereo for HTDemucs),
not on the 16 kHz mono the aligner uses: Demucs was trained on full-band stereo, and the stereo image (a
voice mixed to the centre) is much of what it separates by. The vocals come back as 16 kHz mono, the input
of align and of the ASR. Always float32: Demucs's STFT path is not written for half precision.

Memory: the whole song's stems are kept on the host while segments (7.8 s for HTDemucs) run on the device:
4 stems x 2 channels x 44100 x 4 bytes = 1.4 MB per second of audio (28 MB a minute), bounded by the
aligner's length limit and QWEN_ALIGNER_SEPARATOR_CONCURRENCY.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.runtime.codecs.audio import decode_audio, resample

VOCALS = "vocals"
OUT_RATE = 16000
# Demucs's overlap between consecutive segments (its CLI's default); no random time shifts (`shifts=0`): the
# same song gives the same answer.
OVERLAP = 0.25


def load_bag(path: str | Path):
    """The Demucs bag in `path` (one `<name>.yaml` and its `<signature>.safetensors`), as demucs.hf.get_hf_model
    builds it from the hub, read from a folder already downloaded."""
    import yaml
    from demucs.apply import BagOfModels
    from demucs.hf import load_safetensors_model

    folder = Path(path)
    bags = sorted(folder.glob("*.yaml"))
    if len(bags) != 1:
        raise ValueError(f"{folder}: expected one Demucs bag (<name>.yaml), found {len(bags)}")
    bag = yaml.safe_load(bags[0].read_text())
    models = [load_safetensors_model(folder / f"{sig}.safetensors") for sig in bag["models"]]
    return BagOfModels(models, bag.get("weights"), bag.get("segment"))


def vocal_models(bag, index: int):
    """The models of `bag` that the stem `index` is made of. A bag averages its models stem by stem with its
    `weights`; a fine-tuned bag (HTDemucs-ft: four models, each weighted 1 for its own stem and 0 for the
    others) makes the vocals from one model, so only that one needs to run: a quarter of the cost, the same
    vocals."""
    from demucs.apply import BagOfModels

    keep = [i for i, w in enumerate(bag.weights) if w[index] != 0]
    if len(keep) == len(bag.models):
        return bag
    return BagOfModels([bag.models[i] for i in keep], [bag.weights[i] for i in keep])


class VocalSeparator:
    def __init__(self, bag, device: str):
        if VOCALS not in bag.sources:
            raise ValueError(f"the separation model has no {VOCALS!r} stem (it has {', '.join(bag.sources)})")
        self.index = list(bag.sources).index(VOCALS)  # by name: bags differ in their order
        self.bag = vocal_models(bag, self.index)
        self.device = device
        self.rate = int(bag.samplerate)
        self.channels = int(bag.audio_channels)

    @classmethod
    def load(cls, path: str | Path, device: str) -> "VocalSeparator":
        bag = load_bag(path)
        bag.to(device).eval()  # float32 whatever the aligner's dtype
        return cls(bag, device)

    def vocals(self, mix: np.ndarray) -> np.ndarray:
        """The vocals stem of `mix` ((samples, channels) float32 at self.rate), mono, same length and rate.
        Normalised as demucs.api.Separator.separate_tensor does (the model was trained on unit-variance mixes)."""
        import torch
        from demucs.apply import apply_model

        wav = torch.from_numpy(np.ascontiguousarray(mix.T, dtype=np.float32))
        ref = wav.mean(0)
        mean, std = ref.mean(), ref.std() + 1e-8
        with torch.inference_mode():
            # The song stays on the host; only the current segment goes to the device.
            out = apply_model(self.bag, ((wav - mean) / std)[None], shifts=0, split=True, overlap=OVERLAP,
                              progress=False, device=self.device)
        vocals = out[0, self.index] * std + mean
        return vocals.mean(0).numpy().astype(np.float32, copy=False)

    def vocals_of_file(self, data: bytes, *, max_seconds: float, param: str = "audio") -> np.ndarray:
        """The vocals of an encoded file as 16 kHz mono float32 (what align and the ASR take)."""
        decoded = decode_audio(data, sample_rate=self.rate, channels=self.channels, max_seconds=max_seconds,
                               param=param)
        return resample(self.vocals(decoded.samples.reshape(-1, self.channels)), self.rate, OUT_RATE)


def fit_length(samples: np.ndarray, length: int) -> np.ndarray:
    """`samples` cut or zero-padded to `length`: the vocals replace the decoded song sample for sample (two
    decodes at different rates differ by a few samples at the end)."""
    if len(samples) >= length:
        return samples[:length]
    return np.concatenate([samples, np.zeros(length - len(samples), np.float32)])
