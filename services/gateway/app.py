"""`build_gateway(settings, services)`: the gateway's FastAPI app around any set of model services.

Everything is decided per call from its arguments (no module state): the routes of the services given
(from the registry), the chat route over the names they answer to, the gateway's own routes, and the metric
labels of exactly those routes. `mount` builds the app for a list of keys and `bind` attaches the services:
the BentoML service mounts at import (BentoML needs the app before its instance exists) and binds in its
`__init__`; tests call `build_gateway` with fakes.
"""

from __future__ import annotations

from typing import Any, Mapping

from fastapi import FastAPI

from services.gateway.chat import ChatHandler
from services.gateway.chat import make_router as make_chat_router
from services.runtime.serving.colocation import Finding
from services.runtime.edge.http import ERROR_RESPONSES, install_error_handlers
from services.runtime.core.settings import Settings

from . import routes as gateway_routes
from .registry import REGISTRY
from .state import GatewayState


def mount(settings: Settings, keys: list[str]) -> FastAPI:
    """The app with the public routes of the services `keys` name, not yet bound to any service."""
    app = FastAPI(
        title="qwen-bento",
        version=gateway_routes.VERSION,
        description="Six Qwen models behind production APIs, one BentoML Bento.",
        docs_url=None,  # BentoML serves /docs
        redoc_url=None,
        responses=ERROR_RESPONSES,  # every route documents the envelope for each error status it can answer
    )
    install_error_handlers(app)
    labels: list[str] = list(gateway_routes.ROUTES)
    app.include_router(gateway_routes.router)
    chat: dict[str, ChatHandler] = {}  # service key -> its chat handler
    for key in keys:
        entry = REGISTRY[key]
        module = entry.routes_module()
        if hasattr(module, "router"):
            app.include_router(module.router)
        labels += module.ROUTES
        if hasattr(module, "CHAT"):
            chat[key] = module.CHAT
    if chat:
        app.include_router(make_chat_router(settings, chat))
        labels.append("/v1/chat/completions")
    public: tuple[str, ...] = ()
    if settings.playground:  # QWEN_PLAYGROUND=false: no page, no redirect, nothing public beyond probes and docs
        app.include_router(gateway_routes.playground_router)
        public = gateway_routes.PLAYGROUND_PUBLIC
        labels += public
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    # EdgeMiddleware's arguments: BentoML installs it around the whole served app (its own routes too).
    app.state.edge = {"api_key": api_key, "routes": tuple(labels), "docs_public": settings.docs_public,
                      "public": public, "max_body": settings.body_cap(), "body_timeout": settings.body_read_timeout,
                      "max_client_requests": settings.max_client_requests,
                      "trusted_proxies": tuple(settings.trusted_proxies)}
    return app


def bind(app: FastAPI, settings: Settings, services: Mapping[str, Any], placement=()) -> GatewayState:
    state = GatewayState(settings, services, placement)
    app.state.gateway = state
    return state


def build_gateway(settings: Settings, services: Mapping[str, Any], placement: list[Finding] | tuple = ()) -> FastAPI:
    """The gateway app serving `services` (key -> object with `.to_async.<api>`), only their routes."""
    unknown = [k for k in services if k not in REGISTRY]
    if unknown:
        raise ValueError(f"no registry entry for {unknown}")
    app = mount(settings, list(services))
    bind(app, settings, services, placement)
    return app
