"""One real `bentoml serve` session for the whole test run, shared by every served test.

Started lazily by the first test that needs it, in its own session (SIGTERM to its group, then SIGKILL to
its whole process tree: BentoML's graceful shutdown can wait long, and its workers sit in groups of their
own). Beside it the tests start what users have: a local
HTTP server holding songs (allowed by QWEN_FETCH_PRIVATE_ALLOWLIST) and a real S3-protocol server
(moto's), both on loopback.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.audio_fixtures import encode, song

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-key-7f3a"
S3_SECRET = "s3-secret-91c2d0"  # distinctive, so the logs can be searched for it
BUCKET = "songs"
START_TIMEOUT = float(os.environ.get("QWEN_TEST_START_TIMEOUT", "420"))


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port below Linux's ephemeral range (32768-60999). A port from bind(0) is an ephemeral one,
    released at once: a `bentoml serve` starting meanwhile reserves its own internal ports the same way and can
    take it before our server binds it (seen in CI: "Address already in use"). Below the range no bind(0)
    reservation ever lands, so only another explicit choice could collide; this process never hands one out twice."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 32768)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


@dataclass
class Served:
    url: str
    log: Path
    media_url: str
    s3_endpoint: str
    health_seen: list[dict] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    def metric(self, family: str, service: str) -> dict[str, float]:
        """The samples of one metric family for one service, by sample name (e.g. qwen_batch_size_sum)."""
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(httpx.get(self.url + "/metrics", timeout=30).text):
            if fam.name == family:
                for smp in fam.samples:
                    if smp.labels.get("service") == service:
                        out[smp.name] = out.get(smp.name, 0.0) + smp.value
        return out

    def batches(self, service: str) -> tuple[float, float]:
        """(items, engine calls) so far for `service`: qwen_batch_size's sum and count."""
        m = self.metric("qwen_batch_size", service)
        return m.get("qwen_batch_size_sum", 0.0), m.get("qwen_batch_size_count", 0.0)

    def client(self, key: str | None = API_KEY, **kw) -> httpx.Client:
        headers = {"X-API-Key": key} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kw.pop("timeout", 300), **kw)

    def openai(self, key: str = API_KEY):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=300)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    (d / "short.wav").write_bytes(encode(song(12.0, sr=16000), 16000, "wav"))
    (d / "short.mp3").write_bytes(encode(song(12.0, sr=44100), 44100, "mp3"))
    (d / "long.mp3").write_bytes(encode(song(45.0, sr=16000), 16000, "mp3"))
    return d


@pytest.fixture(scope="session")
def wav(media_dir) -> bytes:
    """The 12-s tone song (media_dir/short.wav) the served modules send."""
    return (media_dir / "short.wav").read_bytes()


@pytest.fixture(scope="session")
def media_server(media_dir):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(media_dir), **kw)

        def do_GET(self):
            if self.path == "/stall":  # answers the headers, then never the body: slower than any deadline
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                self.wfile.flush()
                time.sleep(30)
                return
            if self.path == "/to-metadata":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture(scope="session")
def s3_server(media_dir):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key=S3_SECRET,
                      region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="library/short.mp3", Body=(media_dir / "short.mp3").read_bytes())
    yield endpoint
    server.stop()


def process_tree(pid: int) -> list:
    """The process and everything under it (BentoML's workers run in process groups of their own, so a
    group signal does not reach them); [] when it is gone."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_server(proc: subprocess.Popen) -> None:
    """Stop a `bentoml serve`: SIGTERM to its group (the arbiter stops its workers), then SIGKILL to every
    process of the tree — BentoML's workers each run in their own process group, so a group kill alone
    would orphan them. The tree is listed before the arbiter can die and its workers be re-parented."""
    import psutil

    if proc.poll() is not None:
        return
    tree = process_tree(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=15)


def session_env(work: Path, s3_server: str) -> dict[str, str]:
    """The served session's environment: tiny models, small budgets, the test peers."""
    return {
        **os.environ,
        "BENTOML_CONFIG": str(ROOT / "configuration.yaml"),
        "BENTOML_HOME": str(work / "bentoml_home"),
        "BENTOML_DO_NOT_TRACK": "true",
        "QWEN_MODELS": "tiny",
        "QWEN_TINY_DIR": str(work / "tiny"),
        "QWEN_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "QWEN_API_KEY": API_KEY,
        "QWEN_FETCH_PRIVATE_ALLOWLIST": "127.0.0.1",
        "QWEN_FETCH_TIMEOUT": "4",  # a stalling media server (/stall) is a 504 quickly
        "QWEN_S3_ENDPOINT_URL": s3_server,
        "QWEN_S3_ACCESS_KEY_ID": "testing",
        "QWEN_S3_SECRET_ACCESS_KEY": S3_SECRET,
        "QWEN_S3_REGION": "us-east-1",
        "QWEN_ALIGNER_MAX_AUDIO_SECONDS": "660",
        # Vocal separation on (off by default): in tiny mode any name loads the tiny Demucs.
        "QWEN_ALIGNER_SEPARATOR": "htdemucs",
        # The tiny ASR never emits EOS (the real stop ids are hard-coded): every window runs to this.
        "QWEN_ASR_MAX_NEW_TOKENS": "24",
        # The tiny talker never emits EOS either: every synthesis is this many 80 ms frames.
        "QWEN_TTS_MAX_FRAMES": "40",
        # Exercise adaptive batching across requests (CPU default is 1: bench/ shows why).
        "QWEN_ASR_MAX_BATCH_SIZE": "4",
        "QWEN_ASR_BATCH_WAIT_MS": "50",
        # The fixtures are tone bursts, in which voice activity rightly hears no speech: with it on, every
        # window would be skipped and no test would see the model. Off by default here; the tests of voice
        # activity turn it on per request (chunking_strategy) with real speech (espeak-ng).
        "QWEN_ASR_VAD": "false",
        "QWEN_ALIGNER_MAX_BATCH_SIZE": "4",
        "QWEN_ALIGNER_BATCH_WAIT_MS": "50",
        # The tiny thinker never picks its EOS: keep the default caption budget small.
        "QWEN_CAPTIONER_MAX_TOKENS": "16",
        "QWEN_VL_MAX_NEW_TOKENS": "8",
        "QWEN_DIAGRAM_MAX_NEW_TOKENS": "8",
        # Every test here is one client (127.0.0.1) making many VL calls, /generate and chat alike: the
        # per-client limit is off. It is proven served by tests/deploy/test_replicas.py (two gateways, Redis).
        "QWEN_VL_RATE_LIMIT": "0",
        # A small queue on VL so the tests can reach it.
        "QWEN_VL_MAX_QUEUE": "4",
        "QWEN_VL_MAX_CONCURRENCY": "1",
        # A body that stalls is cut after this long (the edge test waits for it).
        "QWEN_BODY_READ_TIMEOUT": "5",
        # A small TTS queue keeps the recurring overload test (4x capacity) short.
        "QWEN_TTS_MAX_QUEUE": "3",
        **engine_env(),
    }


def vllm_services() -> tuple[str, ...]:
    """The services the served session runs on vLLM: none, unless the engine tests ask (`make test-engines`
    sets QWEN_TEST_ENGINE_BACKEND=vllm, QWEN_ENGINE_HOME and QWEN_TEST_VLLM_SERVICES, two at a time: each vLLM
    server holds ~5 GB on this CPU). The same served test modules then run on vLLM."""
    if os.environ.get("QWEN_TEST_ENGINE_BACKEND", "transformers") != "vllm":
        return ()
    keys = tuple(k for k in os.environ.get("QWEN_TEST_VLLM_SERVICES", "asr,captioner").split(",") if k)
    unknown = set(keys) - {"asr", "captioner", "vl", "diagram"}
    if unknown:
        raise ValueError(f"QWEN_TEST_VLLM_SERVICES: {sorted(unknown)} cannot run on vLLM")
    return keys


def engine_env() -> dict[str, str]:
    """What the engine tests give the vLLM servers on this CPU."""
    env = {"QWEN_CAPTIONER_MAX_MODEL_LEN": "2048"} if vllm_services() else {}
    for key in vllm_services():
        env.update({
            f"QWEN_{key.upper()}_BACKEND": "vllm",
            # CUDA graphs are a GPU feature; four sequences keep the CPU's KV cache (VLLM_CPU_KVCACHE_SPACE) small.
            f"QWEN_{key.upper()}_VLLM_EXTRA_ARGS": "--enforce-eager",
            f"QWEN_{key.upper()}_VLLM_MAX_NUM_SEQS": "4",
            f"QWEN_{key.upper()}_VLLM_START_TIMEOUT": "900",
            f"QWEN_{key.upper()}_VLLM_RESTART_BACKOFF": "1",
        })
    return env


@contextlib.contextmanager
def gateway(work: Path, env: dict[str, str], media_server: str, s3_server: str) -> Iterator[Served]:
    """`bentoml serve` of the gateway with `env`, healthy (or the test fails with its log), stopped after."""
    port = free_port()
    log = work / "bentoml.log"
    cmd = [str(Path(sys.executable).parent / "bentoml"), "serve", "services.gateway:Gateway",
           "--host", "127.0.0.1", "--port", str(port)]
    fh = open(log, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    s = Served(url=f"http://127.0.0.1:{port}", log=log, media_url=media_server, s3_endpoint=s3_server, proc=proc)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        with httpx.Client(base_url=s.url, timeout=10) as c:
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"bentoml serve exited with {proc.returncode}:\n{s.log_tail()}")
                if time.monotonic() > deadline:
                    pytest.fail(f"not healthy after {START_TIMEOUT:.0f}s:\n{s.log_tail()}")
                try:
                    r = c.get("/health")
                except httpx.HTTPError:
                    time.sleep(0.5)
                    continue
                body = r.json()
                s.health_seen.append({"code": r.status_code, **body})
                if r.status_code == 200:
                    break
                time.sleep(0.5)
        yield s
    finally:
        stop_server(proc)
        fh.close()


@pytest.fixture(scope="session")
def served(tmp_path_factory, media_server, s3_server) -> Served:
    work = tmp_path_factory.mktemp("served")
    with gateway(work, session_env(work, s3_server), media_server, s3_server) as s:
        yield s
