"""Bodies at the edge (EdgeMiddleware, before any route): a declared length over the cap is a 413 before a
byte is read, a body that stalls is a 408 in the envelope, and one client's open requests are bounded."""

import asyncio
import json

from services.runtime.edge.http import EdgeMiddleware


def scope(path="/api/v1/align", length: int | None = None, peer="203.0.113.5", method="POST") -> dict:
    headers = [(b"content-type", b"multipart/form-data; boundary=xyz")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http", "method": method, "path": path, "headers": headers, "client": (peer, 4000),
            "query_string": b"", "root_path": "", "scheme": "http", "server": ("127.0.0.1", 3000),
            "http_version": "1.1"}


async def call(app, sc, receive):
    sent = []

    async def send(message):
        sent.append(message)

    await app(sc, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = dict(start["headers"])
    return start["status"], headers, json.loads(body) if headers.get(b"content-type") == b"application/json" else body


def test_a_declared_length_over_the_cap_is_413_before_any_byte_is_read():
    called, reads = [], []

    async def app(sc, receive, send):
        called.append(sc)

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"7 bytes", "more_body": False}

    edge = EdgeMiddleware(app, max_body=1000, body_timeout=5)
    status, headers, body = asyncio.run(call(edge, scope(length=10 * 1024**3), receive))
    assert status == 413 and body["error"]["code"] == "body_too_large" and body["error"]["type"] == "invalid_request_error"
    assert headers[b"connection"] == b"close" and called == [] and reads == []
    bad = scope()
    bad["headers"].append((b"content-length", b"lots"))
    status, _, body = asyncio.run(call(edge, bad, receive))
    assert status == 400 and body["error"]["code"] == "invalid_content_length" and called == []


def test_a_stalled_body_is_408_in_the_envelope_through_the_gateway():
    from services.gateway.app import build_gateway
    from services.runtime.core.settings import Settings

    settings = Settings(services=["aligner"], body_read_timeout=0.2)
    app = build_gateway(settings, {"aligner": object()})
    edge = EdgeMiddleware(app, **app.state.edge)
    chunks = [{"type": "http.request", "body": b"--xyz\r\nContent-Disposition: form-data; name=\"ly", "more_body": True}]

    async def receive():
        if chunks:
            return chunks.pop()
        await asyncio.sleep(3600)  # the client stops sending

    status, _, body = asyncio.run(call(edge, scope(length=500), receive))
    assert status == 408 and body["error"]["code"] == "body_timeout", body
    # The same through FastAPI's own form parsing (the transcription route), which makes any error a 400.
    settings = Settings(services=["asr"], body_read_timeout=0.2)
    app = build_gateway(settings, {"asr": object()})
    edge = EdgeMiddleware(app, **app.state.edge)
    chunks.append({"type": "http.request", "body": b"--xyz\r\nContent-Disposition: form-data; name=\"mo",
                   "more_body": True})
    status, _, body = asyncio.run(call(edge, scope(path="/v1/audio/transcriptions", length=500), receive))
    assert status == 408 and body["error"]["code"] == "body_timeout", body


def test_one_clients_open_requests_are_bounded_others_are_not():
    release = asyncio.Event()

    async def app(sc, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def main():
        edge = EdgeMiddleware(app, max_client_requests=2)
        held = [asyncio.ensure_future(call(edge, scope(), receive)) for _ in range(2)]
        await asyncio.sleep(0.05)
        third = await call(edge, scope(), receive)
        release_later = asyncio.get_running_loop().call_later(0.05, release.set)
        other = await call(edge, scope(peer="198.51.100.1"), receive)
        done = [await h for h in held]
        after = await call(edge, scope(), receive)  # the held ones have ended: room again
        release_later.cancel()
        return third, other, done, after

    third, other, done, after = asyncio.run(main())
    assert third[0] == 429 and third[2]["error"]["code"] == "too_many_open_requests" and third[1][b"retry-after"] == b"1"
    assert other[0] == 200 and [d[0] for d in done] == [200, 200] and after[0] == 200
