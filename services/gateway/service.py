"""The BentoML entry service: one port, every enabled model service behind it.

`QWEN_SERVICES=aligner,asr,...` chooses which services exist in this process tree: the Gateway class is
built at import with a `bentoml.depends` only for those, so a disabled service starts no process and loads
nothing. Its app is `build_gateway`'s (mounted here, bound to the dependencies when the instance starts);
BentoML keeps /livez, /readyz, /metrics and /docs.json. `bentoml serve services.gateway:Gateway` runs one
process per service (production); `--development` runs them all in one process (small CPU machines).
"""

from __future__ import annotations

import logging

import bentoml

from services.runtime.serving import colocation
from services.runtime.serving.device import visible_gpus
from services.runtime.edge.http import EdgeMiddleware
from services.runtime.edge.ratelimit import trust_proxies
from services.runtime.core.logging import configure as configure_logging
from services.runtime.core.logging import get_logger
from services.runtime.core.settings import Settings, get_settings

from .app import bind, mount
from .registry import REGISTRY, enabled_keys


def placement(settings: Settings, enabled: list[str]) -> list[colocation.Finding]:
    """GPU memory of the services this process tree runs side by side (the others are reached by URL), judged
    from settings before any model loads. Acted on by the gateway instance, not at import: every worker
    imports this module, and on BentoCloud each service is its own deployment whose settings say nothing
    about its neighbours."""
    return colocation.check(settings, colocation.colocated(settings, enabled), visible_gpus())


def build_service(settings: Settings):
    """The BentoML Gateway service class for `settings`: dependencies, app, edge middleware."""
    enabled = enabled_keys(settings)
    trust_proxies(settings.trusted_proxies)  # uvicorn's X-Forwarded-For handling: our proxies only
    findings = placement(settings, enabled)
    classes = {key: REGISTRY[key].service_class() for key in enabled}
    # Services whose backend has its own metrics (vLLM's `vllm:*`), merged into /metrics.
    metric_keys = [key for key, cls in classes.items() if hasattr(cls.inner, "backend_metrics")]
    app = mount(settings, enabled)

    class _GatewayBase:
        def __init__(self) -> None:
            configure_logging(settings.log_level, settings.log_json)
            for finding in findings:
                get_logger("gateway").log(logging.ERROR if finding.level == "error" else logging.WARNING,
                                          finding.message, extra={"gpu": finding.gpu})
            colocation.refuse(findings)
            # In-process dependencies are created on first access: touching them here starts model loading.
            self.state = bind(app, settings, {key: getattr(self, key) for key in enabled}, findings)

        async def __metrics__(self, content: str) -> str:
            """BentoML's /metrics text plus the backends' own, merged."""
            return content + await self.state.backend_metrics(metric_keys)

        async def __is_ready__(self) -> bool:
            return await self.state.is_ready()

    # A service with QWEN_<SVC>_URL is reached at that URL and not started here (no process, no model).
    deps = {key: bentoml.depends(cls, url=settings.service(key).url) if settings.service(key).url
            else bentoml.depends(cls) for key, cls in classes.items()}
    cls = type("Gateway", (_GatewayBase,), {"__module__": __name__, "__qualname__": "Gateway", **deps})
    cls = bentoml.asgi_app(app, path="/")(cls)
    svc = bentoml.service(
        name="qwen-bento",
        traffic={"timeout": 900},
        resources={"cpu": "1", "memory": "1Gi"},
    )(cls)
    svc.add_asgi_middleware(EdgeMiddleware, **app.state.edge)
    return svc


Gateway = build_service(get_settings())
