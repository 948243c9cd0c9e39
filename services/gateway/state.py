"""What a running gateway holds: its settings, the model services it talks to, tasks and rate limits.

Routes reach it through `deps.gateway` and call a service as `gw.<key>.to_async.<api>(...)`: a service is
any object with that shape (a BentoML dependency in production, a fake in tests).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Mapping

from services.runtime.serving.colocation import Finding
from services.runtime.core.errors import ServiceUnavailable
from services.runtime.serving.modelservice import ModelService
from services.runtime.core.state import open_store
from services.runtime.edge.ratelimit import Limit, RateLimits, bucket_key, client_ip, trusted_networks
from services.runtime.core.settings import Settings
from services.gateway.tasks import TaskStore


class GatewayState:
    def __init__(self, settings: Settings, services: Mapping[str, Any], placement: list[Finding] | tuple = ()):
        self.settings = settings
        self.services = dict(services)
        self.enabled = list(self.services)
        self.placement = list(placement)
        self.realtime_sessions = 0  # open realtime WebSocket sessions (services.asr.realtime)
        url = settings.state_url.get_secret_value() if settings.state_url else None
        self.store = open_store(url, timeout=settings.state_timeout)
        self.tasks = TaskStore(self.store, ttl=settings.task_ttl_seconds, max_tasks=settings.max_tasks,
                               max_result_bytes=settings.task_max_result_bytes)
        # Per-client limits per model (QWEN_<SVC>_RATE_LIMIT; VL: the seed's 10 per minute), on every route
        # that reaches the model (`rate_limit` is called where a route knows its model).
        self.rate_limits = RateLimits(
            self.store.limits_storage,
            {k: Limit(settings.service(k).rate_limit, math.ceil(settings.service(k).rate_window_seconds))
             for k in self.services if settings.service(k).rate_limit > 0},
            fail_open=settings.rate_limit_fail_open)
        trusted_networks(tuple(settings.trusted_proxies))  # a bad entry fails here, not on a client's request

    def __getattr__(self, key: str):
        # gw.<key>: the service object; only called for names that are not ordinary attributes.
        services = self.__dict__.get("services", {})
        if key in services:
            return services[key]
        raise AttributeError(key)

    async def rate_limit(self, key: str, request) -> None:
        """429 (rate_limited, Retry-After) when this client used up its allowance for model `key`."""
        await self.rate_limits.check(key, bucket_key(client_ip(request, self.settings.trusted_proxies)))

    def require(self, key: str) -> None:
        if key not in self.services:
            raise ServiceUnavailable(f"the {key} service is not enabled (QWEN_SERVICES)", code="service_disabled")

    async def service_status(self, key: str) -> dict:
        try:
            return await asyncio.wait_for(self.services[key].to_async.status(), timeout=5)
        except Exception as exc:  # noqa: BLE001 - a dead or hung service is a state, not an error
            return {**dict.fromkeys(ModelService.STATUS_KEYS), "status": "unreachable",
                    "error": f"{type(exc).__name__}: {exc}"[:300]}

    async def statuses(self) -> dict[str, dict]:
        results = await asyncio.gather(*(self.service_status(k) for k in self.enabled))
        return dict(zip(self.enabled, results))

    async def is_ready(self) -> bool:
        return all(s.get("status") in ("ready", "degraded") for s in (await self.statuses()).values())

    async def backend_metrics(self, keys) -> str:
        """The backends' own metrics text (vLLM's `vllm:*` series) from the services in `keys`, joined."""
        extra = []
        for key in keys:
            try:
                text = await asyncio.wait_for(self.services[key].to_async.backend_metrics(), timeout=5)
            except Exception:  # noqa: BLE001 - a backend without metrics must not break /metrics
                continue
            if text:
                extra.append(text if text.endswith("\n") else text + "\n")
        return "".join(extra)
