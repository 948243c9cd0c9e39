"""Qwen vision-language models (Qwen2.5-VL for `vl`, Qwen3-VL + LoRA for `diagram`) behind one engine.

- Batching: items of concurrent requests go through one `generate` with left padding (batched equals
  sequential for greedy decoding in float32: tests/tiny; in fp16/bf16 padding can change the last bits
  of a logit, so a near-tie may pick another token). Items are grouped by what must be equal inside one call
  (adapter, and the full `sampling_kwargs` of the item: one request's sampling never applies to another);
  each item is cut to its own token budget.
- Images: every processor call gets the service's pixel budget (runtime.codecs.images.processor_pixel_kwargs).
- Concurrency: the models keep per-call state on the module (rope_deltas), so one generate at a time per
  model copy. `replicas` copies serve that many generations at once; a call takes a free copy.
- Adapters (peft): loaded side by side by name on every copy, chosen per group with `set_adapter`; the
  base model through `disable_adapter()`; optionally merged when there is exactly one. An adapter whose
  weights do not fit the base model is taken out again and listed in `failed` with the reason (peft only
  warns about missing keys, and a file none of whose keys match loads as a no-op); a request for it is
  refused (AdapterUnavailable), the others keep serving.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from services.runtime.serving.generation import Constraint, Usage, xgrammar

from .contract import VisionItem, VisionResult

BASE = "base"  # adapter name that selects the base model (adapters disabled)


class AdapterUnavailable(ValueError):
    """The adapter is configured but not served (its weights do not fit the base model)."""


def sampling_kwargs(temperature: float | None, top_p: float | None = None, top_k: int | None = None) -> dict:
    """`generate` kwargs for one request's decoding, every sampling value explicit.

    `generate` starts from the checkpoint's generation_config and overrides only what it is given.
    Qwen2.5-VL's published file "samples" at temperature 1e-6 with no top_k/top_p (so transformers'
    top_k 50 applies); a top_k 1 / top_p 0.001 form of it (the issue's) would ignore any temperature;
    Qwen3-VL's has top_p 0.8 / top_k 20: a request's temperature alone would be mixed with those. So a sampling request (temperature >=
    MIN_TEMPERATURE) gets do_sample=True with its temperature, its top_p (1.0 = off when not given:
    OpenAI's default) and its top_k (off when not given, 0 or -1: OpenAI has no top_k; 0 disables
    transformers' top-k). A greedy one gets do_sample=False and the sampling values cleared. The
    checkpoint's other settings stay (Qwen2.5-VL: repetition_penalty 1.05).
    """
    from services.runtime.serving.generation import is_sampling

    if not is_sampling(temperature):
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": float(temperature), "top_p": 1.0 if top_p is None else float(top_p),
            "top_k": int(top_k) if top_k is not None and top_k > 0 else 0}


def adapter_mismatch(model, name: str, load_result) -> str | None:
    """Why a loaded adapter does not fit the model (None: every weight found its place). `load_result` is
    what peft's `load_adapter` returns: `missing_keys` are the adapter's LoRA weights in the model that the
    file did not fill (peft keeps only those of this adapter), `unexpected_keys` the file's weights that
    match no module (other key prefixes, another architecture)."""
    missing, unexpected = list(load_result.missing_keys), list(load_result.unexpected_keys)
    if not missing and not unexpected:
        return None
    total = sum(1 for n, _ in model.named_parameters() if f".{name}." in n and ".lora_" in n)
    parts = []
    if missing:
        loaded = "none loaded" if len(missing) >= total else f"{total - len(missing)} loaded"
        parts.append(f"{len(missing)} of its {total} LoRA weights missing from the file ({loaded}; first: "
                     f"{missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} weights in the file match no module (first: {unexpected[0]})")
    return "; ".join(parts) + ": made for another base model or other target modules"


def attach_adapters(model, adapters: dict[str, str]) -> tuple[Any, list[str], dict[str, str]]:
    """Loads each adapter (name -> folder) onto `model` with peft and checks it. Returns the model (a
    PeftModel when one adapter loaded), the names that loaded, and name -> reason for those that did not.

    `PeftModel.from_pretrained` is the wrapper plus `load_adapter`, but it drops the load result (it only
    warns about missing keys); the two steps are made here to keep it: `get_peft_model` wraps the model
    with the first adapter's config (fresh LoRA weights, nothing read), `load_adapter` fills them and
    returns what matched. `key_mapping` is from_pretrained's (the model's checkpoint conversion rules), for
    every adapter alike. A failed adapter is deleted again (or the model unwrapped if it was the only one),
    so no half-loaded or no-op adapter is ever active."""
    from peft import PeftConfig, get_peft_model

    key_mapping = getattr(model, "_checkpoint_conversion_mapping", None) or None
    peft_model = None
    loaded: list[str] = []
    failed: dict[str, str] = {}
    for name, folder in adapters.items():
        try:
            if peft_model is None:
                config = PeftConfig.from_pretrained(folder)
                config.inference_mode = True
                peft_model = get_peft_model(model, config, adapter_name=name)
            problem = adapter_mismatch(peft_model, name,
                                       peft_model.load_adapter(folder, adapter_name=name, key_mapping=key_mapping))
        except Exception as exc:  # noqa: BLE001 - peft/torch raise many types; any of them: not served
            problem = " ".join(f"cannot be loaded ({type(exc).__name__}: {exc}".split())[:500] + ")"
        if problem is None:
            loaded.append(name)
            continue
        failed[name] = problem
        if peft_model is not None and name in peft_model.peft_config:
            if len(peft_model.peft_config) == 1:
                model, peft_model = peft_model.unload(), None
            else:
                peft_model.delete_adapter(name)
    if peft_model is not None:
        peft_model.set_adapter(loaded[0])
    return (peft_model if peft_model is not None else model), loaded, failed


def resolve_adapter(engine, name: str | None) -> str | None:
    """The adapter an item runs with on `engine` (its `adapters`, `failed`, `default_adapter`, `merged`; None:
    the base model). ValueError for unknown names, AdapterUnavailable for a configured adapter that is not
    served (the default one included). One rule for both engines (transformers + peft, vLLM + LoRA)."""
    if name is None or name == "":
        name = engine.default_adapter
        if name is None:
            return None
    elif name == BASE:
        if engine.merged:
            raise ValueError("the base model is not available: the single adapter is merged into it")
        return None
    if name in engine.failed:
        raise AdapterUnavailable(f"adapter {name!r} is not available: {engine.failed[name]}")
    if name not in engine.adapters:
        known = ", ".join(engine.adapters + ([] if engine.merged else [BASE])) or "none loaded"
        raise ValueError(f"unknown adapter {name!r}; available: {known}")
    return name


def choose_default_adapter(configured: str | None, adapters) -> str | None:
    """The configured default, else one named "default", else the first found; chosen among all configured
    adapters, so a request that would have gone to a failed one is refused, never sent elsewhere."""
    return configured or ("default" if "default" in adapters else next(iter(adapters), None))


GRAMMAR_CACHE_BYTES = 64 * 1024 * 1024


class GrammarCache:
    """xgrammar's compiler for one model's vocabulary (the logits' width, which Qwen pads past the
    tokenizer's length; the model's stop ids end a finished grammar); it caches what it compiled."""

    def __init__(self, tokenizer, model, stop_ids):
        xgr = xgrammar()
        vocab = int(model.get_output_embeddings().weight.shape[0])
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab, stop_token_ids=sorted(stop_ids))
        # Clients send their own schemas: the cache of compiled grammars is bounded (xgrammar evicts).
        self._compiler = xgr.GrammarCompiler(info, max_threads=2, cache_limit_bytes=GRAMMAR_CACHE_BYTES)

    def compile(self, constraint: Constraint):
        if constraint.kind == "ebnf":
            return self._compiler.compile_grammar(constraint.spec)
        return self._compiler.compile_json_schema(constraint.spec, any_whitespace=False)


@dataclass
class VLItem:
    messages: list[dict]  # chat-template messages; image parts are {"type": "image"}
    images: list = field(default_factory=list)  # PIL images, in the order of the image parts
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None  # None, 0 or -1: off
    adapter: str | None = None  # diagram: adapter name, BASE, or None (the engine's default)
    constraint: Constraint | None = None  # structured generation (VisionItem.constraint)

    @property
    def cost(self) -> int:
        """Tokens it may generate: a batch runs until its longest row ends, so the scheduler batches items
        of a similar budget (scheduler.SIZE_RATIO)."""
        return self.max_new_tokens

    @classmethod
    def decode(cls, item: VisionItem) -> "VLItem":
        """A contract item as the engine takes it: messages for the chat template, images decoded."""
        from services.runtime.codecs.images import from_wire

        return cls(item.template_messages(), [from_wire(a) for a in item.images], max_new_tokens=item.max_new_tokens,
                   temperature=item.temperature, top_p=item.top_p, top_k=item.top_k, adapter=item.adapter,
                   constraint=item.constraint)


class VisionLanguageEngine:
    def __init__(self, replicas: list[Any], processor, *, adapters: list[str], default_adapter: str | None,
                 merged: bool, failed: dict[str, str] | None = None, image_pixels: int | None = None):
        import torch

        from services.runtime.codecs.images import processor_pixel_kwargs

        self._torch = torch
        self.processor = processor
        self.adapters = adapters  # loaded adapter names (without BASE)
        self.failed = dict(failed or {})  # configured adapters not served: name -> reason
        self.default_adapter = default_adapter
        self.merged = merged
        # min/max_pixels for every processor call: the service's per-image budget
        self.image_kwargs = processor_pixel_kwargs(processor.image_processor, image_pixels)
        self._free: queue.Queue = queue.Queue()
        for m in replicas:
            self._free.put(m)
        self.replicas = len(replicas)
        tok = processor.tokenizer
        gen_cfg = replicas[0].generation_config
        eos = gen_cfg.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tok.convert_tokens_to_ids("<|im_end|>")}
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(self.eos_ids)
        self._grammar_cache: GrammarCache | None = None
        self._grammar_lock = threading.Lock()  # replicas' worker threads may ask for it at once

    @classmethod
    def load(cls, path: str, device: str, dtype: str, *, model_class: str, replicas: int = 1,
             adapters: dict[str, str] | None = None, default_adapter: str | None = None,
             merge_single: bool = False, threads: int | None = None,
             image_pixels: int | None = None) -> "VisionLanguageEngine":
        import torch
        import transformers
        from transformers import AutoProcessor

        from services.runtime.serving.device import torch_dtype

        if threads:
            torch.set_num_threads(threads)
        klass = getattr(transformers, model_class)
        adapters = adapters or {}
        models = []
        loaded: list[str] = []
        failed: dict[str, str] = {}
        for _ in range(replicas):
            model = klass.from_pretrained(path, dtype=torch_dtype(dtype), device_map=device)
            if adapters:
                model, loaded, failed = attach_adapters(model, adapters)  # the same on every copy
                if merge_single and len(loaded) == 1:
                    model = model.merge_and_unload()
            model.eval()
            models.append(model)
        processor = AutoProcessor.from_pretrained(path)
        merged = merge_single and len(loaded) == 1
        default = choose_default_adapter(default_adapter, adapters)
        if default is not None and default not in loaded and default not in failed:
            failed[default] = "the configured default adapter is not among the adapters found"
        return cls(models, processor, adapters=loaded, default_adapter=default, merged=merged, failed=failed,
                   image_pixels=image_pixels)

    # -- validation -----------------------------------------------------------------------------------
    def resolve_adapter(self, name: str | None) -> str | None:
        return resolve_adapter(self, name)

    # -- generation -----------------------------------------------------------------------------------
    def _prepare(self, items: Sequence[VLItem]):
        texts = [self.processor.apply_chat_template(it.messages, add_generation_prompt=True, tokenize=False)
                 for it in items]
        images = [img for it in items for img in it.images]
        return self.processor(text=texts, images=images or None, return_tensors="pt", padding=True,
                              padding_side="left", **self.image_kwargs)

    def _constraint(self, model, constraint: Constraint | None) -> dict:
        """generate's logits processor holding decoding to `constraint` (xgrammar; a new processor per call:
        it keeps each row's matcher state), {} for free text."""
        if constraint is None:
            return {}
        with self._grammar_lock:
            if self._grammar_cache is None:
                self._grammar_cache = GrammarCache(self.processor.tokenizer, model, self.eos_ids)
            compiled = self._grammar_cache.compile(constraint)
        return {"logits_processor": [xgrammar().contrib.hf.LogitsProcessor(compiled)]}

    def _sampling(self, item: VLItem) -> dict:
        return sampling_kwargs(item.temperature, item.top_p, item.top_k)

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

    def generate_batch(self, items: Sequence[VLItem]) -> list[VisionResult]:
        groups: dict[tuple, list[int]] = {}
        resolved = [self.resolve_adapter(it.adapter) for it in items]
        for i, it in enumerate(items):
            key = (resolved[i], it.constraint, tuple(sorted(self._sampling(it).items(), key=lambda kv: kv[0])))
            groups.setdefault(key, []).append(i)
        out: list[VisionResult | None] = [None] * len(items)
        model = self._free.get()
        try:
            for (adapter, _constraint, _), idx in groups.items():
                group = [items[i] for i in idx]
                for i, r in zip(idx, self._generate_group(model, group, adapter)):
                    out[i] = r
        finally:
            self._free.put(model)
        return out  # type: ignore[return-value]

    def _generate_group(self, model, group: list[VLItem], adapter: str | None) -> list[VisionResult]:
        torch = self._torch
        inputs = self._prepare(group).to(model.device)
        budget = max(it.max_new_tokens for it in group)
        prompt_len = int(inputs["input_ids"].shape[1])
        mask = inputs["attention_mask"]
        t0 = time.perf_counter()
        with torch.inference_mode(), self._adapter_ctx(model, adapter):
            ids = model.generate(**inputs, max_new_tokens=budget, pad_token_id=self.pad_id,
                                 **self._constraint(model, group[0].constraint), **self._sampling(group[0]))
        dt = time.perf_counter() - t0
        results = []
        tok = self.processor.tokenizer
        for row, it, m in zip(ids[:, prompt_len:].tolist(), group, mask):
            kept, reason = self._finish(row, it.max_new_tokens)
            results.append(VisionResult(text=tok.decode(kept, skip_special_tokens=True), finish_reason=reason,
                                        usage=Usage(prompt_tokens=int(m.sum()), completion_tokens=len(kept)),
                                        generate_seconds=round(dt, 4), adapter=adapter))
        return results

    def stream(self, item: VLItem, emit: Callable[[str], None], cancel: threading.Event) -> VisionResult:
        """Emits the text pieces as they are generated (in this thread: a runtime.serving.streams worker);
        returns the result without its text (finish_reason, usage, timing)."""
        from services.runtime.serving.generation import stream_generate

        adapter = self.resolve_adapter(item.adapter)
        model = self._free.get()
        try:
            inputs = self._prepare([item]).to(model.device)
            prompt_len = int(inputs["input_ids"].shape[1])
            t0 = time.perf_counter()

            def run(streamer, criteria):
                with self._torch.inference_mode(), self._adapter_ctx(model, adapter):
                    return model.generate(**inputs, max_new_tokens=item.max_new_tokens, pad_token_id=self.pad_id,
                                          streamer=streamer, stopping_criteria=criteria,
                                          **self._constraint(model, item.constraint), **self._sampling(item))

            ids = stream_generate(run, self.processor.tokenizer, emit, cancel)
        finally:
            self._free.put(model)
        kept, reason = self._finish(ids[0, prompt_len:].tolist(), item.max_new_tokens)
        return VisionResult(text="", finish_reason=reason,
                            usage=Usage(prompt_tokens=prompt_len, completion_tokens=len(kept)),
                            generate_seconds=round(time.perf_counter() - t0, 4), adapter=adapter)

    def warmup(self) -> None:
        from PIL import Image

        img = Image.new("RGB", (64, 64), (128, 128, 128))
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "warm up"}]}]
        # An adapter that is served (the default may be one that failed to load: requests for it are refused).
        adapter = self.default_adapter if self.default_adapter in self.adapters else next(iter(self.adapters), BASE)
        for _ in range(self.replicas):  # each copy once (first calls pay for kernel selection)
            self.generate_batch([VLItem(msgs, [img], max_new_tokens=2, adapter=adapter)])
