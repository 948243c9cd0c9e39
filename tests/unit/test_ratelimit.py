"""Rate limiting: GCRA behaviour on a fake clock, Retry-After, client address resolution behind trusted
proxies (right-most untrusted X-Forwarded-For), bounded memory, and the ASGI middleware on a tiny app."""

import threading

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.runtime.core.errors import TooManyRequests
from services.runtime.edge.http import EdgeMiddleware
from services.runtime.edge.ratelimit import RateLimiter, RateLimitMiddleware, RateLimitRule, bucket_key, client_ip


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def refused(limiter: RateLimiter, key: str = "a") -> TooManyRequests | None:
    try:
        limiter.check(key)
    except TooManyRequests as err:
        return err
    return None


# --- the limiter ------------------------------------------------------------------------------------------

def test_burst_of_limit_then_one_per_interval():
    clock = Clock()
    rl = RateLimiter(3, 60, clock=clock)  # 3 per minute: a token every 20 s
    assert [refused(rl) for _ in range(3)] == [None] * 3
    err = refused(rl)
    assert err is not None and err.status == 429 and err.code == "rate_limited"
    assert err.type == "rate_limit_error" and err.retry_after == 20
    clock.t += 19.5
    err = refused(rl)
    assert err is not None and err.retry_after == 1  # 0.5 s rounded UP: never too early
    clock.t += 0.5
    assert refused(rl) is None
    assert refused(rl) is not None
    clock.t += 60  # idle a whole window: the full burst is back
    assert [refused(rl) for _ in range(3)] == [None] * 3
    assert refused(rl) is not None


def test_refused_requests_do_not_consume():
    clock = Clock()
    rl = RateLimiter(2, 10, clock=clock)
    rl.check("a")
    rl.check("a")
    for _ in range(50):
        assert refused(rl) is not None
    clock.t += 5  # one token back, despite the 50 refusals
    assert refused(rl) is None


def test_retry_after_header_value():
    clock = Clock()
    rl = RateLimiter(1, 7.2, clock=clock)
    rl.check("a")
    clock.t += 0.1
    err = refused(rl)
    assert err.headers() == {"Retry-After": "8"}  # ceil(7.1)
    clock.t += 7.1
    assert refused(rl) is None


def test_no_fixed_window_edge_burst():
    # A fixed per-minute window lets 2x the limit through around the boundary; GCRA does not.
    clock = Clock(59.9)
    rl = RateLimiter(10, 60, clock=clock)
    ok = sum(refused(rl) is None for _ in range(10))
    clock.t = 60.1
    ok += sum(refused(rl) is None for _ in range(10))
    assert ok == 10


def test_clients_are_independent():
    clock = Clock()
    rl = RateLimiter(1, 60, clock=clock)
    rl.check("1.1.1.1")
    assert refused(rl, "1.1.1.1") is not None
    assert refused(rl, "2.2.2.2") is None


def test_idle_clients_are_swept_and_the_count_is_capped():
    clock = Clock()
    rl = RateLimiter(5, 10, max_clients=100, clock=clock)
    for i in range(1000):
        rl.check(f"10.0.{i // 256}.{i % 256}")
        assert len(rl) <= 100
    assert len(rl) == 100
    clock.t += 10.01  # every bucket refilled: entries are dropped, with no change in behaviour
    rl.check("new")
    assert len(rl) == 1


def test_lru_eviction_drops_the_least_recently_seen():
    clock = Clock()
    rl = RateLimiter(1, 60, max_clients=2, clock=clock)
    rl.check("a")
    rl.check("b")
    rl.check("c")  # evicts "a"
    assert refused(rl, "b") is not None and refused(rl, "c") is not None
    assert refused(rl, "a") is None  # forgotten: a fresh bucket (the cap bounds memory, not the rate)


def test_thread_safety_exact_count():
    rl = RateLimiter(500, 3600)  # real clock: ~0.14 token refilled per second, none during the test
    ok = []

    def worker():
        n = 0
        for _ in range(200):
            n += refused(rl, "same") is None
        ok.append(n)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(ok) == 500


def test_bad_arguments():
    for args in ((0, 1), (1, 0), (1, -1)):
        with pytest.raises(ValueError):
            RateLimiter(*args)


# --- client address -------------------------------------------------------------------------------------

def scope(peer: str | None, *xff: str) -> dict:
    return {"type": "http", "client": (peer, 1234) if peer else None,
            "headers": [(b"x-forwarded-for", v.encode()) for v in xff]}


PROXIES = ["10.0.0.0/8", "192.168.1.5"]


def test_peer_address_without_trusted_proxies():
    assert client_ip(scope("203.0.113.7"), []) == "203.0.113.7"


def test_xff_from_an_untrusted_peer_is_ignored():
    assert client_ip(scope("203.0.113.7", "1.2.3.4"), PROXIES) == "203.0.113.7"
    assert client_ip(scope("203.0.113.7", "1.2.3.4"), []) == "203.0.113.7"


def test_xff_from_a_trusted_peer_is_honoured():
    assert client_ip(scope("10.1.2.3", "198.51.100.9"), PROXIES) == "198.51.100.9"
    assert client_ip(scope("192.168.1.5", "198.51.100.9"), PROXIES) == "198.51.100.9"


def test_spoofed_leading_entries_are_ignored_right_most_untrusted_wins():
    # The client sent "X-Forwarded-For: 6.6.6.6, 7.7.7.7"; our edge proxy appended the real peer, an inner
    # proxy of ours appended the edge's address.
    s = scope("10.0.0.2", "6.6.6.6, 7.7.7.7, 198.51.100.9, 10.0.0.1")
    assert client_ip(s, PROXIES) == "198.51.100.9"
    # Several header lines form one list, in order.
    s = scope("10.0.0.2", "6.6.6.6", "198.51.100.9, 10.0.0.1")
    assert client_ip(s, PROXIES) == "198.51.100.9"


def test_garbage_in_xff_never_becomes_the_key():
    assert client_ip(scope("10.0.0.2", "random-per-request, 10.0.0.1"), PROXIES) == "10.0.0.1"
    assert client_ip(scope("10.0.0.2", "not-an-ip"), PROXIES) == "10.0.0.2"


def test_all_hops_trusted_or_no_header():
    assert client_ip(scope("10.0.0.2", "10.9.9.9, 10.0.0.1"), PROXIES) == "10.9.9.9"
    assert client_ip(scope("10.0.0.2"), PROXIES) == "10.0.0.2"


def test_address_spellings():
    assert client_ip(scope("::ffff:203.0.113.7"), []) == "203.0.113.7"  # dual-stack socket
    assert client_ip(scope("10.0.0.2", "198.51.100.9:4711"), PROXIES) == "198.51.100.9"
    assert client_ip(scope("10.0.0.2", "[2001:db8::1]:443"), PROXIES) == "2001:db8::1"
    assert client_ip(scope(None), PROXIES) == "unknown"


def test_request_objects_work_too():
    from starlette.requests import Request

    assert client_ip(Request(scope("10.0.0.2", "198.51.100.9")), PROXIES) == "198.51.100.9"


def test_ipv6_clients_share_a_bucket_per_64():
    assert bucket_key("2001:db8:1:2::1") == bucket_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert bucket_key("2001:db8:1:3::1") != bucket_key("2001:db8:1:2::1")
    assert bucket_key("203.0.113.7") == "203.0.113.7"


# --- the middleware --------------------------------------------------------------------------------------

def make_client(clock: Clock, trusted=(), edge=False) -> TestClient:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat():
        return {"ok": True}

    @app.get("/v1/models")
    def models():
        return {"data": []}

    @app.get("/v1/chatty")
    def chatty():
        return {"ok": True}

    rules = [RateLimitRule("/v1/chat", RateLimiter(2, 60, clock=clock))]
    asgi = RateLimitMiddleware(app, rules, trusted_proxies=list(trusted))
    if edge:
        asgi = EdgeMiddleware(asgi)
    return TestClient(asgi)


def test_middleware_answers_429_in_the_envelope_with_retry_after():
    clock = Clock()
    c = make_client(clock)
    assert [c.post("/v1/chat/completions").status_code for _ in range(2)] == [200, 200]
    r = c.post("/v1/chat/completions")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "30"
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": "rate_limit_error",
                                  "param": None, "code": "rate_limited"}}
    clock.t += 30
    assert c.post("/v1/chat/completions").status_code == 200


def test_middleware_leaves_other_paths_alone():
    c = make_client(Clock())
    for _ in range(3):
        c.post("/v1/chat/completions")
    assert c.post("/v1/chat/completions").status_code == 429
    assert all(c.get("/v1/models").status_code == 200 for _ in range(10))
    assert all(c.get("/v1/chatty").status_code == 200 for _ in range(10))  # prefix on a segment boundary


def test_middleware_keys_by_forwarded_client_only_behind_trusted_proxies():
    # TestClient's peer is "testclient": not an address, so never trusted; XFF cannot split its bucket.
    c = make_client(Clock())
    for i in range(2):
        assert c.post("/v1/chat/completions", headers={"X-Forwarded-For": f"1.1.1.{i}"}).status_code == 200
    assert c.post("/v1/chat/completions", headers={"X-Forwarded-For": "1.1.1.9"}).status_code == 429


def test_middleware_inside_edge_gets_a_request_id():
    c = make_client(Clock(), edge=True)
    for _ in range(2):
        c.post("/v1/chat/completions")
    r = c.post("/v1/chat/completions", headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 429 and r.headers["x-request-id"] == "abc-123"


def test_middleware_with_a_trusted_proxy_peer():
    clock = Clock()
    rules = [RateLimitRule("/", RateLimiter(1, 60, clock=clock))]
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = RateLimitMiddleware(app, rules, trusted_proxies=["127.0.0.1"])

    def call(xff: str) -> int:
        import asyncio

        sent = []

        async def send(m):
            sent.append(m)

        async def receive():
            return {"type": "http.request", "body": b""}

        s = {**scope("127.0.0.1", xff), "path": "/x", "method": "GET"}
        asyncio.run(mw(s, receive, send))
        return sent[0]["status"]

    assert call("198.51.100.1") == 200
    assert call("198.51.100.2") == 200  # a different real client behind the same proxy
    assert call("6.6.6.6, 198.51.100.1") == 429  # spoofed prefix: still 198.51.100.1
    assert len(seen) == 2


def test_bad_trusted_proxy_fails_at_startup():
    with pytest.raises(ValueError):
        RateLimitMiddleware(FastAPI(), [], trusted_proxies=["not-a-cidr"])
