"""A managed engine: any server command line run as a child process, supervised until it is stopped.

`ManagedEngine` runs the command in its own process group, forwards its output to a logger (dropping the
lines that may carry request content), waits until GET `health_path` answers 200, restarts the child with
exponential backoff when it dies or stops answering, and stops the whole group on close() or at
interpreter exit. Its `state` (loading -> ready, loading again while it restarts | failed | stopped),
`error` and `info()` are what /health reports; `require_ready()` turns "not ready" into our 503;
`metrics_text()` passes the child's Prometheus text through, keeping only the families asked for.

Nothing here knows what the child serves: the caller builds the command line (which must make the child
listen on `port`) and talks to it over HTTP (runtime.serving.openai_client for OpenAI-compatible servers).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Sequence

import httpx

from services.runtime.core.errors import ServiceUnavailable
from services.runtime.core.logging import get_logger

log = get_logger("engine")

# The level a child printed on a line of its output, kept when we forward it.
_LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")
# Output lines that could carry request content (vLLM prints them only with --enable-log-requests, which
# we never pass; a guard in case extra args or an engine default turn it on): never forwarded to our logs.
REQUEST_CONTENT = re.compile(r"Received request|prompt_token_ids|prompt: |Generated response|output: ",
                             re.IGNORECASE)

# States: a child that is down is `loading` while it restarts; `failed` only when it never got ready.
LOADING, READY, FAILED, STOPPED = "loading", "ready", "failed", "stopped"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def filter_families(text: str, prefixes: Sequence[str] | None) -> str:
    """Prometheus text keeping only the metric families whose name starts with one of `prefixes` (HELP/TYPE
    lines included); None keeps everything. A child's process_*/python_* families would otherwise duplicate
    ours in a merged exposition."""
    if prefixes is None:
        return text
    keep = tuple(prefixes)
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and not parts[2].startswith(keep):
                continue
        elif not line.startswith(keep):
            continue
        out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _group_alive(pgid: int) -> bool:
    """Any process of the group left that is not a zombie. killpg(0) alone counts zombies, and an orphan's
    zombie waits for whatever reaps at PID 1 (in a container, maybe nothing): /proc is read where it exists."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if not os.path.isdir("/proc"):
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            return True
    return False


_LIVE: weakref.WeakSet[ManagedEngine] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # pragma: no cover - interpreter exit
    for engine in list(_LIVE):
        try:
            engine.close()
        except Exception:  # noqa: BLE001
            pass


class ManagedEngine:
    """One supervised child server. A start that never reaches ready (bad model, exit before health,
    timeout) is `failed` with the reason and the last lines of the child's output; a child that dies after
    it was ready is restarted (backoff doubling up to 5 min) and the state is `loading` meanwhile. A child
    that stops answering its health check for HEALTH_INTERVAL x HEALTH_FAILURES is treated as dead."""

    HEALTH_INTERVAL = 2.0  # seconds between health probes while ready
    HEALTH_FAILURES = 10  # consecutive failed probes (alive child) before it is killed and restarted
    STOP_GRACE = 15.0  # SIGTERM -> SIGKILL

    def __init__(self, command: Sequence[str], *, port: int, host: str = "127.0.0.1", name: str = "engine",
                 env: dict[str, str] | None = None, start_timeout: float = 600.0, restart_backoff: float = 5.0,
                 start_timeout_setting: str | None = None, health_path: str = "/health",
                 metrics_path: str = "/metrics", metric_prefixes: Sequence[str] | None = None,
                 logger: logging.Logger | logging.LoggerAdapter | None = None):
        self.command = list(command)
        self.host, self.port, self.name = host, port, name
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.start_timeout, self.restart_backoff = start_timeout, restart_backoff
        self._timeout_hint = f" ({start_timeout_setting})" if start_timeout_setting else ""
        self.health_path, self.metrics_path = health_path, metrics_path
        self.metric_prefixes = tuple(metric_prefixes) if metric_prefixes is not None else None
        self.log = logger or log

        self.state = STOPPED
        self.error: str | None = None  # why it is not ready now (None while ready)
        self.last_error: str | None = None  # the last failure, kept after a successful restart
        self.restarts = 0
        self.ready_seconds: float | None = None  # last spawn -> health 200
        self._proc: subprocess.Popen | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._stop = threading.Event()
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
        return self.state == READY

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> ManagedEngine:
        if self._watchdog is not None:
            return self
        self._stop.clear()
        self._set_state(LOADING)
        _LIVE.add(self)
        self._watchdog = threading.Thread(target=self._run, name=f"{self.name}-watchdog", daemon=True)
        self._watchdog.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until ready (True: the first start, or again after a restart) or failed/stopped (False);
        False on timeout."""
        with self._changed:
            self._changed.wait_for(lambda: self.state != LOADING, timeout)
        return self.ready

    def require_ready(self, label: str | None = None) -> None:
        """ServiceUnavailable (503 + Retry-After) unless ready: soon while loading/restarting, later when failed."""
        if self.ready:
            return
        state = self.state
        why = f" ({self.error})" if self.error else ""
        raise ServiceUnavailable(f"{label or self.name} is {state}{why}"[:500],
                                 code="model_not_ready" if state == LOADING else "model_failed",
                                 retry_after=10 if state == LOADING else 60)

    def info(self) -> dict:
        return {"state": self.state, "error": self.error, "last_error": self.last_error, "pid": self.pid,
                "port": self.port, "restarts": self.restarts,
                "ready_seconds": None if self.ready_seconds is None else round(self.ready_seconds, 1)}

    async def metrics_text(self) -> str:
        """The child's Prometheus text (metric_prefixes' families only); '' when it is stopped, failed or
        does not answer."""
        if self.state in (STOPPED, FAILED):
            return ""
        try:
            async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
                r = await client.get(self.base_url + self.metrics_path)
        except httpx.HTTPError:
            return ""
        return filter_families(r.text, self.metric_prefixes) if r.status_code == 200 else ""

    def close(self) -> None:
        self._stop.set()
        self._kill_child()
        wd = self._watchdog
        if wd is not None and wd is not threading.current_thread():
            wd.join(timeout=self.STOP_GRACE + 5)
        self._set_state(STOPPED, self.error)
        _LIVE.discard(self)

    # -- state ----------------------------------------------------------------------------------------
    def _set_state(self, state: str, error: str | None = None) -> None:
        with self._changed:
            self.error = error  # first: a reader that sees the new state sees its reason
            self.state = state
            self._changed.notify_all()

    # -- the child ------------------------------------------------------------------------------------
    def _spawn(self) -> subprocess.Popen:
        self.log.info(f"starting {self.name}", extra={"command": shlex.join(self.command), "port": self.port,
                                                      "restarts": self.restarts})
        self._tail.clear()
        proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # its own process group: its workers are stopped with it
            bufsize=1,
            text=True,
            errors="replace",
        )
        self._pump_thread = threading.Thread(target=self._pump, args=(proc,), name=f"{self.name}-log-{proc.pid}",
                                             daemon=True)
        self._pump_thread.start()
        return proc

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if not line or REQUEST_CONTENT.search(line):
                continue
            self._tail.append(line[:500])
            m = _LEVEL.search(line[:80])  # "(APIServer pid=1) WARNING 11-22 06:57:58 [x.py:1] ..."
            level = getattr(logging, m.group(1)) if m else logging.INFO
            self.log.log(level, line[:2000], extra={"child_pid": proc.pid})

    def _kill_child(self) -> None:
        """Stop the child's whole process group (an engine's workers are in it): SIGTERM so they tear down
        (unlink their shared memory), SIGKILL whatever is left after the grace period. Also when the leader
        already died: its orphans would otherwise hold memory and the port."""
        with self._lock:
            proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the child leads its own group
        if not _signal_group(pgid, signal.SIGTERM):
            proc.poll()
            return
        deadline = time.monotonic() + self.STOP_GRACE
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader as soon as it exits
            if not _group_alive(pgid):
                break
            time.sleep(0.1)
        else:
            _signal_group(pgid, signal.SIGKILL)
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            pass

    def _exit_reason(self, proc: subprocess.Popen) -> str:
        pump = self._pump_thread
        if pump is not None:  # let the last lines (the traceback) arrive; a survivor may hold the pipe
            pump.join(timeout=1.0)
        code = proc.returncode
        how = f"signal {-code}" if code is not None and code < 0 else f"code {code}"
        tail = " | ".join(list(self._tail)[-8:])
        return f"{self.name} exited with {how}" + (f": {tail}" if tail else "")

    def _healthy(self, client: httpx.Client) -> bool:
        try:
            return client.get(self.base_url + self.health_path).status_code == 200
        except httpx.HTTPError:
            return False

    def _await_ready(self, proc: subprocess.Popen, client: httpx.Client) -> str | None:
        """None once the health check answers 200; else why not (exit, timeout, stop)."""
        t0 = time.monotonic()
        while not self._stop.is_set():
            if proc.poll() is not None:
                return self._exit_reason(proc)
            if self._healthy(client):
                self.ready_seconds = time.monotonic() - t0
                return None
            if time.monotonic() - t0 > self.start_timeout:
                return f"{self.name} not ready after {self.start_timeout:.0f}s{self._timeout_hint}"
            self._stop.wait(0.5)
        return "stopped"

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - a broken watchdog must not leave "loading" forever
            self.log.exception(f"{self.name} watchdog crashed")
            self._set_state(FAILED, f"{self.name} watchdog crashed: {type(exc).__name__}: {exc}")
            self._kill_child()

    def _loop(self) -> None:
        backoff = self.restart_backoff
        first = True
        with httpx.Client(timeout=httpx.Timeout(10.0, connect=2.0), trust_env=False) as client:
            while not self._stop.is_set():
                self._set_state(LOADING, self.error)
                why: str | None
                with self._lock:
                    if self._stop.is_set():
                        break
                    try:
                        self._proc = proc = self._spawn()
                    except OSError as exc:  # command not found, not executable, ...
                        self._proc = proc = None
                        why = f"cannot start {self.name} ({shlex.join(self.command[:3])}): {exc}"
                if proc is not None:
                    why = self._await_ready(proc, client)
                if self._stop.is_set():
                    break
                if why is None and proc is not None:
                    self._set_state(READY)
                    self.log.info(f"{self.name} ready", extra={"port": self.port, "pid": proc.pid,
                                                               "ready_seconds": round(self.ready_seconds or 0, 1),
                                                               "restarts": self.restarts})
                    first = False
                    backoff = self.restart_backoff
                    why = self._supervise(proc, client)
                    if self._stop.is_set():
                        break
                self._kill_child()
                self.last_error = why
                if first:
                    # Never became ready: a configuration or model problem, not a crash to retry blindly.
                    self.log.error(f"{self.name} failed to start", extra={"error": why})
                    self._set_state(FAILED, why)
                    return
                self.restarts += 1
                self._set_state(LOADING, why)
                self.log.error(f"{self.name} is down; restarting", extra={"error": why, "backoff_s": backoff,
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
            if self._healthy(client):
                misses = 0
                if self.state != READY:
                    self._set_state(READY)
                continue
            if proc.poll() is not None:
                return self._exit_reason(proc)
            misses += 1
            if misses >= 2 and self.state == READY:  # answer 503 ourselves while it may be wedged
                self._set_state(LOADING, f"{self.name} is not answering its health check")
            if misses >= self.HEALTH_FAILURES:
                return f"{self.name} health check failed {misses} times in a row"
        return None
