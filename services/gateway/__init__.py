"""The gateway: one port in front of every enabled model service.

- `registry`: the services this build has (class, routes, settings, names); one entry per model family.
- `app.build_gateway(settings, services)`: the FastAPI app around any services (fakes in tests).
- `deps.gateway`: the one dependency routes use to reach it; `routes`: /health, /v1/models, playground, /docs.
- `service.Gateway`: the BentoML service (`bentoml serve services.gateway:Gateway`), built on first access
  so that importing `services.gateway.deps` from a routes module builds nothing.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "Gateway":
        from .service import Gateway

        return Gateway
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
