"""One error envelope for every failure: {"error": {"message", "type", "param", "code"}}.

Code raises a `QwenError` subclass; the gateway renders it once (runtime.http). Between processes a
model service returns `error.payload()` (see runtime.remote) and the gateway re-raises it here, so the
status, message and Retry-After survive the hop.
"""

from __future__ import annotations

from typing import Any


class QwenError(Exception):
    status: int = 500
    type: str = "server_error"
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
        self.retry_after = retry_after

    def envelope(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        if self.retry_after is not None and self.status in (429, 503):
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
        err.type = p.get("type") or "server_error"
        return err


class InvalidRequest(QwenError):
    """400: the request is malformed or names something that does not exist."""

    status = 400
    type = "invalid_request_error"


class Unauthorized(QwenError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(QwenError):
    """404. The type is OpenAI's for an unknown model or route (the same as the edge's rewritten 404s);
    the code says what was not found (not_found, model_not_found, task_not_found...)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(QwenError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMedia(QwenError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media"


class Unprocessable(QwenError):
    status = 422
    type = "invalid_request_error"


class TooManyRequests(QwenError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class UpstreamError(QwenError):
    """502: something we fetch from (a URL, S3) failed."""

    status = 502
    type = "upstream_error"
    code = "fetch_failed"


class ServiceUnavailable(QwenError):
    status = 503
    type = "service_unavailable"
    code = "model_not_ready"


class Timeout(QwenError):
    status = 504
    type = "timeout_error"
    code = "timeout"
