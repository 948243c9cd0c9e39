"""A model service created in this process, loaded and ready: what the bench scripts time."""

from __future__ import annotations


def service(cls, timeout: float = 900):
    """An instance of BentoML service class `cls` (its inner class when decorated), once its model is loaded;
    exits with the load error otherwise."""
    svc = cls()
    inner = svc() if callable(svc) and not hasattr(svc, "handle") else svc
    if not inner.handle.wait(timeout):
        raise SystemExit(f"{cls.__name__} failed: {inner.handle.error}")
    return inner
