"""Bad input across every upload route, SSRF spellings, and secrets kept out of the logs — through the
real `bentoml serve` session. Each bad input is a 4xx in the envelope, and the workers keep serving."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from PIL import Image

from tests.audio_fixtures import encode, song
from tests.served_session import API_KEY, S3_SECRET

pytestmark = pytest.mark.served


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (9, 9, 9)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (9, 9, 9)).save(buf, "JPEG")
    return buf.getvalue()


AUDIO = {fmt: encode(song(4.0, sr=16000), 16000, fmt) for fmt in ("mp3", "wav", "flac")}
BAD_AUDIO = {
    "zero-length": b"",
    "text renamed .wav": b"lyrics, not audio\n" * 30,
    "wav header only": AUDIO["wav"][:44],
    "flac cut after the header": AUDIO["flac"][:60],
    "png renamed .mp3": _png(),
    "random bytes": bytes(range(256)) * 8,
}
BAD_IMAGES = {
    "zero-length": b"",
    "text renamed .png": b"not an image\n" * 30,
    "truncated png": _png()[:70],
    "truncated jpeg": _jpeg()[:120],
    "wav renamed .png": AUDIO["wav"],
}


def envelope_4xx(r) -> dict:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def envelope_5xx(r, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.fixture(scope="module")
def client(served):
    with served.client() as c:
        yield c


@pytest.mark.parametrize("name", list(BAD_AUDIO))
def test_bad_audio_everywhere(client, name):
    data = BAD_AUDIO[name]
    envelope_4xx(client.post("/api/v1/align", files={"audio": ("song.wav", data)}, data={"lyrics": '["a b"]'}))
    envelope_4xx(client.post("/v1/audio/transcriptions", files={"file": ("a.wav", data)}, data={"model": "whisper-1"}))
    envelope_4xx(client.post("/v1/chat/completions", json={"model": "captioner", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}]}]}))


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_images_everywhere(client, name):
    data = BAD_IMAGES[name]
    envelope_4xx(client.post("/generate", data={"text": "hi"}, files={"image": ("x.png", data)}))
    envelope_4xx(client.post("/infer", files={"file": ("x.png", data)}))


def test_non_utf8_lyrics_and_fields(client):
    body = (b"--B\r\nContent-Disposition: form-data; name=\"lyrics\"\r\n\r\n\xff\xfe\xfa bad\r\n"
            b"--B\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"a.wav\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" + AUDIO["wav"] + b"\r\n--B--\r\n")
    r = client.post("/api/v1/align", content=body, headers={"content-type": "multipart/form-data; boundary=B"})
    assert r.status_code in (200, 400, 422), r.text  # decoded with replacement or refused; never a 5xx
    r = client.post("/api/v1/align", content=b'{"lyrics": ["\xff\xfe"]}', headers={"content-type": "application/json"})
    envelope_4xx(r)


@pytest.mark.parametrize("url", [
    # 127.0.0.2 spelled as decimal, hex and octal (127.0.0.1 itself is allowlisted in this session)
    "http://2130706434/a.mp3", "http://0x7f.0.0.2/a.mp3", "http://0177.0.0.2/a.mp3", "http://[::1]/a.mp3",
    "http://[::ffff:169.254.169.254]/", "http://[fc00::1]/a.mp3", "http://0.0.0.0/a.mp3", "http://100.64.0.1/",
    "http://172.16.0.1/a.mp3", "http://192.168.1.1/a.mp3", "file:///etc/passwd", "gopher://example.com/",
    "ftp://example.com/a.mp3", "http://user:pw@example.com/a.mp3",
])
def test_ssrf_spellings_are_refused_before_any_connection(client, url):
    err = envelope_4xx(client.post("/api/v1/align", json={"audio_url": url, "lyrics": ["a"]}))
    assert err["code"] in ("url_refused", "host_not_found") and err["param"] == "audio_url"


def test_workers_alive_and_secrets_never_logged(served, client):
    assert client.get("/health").status_code == 200
    r = client.post("/api/v1/align", json={"audio_url": "s3://songs/library/short.mp3", "lyrics": ["a b"]})
    assert r.status_code == 200
    log = served.log.read_text(errors="replace")
    assert API_KEY not in log and S3_SECRET not in log
    assert "lyrics, not audio" not in log and json.dumps(["a b"]) not in log  # no request bodies either


def test_a_media_server_slower_than_the_fetch_deadline_is_504(served, client):
    """The session's QWEN_FETCH_TIMEOUT is 4 s; /stall sends headers and then holds the body for 30 s. The
    deadline, not the server, ends the wait; the envelope names the field; the service keeps serving."""
    stall = served.media_url + "/stall"
    t0 = time.monotonic()
    err = envelope_5xx(client.post("/api/v1/align", json={"audio_url": stall, "lyrics": ["a b"]}), 504)
    assert err["code"] == "fetch_timeout" and err["param"] == "audio_url"
    err = envelope_5xx(client.post("/v1/chat/completions", json={"model": "captioner", "messages": [
        {"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": stall}}]}]}), 504)
    assert err["code"] == "fetch_timeout"
    assert time.monotonic() - t0 < 30  # both together took less than one stall
    r = client.post("/api/v1/align", json={"audio_url": served.media_url + "/short.wav", "lyrics": ["a b"]})
    assert r.status_code == 200, r.text


PROBES_AND_PUBLIC = {"/health", "/livez", "/readyz", "/healthz", "/metrics", "/docs", "/docs.json"}


def test_every_non_probe_route_needs_the_key(served):
    """Every operation in the served OpenAPI document (path parameters filled in), without a key and with a
    wrong one, is a 401 in the envelope before any work — except the probes, /metrics and the docs, which
    answer without one."""
    with served.client(key=None, timeout=60) as anon:
        spec = anon.get("/docs.json").json()
        ops = [(m.upper(), p) for p, item in spec["paths"].items() for m in item
               if m in ("get", "post", "put", "patch", "delete")]
        checked = 0
        for method, path in ops:
            concrete = path.replace("{", "").replace("}", "")  # /tasks/{task_id} -> /tasks/task_id
            if concrete in PROBES_AND_PUBLIC:
                continue
            for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
                r = anon.request(method, concrete, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code, r.text[:200])
                assert r.json()["error"]["type"] == "authentication_error"
            checked += 1
        assert checked >= 12, ops  # the public API is all there: align, speech, chat, generate, infer, tasks...
        for path in PROBES_AND_PUBLIC - {"/docs"}:
            r = anon.get(path)
            assert r.status_code in (200, 503), (path, r.status_code)  # 503 only if a probe says not ready
        # An unknown path is a 401 too before a key is shown (no route map for strangers); with it, a 404.
        assert anon.get("/no/such/route").status_code == 401
    with served.client() as c:
        assert c.get("/no/such/route").status_code == 404


def test_a_header_claiming_ten_hours_costs_only_the_real_data(client):
    """A WAV header declaring 10 hours, followed by 2 s of samples: decoded by what is there (ffmpeg times
    it by its real size), so it is an ordinary short request on every audio route — no 10-hour buffer."""
    import struct

    n = 16000 * 3600 * 10 * 2
    wav = (b"RIFF" + struct.pack("<I", 36 + n) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
           + b"data" + struct.pack("<I", n) + AUDIO["wav"][44:44 + 64000])
    r = client.post("/api/v1/align", files={"audio": ("long.wav", wav)}, data={"lyrics": '["a b"]', "format": "json"})
    assert r.status_code == 200, r.text
    assert r.json()["segments"][-1]["end"] <= 2.5
    r = client.post("/v1/audio/transcriptions", files={"file": ("long.wav", wav)}, data={"model": "whisper-1",
                                                                                         "response_format": "verbose_json"})
    assert r.status_code == 200 and r.json()["duration"] <= 2.5, r.text


def _raw(served, head: bytes, body: bytes, wait: float) -> tuple[bytes, float]:
    """Send a request head and part of its body on a raw socket, then nothing more: the whole answer (the
    server closes the connection after it) and how long its first bytes took."""
    import socket
    from urllib.parse import urlsplit

    u = urlsplit(served.url)
    with socket.create_connection((u.hostname, u.port), timeout=wait) as s:
        t0 = time.monotonic()
        s.sendall(head + body)
        data = s.recv(65536)
        took = time.monotonic() - t0
        while chunk := s.recv(65536):  # the rest of the answer, until the server closes the connection
            data += chunk
        return data, took


def test_a_declared_ten_gigabytes_with_seven_bytes_is_413_at_once(served):
    """Issue 15: Content-Length 10 GB, 7 bytes sent, then nothing: the answer comes without waiting for the
    rest (it used to wait as long as the client liked)."""
    head = (b"POST /api/v1/align HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode() +
            b"\r\nContent-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 10737418240\r\n\r\n")
    data, _ = _raw(served, head, b"--xyz\r\n", wait=20)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b'"code": "body_too_large"' in data and b"connection: close" in data.lower()


def test_a_body_that_stalls_is_cut_with_408(served):
    """The served session's QWEN_BODY_READ_TIMEOUT is 5 s: a body that stops half-way is a 408 in the
    envelope after about that long, not a connection held open."""
    head = (b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode() +
            b"\r\nContent-Type: multipart/form-data; boundary=xyz\r\nContent-Length: 5000\r\n\r\n")
    data, took = _raw(served, head, b'--xyz\r\nContent-Disposition: form-data; name="mo', wait=60)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b'"code": "body_timeout"' in data and took >= 4
