"""Qwen3-ASR behind a small Protocol: transformers (CPU/MPS/CUDA) or vLLM (CUDA), same API.

`qwen_asr.Qwen3ASRModel.transcribe` takes lists (one generate over the batch), strips the model's
`language X<asr_text>` prefix and forces a language when given. The service chunks long audio itself
(quiet-point windows) so every item here is one window; the engine only batches.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

SAMPLE_RATE = 16000
MIN_SAMPLES = SAMPLE_RATE // 2  # the package's minimum input (0.5 s); shorter windows are padded


@dataclass
class ASRItem:
    audio: np.ndarray  # float32 mono 16 kHz, one window
    context: str = ""  # becomes the system message (OpenAI `prompt`)
    language: str | None = None  # package language name; None: the model detects it

    @property
    def cost(self) -> float:
        """Seconds of audio: the scheduler batches windows of a similar length (scheduler.SIZE_RATIO)."""
        return len(self.audio) / SAMPLE_RATE


@dataclass
class ASRResult:
    language: str  # package name, "" when the model gave none
    text: str


def _printable(text: str) -> str:
    """Drop control characters a decoder can emit (never meaningful in a transcript), trim."""
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc").strip()


class ASREngine(Protocol):
    backend: str

    def transcribe(self, items: Sequence[ASRItem]) -> list[ASRResult]: ...


def allow_concurrent_calls(model) -> None:
    """Let two `transcribe` calls run at once on one qwen_asr model (the scheduler runs a short request
    beside a long one's batch): the thinker's `rope_deltas` becomes per-thread, and the tokenizer (whose
    padding state a fast tokenizer changes per call) is called one at a time. Feature extraction stays
    parallel: holding a lock over a long batch's mel spectrograms would make the short request wait for
    them. Refuses a package whose thinker no longer holds rope_deltas where we expect it, rather than run
    unguarded."""
    from services.runtime.serving.concurrent_calls import Serialized, thread_local_attributes

    if thread_local_attributes(model.model, ["rope_deltas"]) < 1:
        raise RuntimeError("qwen_asr: no module holds rope_deltas; check concurrent calls before upgrading")
    processor = model.processor
    processor.tokenizer = Serialized(processor.tokenizer, ("__call__", "batch_decode", "decode", "encode"))


class QwenASREngine:
    def __init__(self, model, backend: str):
        self.model = model  # qwen_asr.Qwen3ASRModel
        self.backend = backend

    @classmethod
    def load(cls, path: str, *, backend: str, device: str, dtype: str, max_new_tokens: int,
             threads: int | None = None, vllm_kwargs: dict | None = None) -> "QwenASREngine":
        import torch
        from qwen_asr import Qwen3ASRModel

        from services.runtime.serving.device import torch_dtype
        from services.runtime.serving.encoder_attention import require_windowed_audio_attention

        if threads:
            torch.set_num_threads(threads)
        if backend == "vllm":
            # vLLM batches itself; qwen_asr registers its model class with vLLM (CUDA only).
            model = Qwen3ASRModel.LLM(model=path, max_new_tokens=max_new_tokens, **(vllm_kwargs or {}))
        else:
            model = Qwen3ASRModel.from_pretrained(path, dtype=torch_dtype(dtype), device_map=device,
                                                  max_new_tokens=max_new_tokens, max_inference_batch_size=32)
            require_windowed_audio_attention(model.model)
            allow_concurrent_calls(model)
        return cls(model, backend)

    def transcribe(self, items: Sequence[ASRItem]) -> list[ASRResult]:
        if not items:
            return []
        audios = [(np.pad(it.audio, (0, max(0, MIN_SAMPLES - len(it.audio)))), SAMPLE_RATE) for it in items]
        outs = self.model.transcribe(
            audio=audios,
            context=[it.context for it in items],
            language=[it.language for it in items],
        )
        return [ASRResult(language=o.language or "", text=_printable(o.text or "")) for o in outs]

    def count_tokens(self, text: str) -> int:
        return len(self.model.processor.tokenizer.encode(text, add_special_tokens=False))

    def warmup(self) -> None:
        self.transcribe([ASRItem(np.zeros(SAMPLE_RATE, dtype=np.float32))])
