"""The gateway's own routes: /health, /v1/models, the playground page and /docs (BentoML keeps /livez,
/readyz, /metrics and /docs.json)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse

from services.runtime.core.errors import NotFound

from .deps import gateway
from .registry import REGISTRY, model_key

VERSION = "0.1.0"

router = APIRouter()
ROUTES = ("/v1/models", "/v1/models/*")  # metric labels (probes and docs are labelled by the edge itself)


@router.get("/health", tags=["probes"], summary="200 when every enabled model is ready, else 503 with states",
            responses={503: {"description": "not every model is ready: the same body, with each service's state",
                             "content": {"application/json": {}}}})
async def health(gw=Depends(gateway)) -> JSONResponse:
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
                         "placement": [f.message for f in gw.placement]}, status_code=code)


def model_cards(gw) -> list[dict]:
    return [{"id": gw.settings.service(key).model, "object": "model", "created": 0, "owned_by": "qwen-bento",
             "service": key, "aliases": REGISTRY[key].aliases(gw.settings)} for key in gw.enabled]


@router.get("/v1/models", tags=["models"], summary="Models served by this deployment (OpenAI list format)")
async def models(gw=Depends(gateway)) -> JSONResponse:
    return JSONResponse({"object": "list", "data": model_cards(gw)})


@router.get("/v1/models/{model:path}", tags=["models"], summary="One model by its id or any of its aliases")
async def model(model: str, gw=Depends(gateway)) -> JSONResponse:
    key = model_key(gw.settings, gw.enabled, model)  # the one name rule (404 model_not_found otherwise)
    return JSONResponse(next(card for card in model_cards(gw) if card["service"] == key))


@router.get("/docs", include_in_schema=False)
async def docs() -> FileResponse:
    """Swagger UI over /docs.json, with BentoML's bundled assets (no CDN: works offline)."""
    import _bentoml_impl.server as bentoml_server

    return FileResponse(Path(bentoml_server.__file__).parent / "main-openapi.html")


# The playground: a static page (services/playground, no build step, no CDN) that calls the public API from
# the browser with the key the user types. The page itself is public (it holds no data); every API route it
# calls keeps auth. Not in the OpenAPI document: it is not an API. Mounted only when QWEN_PLAYGROUND is on.
PLAYGROUND_DIR = Path(__file__).resolve().parent.parent / "playground"
PLAYGROUND_PUBLIC = ("/", "/playground", "/playground/*")
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

playground_router = APIRouter(include_in_schema=False)


def _page_file(name: str) -> FileResponse:
    path = _PAGE_FILES.get(name)
    if path is None:
        raise NotFound(f"GET /playground/{name}: no such file", code="not_found")
    return FileResponse(path, media_type=_PAGE_TYPES[path.suffix], headers=_PAGE_HEADERS)


@playground_router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/playground", status_code=307)


@playground_router.get("/playground")
async def playground() -> FileResponse:
    return _page_file("index.html")


@playground_router.get("/playground/config.json")
async def playground_config(gw=Depends(gateway)) -> JSONResponse:
    """What the page needs before it has a key: which services this gateway runs (the panels to show), the
    model name each is called with, whether a key is required, and the options that depend on settings
    (`separate`: the aligner has a vocal separator). /health already tells as much."""
    features = {"separate": "aligner" in gw.enabled and bool(gw.settings.aligner.separator)}
    return JSONResponse({"version": VERSION, "auth": gw.settings.api_key is not None,
                         "services": {key: {"model": gw.settings.service(key).model} for key in gw.enabled},
                         "features": features}, headers=_PAGE_HEADERS)


@playground_router.get("/playground/{name}")
async def playground_asset(name: str) -> FileResponse:
    return _page_file(name)
