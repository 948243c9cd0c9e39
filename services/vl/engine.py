"""Qwen vision-language models (Qwen2.5-VL for `vl`, Qwen3-VL + LoRA for `diagram`) behind one engine.

- Batching: items of concurrent requests go through one `generate` with left padding (batched equals
  sequential for greedy decoding: tests/tiny). Items are grouped by what must be equal inside one call
  (adapter, sampling settings); each item is cut to its own token budget.
- Concurrency: the models keep per-call state on the module (rope_deltas), so one generate at a time per
  model copy. `replicas` copies serve that many generations at once; a call takes a free copy.
- Adapters (peft): loaded side by side by name on every copy, chosen per group with `set_adapter`; the
  base model through `disable_adapter()`; optionally merged when there is exactly one.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

BASE = "base"  # adapter name that selects the base model (adapters disabled)


@dataclass
class VLItem:
    messages: list[dict]  # chat-template messages; image parts are {"type": "image"}
    images: list = field(default_factory=list)  # PIL images, in the order of the image parts
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    adapter: str | None = None  # diagram: adapter name, BASE, or None (the engine's default)


@dataclass
class VLResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    generate_seconds: float
    adapter: str | None


class _Replica:
    def __init__(self, model):
        self.model = model


class VisionLanguageEngine:
    def __init__(self, replicas: list[Any], processor, *, adapters: list[str], default_adapter: str | None,
                 merged: bool):
        import torch

        self._torch = torch
        self.processor = processor
        self.adapters = adapters  # loaded adapter names (without BASE)
        self.default_adapter = default_adapter
        self.merged = merged
        self._free: queue.Queue = queue.Queue()
        for m in replicas:
            self._free.put(m)
        self.replicas = len(replicas)
        tok = processor.tokenizer
        gen_cfg = replicas[0].generation_config
        eos = gen_cfg.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tok.convert_tokens_to_ids("<|im_end|>")}
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(self.eos_ids)

    @classmethod
    def load(cls, path: str, device: str, dtype: str, *, model_class: str, replicas: int = 1,
             adapters: dict[str, str] | None = None, default_adapter: str | None = None,
             merge_single: bool = False, threads: int | None = None) -> "VisionLanguageEngine":
        import torch
        import transformers
        from transformers import AutoProcessor

        from services.runtime.device import torch_dtype

        if threads:
            torch.set_num_threads(threads)
        klass = getattr(transformers, model_class)
        adapters = adapters or {}
        models = []
        for _ in range(replicas):
            model = klass.from_pretrained(path, dtype=torch_dtype(dtype), device_map=device)
            if adapters:
                from peft import PeftModel

                names = list(adapters)
                model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
                for name in names[1:]:
                    model.load_adapter(adapters[name], adapter_name=name)
                if merge_single and len(names) == 1:
                    model = model.merge_and_unload()
            model.eval()
            models.append(model)
        processor = AutoProcessor.from_pretrained(path)
        merged = bool(adapters) and merge_single and len(adapters) == 1
        # The configured default, else one named "default", else the first found.
        default = default_adapter or ("default" if "default" in adapters else next(iter(adapters), None))
        return cls(models, processor, adapters=list(adapters), default_adapter=default, merged=merged)

    # -- validation -----------------------------------------------------------------------------------
    def resolve_adapter(self, name: str | None) -> str | None:
        """The adapter an item runs with (None: the base model). ValueError for unknown names."""
        if name is None or name == "":
            return self.default_adapter
        if name == BASE:
            if self.merged:
                raise ValueError("the base model is not available: the single adapter is merged into it")
            return None
        if name not in self.adapters:
            known = ", ".join(self.adapters + ([] if self.merged else [BASE])) or "none loaded"
            raise ValueError(f"unknown adapter {name!r}; available: {known}")
        return name

    # -- generation -----------------------------------------------------------------------------------
    def _prepare(self, items: Sequence[VLItem]):
        texts = [self.processor.apply_chat_template(it.messages, add_generation_prompt=True, tokenize=False)
                 for it in items]
        images = [img for it in items for img in it.images]
        return self.processor(text=texts, images=images or None, return_tensors="pt", padding=True,
                              padding_side="left")

    def _sampling(self, item: VLItem) -> dict:
        from services.runtime.generation import is_sampling

        if is_sampling(item.temperature):
            kw: dict = {"do_sample": True, "temperature": item.temperature}
            if item.top_p is not None:
                kw["top_p"] = item.top_p
            return kw
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}

    def _adapter_ctx(self, model, adapter: str | None):
        import contextlib

        if not self.adapters or self.merged:
            return contextlib.nullcontext()
        if adapter is None:
            return model.disable_adapter()
        model.set_adapter(adapter)
        return contextlib.nullcontext()

    def _finish(self, row: list[int], budget: int) -> tuple[list[int], str]:
        for i, t in enumerate(row[:budget]):
            if t in self.eos_ids:
                return row[:i], "stop"
        return row[:budget], "length"

    def generate_batch(self, items: Sequence[VLItem]) -> list[VLResult]:
        groups: dict[tuple, list[int]] = {}
        resolved = [self.resolve_adapter(it.adapter) for it in items]
        for i, it in enumerate(items):
            key = (resolved[i], tuple(sorted(self._sampling(it).items(), key=lambda kv: kv[0])))
            groups.setdefault(key, []).append(i)
        out: list[VLResult | None] = [None] * len(items)
        model = self._free.get()
        try:
            for (adapter, _), idx in groups.items():
                group = [items[i] for i in idx]
                for i, r in zip(idx, self._generate_group(model, group, adapter)):
                    out[i] = r
        finally:
            self._free.put(model)
        return out  # type: ignore[return-value]

    def _generate_group(self, model, group: list[VLItem], adapter: str | None) -> list[VLResult]:
        torch = self._torch
        inputs = self._prepare(group).to(model.device)
        budget = max(it.max_new_tokens for it in group)
        prompt_len = int(inputs["input_ids"].shape[1])
        mask = inputs["attention_mask"]
        t0 = time.perf_counter()
        with torch.inference_mode(), self._adapter_ctx(model, adapter):
            ids = model.generate(**inputs, max_new_tokens=budget, pad_token_id=self.pad_id,
                                 **self._sampling(group[0]))
        dt = time.perf_counter() - t0
        results = []
        tok = self.processor.tokenizer
        for row, it, m in zip(ids[:, prompt_len:].tolist(), group, mask):
            kept, reason = self._finish(row, it.max_new_tokens)
            results.append(VLResult(text=tok.decode(kept, skip_special_tokens=True), prompt_tokens=int(m.sum()),
                                    completion_tokens=len(kept), finish_reason=reason, generate_seconds=dt,
                                    adapter=adapter))
        return results

    def stream(self, item: VLItem, cancel: threading.Event) -> Iterator[str]:
        """Text pieces as they are generated; returns (generator value) the VLResult."""
        from services.runtime.generation import stream_generate

        adapter = self.resolve_adapter(item.adapter)
        model = self._free.get()
        try:
            inputs = self._prepare([item]).to(model.device)
            prompt_len = int(inputs["input_ids"].shape[1])
            t0 = time.perf_counter()

            def run(streamer, criteria):
                with self._torch.inference_mode(), self._adapter_ctx(model, adapter):
                    return model.generate(**inputs, max_new_tokens=item.max_new_tokens, pad_token_id=self.pad_id,
                                          streamer=streamer, stopping_criteria=criteria, **self._sampling(item))

            ids = yield from stream_generate(run, self.processor.tokenizer, cancel)
        finally:
            self._free.put(model)
        row = ids[0, prompt_len:].tolist() if ids is not None else []
        kept, reason = self._finish(row, item.max_new_tokens)
        return VLResult(text="", prompt_tokens=prompt_len, completion_tokens=len(kept), finish_reason=reason,
                        generate_seconds=time.perf_counter() - t0, adapter=adapter)

    def warmup(self) -> None:
        from PIL import Image

        img = Image.new("RGB", (64, 64), (128, 128, 128))
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "warm up"}]}]
        for _ in range(self.replicas):  # each copy once (first calls pay for kernel selection)
            self.generate_batch([VLItem(msgs, [img], max_new_tokens=2)])
