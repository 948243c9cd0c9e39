"""One error envelope for every failure: {"error": {"message", "type", "param", "code"}}.

Code raises a `QwenError` subclass (one per status); `type` follows the status (`error_type`) unless a
subclass sets its own. The gateway renders it once (runtime.edge.http). Between processes a model service
returns `error.payload()` (see runtime.edge.remote) and the gateway re-raises it here, so the status, type,
message and Retry-After survive the hop.
"""

from __future__ import annotations

from typing import Any

# The envelope's `type` for the statuses that have their own (OpenAI's names where OpenAI has one). Every
# other 4xx (400, 404, 405, 409, 413, 415, 422...) is the client's mistake, "invalid_request_error"; every
# other status a "server_error".
ERROR_TYPES: dict[int, str] = {
    401: "authentication_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}
# The statuses whose answer carries Retry-After when the error knows a wait.
RETRY_AFTER_STATUSES = (429, 503)


def error_type(status: int) -> str:
    """The envelope's `type` for an HTTP status."""
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "server_error"


class QwenError(Exception):
    """The base of every error we answer. `type` follows the status (`error_type`) unless a subclass or a
    remote payload sets it."""

    status: int = 500
    type: str | None = None  # None: error_type(status); a subclass may set its own
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.type = self.type or error_type(self.status)
        self.retry_after = retry_after

    def envelope(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is not None and self.status in RETRY_AFTER_STATUSES:
            return {"Retry-After": str(max(1, int(round(self.retry_after))))}
        return {}

    def payload(self) -> dict[str, Any]:
        """A picklable/JSON form for crossing a process boundary."""
        return {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.code,
            "status": self.status,
            "retry_after": self.retry_after,
        }

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> "QwenError":
        err = QwenError(p["message"], param=p.get("param"), code=p.get("code"), status=p.get("status", 500),
                        retry_after=p.get("retry_after"))
        err.type = p.get("type") or err.type  # the remote side's type, even one its subclass chose
        return err


class InvalidRequest(QwenError):
    """400: the request is malformed or names something that does not exist."""

    status = 400


class Unauthorized(QwenError):
    status = 401
    code = "invalid_api_key"


class NotFound(QwenError):
    """404. The type is OpenAI's for an unknown model or route (the same as the edge's rewritten 404s);
    the code says what was not found (not_found, model_not_found, task_not_found...)."""

    status = 404
    code = "not_found"


class MethodNotAllowed(QwenError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(QwenError):
    """408: the client stopped sending its body."""

    status = 408
    code = "body_timeout"


class Conflict(QwenError):
    """409: the request is valid but the resource is not in a state to answer it (a task still running)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(QwenError):
    status = 413
    code = "payload_too_large"


class UnsupportedMedia(QwenError):
    status = 415
    code = "unsupported_media"


class Unprocessable(QwenError):
    status = 422


class TooManyRequests(QwenError):
    status = 429
    code = "queue_full"


class UpstreamError(QwenError):
    """502: something we fetch from (a URL, S3) failed."""

    status = 502
    code = "fetch_failed"


class ServiceUnavailable(QwenError):
    status = 503
    code = "model_not_ready"


class Timeout(QwenError):
    status = 504
    code = "timeout"
