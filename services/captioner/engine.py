"""The captioner's engines, both `CaptionEngine`s:

- `TransformersCaptionEngine`: the Omni thinker in-process (CPU/MPS fallback, the tiny model in tests);
  one generation at a time (the thinker keeps per-call state on the module).
- `VLLMCaptionEngine` (services/captioner/vllm_backend.py): a managed `vllm serve` subprocess that the
  service proxies; vLLM batches itself.

Both take decoded 16 kHz mono audio (the gateway fetched, decoded and length-checked it) and GenParams,
and give the caption as a Completion, or as a stream of Deltas (runtime.serving.generation).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import AsyncIterator, Callable, Protocol

import numpy as np

from services.runtime.serving.generation import Completion, Delta, Usage

from .contract import SAMPLE_RATE, GenParams


class CaptionEngine(Protocol):
    """What the captioner service uses of an engine."""

    backend: str  # "transformers" | "vllm"

    @property
    def state(self) -> str:
        """loading | ready | failed | stopped: a vLLM child can die and restart after the model loaded."""

    async def complete(self, audio: np.ndarray, params: GenParams) -> Completion: ...

    def stream(self, audio: np.ndarray, params: GenParams) -> AsyncIterator[Delta]: ...

    async def metrics_text(self) -> str:
        """Prometheus text of the backend itself (vLLM's own /metrics), '' when it has none."""

    def warmup(self) -> None: ...


class TransformersCaptionEngine:
    backend = "transformers"
    state = "ready"  # in-process: ready once loaded (the service's model handle says the rest)

    def __init__(self, model, processor, max_model_len: int):
        import torch

        self._torch = torch
        self.model = model
        self.processor = processor
        self.max_model_len = max_model_len
        self._lock = threading.Lock()
        tok = processor.tokenizer
        self.eos_id = int(tok.convert_tokens_to_ids("<|im_end|>"))

    @classmethod
    def load(cls, path: str, device: str, dtype: str, *, max_model_len: int, threads: int | None = None):
        import torch
        from transformers import AutoProcessor, Qwen3OmniMoeForConditionalGeneration

        from services.runtime.serving.device import torch_dtype
        from services.runtime.serving.encoder_attention import require_windowed_audio_attention

        if threads:
            torch.set_num_threads(threads)
        model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(path, dtype=torch_dtype(dtype),
                                                                     device_map=device)
        model.eval()
        require_windowed_audio_attention(model)  # the Omni encoder leaks across its windows too
        processor = AutoProcessor.from_pretrained(path)
        return cls(model, processor, max_model_len)

    # -- sync core (worker threads) ------------------------------------------------------------------
    def _inputs(self, audio: np.ndarray):
        # The captioner takes no text: the user turn is the audio alone (the model card's usage).
        messages = [{"role": "user", "content": [{"type": "audio", "audio": audio}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], audio=[audio], return_tensors="pt", padding=True)
        return inputs.to(self.model.device).to(self.model.dtype)

    def _gen_kwargs(self, params: GenParams, prompt_len: int) -> dict:
        budget = max(1, min(params.max_tokens, self.max_model_len - prompt_len))
        kw = dict(return_audio=False, thinker_max_new_tokens=budget, thinker_eos_token_id=self.eos_id)
        # transformers' thinker.generate ignores generation_config.json's sampling defaults: pass them.
        from services.runtime.serving.generation import is_sampling

        if is_sampling(params.temperature):
            kw.update(thinker_do_sample=True, thinker_temperature=params.temperature, thinker_top_p=params.top_p,
                      thinker_top_k=params.top_k if params.top_k > 0 else None)
        else:
            kw.update(thinker_do_sample=False)
        return kw

    def _finish(self, new_ids: list[int], budget: int) -> str:
        return "stop" if (new_ids and new_ids[-1] == self.eos_id) or len(new_ids) < budget else "length"

    def complete_sync(self, audio: np.ndarray, params: GenParams) -> Completion:
        with self._lock, self._torch.inference_mode():
            if params.seed is not None:
                self._torch.manual_seed(params.seed)
            inputs = self._inputs(audio)
            prompt_len = int(inputs["input_ids"].shape[1])
            kw = self._gen_kwargs(params, prompt_len)
            ids, _ = self.model.generate(**inputs, **kw)
            new = ids[0, prompt_len:].tolist()
        text = self.processor.tokenizer.decode(new, skip_special_tokens=True)
        return Completion(text=text, finish_reason=self._finish(new, kw["thinker_max_new_tokens"]),
                          usage=Usage(prompt_tokens=prompt_len, completion_tokens=len(new)))

    def stream_sync(self, audio: np.ndarray, params: GenParams, emit: Callable[[str], None],
                    cancel: threading.Event) -> Delta:
        """Emits the text pieces as the thinker generates them (in this thread: a runtime.serving.streams
        worker); returns the last Delta (finish_reason and usage)."""
        from services.runtime.serving.generation import stream_generate

        with self._lock:
            if params.seed is not None:
                self._torch.manual_seed(params.seed)
            inputs = self._inputs(audio)
            prompt_len = int(inputs["input_ids"].shape[1])
            kw = self._gen_kwargs(params, prompt_len)

            def run(streamer, criteria):
                with self._torch.inference_mode():
                    ids, _ = self.model.generate(**inputs, **kw, thinker_streamer=streamer,
                                                 thinker_stopping_criteria=criteria)
                return ids[0, prompt_len:].tolist()

            new = stream_generate(run, self.processor.tokenizer, emit, cancel)
        return Delta(finish_reason=self._finish(new, kw["thinker_max_new_tokens"]),
                     usage=Usage(prompt_tokens=prompt_len, completion_tokens=len(new)))

    # -- async API -----------------------------------------------------------------------------------
    async def complete(self, audio: np.ndarray, params: GenParams) -> Completion:
        return await asyncio.to_thread(self.complete_sync, audio, params)

    async def stream(self, audio: np.ndarray, params: GenParams) -> AsyncIterator[Delta]:
        from services.runtime.serving.streams import ThreadStream

        cancel = threading.Event()
        pieces = ThreadStream(lambda emit: self.stream_sync(audio, params, emit, cancel), cancel)
        async with contextlib.aclosing(aiter(pieces)) as it:  # closed (generation stopped) when this one is
            async for piece in it:
                yield Delta(text=piece)
        assert pieces.result is not None
        yield pieces.result

    async def metrics_text(self) -> str:
        return ""

    def warmup(self) -> None:
        self.complete_sync(np.zeros(SAMPLE_RATE, dtype=np.float32),
                           GenParams(max_tokens=2, temperature=0.0, top_p=1.0, top_k=-1))
