"""A real Prometheus (Debian's /usr/bin/prometheus) scraping the gateway's /metrics of the shared served
session, with the project's own alert rules loaded and every query of the Grafana dashboard run against it.

- The dashboard's queries (every panel target and templating query) run through Prometheus's HTTP API
  after real traffic on the routes they cover: each must succeed and return data, except the explicit
  NO_DATA_HERE list (series that only exist on CUDA or with the vLLM backend), which must be exactly the
  ones that come back empty.
- deploy/prometheus/alerts.yml: every group loaded, every rule evaluated with health "ok", and the 5xx and
  queue-full alerts going pending on the 502s and 429s the traffic caused.
- Every metric and label the dashboard and alerts select exists in the gateway's /metrics text.
- promtool checks the rules and the shipped scrape config (no server needed: these two have no marker).
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import math
import os
import re
import signal
import shutil
import subprocess
import threading
import time

import httpx
import pytest
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.audio_fixtures import encode, song
from tests.served_session import ROOT, free_port

PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"
DASHBOARD = ROOT / "deploy/grafana/qwen-bento.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
PROM_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
# Concurrent syntheses: more than the session's TTS capacity (8 rows of its decode loop + QWEN_TTS_MAX_QUEUE=3).
# The tiny talker never stops early (every synthesis is QWEN_TTS_MAX_FRAMES=40 frames): a row is busy for a
# fixed number of steps, whereas a VL burst (the earlier choice) raced generations that end at a random EOS
# within ~50 ms (seen: all 200 in one CI run of three).
BURST = 16
JOB = "qwen-bento"  # the shipped job name: QwenTargetDown selects up{job=~"qwen-bento.*"}

# Dashboard series that cannot exist on this machine (CPU, transformers backend). The test asserts these
# are exactly the queries that return nothing, so a broken query cannot hide here.
GPU_ONLY = "qwen_gpu_memory_bytes is set only for a model on a CUDA device"
VLLM_ONLY = "vllm:* series come from the captioner's vLLM subprocess (QWEN_CAPTIONER_BACKEND=vllm, CUDA)"
NO_DATA_HERE = {
    'sum by (service, kind) (qwen_gpu_memory_bytes{service=~"$service"})': GPU_ONLY,
    "sum(vllm:num_requests_running)": VLLM_ONLY,
    "sum(vllm:num_requests_waiting)": VLLM_ONLY,
    "max(vllm:kv_cache_usage_perc)": VLLM_ONLY,
    "histogram_quantile(0.5, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[$__rate_interval])))":
        VLLM_ONLY,
    "histogram_quantile(0.95, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket[$__rate_interval])))":
        VLLM_ONLY,
    "sum(rate(vllm:generation_tokens_total[$__rate_interval]))": VLLM_ONLY,
    "sum(rate(vllm:prompt_tokens_total[$__rate_interval]))": VLLM_ONLY,
}
MISSING_METRICS_HERE = {"qwen_gpu_memory_bytes": GPU_ONLY}  # + every vllm:* name

requires_prometheus = pytest.mark.skipif(
    not (os.access(PROMETHEUS, os.X_OK) and os.access(PROMTOOL, os.X_OK)),
    reason="Debian's prometheus package is not installed (make sysdeps)")


# ------------------------------------------------------------------------------------- PromQL helpers

def dashboard_targets(dash: dict) -> list[dict]:
    """Every panel target (rows' nested panels included), each with its panel's title."""
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append({**t, "panel": p.get("title")})
            walk(p.get("panels", []))

    walk(dash["panels"])
    return out


def template_queries(dash: dict) -> dict[str, str]:
    out = {}
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]
            out[var["name"]] = q["query"] if isinstance(q, dict) else q
    return out


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched on) of every vector selector in a PromQL expression."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\[[^\]]*\]", "", s)  # range and subquery durations
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    out = []
    for m in re.finditer(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(?![\w:])\s*(\{[^}]*\})?(?!\s*\()", s):
        name, matchers = m.group(1), m.group(2) or ""
        if name.lower() in {"and", "or", "unless", "bool", "offset", "inf", "nan"}:
            continue
        out.append((name, set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))))
    return out


def substitute(expr: str, window: str, service_regex: str) -> str:
    """Grafana's variables as Grafana would expand them for this short test."""
    for var in ("$__rate_interval", "$__interval", "$__range", "${__rate_interval}", "${__interval}",
                "${__range}"):
        expr = expr.replace(var, window)
    expr = re.sub(r"\$\{?service\}?", lambda _: service_regex, expr)
    assert "$" not in expr, f"unhandled Grafana variable in {expr}"
    return expr


# -------------------------------------------------------------------------------------- promtool (no server)

@requires_prometheus
def test_promtool_check_rules():
    res = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in res.stdout


@requires_prometheus
def test_promtool_check_config(tmp_path):
    """The shipped prometheus.yml. Debian builds Prometheus without the Kubernetes service discovery, so
    its promtool rejects `kubernetes_sd_configs` as an unknown field: when (and only when) that is the sole
    complaint, the Kubernetes job is checked with its SD block swapped for an empty static one (relabel
    rules still checked)."""
    res = subprocess.run([PROMTOOL, "check", "config", str(PROM_CONFIG)], capture_output=True, text=True,
                         timeout=60)
    if res.returncode == 0:
        assert "SUCCESS" in res.stdout + res.stderr
        return
    out = res.stdout + res.stderr
    assert "field kubernetes_sd_configs not found" in out, out
    assert len(re.findall(r"^\s+line \d+:", out, re.M)) == 1, out  # no other error
    cfg = yaml.safe_load(PROM_CONFIG.read_text())
    k8s = [j for j in cfg["scrape_configs"] if "kubernetes_sd_configs" in j]
    assert k8s
    for job in k8s:
        job.pop("kubernetes_sd_configs")
        job["static_configs"] = []
    shutil.copy(ALERTS, tmp_path / "alerts.yml")  # rule_files are relative to the config
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 1 rule files found" in res.stdout + res.stderr


# ------------------------------------------------------------------------------------ the real server

class Prom:
    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)
        self.started = time.time()

    def api(self, path: str, **params) -> dict:
        r = self.http.get("/api/v1/" + path, params=params)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, r.text[:500])
        return body["data"]

    def query(self, expr: str, **kw) -> list[dict]:
        data = self.api("query", query=expr, **kw)
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return data["result"]

    def wait_for_scrape_after(self, t: float, timeout: float = 30) -> None:
        """Until the gateway has been scraped at or after unix time `t` (the first scrape comes ~5 s after
        start: service discovery hands targets over on a 5 s tick)."""
        deadline = time.monotonic() + timeout
        while not [r for r in self.query(f'timestamp(up{{job="{JOB}"}})') if float(r["value"][1]) >= t]:
            assert time.monotonic() < deadline, f"no scrape after {t} within {timeout} s"
            time.sleep(0.2)

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict]:
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        assert data["resultType"] == "matrix"
        return data["result"]


@pytest.fixture(scope="module")
def prometheus(served, tmp_path_factory):
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("Debian's prometheus package is not installed (make sysdeps)")
    work = tmp_path_factory.mktemp("prometheus")
    target = served.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],  # the real file, as shipped
        "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(work / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    prom = Prom(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (work / "prometheus.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus not ready in 30 s"
            try:
                if prom.http.get("/-/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield prom
    finally:
        prom.http.close()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=15)
        log.close()


def _png(w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (30, 90, 160)).save(buf, "PNG")
    return buf.getvalue()


def one_round(served, c: httpx.Client, wav: bytes, png: bytes) -> None:
    """One request on every route the dashboard covers: 200s, client mistakes (4xx), an unreachable
    audio URL (502), and a burst of syntheses beyond the TTS queue (429 queue_full)."""
    def ok(r: httpx.Response) -> None:
        assert r.status_code == 200, (r.request.url, r.status_code, r.text[:300])

    ok(c.post("/api/v1/align", files={"audio": ("a.wav", wav)}, data={"lyrics": '["one two", "three"]'}))
    ok(c.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"model": "whisper-1"}))
    ok(c.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "ryan", "response_format": "wav"}))
    ok(c.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "ryan", "response_format": "pcm",
                                        "stream": True}))  # a stream: time to first audio
    ok(c.post("/v1/chat/completions", json={"model": "captioner", "max_tokens": 4, "messages": [
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {
            "data": base64.b64encode(wav).decode(), "format": "wav"}}]}]}))
    ok(c.post("/infer", files={"file": ("d.png", png)}, data={"adapter": "alt", "max_new_tokens": "2"}))
    ok(c.post("/generate", data={"text": "hi", "max_new_tokens": "2"}, files={"image": ("a.png", png)}))
    with served.client(key="wrong") as bad:
        assert bad.post("/v1/audio/speech", json={}).status_code == 401
    assert c.post("/api/v1/align", files={"audio": ("a.wav", wav)}, data={"lyrics": "[]"}).status_code == 422
    assert c.post("/v1/audio/speech", json={"model": "tts-1", "input": "x", "voice": "nobody"}).status_code == 400
    r = c.post("/api/v1/align", json={"audio_url": "http://127.0.0.1:9/unreachable.mp3", "lyrics": ["x"]})
    assert r.status_code == 502, r.text

    start = threading.Barrier(BURST, timeout=60)

    def speech(i: int) -> int:
        with served.client() as cc:
            start.wait()  # all at once: 8 generate as rows, 3 queue (QWEN_TTS_MAX_QUEUE=3), the rest are 429
            return cc.post("/v1/audio/speech", json={"model": "tts-1", "input": f"Hello number {i}.", "voice": "ryan",
                                                     "response_format": "pcm"}).status_code

    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        codes = list(pool.map(speech, range(BURST)))
    assert set(codes) == {200, 429}, codes


@pytest.fixture(scope="module")
def traffic(served, prometheus):
    """Two rounds of real traffic with a scrape in between, then one more scrape. A series is born at its
    first sample, so rate() (the dashboard's and the alerts') sees the traffic from the second round on.
    Returns the traffic's start (unix seconds)."""
    t0 = time.time()
    wav = encode(song(3.0, sr=16000), 16000, "wav")
    png = _png()
    with served.client() as c:
        for _ in range(2):
            one_round(served, c, wav, png)
            prometheus.wait_for_scrape_after(time.time())
    deadline = time.monotonic() + 20
    while True:  # a few scrapes in all
        span = f"{math.ceil(time.time() - prometheus.started)}s"
        scrapes = float(prometheus.query(f'count_over_time(up{{job="{JOB}"}}[{span}])')[0]["value"][1])
        if scrapes >= 5:
            break
        assert time.monotonic() < deadline, scrapes
        time.sleep(0.5)
    up = float(prometheus.query(f'sum_over_time(up{{job="{JOB}"}}[{span}])')[0]["value"][1])
    assert up >= 0.8 * scrapes, (up, scrapes)  # a scrape may time out (1 s) on a busy box, not many
    assert prometheus.query(f'up{{job="{JOB}"}}')[0]["value"][1] == "1"
    return t0


# --------------------------------------------------------------------------------------------- the tests

@pytest.mark.served
def test_every_dashboard_query_returns_data(prometheus, traffic):
    dash = json.loads(DASHBOARD.read_text())
    # Templating: `service` from its own query, expanded as Grafana expands a multi-value regex variable.
    tq = template_queries(dash)
    assert set(tq) == {"service"}, tq
    m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", tq["service"])
    assert m, tq["service"]
    services = prometheus.api(f"label/{m.group(2)}/values", **{"match[]": m.group(1)})
    assert set(services) == {"aligner", "asr", "tts", "captioner", "diagram", "vl"}, services
    service_regex = "(" + "|".join(re.escape(s) for s in services) + ")"

    now = time.time()
    window = f"{math.ceil(now - traffic) + 5}s"  # $__rate_interval etc.: the whole traffic
    targets = dashboard_targets(dash)
    assert len(targets) >= 20
    empty, results = [], {}
    for t in targets:
        expr = substitute(t["expr"], window, service_regex)
        if t.get("instant"):
            series = prometheus.query(expr, time=now)
            values = [float(s["value"][1]) for s in series]
        else:
            series = prometheus.query_range(expr, start=traffic, end=now, step="2s")
            values = [float(v) for s in series for _, v in s["values"]]
        results[t["expr"]] = series
        if not series:
            empty.append(t["expr"])
            continue
        assert any(math.isfinite(v) for v in values), (t["panel"], expr, series)
        # Every label the legend shows is on every series it draws.
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
            assert all(label in s["metric"] for s in series), (t["panel"], label, series)
    assert sorted(empty) == sorted(NO_DATA_HERE), {"unexpectedly empty": set(empty) - set(NO_DATA_HERE),
                                                  "listed but has data": set(NO_DATA_HERE) - set(empty)}
    # Spot checks that the data is the traffic's, not just present.
    by_route = results["sum by (route, status) (rate(qwen_requests_total[$__rate_interval]))"]
    routes = {s["metric"]["route"] for s in by_route}
    assert {"/api/v1/align", "/v1/audio/transcriptions", "/v1/audio/speech", "/v1/chat/completions", "/infer",
            "/generate"} <= routes, routes


@pytest.mark.served
def test_alert_rules_loaded_and_evaluated(prometheus, traffic):
    shipped = yaml.safe_load(ALERTS.read_text())["groups"]
    deadline = time.monotonic() + 15
    while True:
        groups = prometheus.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(not r["lastEvaluation"].startswith("0001") for r in rules):
            break
        assert time.monotonic() < deadline, groups
        time.sleep(0.5)
    assert [g["name"] for g in groups] == [g["name"] for g in shipped]
    assert [r["name"] for r in rules] == [r["alert"] for g in shipped for r in g["rules"]]
    for r in rules:
        assert r["health"] == "ok" and not r.get("lastError"), r
    # The traffic's 502s and queue-full 429s make the matching alerts pending (their `for:` is minutes);
    # targets up and models ready keep the others quiet.
    deadline = time.monotonic() + 15
    while True:
        alerts = prometheus.api("alerts")["alerts"]
        active = {(a["labels"]["alertname"], a["labels"].get("route") or a["labels"].get("service")) for a in alerts}
        if {("QwenHigh5xxRate", "/api/v1/align"), ("QwenQueueSaturated", "tts")} <= active:
            break
        assert time.monotonic() < deadline, alerts
        time.sleep(0.5)
    assert all(a["state"] == "pending" for a in alerts), alerts
    assert not {name for name, _ in active} & {"QwenTargetDown", "QwenModelNotReady"}, alerts


@pytest.mark.served
def test_dashboard_and_alert_metrics_are_exposed(served, traffic):
    text = httpx.get(served.url + "/metrics", timeout=30).text
    exposed: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            exposed.setdefault(s.name, set()).update(s.labels)
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for t in dashboard_targets(dash)] + [r["expr"] for r in alert_rules()]
    exprs += [re.sub(r"label_values\((\w+),.*", r"\1", q) for q in template_queries(dash).values()]
    used: dict[str, set[str]] = {}
    for expr in exprs:
        for name, labels in selectors(expr):
            used.setdefault(name, set()).update(labels)
    used.pop("up")  # Prometheus's own, per target
    missing = {n for n in used if n not in exposed}
    assert missing == {n for n in used if n in MISSING_METRICS_HERE or n.startswith("vllm:")}, missing
    assert len(used) - len(missing) >= 10, used
    for name, labels in used.items():
        if name in exposed:
            assert labels <= exposed[name] | {"job", "instance"}, (name, labels - exposed[name])
