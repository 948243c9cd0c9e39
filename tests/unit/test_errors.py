"""The error envelope's `type` follows the status (a bare QwenError(status=413) is the client's error, not
"server_error"), every typed subclass keeps its public type/code, a remote error keeps its own, and a task's
result asked for while it runs is a documented 409."""

import threading

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from services.runtime.core import errors
from services.runtime.core.errors import Conflict, QwenError
from services.runtime.edge.http import ERROR_RESPONSES, EdgeMiddleware, install_error_handlers
from services.gateway.tasks import TaskStore, add_task_routes
from services.runtime.core.state import MemoryStore

TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
    405: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
    415: "invalid_request_error", 418: "invalid_request_error", 422: "invalid_request_error",
    429: "rate_limit_error", 500: "server_error", 502: "upstream_error", 503: "service_unavailable",
    504: "timeout_error", 507: "server_error",
}


@pytest.mark.parametrize("status,expected", sorted(TYPES.items()))
def test_a_bare_error_takes_its_type_from_its_status(status, expected):
    err = QwenError("x", status=status)
    assert err.status == status and err.type == expected
    assert err.envelope()["error"]["type"] == expected and err.payload()["type"] == expected


def test_a_bare_413_is_the_clients_error():
    assert QwenError("too big", status=413).envelope()["error"]["type"] == "invalid_request_error"
    assert QwenError("boom").type == "server_error"  # no status: 500


# The public (status, type, code) of every typed error, as the API answered before the type was derived.
PUBLIC = {
    "InvalidRequest": (400, "invalid_request_error", None),
    "Unauthorized": (401, "authentication_error", "invalid_api_key"),
    "NotFound": (404, "invalid_request_error", "not_found"),
    "MethodNotAllowed": (405, "invalid_request_error", "method_not_allowed"),
    "RequestTimeout": (408, "invalid_request_error", "body_timeout"),
    "Conflict": (409, "invalid_request_error", "conflict"),
    "PayloadTooLarge": (413, "invalid_request_error", "payload_too_large"),
    "UnsupportedMedia": (415, "invalid_request_error", "unsupported_media"),
    "Unprocessable": (422, "invalid_request_error", None),
    "TooManyRequests": (429, "rate_limit_error", "queue_full"),
    "UpstreamError": (502, "upstream_error", "fetch_failed"),
    "ServiceUnavailable": (503, "service_unavailable", "model_not_ready"),
    "Timeout": (504, "timeout_error", "timeout"),
}


def test_every_typed_error_keeps_its_status_type_and_code():
    subclasses = {c.__name__ for c in QwenError.__subclasses__()}
    assert subclasses == set(PUBLIC)  # a new subclass gets a row here
    for name, (status, type_, code) in PUBLIC.items():
        err = getattr(errors, name)("x")
        assert (err.status, err.type, err.code) == (status, type_, code), name


def test_a_subclass_may_choose_its_own_type():
    class Quota(QwenError):
        status = 429
        type = "insufficient_quota"

    assert Quota("x").envelope()["error"]["type"] == "insufficient_quota"


@pytest.mark.parametrize("payload", [
    {"message": "m", "type": "insufficient_quota", "param": None, "code": "q", "status": 429, "retry_after": 3},
    {"message": "m", "type": "invalid_request_error", "param": "lyrics", "code": "c", "status": 413,
     "retry_after": None},
])
def test_a_remote_error_keeps_its_type_and_status(payload):
    assert QwenError.from_payload(payload).payload() == payload


def test_a_remote_payload_without_a_type_derives_it():
    assert QwenError.from_payload({"message": "m", "status": 413}).type == "invalid_request_error"


def test_the_error_statuses_are_documented():
    """Every status a typed error answers is in the OpenAPI error responses every route carries, except the
    route-specific 409 (documented on the task result route, below) and 405 (answered only for methods the
    document does not list)."""
    statuses = {status for status, _, _ in PUBLIC.values()} | {500}
    assert statuses - {405, 409} == set(ERROR_RESPONSES)
    for status, doc in ERROR_RESPONSES.items():
        assert doc["content"]["application/json"]["schema"]["required"] == ["error"]
        assert ("headers" in doc) == (status in (429, 503))


def test_the_edge_rewrites_plain_404_and_405_as_invalid_request_errors():
    async def plain(scope, receive, send):
        status = 404 if scope["path"] == "/missing" else 405
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"Not Found"})

    c = TestClient(EdgeMiddleware(plain))
    for path, status, code in (("/missing", 404, "not_found"), ("/x", 405, "method_not_allowed")):
        r = c.get(path)
        assert r.status_code == status
        assert r.json()["error"] | {"message": None} == {"message": None, "type": "invalid_request_error",
                                                        "param": None, "code": code}


class _Gateway:
    def __init__(self):
        self.tasks = TaskStore(MemoryStore(), ttl=60, max_tasks=4)


def _task_app(release: threading.Event, fail: bool = False):
    import asyncio

    router = APIRouter()

    async def parse(fail: str | None = None):  # a FastAPI dependency, as the routes' own parse
        return {"fail": fail == "1"}

    async def run(gw, ctx):
        await asyncio.to_thread(release.wait, 10)
        if ctx["fail"]:
            raise QwenError("lyrics cannot be aligned", status=422, param="lyrics", code="unalignable")
        return 7

    add_task_routes(router, path="/t", kind="demo", parse=parse, run=run,
                    render=lambda ctx, out: JSONResponse({"out": out}))
    app = FastAPI(responses=ERROR_RESPONSES)
    install_error_handlers(app)
    app.include_router(router)
    app.state.gateway = _Gateway()
    return app


def _wait_finished(c, status_url):
    import time

    for _ in range(200):
        if c.get(status_url).json()["status"] in ("succeeded", "failed"):
            return
        time.sleep(0.01)
    raise AssertionError("task did not finish")


def test_a_running_tasks_result_is_409_then_its_result():
    release = threading.Event()
    with TestClient(_task_app(release)) as c:
        sub = c.post("/t/tasks").json()
        r = c.get(sub["result_url"])
        assert r.status_code == 409
        assert r.json()["error"] == {"message": f"task is {c.get(sub['status_url']).json()['status']}; poll "
                                                f"/t/tasks/{sub['task_id']}", "type": "invalid_request_error",
                                     "param": None, "code": "task_not_finished"}
        release.set()
        _wait_finished(c, sub["status_url"])
        r = c.get(sub["result_url"])
        assert (r.status_code, r.json()) == (200, {"out": 7})


def test_a_failed_tasks_result_is_its_error():
    release = threading.Event()
    release.set()
    with TestClient(_task_app(release)) as c:
        sub = c.post("/t/tasks?fail=1").json()
        _wait_finished(c, sub["status_url"])
        r = c.get(sub["result_url"])
        assert r.status_code == 422
        assert r.json()["error"] == {"message": "lyrics cannot be aligned", "type": "invalid_request_error",
                                     "param": "lyrics", "code": "unalignable"}


def test_the_409_is_documented_on_the_result_route_only():
    app = _task_app(threading.Event())
    paths = app.openapi()["paths"]
    result = paths["/t/tasks/{task_id}/result"]["get"]["responses"]
    assert "409" in result and result["409"]["content"]["application/json"]["schema"]["required"] == ["error"]
    assert {"400", "404", "503"} <= set(result)  # the app-wide error responses still apply
    assert "409" not in paths["/t/tasks"]["post"]["responses"]
    assert Conflict("x").status == 409
