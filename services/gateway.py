"""The entry service: one port, every enabled model service behind it.

`QWEN_SERVICES=aligner,asr,...` chooses which services exist in this process tree: the Gateway class is
built at import time with a `bentoml.depends` only for those, so a disabled service starts no process and
loads nothing. Public routes are FastAPI routers mounted on the gateway; BentoML keeps /livez, /readyz,
/metrics and /docs. `bentoml serve services.gateway:Gateway` runs one process per service (production);
`--development` runs them all in one process (small CPU machines, the offline demo).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from pathlib import Path

import bentoml
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from services.runtime import colocation
from services.runtime.chat import ChatHandler
from services.runtime.chat import make_router as make_chat_router
from services.runtime.device import visible_gpus
from services.runtime.errors import NotFound, ServiceUnavailable
from services.runtime.http import ERROR_RESPONSES, EdgeMiddleware, install_error_handlers
from services.runtime.logging import configure as configure_logging
from services.runtime.logging import get_logger
from services.runtime.modelservice import ModelService
from services.runtime.ratelimit import RateLimiter, bucket_key, client_ip
from services.runtime.settings import get_settings
from services.runtime.tasks import TaskStore

VERSION = "0.1.0"

# service key -> (service module, class, routes module). Keys not listed are not built yet.
REGISTRY: dict[str, tuple[str, str, str]] = {
    "aligner": ("services.aligner.service", "Aligner", "services.aligner.routes"),
    "asr": ("services.asr.service", "ASR", "services.asr.routes"),
    "tts": ("services.tts.service", "TTS", "services.tts.routes"),
    "captioner": ("services.captioner.service", "Captioner", "services.captioner.routes"),
    "diagram": ("services.diagram.service", "Diagram", "services.diagram.routes"),
    "vl": ("services.vl.service", "VL", "services.vl.routes"),
}

SETTINGS = get_settings()


def enabled_keys() -> list[str]:
    wanted = SETTINGS.services if SETTINGS.services is not None else list(REGISTRY)
    missing = [k for k in wanted if k not in REGISTRY]
    if missing:
        raise RuntimeError(f"QWEN_SERVICES names services this build does not have: {missing}")
    return wanted


ENABLED = enabled_keys()

# GPU memory of the services this process tree runs side by side (the others are reached by URL), judged
# from settings before any model loads: the gateway refuses to start over an over-committed GPU, and warns
# about shared ones without caps (in the log and /health's `placement`). Computed here (settings and NVML
# only), acted on by the gateway instance, not at import: every worker imports this module, and on
# BentoCloud each service is its own deployment whose settings say nothing about its neighbours.
PLACEMENT = colocation.check(SETTINGS, colocation.colocated(SETTINGS, ENABLED), visible_gpus())

app = FastAPI(
    title="qwen-bento",
    version=VERSION,
    description="Six Qwen models behind production APIs, one BentoML Bento.",
    docs_url=None,  # BentoML serves /docs
    redoc_url=None,
    responses=ERROR_RESPONSES,  # every route documents the envelope for each error status it can answer
)
install_error_handlers(app)
_route_labels: list[str] = ["/v1/models", "/v1/models/*"]
_ROUTE_MODULES = {}
_CHAT_HANDLERS: dict[str, ChatHandler] = {}  # model name -> the service's chat handler
for key in ENABLED:
    routes_mod = _ROUTE_MODULES[key] = importlib.import_module(REGISTRY[key][2])
    if hasattr(routes_mod, "router"):
        app.include_router(routes_mod.router)
    _route_labels += list(routes_mod.ROUTES)
    if hasattr(routes_mod, "CHAT"):
        for name in routes_mod.CHAT.names(SETTINGS.service(key)):
            _CHAT_HANDLERS[name] = routes_mod.CHAT
if _CHAT_HANDLERS:
    app.include_router(make_chat_router(_CHAT_HANDLERS))
    _route_labels.append("/v1/chat/completions")


class _GatewayBase:
    """Behaviour shared by every composition; the dependency attributes are added per build."""

    def __init__(self) -> None:
        configure_logging(SETTINGS.log_level, SETTINGS.log_json)
        for finding in PLACEMENT:
            get_logger("gateway").log(logging.ERROR if finding.level == "error" else logging.WARNING,
                                      finding.message, extra={"gpu": finding.gpu})
        colocation.refuse(PLACEMENT)
        self.settings = SETTINGS
        self.enabled = list(ENABLED)
        self.tasks = TaskStore(ttl=SETTINGS.aligner.task_ttl_seconds, max_tasks=SETTINGS.aligner.max_tasks)
        # Per-client-IP limits on the routes the seeds limited (VL /generate: 10 per minute).
        self.limiters = {}
        if "vl" in self.enabled and SETTINGS.vl.rate_limit > 0:
            self.limiters["vl"] = RateLimiter(SETTINGS.vl.rate_limit, SETTINGS.vl.rate_window_seconds)
        app.state.gateway = self
        # In-process dependencies are created on first access: touch them now so models start loading.
        for key in self.enabled:
            getattr(self, key)

    def rate_limit(self, key: str, request) -> None:
        """429 (rate_limited, Retry-After) when this client used up `key`'s per-IP allowance."""
        limiter = self.limiters.get(key)
        if limiter is not None:
            limiter.check(bucket_key(client_ip(request, self.settings.trusted_proxies)))

    def require(self, key: str) -> None:
        if key not in self.enabled:
            raise ServiceUnavailable(f"the {key} service is not enabled (QWEN_SERVICES)", code="service_disabled")

    async def service_status(self, key: str) -> dict:
        try:
            return await asyncio.wait_for(getattr(self, key).to_async.status(), timeout=5)
        except Exception as exc:  # noqa: BLE001 - a dead or hung service is a state, not an error
            return {**dict.fromkeys(ModelService.STATUS_KEYS), "status": "unreachable",
                    "error": f"{type(exc).__name__}: {exc}"[:300]}

    async def statuses(self) -> dict[str, dict]:
        results = await asyncio.gather(*(self.service_status(k) for k in self.enabled))
        return dict(zip(self.enabled, results))

    async def __metrics__(self, content: str) -> str:
        """BentoML's /metrics text plus the backends' own (vLLM's `vllm:*` series), merged."""
        extra = []
        for key in self.enabled:
            dep = getattr(self, key)
            if not hasattr(_SERVICE_CLASSES[key].inner, "backend_metrics"):
                continue
            try:
                text = await asyncio.wait_for(dep.to_async.backend_metrics(), timeout=5)
            except Exception:  # noqa: BLE001 - a backend without metrics must not break /metrics
                continue
            if text:
                extra.append(text if text.endswith("\n") else text + "\n")
        return content + "".join(extra)

    async def __is_ready__(self) -> bool:
        return all(s.get("status") in ("ready", "degraded") for s in (await self.statuses()).values())


@app.get("/health", tags=["probes"], summary="200 when every enabled model is ready, else 503 with states",
         responses={503: {"description": "not every model is ready: the same body, with each service's state",
                          "content": {"application/json": {}}}})
async def health(request: Request) -> JSONResponse:
    gw = request.app.state.gateway
    services = await gw.statuses()
    states = {s.get("status") for s in services.values()}
    if states <= {"ready"}:
        status, code = "healthy", 200
    elif states <= {"ready", "degraded"}:
        status, code = "degraded", 200  # serving, with something missing (e.g. a LoRA adapter): see services
    elif "failed" in states or "unreachable" in states:
        status, code = "unhealthy", 503
    else:
        status, code = "starting", 503
    return JSONResponse({"status": status, "version": VERSION, "services": services,
                         "placement": [f.message for f in PLACEMENT]}, status_code=code)


def _model_cards(gw) -> list[dict]:
    data = []
    for key in gw.enabled:
        cfg = gw.settings.service(key)
        extra = getattr(_ROUTE_MODULES[key], "model_aliases", lambda _cfg: [])(cfg)
        aliases = list(dict.fromkeys([*getattr(cfg, "aliases", []), *extra, key]))
        data.append({"id": cfg.model, "object": "model", "created": 0, "owned_by": "qwen-bento", "service": key,
                     "aliases": aliases})
    return data


@app.get("/v1/models", tags=["models"], summary="Models served by this deployment (OpenAI list format)")
async def models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": _model_cards(request.app.state.gateway)})


@app.get("/v1/models/{model:path}", tags=["models"], summary="One model by its id or any of its aliases")
async def model(request: Request, model: str) -> JSONResponse:
    for card in _model_cards(request.app.state.gateway):
        if model == card["id"] or model in card["aliases"]:
            return JSONResponse(card)
    raise NotFound(f"model {model!r} is not served here; GET /v1/models lists them", param="model",
                   code="model_not_found")


# The playground: a static page (services/playground, no build step, no CDN) that calls the public API from
# the browser with the key the user types. The page itself is public (it holds no data); every API route it
# calls keeps auth. Not in the OpenAPI document: it is not an API.
PLAYGROUND_DIR = Path(__file__).resolve().parent / "playground"
PLAYGROUND_PUBLIC = ("/", "/playground", "/playground/*") if SETTINGS.playground else ()
_PAGE_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_PAGE_FILES = {p.name: p for p in sorted(PLAYGROUND_DIR.glob("*")) if p.suffix in _PAGE_TYPES}
_PAGE_HEADERS = {
    # Only this origin: the page loads nothing from elsewhere and talks to nothing else.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                               "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_route_labels += PLAYGROUND_PUBLIC


def _page_file(name: str) -> FileResponse:
    path = _PAGE_FILES.get(name)
    if path is None:
        raise NotFound(f"GET /playground/{name}: no such file", code="not_found")
    return FileResponse(path, media_type=_PAGE_TYPES[path.suffix], headers=_PAGE_HEADERS)


async def root() -> RedirectResponse:
    return RedirectResponse("/playground", status_code=307)


async def playground() -> FileResponse:
    return _page_file("index.html")


async def playground_config(request: Request) -> JSONResponse:
    """What the page needs before it has a key: which services this gateway runs (the panels to show), the
    model name each is called with, and whether a key is required. /health already tells as much."""
    gw = request.app.state.gateway
    return JSONResponse({"version": VERSION, "auth": gw.settings.api_key is not None,
                         "services": {key: {"model": gw.settings.service(key).model} for key in gw.enabled}},
                        headers=_PAGE_HEADERS)


async def playground_asset(name: str) -> FileResponse:
    return _page_file(name)


if SETTINGS.playground:  # QWEN_PLAYGROUND=false: no page, no redirect, nothing public beyond probes and docs
    app.add_api_route("/", root, methods=["GET"], include_in_schema=False)
    app.add_api_route("/playground", playground, methods=["GET"], include_in_schema=False)
    app.add_api_route("/playground/config.json", playground_config, methods=["GET"], include_in_schema=False)
    app.add_api_route("/playground/{name}", playground_asset, methods=["GET"], include_in_schema=False)


@app.get("/docs", include_in_schema=False)
async def docs() -> FileResponse:
    """Swagger UI over /docs.json, with BentoML's bundled assets (no CDN: works offline)."""
    import _bentoml_impl.server as bentoml_server

    return FileResponse(Path(bentoml_server.__file__).parent / "main-openapi.html")


_SERVICE_CLASSES = {key: getattr(importlib.import_module(REGISTRY[key][0]), REGISTRY[key][1]) for key in ENABLED}


def _build():
    # A service with QWEN_<SVC>_URL is reached at that URL and not started here (no process, no model).
    deps = {key: bentoml.depends(cls, url=SETTINGS.service(key).url) if SETTINGS.service(key).url
            else bentoml.depends(cls) for key, cls in _SERVICE_CLASSES.items()}
    cls = type("Gateway", (_GatewayBase,), {"__module__": __name__, "__qualname__": "Gateway", **deps})
    cls = bentoml.asgi_app(app, path="/")(cls)
    svc = bentoml.service(
        name="qwen-bento",
        traffic={"timeout": 900},
        resources={"cpu": "1", "memory": "1Gi"},
    )(cls)
    api_key = SETTINGS.api_key.get_secret_value() if SETTINGS.api_key else None
    svc.add_asgi_middleware(EdgeMiddleware, api_key=api_key, routes=tuple(_route_labels),
                            docs_public=SETTINGS.docs_public, public=PLAYGROUND_PUBLIC)
    return svc


Gateway = _build()
