"""The managed-engine supervisor on a fake child (a Python HTTP server): start, readiness, restart after a
crash or a hang, stop of the whole process group, start failures, log forwarding, /metrics filtering."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import pytest

from services.runtime.serving.engine_supervisor import ManagedEngine, filter_families, free_port
from services.runtime.core.errors import ServiceUnavailable

from .fake_servers import CHILD, alive, wait_for


def child(script: str = CHILD, **kw) -> ManagedEngine:
    port = free_port()
    kw.setdefault("start_timeout", 20.0)
    kw.setdefault("restart_backoff", 0.2)
    engine = ManagedEngine([sys.executable, "-c", script, "--port", str(port)], port=port, name="fake", **kw)
    engine.HEALTH_INTERVAL = 0.1
    return engine


def test_not_started():
    engine = child()
    assert engine.state == "stopped" and engine.pid is None and engine.port > 0
    assert engine.base_url == f"http://127.0.0.1:{engine.port}"
    assert engine.wait_ready(0.1) is False  # nothing to wait for
    with pytest.raises(ServiceUnavailable, match="fake is stopped") as ei:
        engine.require_ready()
    assert ei.value.code == "model_failed" and ei.value.retry_after == 60
    assert ManagedEngine(["x"], port=1, host="0.0.0.0").base_url == "http://127.0.0.1:1"
    assert ManagedEngine(["x"], port=1, host="::1").base_url == "http://[::1]:1"


def test_child_is_restarted_after_it_dies_and_stopped_with_its_group(tmp_path):
    pids = tmp_path / "pids"
    engine = child(env={"FAKE_PIDS": str(pids)}).start()
    try:
        assert engine.wait_ready(20), engine.error
        assert engine.state == "ready" and engine.error is None
        engine.require_ready()
        child_pid, grandchild = map(int, pids.read_text().split())
        assert engine.pid == child_pid and alive(grandchild)

        os.kill(child_pid, signal.SIGKILL)  # the server dies (its worker is left behind)
        assert wait_for(lambda: engine.state != "ready", 5)
        with pytest.raises(ServiceUnavailable, match="fake is loading") as ei:
            engine.require_ready()
        assert ei.value.code == "model_not_ready" and ei.value.retry_after == 10
        assert engine.wait_ready(20), engine.info()  # ready again: the same wait as for the first start
        assert engine.pid not in (None, child_pid)
        info = engine.info()
        assert info["restarts"] == 1 and "signal 9" in info["last_error"] and info["error"] is None
        assert not alive(grandchild)  # the old group was reaped before the restart

        child2, grandchild2 = map(int, pids.read_text().split())
        assert child2 == engine.pid
    finally:
        engine.close()
    assert engine.state == "stopped"
    assert wait_for(lambda: not alive(child2) and not alive(grandchild2), 5)


def test_a_child_that_stops_answering_is_unready_then_restarted(tmp_path):
    sick = tmp_path / "sick"
    engine = child(env={"FAKE_SICK": str(sick)})
    engine.HEALTH_FAILURES = 10
    engine.start()
    try:
        assert engine.wait_ready(20), engine.error
        first = engine.pid
        sick.touch()  # alive, but its health check fails
        # after two failed probes it is unready (503) while still alive, after ten it is restarted
        assert wait_for(lambda: engine.state == "loading" and "not answering" in (engine.error or ""), 5)
        assert engine.pid == first
        assert wait_for(lambda: engine.restarts == 1, 10), engine.info()
        assert "health check failed 10 times" in engine.last_error
        sick.unlink()
        assert engine.wait_ready(20), engine.info()
        assert engine.pid not in (None, first) and not alive(first)
    finally:
        engine.close()


def test_start_failure_is_reported_with_the_child_output(caplog):
    script = ("import sys; print('(APIServer pid=1) INFO 11-22 [api.py:1] Received request c1: prompt: secret'); "
              "print('(APIServer pid=1) ERROR 11-22 [core.py:9] ValueError: no such model', flush=True); "
              "sys.exit(3)")
    logger = logging.getLogger("qwen.test.engine")
    logger.addHandler(caplog.handler)  # the qwen tree may not propagate to the root (runtime.core.logging)
    caplog.set_level(logging.INFO, logger="qwen.test.engine")
    engine = child(script, logger=logger).start()
    try:
        assert engine.wait_ready(20) is False
        assert engine.state == "failed"
        assert "fake exited with code 3" in engine.error and "no such model" in engine.error
        assert engine.restarts == 0  # a child that never got ready is not restarted blindly
        with pytest.raises(ServiceUnavailable, match="fake is failed"):
            engine.require_ready()
    finally:
        engine.close()
        logger.removeHandler(caplog.handler)
    forwarded = [r for r in caplog.records if "no such model" in r.getMessage()]
    assert forwarded and forwarded[0].levelno == logging.ERROR  # the child's level kept
    assert not any("secret" in r.getMessage() for r in caplog.records)  # request content never logged
    assert any(r.getMessage() == "fake failed to start" for r in caplog.records)


def test_start_timeout():
    engine = child("import time; time.sleep(60)", start_timeout=1.0, start_timeout_setting="x_start_timeout")
    engine.start()
    try:
        assert engine.wait_ready(20) is False
        assert engine.state == "failed" and engine.error == "fake not ready after 1s (x_start_timeout)"
        assert engine.pid is None  # the hung child was stopped
    finally:
        engine.close()


def test_missing_command_fails_fast():
    engine = ManagedEngine(["/nonexistent/bin/python", "-m", "x"], port=free_port(), name="fake").start()
    try:
        assert engine.wait_ready(10) is False
        assert engine.state == "failed" and "cannot start fake" in engine.error
    finally:
        engine.close()


def test_metrics_pass_through_the_families_asked_for():
    engine = child(metric_prefixes=("vllm:",)).start()
    everything = child().start()
    try:
        assert engine.wait_ready(20) and everything.wait_ready(20)
        assert asyncio.run(engine.metrics_text()).splitlines() == [
            "# HELP vllm:num_requests_running Running.", "# TYPE vllm:num_requests_running gauge",
            "vllm:num_requests_running{model_name=\"cap\"} 0.0"]
        assert "python_gc_objects_collected_total{generation=\"0\"} 1.0" in asyncio.run(everything.metrics_text())
    finally:
        engine.close()
        everything.close()
    assert asyncio.run(engine.metrics_text()) == ""  # stopped


def test_filter_families():
    text = ("# HELP python_gc_objects_collected_total x\n# TYPE python_gc_objects_collected_total counter\n"
            "python_gc_objects_collected_total{generation=\"0\"} 1.0\n"
            "# HELP vllm:num_requests_running Running.\n# TYPE vllm:num_requests_running gauge\n"
            "vllm:num_requests_running{model_name=\"cap\"} 0.0\nprocess_cpu_seconds_total 3.0\n")
    assert filter_families(text, ("vllm:",)).splitlines() == [
        "# HELP vllm:num_requests_running Running.", "# TYPE vllm:num_requests_running gauge",
        "vllm:num_requests_running{model_name=\"cap\"} 0.0"]
    assert filter_families(text, ("vllm:", "process_")).splitlines()[-1] == "process_cpu_seconds_total 3.0"
    assert filter_families(text, None) == text
    assert filter_families(text, ("nothing:",)) == ""
