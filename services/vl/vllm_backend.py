"""VL (Qwen2.5-VL) and diagram (Qwen3-VL + LoRA) on vLLM: the engine environment's vLLM server, one chat
completion per generation.

The service keeps what it did: validation, the pixel budget, admission (429), the scheduler's batches;
vLLM batches every generation it is given at each decoding step. What maps onto vLLM:
- images: each image part becomes an `image_url` part carrying the image as a PNG data URL, in order;
  the per-image pixel budget is the server's `--mm-processor-kwargs` (min/max_pixels, as the transformers
  engine passes them to every processor call);
- decoding: temperature (0: greedy), top_p (1.0 when not given), top_k (-1: off) sent explicitly, so the
  checkpoint's generation_config does not mix its own in (as runtime sampling_kwargs does for transformers);
  the budget is `max_tokens`;
- adapters (diagram): served as `--lora-modules name=path`, chosen per request by the request's `model`
  (the adapter's name, or the base model's served name); `--max-lora-rank` is the smallest vLLM accepts
  that holds every adapter's rank, and `--enable-tower-connector-lora` is set when an adapter targets the
  vision tower or its merger. Which adapter runs, and which names are refused, is the same rule as on
  transformers (engine.resolve_adapter). A single adapter is never merged here (vLLM applies LoRA per
  request at no extra cost).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from services.runtime.serving import vllm_server
from services.runtime.serving.generation import Usage, is_sampling
from services.runtime.serving.vllm_server import VLLMBackend

from .contract import VisionResult
from .engine import VLItem, choose_default_adapter, resolve_adapter

# The ranks vLLM 0.30 accepts for --max-lora-rank (its parser's choices).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Module names of the vision tower and its merger in Qwen2.5-VL / Qwen3-VL checkpoints.
TOWER_MODULES = ("visual", "vision_tower", "merger")


def lora_flags(adapters: dict[str, str]) -> list[str]:
    """vLLM's LoRA flags for the adapters (name -> folder): every adapter served, the rank cap that holds them
    all, tower LoRA when one of them reaches into the vision tower."""
    if not adapters:
        return []
    ranks, tower = [], False
    for folder in adapters.values():
        cfg = json.loads((Path(folder) / "adapter_config.json").read_text())
        ranks.append(int(cfg.get("r") or 8))
        targets = cfg.get("target_modules") or []
        targets = [targets] if isinstance(targets, str) else targets
        tower = tower or any(t in str(m) for m in targets for t in TOWER_MODULES)
    rank = next((r for r in LORA_RANKS if r >= max(ranks)), None)
    if rank is None:
        raise RuntimeError(f"a LoRA adapter of rank {max(ranks)} is above vLLM's largest ({LORA_RANKS[-1]})")
    flags = ["--enable-lora", "--lora-modules", *(f"{name}={folder}" for name, folder in adapters.items()),
             "--max-lora-rank", str(rank), "--max-loras", str(len(adapters))]
    return flags + (["--enable-tower-connector-lora"] if tower else [])


def extra_flags(cfg, adapters: dict[str, str], pixels: dict[str, int] | None) -> list[str]:
    flags = ["--limit-mm-per-prompt", json.dumps({"image": cfg.vllm_max_images, "video": 0}),
             # structured outputs as the transformers engine does them: xgrammar, JSON without free
             # whitespace (services.runtime.serving.generation.Constraint)
             "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]
    if pixels:
        flags += ["--mm-processor-kwargs", json.dumps(pixels)]
    return flags + lora_flags(adapters)


def managed(cfg, who: str, model_path: str, dtype: str, *, adapters: dict[str, str] | None = None,
            pixels: dict[str, int] | None = None, gpus: list[str] | None = None):
    return vllm_server.managed_server(cfg, who, str(model_path), dtype, max_model_len=cfg.vllm_max_model_len,
                                      served=vllm_server.served_names(cfg, who),
                                      extra=extra_flags(cfg, adapters or {}, pixels), gpus=gpus)


def png_data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_request(model: str, item: VLItem, *, stream: bool) -> dict:
    """The body of one generation's chat completion."""
    images = iter(item.images)
    messages = []
    for turn in item.messages:
        content = [{"type": "image_url", "image_url": {"url": png_data_url(next(images))}} if p["type"] == "image"
                   else {"type": "text", "text": p.get("text") or ""} for p in turn["content"]]
        messages.append({"role": turn["role"], "content": content})
    sampling = is_sampling(item.temperature)
    body: dict = {
        "model": model,
        "messages": messages,
        "max_tokens": item.max_new_tokens,
        "temperature": float(item.temperature) if sampling else 0.0,
        "top_p": float(item.top_p) if sampling and item.top_p is not None else 1.0,
        "top_k": int(item.top_k) if sampling and item.top_k is not None and item.top_k > 0 else -1,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if item.constraint is not None:  # vLLM >= 0.12: structured_outputs (the removed guided_* would be ignored)
        body["structured_outputs"] = item.constraint.structured_outputs()
    return body


class VLLMVisionEngine(VLLMBackend):
    """The VL/diagram engine over a vLLM server: `generate_batch` and `stream` as VisionLanguageEngine has
    them, run in the scheduler's (or a stream's) worker thread."""

    merged = False  # vLLM applies LoRA per request: a single adapter is never merged
    replicas = 1

    def __init__(self, server, cfg, who: str, *, adapters: list[str], default_adapter: str | None,
                 owns_server: bool = True):
        super().__init__(server, cfg, model=vllm_server.served_names(cfg, who)[0], label=f"{who} backend (vLLM)",
                         owns_server=owns_server)
        self.adapters = list(adapters)
        self.failed: dict[str, str] = {}
        self.default_adapter = default_adapter

    @classmethod
    def start(cls, cfg, who: str, path: str, dtype: str, *, adapters: dict[str, str] | None = None,
              configured_default: str | None = None, gpus: list[str] | None = None) -> VLLMVisionEngine:
        from transformers import AutoImageProcessor

        from services.runtime.codecs.images import processor_pixel_kwargs

        adapters = adapters or {}
        pixels = processor_pixel_kwargs(AutoImageProcessor.from_pretrained(path), cfg.image_pixels)
        server = managed(cfg, who, path, dtype, adapters=adapters, pixels=pixels, gpus=gpus)
        server = vllm_server.start_server(server, cfg.vllm_start_timeout + 30)
        return cls(server, cfg, who, adapters=list(adapters),
                   default_adapter=choose_default_adapter(configured_default, adapters))

    def resolve_adapter(self, name: str | None) -> str | None:
        return resolve_adapter(self, name)

    def generate_batch(self, items: Sequence[VLItem]) -> list[VisionResult]:
        self.require_ready()
        adapters = [self.resolve_adapter(it.adapter) for it in items]
        return self.run_all(lambda args: self._complete(*args), list(zip(items, adapters)))

    def _complete(self, item: VLItem, adapter: str | None) -> VisionResult:
        t0 = time.perf_counter()
        out = self.post_chat(chat_request(adapter or self.model, item, stream=False))
        choice = (out.get("choices") or [{}])[0]
        return VisionResult(text=(choice.get("message") or {}).get("content") or "",
                            finish_reason=choice.get("finish_reason") or "stop", usage=usage(out.get("usage")),
                            generate_seconds=round(time.perf_counter() - t0, 4), adapter=adapter)

    def stream(self, item: VLItem, emit: Callable[[str], None], cancel: threading.Event) -> VisionResult:
        """Emits the text pieces as they come (in this thread: a runtime.serving.streams worker); returns the
        result without its text. A cancel (the client left) closes the request: vLLM aborts it."""
        self.require_ready()
        adapter = self.resolve_adapter(item.adapter)
        t0 = time.perf_counter()
        finish, used = "stop", None
        for chunk in self.stream_chat(chat_request(adapter or self.model, item, stream=True), cancel):
            for choice in (chunk.get("choices") or [])[:1]:
                if text := (choice.get("delta") or {}).get("content"):
                    emit(text)
                finish = choice.get("finish_reason") or finish
            used = chunk.get("usage") or used
        return VisionResult(text="", finish_reason=finish, usage=usage(used),
                            generate_seconds=round(time.perf_counter() - t0, 4), adapter=adapter)


def usage(raw: dict | None) -> Usage:
    raw = raw or {}
    return Usage(prompt_tokens=int(raw.get("prompt_tokens") or 0), completion_tokens=int(raw.get("completion_tokens") or 0))
