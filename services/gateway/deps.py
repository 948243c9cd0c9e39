"""The one FastAPI dependency every route uses to reach the gateway it is mounted on.

`build_gateway` stores its `GatewayState` on `app.state.gateway`; routes declare `gw=Depends(gateway)`.
No imports beyond FastAPI: routes modules import this without building a gateway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from .state import GatewayState


def gateway(request: Request) -> "GatewayState":
    return request.app.state.gateway
