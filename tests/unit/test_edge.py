"""The gateway edge (auth, request id, envelope) on a small Starlette app: auth on and off."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.runtime.core.errors import InvalidRequest
from services.runtime.edge.http import EdgeMiddleware, install_error_handlers


def make_app(api_key):
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/health")
    def health():
        return {"ok": True}

    @app.get("/x")
    def x():
        return {"x": 1}

    @app.get("/bad")
    def bad():
        raise InvalidRequest("nope", param="p", code="c")

    @app.get("/crash")
    def crash():
        raise RuntimeError("secret internals")

    @app.get("/typed")
    def typed(n: int):
        return {"n": n}

    return EdgeMiddleware(app, api_key=api_key, routes=("/x",))


@pytest.fixture
def locked():
    return TestClient(make_app("k3y"), raise_server_exceptions=False)


def test_auth_off_lets_everything_through():
    c = TestClient(make_app(None))
    assert c.get("/x").status_code == 200


def test_missing_or_wrong_key_is_401_envelope(locked):
    for headers in ({}, {"X-API-Key": "nope"}, {"Authorization": "Bearer nope"}, {"Authorization": "k3y"}):
        r = locked.get("/x", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["type"] == "authentication_error"
        assert "k3y" not in r.text


def test_x_api_key_and_bearer_both_work(locked):
    assert locked.get("/x", headers={"X-API-Key": "k3y"}).status_code == 200
    assert locked.get("/x", headers={"Authorization": "Bearer k3y"}).status_code == 200


def test_probes_are_open(locked):
    assert locked.get("/health").status_code == 200


def test_request_id_is_echoed_or_generated(locked):
    r = locked.get("/health", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = locked.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces" and len(r.headers["x-request-id"]) == 32


def test_errors_render_as_one_envelope(locked):
    h = {"X-API-Key": "k3y"}
    r = locked.get("/bad", headers=h)
    assert r.status_code == 400 and r.json() == {
        "error": {"message": "nope", "type": "invalid_request_error", "param": "p", "code": "c"}}
    r = locked.get("/typed?n=abc", headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = locked.get("/crash", headers=h)
    assert r.status_code == 500 and "secret internals" not in r.text and set(r.json()["error"]) == {
        "message", "type", "param", "code"}
    r = locked.get("/nope", headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
