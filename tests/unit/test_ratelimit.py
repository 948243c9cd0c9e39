"""Rate limiting: GCRA behaviour on a fake clock, Retry-After, client address resolution behind trusted
proxies (right-most untrusted X-Forwarded-For), bounded memory, and the gateway's limit on POST /generate
(the path requests take: GatewayState.rate_limit in an app from build_gateway)."""

import threading
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import build_gateway
from services.runtime.core.errors import TooManyRequests
from services.runtime.core.settings import Settings
from services.runtime.edge.http import EdgeMiddleware
from services.runtime.edge.ratelimit import RateLimiter, bucket_key, client_ip
from services.runtime.serving.generation import Usage
from services.vl.contract import VisionResult, VisionResults


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


# --- the gateway's limit on POST /generate ------------------------------------------------------------------

@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("QWEN_"):
            monkeypatch.delenv(name)


def fake_vl() -> SimpleNamespace:
    async def generate(requests):
        return VisionResults(results=[VisionResult(text="ok", finish_reason="stop", adapter=None, generate_seconds=0.0,
                                                   usage=Usage(prompt_tokens=1, completion_tokens=1))
                                      for _ in requests]).model_dump()

    async def status():
        return {"status": "ready"}

    return SimpleNamespace(to_async=SimpleNamespace(generate=generate, status=status))


def gateway(peer: str = "testclient", limit: int = 2, **settings) -> TestClient:
    """A gateway with a fake VL service, `limit` /generate requests per hour per client (no refill during a
    test: the first refused request waits 1800 s at 2 per hour)."""
    s = Settings(services=["vl"], vl={"rate_limit": limit, "rate_window_seconds": 3600}, **settings)
    app = build_gateway(s, {"vl": fake_vl()})
    return TestClient(EdgeMiddleware(app, **app.state.edge), client=(peer, 50000))


def generate(c: TestClient, **headers):
    return c.post("/generate", data={"text": "hi"}, headers=headers)


def test_generate_answers_429_in_the_envelope_with_retry_after_and_the_request_id():
    with gateway() as c:
        assert [generate(c).status_code for _ in range(2)] == [200, 200]
        r = generate(c, **{"X-Request-ID": "abc-123"})
    assert r.status_code == 429 and r.headers["x-request-id"] == "abc-123"
    assert r.headers["content-type"] == "application/json"
    assert 1795 <= int(r.headers["retry-after"]) <= 1800
    assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": "rate_limit_error",
                                  "param": None, "code": "rate_limited"}}


def test_the_limit_applies_to_generate_only():
    with gateway() as c:
        for _ in range(2):
            generate(c)
        assert generate(c).status_code == 429
        assert all(c.get("/v1/models").status_code == 200 for _ in range(5))
        assert all(c.get("/health").status_code == 200 for _ in range(5))


def test_a_limit_of_zero_is_off():
    with gateway(limit=0) as c:
        assert all(generate(c).status_code == 200 for _ in range(5))


def test_forwarded_addresses_are_believed_only_from_trusted_proxies():
    # TestClient's default peer "testclient" is no address, so never trusted: X-Forwarded-For cannot split its
    # bucket.
    with gateway() as c:
        for i in range(2):
            assert generate(c, **{"X-Forwarded-For": f"1.1.1.{i}"}).status_code == 200
        assert generate(c, **{"X-Forwarded-For": "1.1.1.9"}).status_code == 429
    with gateway(peer="127.0.0.1", trusted_proxies=["127.0.0.1"]) as c:
        assert [generate(c, **{"X-Forwarded-For": "198.51.100.1"}).status_code for _ in range(2)] == [200, 200]
        assert generate(c, **{"X-Forwarded-For": "198.51.100.2"}).status_code == 200  # another real client
        # a spoofed prefix: still 198.51.100.1, whose allowance is used up
        assert generate(c, **{"X-Forwarded-For": "6.6.6.6, 198.51.100.1"}).status_code == 429


def test_a_bad_trusted_proxy_fails_when_the_gateway_is_built():
    with pytest.raises(ValueError):
        gateway(trusted_proxies=["not-a-cidr"])
