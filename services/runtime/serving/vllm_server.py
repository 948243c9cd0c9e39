"""vLLM as a model service's engine: a server child process from the engine environment, reached over HTTP.

Two environments, on purpose. The serving environment (uv.lock: BentoML, our code, the transformers
fallbacks) runs qwen-asr 0.0.6 and qwen-tts 0.1.1, which need transformers 4.57; vLLM 0.30 needs
transformers 5. So vLLM lives in an environment of its own (engines/<flavor>/uv.lock, installed by
engines/install.sh: /opt/qwen-engine in the CUDA image, .venv-engine by `make engine-env`), and the two meet
only over the OpenAI-compatible HTTP API of the server started here:

    <engine>/bin/python -m vllm.entrypoints.openai.api_server --model PATH ...

(the module form: the CPU twin's `vllm` console script cannot find its own distribution; the module is the
same server `vllm serve` runs). What is shared by every service on vLLM lives here: finding the engine
environment, the command line (placement, memory, context, sequences, served names, extra args), the
managed child (runtime.serving.engine_supervisor: start, readiness, restart, logs, metrics) and
`VLLMBackend`, the part of an engine that is the same for all (health, info, metrics, close). Each service
adds its own request mapping (services/<svc>/vllm_backend.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import shlex
import shutil
import sys
import threading
import wave
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from services.runtime.core.logging import get_logger
from services.runtime.core.settings import get_settings
from services.runtime.serving import device
from services.runtime.serving.engine_supervisor import ManagedEngine, free_port
from services.runtime.serving.openai_client import (CHAT_PATH, OpenAIClient, SSEDecoder, answer_json, json_or_text,
                                                    parse_chunk, upstream_error)

log = get_logger("vllm")

IMAGE_ENGINE_HOME = Path("/opt/qwen-engine")
PROJECT_ENGINE_HOME = Path(__file__).resolve().parents[3] / ".venv-engine"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
INSTALL_HINT = ("install the engine environment: `make engine-env` on a GPU host (engines/install.sh cuda DIR), "
                "or point QWEN_ENGINE_HOME at one")
# vLLM reports usage stats to its authors unless told not to; these services call no one.
CHILD_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


# -- the engine environment -------------------------------------------------------------------------------
def engine_home(settings=None) -> Path | None:
    """QWEN_ENGINE_HOME as set (whether or not it exists), else the first of /opt/qwen-engine and the
    project's .venv-engine that holds an interpreter; None: no engine environment here. `settings`: the
    global settings to read (default: this process's)."""
    configured = (settings or get_settings()).engine_home
    if configured:
        return Path(configured)
    for home in (IMAGE_ENGINE_HOME, PROJECT_ENGINE_HOME):
        if (home / "bin" / "python").exists():
            return home
    return None


def engine_available(settings=None) -> bool:
    home = engine_home(settings)
    return home is not None and (home / "bin" / "python").exists()


def engine_flavor() -> str | None:
    """cuda | cpu, as engines/install.sh recorded it; None when unknown."""
    home = engine_home()
    try:
        return (home / "qwen-engine.flavor").read_text().strip() if home else None
    except OSError:
        return None


def uses_vllm(cfg, device_name: str, settings=None) -> bool:
    """A service's `backend` on `device_name`: vllm; auto is vLLM on CUDA when the engine environment is
    installed, transformers elsewhere (CPU, MPS, a host without it)."""
    backend = getattr(cfg, "backend", "transformers")
    return backend == "vllm" or (backend == "auto" and device_name.startswith("cuda")
                                 and engine_available(settings))


# -- the command line -------------------------------------------------------------------------------------
def resolve_command(command: str) -> list[str]:
    """argv prefix of a service's `vllm_command`. Empty: the engine environment's server module. A bare
    `vllm` is the console script next to this interpreter, else the one on PATH; anything else as written."""
    if not command.strip():
        home = engine_home()
        python = str(home / "bin" / "python") if home else "python"
        return [python, "-m", SERVER_MODULE]
    base = shlex.split(command)
    if base[0] == "vllm":
        here = os.path.join(os.path.dirname(sys.executable), "vllm")
        found = here if os.path.isfile(here) and os.access(here, os.X_OK) else shutil.which("vllm")
        if found:
            base[0] = found
    return base


def check_command(cfg, who: str) -> None:
    """Refuse at load, before any weights are fetched, a vLLM backend that cannot start here: no engine
    environment (empty `vllm_command`), or a command that is not an executable."""
    base = resolve_command(cfg.vllm_command)
    exe = base[0]
    where = shutil.which(exe) if os.sep not in exe else (exe if os.access(exe, os.X_OK) else None)
    if where is not None:
        return
    env = f"QWEN_{who.upper()}_"
    if not cfg.vllm_command.strip():
        raise RuntimeError(f"{who}: the vLLM backend is selected ({env}BACKEND) but there is no engine environment "
                           f"({engine_home() or f'{IMAGE_ENGINE_HOME} or {PROJECT_ENGINE_HOME}'}): {INSTALL_HINT}; "
                           f"or {env}BACKEND=transformers")
    raise RuntimeError(f"{who}: {env}VLLM_COMMAND names {exe!r}, which is not an executable here")


def served_names(cfg, fallback: str) -> list[str]:
    """The names the child answers to: the service's model name first, then its aliases; no duplicates."""
    names: list[str] = []
    for n in [cfg.model, *getattr(cfg, "aliases", [])]:
        if n and n not in names:
            names.append(n)
    return names or [fallback]


def build_command(cfg, model_path: str, dtype: str, port: int, *, max_model_len: int, served: Sequence[str],
                  tensor_parallel_size: int | None = None, extra: Sequence[str] = ()) -> list[str]:
    """argv of the server. A command ending in `serve` (the `vllm` CLI) takes the model as its positional
    argument; the module form `--model PATH`. The service's own flags (`extra`: modality limits, LoRA)
    follow ours, and `vllm_extra_args` come last (argparse: the last occurrence of a flag wins).
    tensor_parallel_size: the placed GPUs' count (runtime.serving.device.place); None: the setting, else
    every visible GPU."""
    base = resolve_command(cfg.vllm_command)
    model_args = [model_path] if base[-1] == "serve" else ["--model", model_path]
    tp = tensor_parallel_size or cfg.vllm_tensor_parallel_size or max(1, device.visible_gpu_count())
    cmd = [
        *base,
        *model_args,
        "--served-model-name", *served,
        "--host", cfg.vllm_host,
        "--port", str(port),
        "--tensor-parallel-size", str(tp),
        "--max-model-len", str(max_model_len),
        "--gpu-memory-utilization", str(cfg.vllm_gpu_memory_utilization),
        "--max-num-seqs", str(cfg.vllm_max_num_seqs),
        "--dtype", dtype or "auto",
        # /health and /metrics are polled: keep uvicorn's access lines out of our logs.
        "--disable-uvicorn-access-log",
        *extra,
    ]  # fmt: skip
    cmd += shlex.split(cfg.vllm_extra_args or "")
    return cmd


def managed_server(cfg, who: str, model_path: str, dtype: str, *, max_model_len: int, served: Sequence[str],
                   extra: Sequence[str] = (), gpus: list[str] | None = None) -> ManagedEngine:
    """The service's vLLM as a managed child (not started). gpus: the CUDA_VISIBLE_DEVICES ids it is placed
    on (runtime.serving.device.place), one per tensor-parallel rank; None: the setting's TP size."""
    port = cfg.vllm_port or free_port(cfg.vllm_host)
    command = build_command(cfg, str(model_path), dtype, port, max_model_len=max_model_len, served=served,
                            tensor_parallel_size=len(gpus or []) or None, extra=extra)
    env = {**CHILD_ENV, **({"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else {})}
    return ManagedEngine(command, host=cfg.vllm_host, port=port, name=f"{who} vLLM", env=env,
                         logger=get_logger(f"{who}.vllm"), start_timeout=cfg.vllm_start_timeout,
                         restart_backoff=cfg.vllm_restart_backoff,
                         start_timeout_setting=f"QWEN_{who.upper()}_VLLM_START_TIMEOUT", metric_prefixes=("vllm:",))


def start_server(server: ManagedEngine, timeout: float) -> ManagedEngine:
    """Start the child and block until its /health is 200 (runs in the service's background loader)."""
    server.start()
    if not server.wait_ready(timeout):
        reason = server.error or f"state {server.state}"
        server.close()
        raise RuntimeError(f"vLLM did not become ready: {reason}")
    return server


# -- request parts -----------------------------------------------------------------------------------------
def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
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


def audio_data_url(audio: np.ndarray, sample_rate: int) -> str:
    """An `audio_url` part's URL carrying the clip itself (vLLM decodes data URLs; nothing is fetched)."""
    return "data:audio/wav;base64," + base64.b64encode(wav_bytes(audio, sample_rate)).decode("ascii")


# -- what every vLLM engine has ---------------------------------------------------------------------------
class VLLMBackend:
    """The part of a service's vLLM engine that is the same for all: the managed server (`server`: state,
    ready, error, info, metrics_text, close), an async OpenAI client to it (`client`), a synchronous one for
    engines called from worker threads (`post_chat`, `stream_chat`, `run_all`), the served name requests use
    (`model`) and the name a client sees in errors (`label`, a 503 while the child restarts)."""

    backend = "vllm"

    def __init__(self, server, cfg, *, model: str, label: str, owns_server: bool = True):
        self.server = server
        self.cfg = cfg
        self.model = model
        self.label = label
        self.client = OpenAIClient(server.base_url, timeout=cfg.timeout, name=label)
        self._owns_server = owns_server
        self._http: httpx.Client | None = None
        self._pool: ThreadPoolExecutor | None = None

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
        return {**self.server.info(), "engine_flavor": engine_flavor()}

    def require_ready(self) -> None:
        self.server.require_ready(self.label)

    def warmup(self) -> None:
        """Nothing to do: the server answers /health only after its own profiling and warm-up."""

    # -- synchronous requests, for engines called in worker threads ------------------------------------------
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.server.base_url, trust_env=False,
                                      timeout=httpx.Timeout(float(self.cfg.timeout), connect=5.0),
                                      limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        return self._http

    def run_all(self, fn, args: Sequence) -> list:
        """fn(arg) for every arg at once (one request each: vLLM batches them), results in order; every call
        ends before this returns, and the first failure is raised."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.cfg.vllm_max_num_seqs),
                                            thread_name_prefix=f"{self.label}-calls")
        jobs = [self._pool.submit(fn, a) for a in args]
        results, errors = [], []
        for job in jobs:
            try:
                results.append(job.result())
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
        if errors:
            raise errors[0]
        return results

    def post_chat(self, body: dict) -> dict:
        """A chat completion (not streamed): the server's JSON; its errors as ours."""
        try:
            r = self.http().post(CHAT_PATH, json=body)
        except httpx.HTTPError as exc:
            raise self.client.unreachable(exc) from exc
        return answer_json(r, self.label)

    def stream_chat(self, body: dict, cancel: threading.Event | None = None) -> Iterator[dict]:
        """The chunks of a streamed chat completion, parsed; an error answer or event raised as ours. A set
        `cancel` closes the request (vLLM aborts a request whose client left)."""
        events = SSEDecoder()
        try:
            with self.http().stream("POST", CHAT_PATH, json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise upstream_error(r.status_code, json_or_text(r), self.label)
                for line in r.iter_lines():
                    if cancel is not None and cancel.is_set():
                        return
                    data = events.feed(line)
                    if data is None:
                        continue
                    if data.strip() == "[DONE]":
                        return
                    yield parse_chunk(data, self.label)
        except httpx.HTTPError as exc:
            raise self.client.unreachable(exc) from exc

    async def metrics_text(self) -> str:
        """vLLM's own series (`vllm:*`) from the child's /metrics: its process_*/python_* families would
        duplicate ours in the merged exposition. '' when unreachable."""
        return await self.server.metrics_text()

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._http is not None:
            self._http.close()
        await self.client.aclose()
        if self._owns_server:
            await asyncio.to_thread(self.server.close)
