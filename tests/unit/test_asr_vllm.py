"""The ASR's vLLM engine without vLLM: the chat request each window becomes, and the streamed answer read back
into the same results as the transformers engine gives (the package's parsing, the transcript's tokens and
log-probabilities, text streamed with the language prefix held back), against a fake server that speaks
vLLM's streamed chat-completions format with `return_tokens_as_token_ids`. The tokenizer is the tiny
checkpoint's (a real Qwen tokenizer with `<asr_text>`)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from services.asr import vllm_backend as av
from services.asr.engine import ASRItem
from services.runtime.core.errors import InvalidRequest, ServiceUnavailable
from services.runtime.core.settings import ASRSettings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from services import tiny

    return AutoTokenizer.from_pretrained(str(tiny.ensure("asr")))


class FakeVLLM:
    """Answers each chat completion with the tokens `replies[system prompt]` (ids), two per chunk, each with
    its log-probability -(k+1)/10 and its text; then usage. `mode` bad: 400; down: 503."""

    def __init__(self, tokenizer, replies: dict[str, list[int]]):
        self.requests: list[dict] = []
        self.mode = "ok"
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, body: bytes):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, b"")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                if fake.mode == "bad":
                    return self._send(400, json.dumps({"error": {"message": "audio could not be decoded",
                                                                 "code": 400}}).encode())
                if fake.mode == "down":
                    return self._send(503, json.dumps({"detail": "sleeping"}).encode())
                ids = replies[body["messages"][0]["content"]]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def chunk(obj):
                    raw = f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
                    self.wfile.flush()

                for k in range(0, len(ids), 2):
                    part = ids[k:k + 2]
                    entries = [{"token": f"token_id:{t}", "logprob": -(k + j + 1) / 10} for j, t in enumerate(part)]
                    chunk({"choices": [{"index": 0, "delta": {"content": tokenizer.decode(part)},
                                        "logprobs": {"content": entries}, "finish_reason": None}]})
                chunk({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
                chunk({"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": len(ids)}})
                chunk("[DONE]")
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.port = self.httpd.server_address[1]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def engine(tokenizer, port: int, state: str = "ready") -> av.VLLMASREngine:
    cfg = ASRSettings(vllm_port=port, vllm_max_num_seqs=4, timeout=30)
    server = av.managed(cfg, "/models/asr", "float32")  # not started: its state set as the supervisor would
    server.state = state
    return av.VLLMASREngine(server, cfg, tokenizer, max_new_tokens=77, owns_server=False)


def clip(seconds: float) -> np.ndarray:
    return (0.1 * np.sin(np.arange(int(16000 * seconds)) * 0.05)).astype(np.float32)


def test_windows_become_the_packages_prompt_and_come_back_as_the_transformers_engine_reads_them(tokenizer):
    detected = tokenizer.encode("language English<asr_text> hello  world", add_special_tokens=False)
    forced = tokenizer.encode("good day ", add_special_tokens=False)
    fake = FakeVLLM(tokenizer, {"ctx-a": detected, "": forced})
    eng = engine(tokenizer, fake.port)
    pieces: dict[int, list[tuple[str, list]]] = {0: [], 1: []}
    try:
        results = eng.transcribe([ASRItem(clip(0.2), "ctx-a", None), ASRItem(clip(2.0), "", "English")],
                                 on_text=lambda i, piece, tokens: pieces[i].append((piece, tokens)))
    finally:
        fake.close()
    a, b = results
    # The package's parsing: language from the prefix, the transcript after <asr_text>, stripped.
    assert (a.language, a.text) == ("English", "hello  world")
    assert (b.language, b.text) == ("English", "good day")
    tag = tokenizer.convert_tokens_to_ids("<asr_text>")
    start = detected.index(tag) + 1
    assert a.tokens == detected[start:] and a.logprobs == [-(k + 1) / 10 for k in range(start, len(detected))]
    assert b.tokens == forced and len(b.logprobs) == len(forced)
    assert (a.input_tokens, a.output_tokens, b.output_tokens) == (40, len(detected), len(forced))
    # Streamed: the pieces of each window join to its text (the prefix and the trailing space held back), and
    # the tokens handed out with them are the result's, in order.
    for i, r in enumerate(results):
        assert "".join(p for p, _ in pieces[i]) == r.text
        assert [t for _, toks in pieces[i] for t, _ in toks] == r.tokens
    assert len(pieces[0]) >= 2  # text arrived while the window was generated, not only at its end

    by_ctx = {r["messages"][0]["content"]: r for r in fake.requests}
    req_a, req_b = by_ctx["ctx-a"], by_ctx[""]
    for req in (req_a, req_b):
        assert req["model"] == "Qwen/Qwen3-ASR-1.7B" and req["max_tokens"] == 77 and req["temperature"] == 0.0
        assert req["stream"] is True and req["logprobs"] is True and req["return_tokens_as_token_ids"] is True
        assert req["messages"][0]["role"] == "system"
        (part,) = req["messages"][1]["content"]
        assert part["type"] == "audio_url" and part["audio_url"]["url"].startswith("data:audio/wav;base64,")
    assert len(req_a["messages"]) == 2 and "continue_final_message" not in req_a
    # A forced language: the assistant turn starts with the package's prefix and the model continues it.
    assert req_b["messages"][2] == {"role": "assistant", "content": "language English<asr_text>"}
    assert req_b["continue_final_message"] is True and req_b["add_generation_prompt"] is False


def test_a_short_window_is_padded_as_the_package_pads_it(tokenizer):
    import base64
    import io
    import wave

    fake = FakeVLLM(tokenizer, {"": tokenizer.encode("x", add_special_tokens=False)})
    try:
        engine(tokenizer, fake.port).transcribe([ASRItem(clip(0.1), "", "English")])
    finally:
        fake.close()
    url = fake.requests[0]["messages"][1]["content"][0]["audio_url"]["url"]
    with wave.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as w:
        assert (w.getframerate(), w.getnframes()) == (16000, 8000)  # 0.1 s padded to the 0.5-s minimum


def test_errors_keep_their_status_and_a_restarting_engine_is_503(tokenizer):
    fake = FakeVLLM(tokenizer, {})
    try:
        fake.mode = "bad"
        with pytest.raises(InvalidRequest, match="audio could not be decoded"):
            engine(tokenizer, fake.port).transcribe([ASRItem(clip(1.0))])
        fake.mode = "down"
        with pytest.raises(ServiceUnavailable, match=r"asr backend \(vLLM\) unavailable"):
            engine(tokenizer, fake.port).transcribe([ASRItem(clip(1.0)), ASRItem(clip(1.0))])
        sent = len(fake.requests)
        with pytest.raises(ServiceUnavailable, match=r"asr backend \(vLLM\) is loading"):
            engine(tokenizer, fake.port, state="loading").transcribe([ASRItem(clip(1.0))])
        assert len(fake.requests) == sent  # refused before anything was sent
    finally:
        fake.close()
