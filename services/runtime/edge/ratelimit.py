"""Per-client request rate limits, one per model whatever the route, shared by every gateway replica, and the
client's address they key on.

Library: `limits` (MIT, maintained): its moving-window strategy over the state store's storage
(runtime.core.state: in-process, or Redis where the window is kept by Lua scripts, atomic across replicas).
Why moving window: `limit` requests in ANY `window` seconds — no fixed-window edge where 2x the limit passes
around a boundary — and its window stats give the exact Retry-After (when the oldest counted request leaves
the window). `limits` has no GCRA; the moving window keeps up to `limit` timestamps per client instead of
one, which for per-minute model limits (tens) is nothing. Idle clients' windows expire with them.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from services.runtime.core.errors import TooManyRequests
from services.runtime.core.logging import get_logger

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
log = get_logger("ratelimit")


@dataclass(frozen=True)
class Limit:
    requests: int  # per window, per client
    window_seconds: int


class RateLimits:
    """The per-client limit of each model (by service key), checked by `check(service, client)`.

    `fail_open`: when the storage cannot be reached (Redis down), let the request through (logged) rather
    than refuse it; False refuses with 503 state_unavailable."""

    def __init__(self, storage, limits: Mapping[str, Limit], *, fail_open: bool = True):
        from limits import RateLimitItemPerSecond
        from limits.aio.strategies import MovingWindowRateLimiter

        self.limits = dict(limits)
        self._items = {k: RateLimitItemPerSecond(v.requests, v.window_seconds) for k, v in self.limits.items()}
        self._limiter = MovingWindowRateLimiter(storage)
        self.fail_open = fail_open

    async def check(self, service: str, client: str) -> None:
        """Count one request of `client` to `service`, or raise TooManyRequests (nothing counted) with the
        seconds until the window has room (whole seconds, rounded up: a client told to come back 0.4 s
        early would be refused again)."""
        item = self._items.get(service)
        if item is None:
            return
        from limits.errors import StorageError

        from services.runtime.core.state import StateUnavailable, unavailable

        try:
            if await self._limiter.hit(item, service, client):
                return
            stats = await self._limiter.get_window_stats(item, service, client)
        except (StorageError, StateUnavailable, OSError) as exc:
            if self.fail_open:
                log.warning("rate limit not checked: the state store is unreachable",
                            extra={"service": service, "error": type(exc).__name__})
                return
            raise unavailable(exc) from None
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        limit = self.limits[service]
        raise TooManyRequests(
            f"rate limit exceeded for {service}: {limit.requests} requests per {limit.window_seconds} s; "
            f"retry in {wait} s", code="rate_limited", retry_after=float(wait))


@lru_cache(maxsize=32)
def trusted_networks(entries: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """The networks of QWEN_TRUSTED_PROXIES entries (IPs or CIDRs); ValueError for one that is neither."""
    return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip())


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address from a socket peer or an X-Forwarded-For entry ("1.2.3.4", "1.2.3.4:80", "[::1]:80")."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has >= 2 colons
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    # Dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d: one client, one key.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def client_ip(scope_or_request, trusted_proxies: Sequence[str]) -> str:
    """The client's address: the socket peer; or, only when the peer is one of `trusted_proxies` (IPs or
    CIDRs), the right-most X-Forwarded-For entry that is not a trusted proxy.

    Why right-most: every proxy APPENDS the address it received the connection from, so the list reads
    client-supplied..., hop1, hop2 (left to right). Anything left of what our own proxies appended was
    written by the client and can be forged (`X-Forwarded-For: 1.2.3.4` rotated per request would dodge any
    limit). Walking from the right past our trusted proxies, the first other address is the one that
    connected to our outermost proxy: the only entry nobody but us vouches for.
    """
    scope = getattr(scope_or_request, "scope", scope_or_request)
    client = scope.get("client")
    peer_text = str(client[0]) if client else ""
    peer = _parse_ip(peer_text)
    trusted = trusted_networks(tuple(trusted_proxies))
    if peer is None:
        return peer_text or "unknown"  # a unix socket or a test client: nothing to resolve

    def is_trusted(ip) -> bool:
        return any(ip.version == net.version and ip in net for net in trusted)

    if not trusted or not is_trusted(peer):
        return str(peer)
    # Several X-Forwarded-For lines are one list, in order (RFC 9110 field combination).
    hops = [h for name, value in scope.get("headers") or () if name.lower() == b"x-forwarded-for"
            for h in value.decode("latin-1").split(",") if h.strip()]
    nearest = peer  # the left-most trusted hop seen so far
    for text in reversed(hops):
        ip = _parse_ip(text)
        if ip is None:
            # Garbage where a trusted proxy should have written an address: never use client-chosen text as
            # the key (rotating it would dodge the limit); the nearest proven hop is the key.
            return str(nearest)
        if not is_trusted(ip):
            return str(ip)
        nearest = ip
    return str(nearest)  # every hop is ours: the request came from inside


def bucket_key(ip: str) -> str:
    """The rate-limit key of an address. An IPv6 host owns a whole /64 and can pick any address in it per
    request, so IPv6 clients are limited per /64; IPv4 per address."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return ip


def trust_proxies(trusted_proxies: Sequence[str]) -> None:
    """Make uvicorn's proxy-header handling believe exactly our trusted proxies. BentoML builds uvicorn's
    config without `forwarded_allow_ips`, so uvicorn reads FORWARDED_ALLOW_IPS and otherwise trusts
    127.0.0.1 and ::1: anything next to the gateway could then pick its own address (request.client, the
    access log) with a forged X-Forwarded-For. Called where the gateway's module is imported, which in each
    BentoML worker is before uvicorn's config is built. Empty list: nobody is trusted."""
    import os

    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(str(n) for n in trusted_networks(tuple(trusted_proxies)))
