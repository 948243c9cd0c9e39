"""Rate limiting: the per-model moving-window limits and their Retry-After, Redis trouble, client address
resolution behind trusted proxies (right-most untrusted X-Forwarded-For), and the gateway's VL limit on
every door (/generate and chat completions: GatewayState.rate_limit in an app from build_gateway)."""

import asyncio
import time
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import build_gateway
from services.runtime.core.errors import TooManyRequests
from services.runtime.core.settings import Settings
from services.runtime.edge.http import EdgeMiddleware
from services.runtime.core.state import MemoryStore
from services.runtime.edge.ratelimit import Limit, RateLimits, bucket_key, client_ip
from services.runtime.serving.generation import Usage
from services.vl.contract import VisionResult, VisionResults


def refused(limits: RateLimits, service: str = "vl", client: str = "a") -> TooManyRequests | None:
    try:
        asyncio.run(limits.check(service, client))
    except TooManyRequests as err:
        return err
    return None


def memory_limits(**per_service: Limit) -> RateLimits:
    return RateLimits(MemoryStore().limits_storage, per_service)


# --- the limiter (limits' moving window over the state store's storage) ---------------------------------------

def test_limit_then_429_with_the_seconds_until_the_window_has_room():
    rl = memory_limits(vl=Limit(3, 60))
    assert [refused(rl) for _ in range(3)] == [None] * 3
    err = refused(rl)
    assert err is not None and err.status == 429 and err.code == "rate_limited"
    assert err.type == "rate_limit_error" and 58 <= err.retry_after <= 60 and err.retry_after == int(err.retry_after)
    assert err.headers() == {"Retry-After": str(int(err.retry_after))}


def test_refused_requests_do_not_consume_and_the_window_moves():
    rl = memory_limits(vl=Limit(2, 1))
    assert [refused(rl) for _ in range(2)] == [None, None]
    assert all(refused(rl) is not None for _ in range(20))
    time.sleep(1.1)  # the two counted requests leave the window; the 20 refusals were never counted
    assert [refused(rl) is None for _ in range(3)] == [True, True, False]


def test_no_fixed_window_edge_burst():
    # limit requests in ANY window: 10 now, then nothing more until the first of them leaves the window.
    rl = memory_limits(vl=Limit(10, 60))
    assert sum(refused(rl) is None for _ in range(25)) == 10


def test_clients_and_models_are_independent_and_unlimited_models_pass():
    rl = memory_limits(vl=Limit(1, 60), asr=Limit(1, 60))
    assert refused(rl, "vl", "1.1.1.1") is None and refused(rl, "vl", "1.1.1.1") is not None
    assert refused(rl, "vl", "2.2.2.2") is None
    assert refused(rl, "asr", "1.1.1.1") is None  # its own limit
    assert all(refused(rl, "tts", "1.1.1.1") is None for _ in range(5))  # no limit set


def test_unreachable_redis_fails_open_or_closed_as_configured():
    """Redis down (a closed port): the default lets the request through; fail_open=False is a 503."""
    from services.runtime.core.state import RedisStore, StateUnavailable
    from tests.served_session import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    assert refused(RateLimits(store.limits_storage, {"vl": Limit(1, 60)})) is None
    closed = RateLimits(store.limits_storage, {"vl": Limit(1, 60)}, fail_open=False)
    with pytest.raises(StateUnavailable) as e:
        asyncio.run(closed.check("vl", "a"))
    assert e.value.status == 503 and e.value.code == "state_unavailable" and e.value.retry_after


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
    """A gateway with a fake VL service, `limit` VL requests per hour per client (nothing leaves the window
    during a test: the first refused request waits ~3600 s, until the first counted one leaves it)."""
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
    assert 3595 <= int(r.headers["retry-after"]) <= 3600
    assert r.json() == {"error": {"message": r.json()["error"]["message"], "type": "rate_limit_error",
                                  "param": None, "code": "rate_limited"}}


def test_the_limit_is_the_models_on_every_door():
    """/generate and chat completions naming the VL model share one allowance; other routes are not limited."""
    chat = {"model": "vl", "messages": [{"role": "user", "content": "hi"}]}
    with gateway() as c:
        assert generate(c).status_code == 200
        assert c.post("/v1/chat/completions", json=chat).status_code == 200
        assert generate(c).status_code == 429
        r = c.post("/v1/chat/completions", json=chat)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited" and int(r.headers["retry-after"]) > 0
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
