"""Stand-ins for a managed engine, without vLLM: an in-process OpenAI-compatible server speaking vLLM's
chat-completions wire format (`FakeOpenAI`), and a child-process script (`CHILD`) for supervision."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOO_LARGE = ("'max_tokens' or 'max_completion_tokens' is too large: 64. This model's maximum context length is "
             "40 tokens and your request has 30 input tokens (64 > 40 - 30).")  # vLLM 0.14's 400
# vLLM 0.30.0's (the engine locks' version): vllm/renderers/params.py, TokenizeParams._token_len_check.
TOO_LONG_030 = ("This model's maximum context length is 40 tokens. However, you requested 64 output tokens and "
                "your prompt contains 30 input tokens, for a total of 94 tokens. Please reduce the length of the "
                "input prompt or the number of requested output tokens.")


class FakeOpenAI:
    """A minimal upstream on 127.0.0.1; `mode` picks the answer: ok | bad (400) | too_large / too_long_030 (400
    while max_tokens is sent, in vLLM 0.14's / 0.30's words) | stream_error (an error event after three deltas) | busy (429) | down (503) |
    slow (answers after `delay` seconds)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.mode = "ok"
        self.delay = 0.0
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, body: bytes, ctype="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, code, message):
                self._send(code, json.dumps({"error": {"message": message, "type": "Error", "code": code}}).encode())

            def do_GET(self):
                if self.path == "/health":
                    return self._send(200, b"")
                if self.path == "/metrics":
                    return self._send(200, b"# TYPE process_open_fds gauge\nprocess_open_fds 9.0\n"
                                      b"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 0.0\n",
                                      "text/plain")
                self._send(404, b"{}")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                if fake.mode == "slow":
                    time.sleep(fake.delay)
                if fake.mode == "bad":
                    return self._error(400, "audio could not be decoded")
                if fake.mode == "busy":
                    return self._error(429, "too many requests")
                if fake.mode == "down":
                    return self._send(503, json.dumps({"detail": "engine is sleeping"}).encode())
                if fake.mode in ("too_large", "too_long_030") and "max_tokens" in body:
                    return self._error(400, TOO_LARGE if fake.mode == "too_large" else TOO_LONG_030)
                if not body.get("stream"):
                    return self._send(200, json.dumps({
                        "id": "c1", "object": "chat.completion", "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "a calm voice"},
                                     "finish_reason": "length" if fake.mode.startswith("too_") else "stop"}],
                        "usage": {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}}).encode())
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def chunk(obj):
                    data = obj if isinstance(obj, str) else json.dumps(obj)
                    raw = f"data: {data}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
                    self.wfile.flush()

                base = {"id": "c2", "object": "chat.completion.chunk", "model": body["model"]}
                chunk({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
                for piece in ("a ", "calm ", "voice"):
                    chunk({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
                if fake.mode == "stream_error":
                    chunk({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}})
                else:
                    chunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                    chunk({**base, "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 3}})
                    chunk("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # a client that gave up (a timeout test) is no error here
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# A stand-in for `vllm serve` run as a child: on --port it answers /health (500 while the file named by
# $FAKE_SICK exists), /metrics, and a fixed chat completion; it prints one line at start. With $FAKE_PIDS
# set it starts a grandchild (like vLLM's engine core) and writes "child grandchild" pids there.
CHILD = r"""
import json, os, subprocess, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
a = sys.argv
port = int(a[a.index('--port') + 1])
if os.environ.get('FAKE_PIDS'):
    g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
    open(os.environ['FAKE_PIDS'], 'w').write(f'{os.getpid()} {g.pid}')
METRICS = (b'# HELP python_gc_objects_collected_total x\n# TYPE python_gc_objects_collected_total counter\n'
           b'python_gc_objects_collected_total{generation="0"} 1.0\n'
           b'# HELP vllm:num_requests_running Running.\n# TYPE vllm:num_requests_running gauge\n'
           b'vllm:num_requests_running{model_name="cap"} 0.0\n')
class H(BaseHTTPRequestHandler):
    def log_message(self, *x):
        pass
    def _send(self, code, body):
        self.send_response(code); self.send_header('Content-Length', str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == '/health':
            sick = os.environ.get('FAKE_SICK')
            return self._send(500 if sick and os.path.exists(sick) else 200, b'')
        self._send(200, METRICS) if self.path == '/metrics' else self._send(404, b'')
    def do_POST(self):
        self.rfile.read(int(self.headers['Content-Length']))
        self._send(200, json.dumps({'choices': [{'message': {'content': 'ok'}, 'finish_reason': 'stop'}],
                                    'usage': {'prompt_tokens': 5, 'completion_tokens': 1}}).encode())
print('(APIServer pid=1) INFO fake engine listening on', port, flush=True)
HTTPServer(('127.0.0.1', port), H).serve_forever()
"""


def alive(pid: int) -> bool:
    """A process exists and is not a zombie (exited, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()
