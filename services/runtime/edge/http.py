"""The gateway's HTTP edge, written once: request id, auth, access metrics, and the error envelope.

`EdgeMiddleware` is a pure ASGI middleware (streaming responses pass through untouched) installed on the
whole gateway app, BentoML's own routes included:
- X-Request-ID: taken from the client when sane, else generated; echoed on every response; in every log.
- Auth when QWEN_API_KEY is set: `X-API-Key: K` or `Authorization: Bearer K`, compared in constant time;
  probes (/health, /livez, /readyz, /healthz), /metrics, the paths the app declares `public` (the
  playground's static page: it holds no data and sends the key itself) and (unless
  QWEN_DOCS_PUBLIC=false) /docs stay open. The key is never logged.
- Per-route request count, latency and in-flight gauges.
`install_error_handlers(app)` renders every failure of the FastAPI routes as the one envelope.
`FormRoute` reads a route's form body (a FastAPI `Form()` model) with the edge's limits and errors first.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
import uuid

from fastapi import params
from fastapi.routing import APIRoute

from services.runtime.core.errors import (RETRY_AFTER_STATUSES, InvalidRequest, MethodNotAllowed, NotFound,
                                         PayloadTooLarge, QwenError, RequestTimeout, TooManyRequests, Unauthorized,
                                         UnsupportedMedia)
from services.runtime.edge.ratelimit import bucket_key, client_ip
from services.runtime.core.logging import get_logger, request_id_var
from services.runtime.core.metrics import metrics

log = get_logger("http")

OPEN_PATHS = frozenset({"/health", "/livez", "/readyz", "/healthz", "/metrics"})
# API documentation (Swagger UI and its spec) is public unless QWEN_DOCS_PUBLIC=false.
DOC_PATHS = frozenset({"/docs", "/docs.json"})
DOC_PREFIXES = ("/static_content/",)
_RID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _route_label(path: str, routes: frozenset[str]) -> str:
    if path in routes or path in OPEN_PATHS:
        return path
    for r in routes:  # prefix routes such as /api/v1/align/tasks/{id}
        if r.endswith("/*") and path.startswith(r[:-1]):
            return r
    return "other"


class EdgeMiddleware:
    """`routes` label the metrics; `public` paths need no key. In both, `/x/*` means every path under `/x/`."""

    def __init__(self, app, *, api_key: str | None = None, routes: tuple[str, ...] = (), docs_public: bool = True,
                 public: tuple[str, ...] = (), max_body: int | None = None, body_timeout: float | None = None,
                 max_client_requests: int | None = None, trusted_proxies: tuple[str, ...] = ()):
        self.app = app
        self._max_body = max_body
        self._body_timeout = body_timeout
        self._max_client = max_client_requests
        self._trusted = trusted_proxies
        self._open_by_client: dict[str, int] = {}
        self._docs_public = docs_public
        self._key = api_key.encode() if api_key else None
        self._routes = frozenset(routes)
        self._public = frozenset(p for p in public if not p.endswith("/*"))
        self._public_prefixes = tuple(p[:-1] for p in public if p.endswith("/*"))

    def _authorized(self, headers: dict[bytes, bytes], subprotocols: list[str] = ()) -> bool:
        """The key from X-API-Key or Authorization: Bearer; on a WebSocket also from the subprotocol browsers
        send it in (they cannot set headers): `openai-insecure-api-key.<key>`, as OpenAI's clients do."""
        if self._key is None:
            return True
        presented = headers.get(b"x-api-key")
        if presented is None:
            auth = headers.get(b"authorization", b"")
            if auth[:7].lower() == b"bearer ":
                presented = auth[7:].strip()
        if presented is None:
            presented = next((p[len(KEY_SUBPROTOCOL):].encode() for p in subprotocols
                              if p.startswith(KEY_SUBPROTOCOL)), None)
        if not presented:
            return False
        return hmac.compare_digest(presented, self._key)

    def _is_open(self, path: str) -> bool:
        if path in OPEN_PATHS or path in self._public:
            return True
        if path.startswith(self._public_prefixes) and ".." not in path.split("/"):  # no way out of the prefix
            return True
        return self._docs_public and (path in DOC_PATHS or path.startswith(DOC_PREFIXES))

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            return await self._websocket(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        if not _RID_OK.match(rid):
            rid = uuid.uuid4().hex
        token = request_id_var.set(rid)
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        route = _route_label(path, self._routes)
        m = metrics()
        status_holder = {"status": 500}
        t0 = time.perf_counter()

        replaced = {"on": False}

        timed_receive, body = self._deadline(receive)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                if body["stalled"] is not None:
                    # The body stopped arriving: whatever the route made of the error it got from receive
                    # (FastAPI's own body parsing turns any into a 400), the answer is the 408.
                    replaced["on"] = True
                    err = body["stalled"]
                    status_holder["status"] = err.status
                    await send_json(send, err.status, err.envelope(),
                                    extra_headers=[(b"x-request-id", rid.encode()), (b"connection", b"close")])
                    return
                status_holder["status"] = message["status"]
                hdrs = list(message.get("headers") or [])
                ctype = dict(hdrs).get(b"content-type", b"")
                if message["status"] in (404, 405) and not ctype.startswith(b"application/json"):
                    # BentoML's router answers unknown paths in plain text: keep the one envelope.
                    replaced["on"] = True
                    err = (NotFound(f"{method} {path}: no such route") if message["status"] == 404
                           else MethodNotAllowed(f"{method} {path}: method not allowed"))
                    await send_json(send, err.status, err.envelope(), extra_headers=[(b"x-request-id", rid.encode())])
                    return
                hdrs.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": hdrs}
            elif replaced["on"]:
                return  # the plain-text body of a replaced response
            await send(message)

        m.in_flight.labels(route).inc()
        client = None
        try:
            if not self._is_open(path) and not self._authorized(headers):
                err = Unauthorized("missing or invalid API key: send X-API-Key or Authorization: Bearer")
                await send_json(send_with_id, err.status, err.envelope(),
                                extra_headers=[(b"www-authenticate", b'Bearer realm="qwen-bento"')])
                return
            refusal = self._refuse_body(headers)
            if refusal is None and self._max_client is not None:
                client = bucket_key(client_ip(scope, self._trusted))
                if self._open_by_client.get(client, 0) >= self._max_client:
                    client, refusal = None, TooManyRequests(
                        f"too many requests open from this client (at most {self._max_client} at once)",
                        code="too_many_open_requests", retry_after=1)
                else:
                    self._open_by_client[client] = self._open_by_client.get(client, 0) + 1
            if refusal is not None:
                # Nothing of the body is read: the server closes the connection after this answer.
                await send_json(send_with_id, refusal.status, refusal.envelope(),
                                extra_headers=[(k.lower().encode(), v.encode()) for k, v in refusal.headers().items()]
                                + [(b"connection", b"close")])
                return
            await self.app(scope, timed_receive, send_with_id)
        finally:
            if client is not None:
                left = self._open_by_client.get(client, 1) - 1
                if left > 0:
                    self._open_by_client[client] = left
                else:
                    self._open_by_client.pop(client, None)
            dt = time.perf_counter() - t0
            m.in_flight.labels(route).dec()
            m.requests.labels(route, method, str(status_holder["status"])).inc()
            m.latency.labels(route, method).observe(dt)
            if route not in OPEN_PATHS:
                log.info("request", extra={"method": method, "route": route, "status": status_holder["status"],
                                           "duration_ms": round(dt * 1000, 1)})
            request_id_var.reset(token)


    async def _websocket(self, scope, receive, send):
        """A WebSocket handshake: the same key rule as every route (401 before the socket opens), a request
        id, and the session counted under its route (in flight while open; one request when it ends)."""
        headers = dict(scope.get("headers") or [])
        path = scope.get("path", "")
        route = _route_label(path, self._routes)
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        token = request_id_var.set(rid if _RID_OK.match(rid) else uuid.uuid4().hex)
        m = metrics()
        try:
            if not self._is_open(path) and not self._authorized(headers, list(scope.get("subprotocols") or [])):
                m.requests.labels(route, "WEBSOCKET", "401").inc()
                return await deny_websocket(scope, receive, send, Unauthorized(
                    "missing or invalid API key: send Authorization: Bearer, X-API-Key, or the subprotocol "
                    f"{KEY_SUBPROTOCOL}<key>"))
            m.in_flight.labels(route).inc()
            t0 = time.perf_counter()
            try:
                await self.app(scope, receive, send)
            finally:
                dt = time.perf_counter() - t0
                m.in_flight.labels(route).dec()
                m.requests.labels(route, "WEBSOCKET", "101").inc()
                m.latency.labels(route, "WEBSOCKET").observe(dt)
                log.info("websocket session", extra={"route": route, "duration_ms": round(dt * 1000, 1)})
        finally:
            request_id_var.reset(token)

    def _refuse_body(self, headers: dict[bytes, bytes]) -> QwenError | None:
        """413 for a declared length over the cap, before a byte of the body is read."""
        declared = headers.get(b"content-length")
        if self._max_body is None or declared is None:
            return None
        try:
            length = int(declared)
        except ValueError:
            return InvalidRequest("Content-Length is not a number", code="invalid_content_length")
        if length > self._max_body:
            return PayloadTooLarge(f"the body ({length} bytes) is larger than this server accepts ({self._max_body})",
                                   code="body_too_large")
        return None

    def _deadline(self, receive):
        """`receive` with a read deadline while the body arrives, and the state that says whether it stalled: a
        body that stops arriving for body_timeout seconds raises RequestTimeout into the route reading it, and
        the answer is a 408 (send_with_id). Once the body is complete, receive is passed through (a streaming
        response waits on it for the disconnect)."""
        state: dict = {"done": self._body_timeout is None, "stalled": None}  # stalled: the 408 raised
        timeout = self._body_timeout

        async def timed():
            if state["done"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except asyncio.TimeoutError:
                state["done"] = True
                state["stalled"] = RequestTimeout(f"the request body stopped arriving for {timeout:g} s")
                raise state["stalled"] from None
            if message.get("type") != "http.request" or not message.get("more_body", False):
                state["done"] = True
            return message

        return timed, state


# The WebSocket subprotocol that carries an API key (browsers cannot set headers on a WebSocket).
KEY_SUBPROTOCOL = "openai-insecure-api-key."


async def deny_websocket(scope, receive, send, err: QwenError) -> None:
    """Refuse a WebSocket handshake with `err`'s status and envelope (ASGI's websocket.http.response, which
    uvicorn offers), or, on a server without it, close it with 1008 (policy) / 1013 (try again later)."""
    message = await receive()  # websocket.connect: the handshake request, answered below
    if message.get("type") != "websocket.connect":
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        raw = json.dumps(err.envelope()).encode()
        hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
        hdrs += [(k.lower().encode(), v.encode()) for k, v in err.headers().items()]
        await send({"type": "websocket.http.response.start", "status": err.status, "headers": hdrs})
        await send({"type": "websocket.http.response.body", "body": raw})
    else:
        await send({"type": "websocket.close", "code": 1013 if err.status in (429, 503) else 1008,
                    "reason": err.message[:120]})


async def send_json(send, status: int, body: dict, extra_headers: list | None = None) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += extra_headers or []
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


def error_response(err: QwenError):
    from starlette.responses import JSONResponse

    return JSONResponse(err.envelope(), status_code=err.status, headers=err.headers())


def validation_error(exc) -> QwenError:
    """FastAPI/pydantic validation -> one envelope naming the first offending parameter."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "form", "path", "header")]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        return InvalidRequest("request body is not valid JSON", code="invalid_json")
    cls = InvalidRequest
    text = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return cls(text, param=param, code="invalid_value" if param else None)


def _not_json(constant: str):
    raise ValueError(f"{constant} is not a JSON number")


async def read_json_object(request) -> dict:
    """The request body as a JSON object, or a 400 in the envelope. Strict JSON: Python's parser (Starlette's
    `request.json()`) also reads NaN and Infinity, which no field of ours means and which pass range checks
    written as comparisons; every JSON route reads its body here."""
    try:
        body = json.loads(await request.body(), parse_constant=_not_json)
    except ValueError as exc:  # JSONDecodeError, a bad encoding, NaN/Infinity
        detail = f": {exc}" if "JSON number" in str(exc) else ""
        raise InvalidRequest(f"request body is not valid JSON{detail}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", code="invalid_json")
    return body


async def parse_form(request, *, what: str, max_fields: int = 16,
                     content_types: tuple[str, ...] = ("multipart/form-data",)):
    """The form of a multipart request (one file part at most), with the envelope's errors: 415 for another
    content type (`what` says what to send), 400 for a malformed body. Starlette keeps it on the request."""
    if not request.headers.get("content-type", "").startswith(content_types):
        raise UnsupportedMedia(f"send multipart/form-data with {what}", code="unsupported_content_type")
    try:
        return await request.form(max_files=1, max_fields=max_fields)
    except Exception:
        raise InvalidRequest("malformed multipart body", code="invalid_multipart") from None


class FormRoute(APIRoute):
    """A route whose body is a FastAPI form (`Annotated[Model, Form()]`) reads it through `parse_form` first
    (content type, part limits, the envelope's errors); FastAPI then validates the model from that form, and
    its validation errors are the envelope's 400s (`install_error_handlers`). Other routes are unchanged."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        if not (self.body_field and isinstance(self.body_field.field_info, params.Form)):
            return handler

        async def form_first(request):
            await parse_form(request, what=f"the fields of {self.path} (see /docs)")
            return await handler(request)

        return form_first


async def read_form(request, *, file_field: str, file_required: bool, what: str, max_fields: int = 16,
                    content_types: tuple[str, ...] = ("multipart/form-data",)):
    """(upload or None, the form) of a multipart request, with `parse_form`'s errors and a 400 for a missing
    required file part (`what` names it)."""
    form = await parse_form(request, what=what, max_fields=max_fields, content_types=content_types)
    upload = form.get(file_field)
    if isinstance(upload, str):
        upload = None
    if upload is None and file_required:
        raise InvalidRequest(f"`{file_field}` is required ({what})", param=file_field, code="missing_file")
    return upload, form


def form_fields(form, exclude: str) -> dict:
    """The text fields of a form (the file part and stray files left out)."""
    return {k: v for k, v in form.items() if k != exclude and isinstance(v, str)}


def inline_schema(model_cls) -> dict:
    """A pydantic model's JSON schema with its `$defs` inlined, for hand-written OpenAPI request bodies
    (a `#/$defs/...` reference does not resolve inside the OpenAPI document)."""
    schema = model_cls.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.split("/")[-1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


def validate(model_cls, payload: dict):
    """`model_cls.model_validate(payload)`, with validation errors as one 400 naming the parameter."""
    from pydantic import ValidationError

    try:
        return model_cls.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc) from None


def install_error_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(QwenError)
    async def _qwen(_req, exc: QwenError):
        if exc.status >= 500:
            log.warning("request failed", extra={"status": exc.status, "code": exc.code, "error": exc.message})
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req, exc):
        return error_response(validation_error(exc))

    @app.exception_handler(HTTPException)
    async def _http(_req, exc: HTTPException):
        # Starlette's own errors carry any status: the envelope's type follows it (errors.error_type).
        err = QwenError(str(exc.detail), status=exc.status_code,
                        code={404: "not_found", 405: "method_not_allowed"}.get(exc.status_code))
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(_req, exc: Exception):
        log.error("unhandled error", exc_info=exc)
        return error_response(QwenError("internal error; see the server log with this request id"))


# The error envelope in the OpenAPI document: every route may answer these, always in this shape, so a
# client generated from /docs.json (and schemathesis' conformance checks) know every status it can get.
ERROR_ENVELOPE_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       # nullable, not a type list: BentoML's document is OpenAPI 3.0
                       "param": {"type": "string", "nullable": True}, "code": {"type": "string", "nullable": True}},
    }},
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_ERROR_STATUSES = {
    400: "invalid request (the message and `param` say what)",
    401: "missing or wrong API key",
    404: "no such route, model or task",
    408: "the request body stopped arriving (QWEN_BODY_READ_TIMEOUT)",
    413: "input too large (bytes, seconds, pixels or characters)",
    415: "unsupported media (not audio / not an image)",
    422: "well-formed but unusable input (e.g. lyrics with no words)",
    429: "over capacity or rate limit; retry after Retry-After",
    500: "unexpected server error",
    502: "a URL or S3 object the request named could not be fetched",
    503: "model loading or a model service unreachable; retry after Retry-After",
    504: "a model or a fetched URL did not finish in time",
}


def error_doc(status: int, text: str) -> dict:
    """The OpenAPI response of one error status: the envelope (and Retry-After where it is sent)."""
    return {"description": text, "content": {"application/json": {"schema": ERROR_ENVELOPE_SCHEMA}},
            **({"headers": _RETRY_AFTER} if status in RETRY_AFTER_STATUSES else {})}


ERROR_RESPONSES: dict[int | str, dict] = {status: error_doc(status, text) for status, text in _ERROR_STATUSES.items()}
