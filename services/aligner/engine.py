"""The forced-aligner model behind a small Protocol; real loading code (qwen_asr), no HTTP.

`Qwen3ForcedAligner.align(audio, text, language)` splits `text` into units itself. We need each line's
units, and the same units must be the ones aligned, so the engine takes pre-split units and runs the same
forward pass `align()` does (one non-autoregressive pass; each `<timestamp>` position classifies a time of
class x timestamp_segment_time ms), batched over chunks and requests. Everything heavy is imported inside
`load()`: the module is imported by the gateway process too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol, Sequence

import numpy as np

SAMPLE_RATE = 16000
MIN_SAMPLES = SAMPLE_RATE // 2


@dataclass
class AlignJob:
    audio: np.ndarray  # float32 mono 16 kHz
    units: list[str]

    @property
    def cost(self) -> float:
        """Seconds of audio: the scheduler batches windows of a similar length (scheduler.SIZE_RATIO)."""
        return len(self.audio) / SAMPLE_RATE


class UnitTime(NamedTuple):
    """One unit's times (seconds, relative to its job's audio), how sure the model is of them, and whether
    both are its own predictions (False: placed by the repair of non-monotonic predictions). review.py."""

    start: float
    end: float
    confidence: float | None = None
    aligned: bool | None = None


class AlignerEngine(Protocol):
    max_seconds: float  # longest audio one pass can time (classes x segment time)

    def units(self, text: str, language: str) -> list[str]:
        """The aligner's units for `text` (what gets one start/end pair)."""

    def align(self, jobs: Sequence[AlignJob]) -> list[list[UnitTime]]:
        """Each unit's times (relative to the job's audio) and scores, per job."""


class QwenForcedAlignerEngine:
    def __init__(self, wrapper):
        import torch

        self._torch = torch
        self.wrapper = wrapper  # qwen_asr.Qwen3ForcedAligner
        cfg = wrapper.model.config
        self.segment_ms = float(cfg.timestamp_segment_time)
        classes = int(getattr(cfg, "classify_num", 0) or getattr(cfg.thinker_config, "classify_num", 0) or 5000)
        self.max_seconds = (classes - 1) * self.segment_ms / 1000.0

    @classmethod
    def load(cls, path: str, device: str, dtype: str, threads: int | None = None) -> "QwenForcedAlignerEngine":
        import torch
        from qwen_asr import Qwen3ForcedAligner

        from services.runtime.serving.device import torch_dtype
        from services.runtime.serving.encoder_attention import require_windowed_audio_attention

        if threads:
            torch.set_num_threads(threads)
        wrapper = Qwen3ForcedAligner.from_pretrained(path, dtype=torch_dtype(dtype), device_map=device)
        wrapper.model.eval()
        require_windowed_audio_attention(wrapper.model)
        return cls(wrapper)

    def units(self, text: str, language: str) -> list[str]:
        return list(self.wrapper.aligner_processor.encode_timestamp(text, language)[0])

    def align(self, jobs: Sequence[AlignJob]) -> list[list[UnitTime]]:
        from .review import peak_mass, unit_scores

        torch = self._torch
        out: list[list[UnitTime] | None] = [None] * len(jobs)
        live = [i for i, j in enumerate(jobs) if j.units]
        for i, j in enumerate(jobs):
            if not j.units:
                out[i] = []
        if not live:
            return out  # type: ignore[return-value]
        w = self.wrapper
        # The prompt align() builds: audio placeholder, then two <timestamp> slots (start, end) per unit.
        # The feature extractor fails on clips under ~25 ms (a chunk tail can be that short): pad with
        # silence, which only adds time after the last word.
        audios = [np.pad(jobs[i].audio, (0, max(0, MIN_SAMPLES - len(jobs[i].audio)))) for i in live]
        texts = [
            "<|audio_start|><|audio_pad|><|audio_end|>"
            + "<timestamp><timestamp>".join(jobs[i].units) + "<timestamp><timestamp>"
            for i in live
        ]
        with torch.inference_mode():
            inputs = w.processor(text=texts, audio=audios, return_tensors="pt", padding=True)
            inputs = inputs.to(w.model.device).to(w.model.dtype)
            logits = w.model.thinker(**inputs).logits
            rows = []
            for row in range(len(live)):  # only the timestamp positions, as probabilities over time classes
                mask = inputs["input_ids"][row] == w.timestamp_token_id
                rows.append(torch.softmax(logits[row][mask].float(), dim=-1).to("cpu").numpy())
        for row, i in enumerate(live):
            classes, mass = peak_mass(rows[row])
            ms = classes * self.segment_ms
            # qwen_asr's repair of non-monotonic predictions (longest increasing run + interpolation).
            fixed = w.aligner_processor.fix_timestamp(ms)
            n = len(jobs[i].units)
            fixed = (list(fixed) + [fixed[-1] if len(fixed) else 0] * (2 * n))[: 2 * n]
            raw = (list(ms) + [-1.0] * (2 * n))[: 2 * n]  # a missing prediction is not the model's
            scores = unit_scores((list(mass) + [0.0] * (2 * n))[: 2 * n], raw, fixed)
            out[i] = [UnitTime(fixed[2 * k] / 1000.0, fixed[2 * k + 1] / 1000.0, *scores[k]) for k in range(n)]
        return out  # type: ignore[return-value]

    def warmup(self) -> None:
        # First calls pay for lazy imports and kernel selection; also warms nagisa (Japanese units).
        self.units("ウォームアップ", "Japanese")
        self.units("준비 운동", "Korean")
        self.align([AlignJob(np.zeros(SAMPLE_RATE, dtype=np.float32), ["warm", "up"])])
