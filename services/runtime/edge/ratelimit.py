"""Per-client request rate limits for the gateway: GCRA limiter and the client's address (the gateway
checks them on the routes it limits: services/gateway/state.py `rate_limit`).

Algorithm: GCRA (the generic cell rate algorithm, i.e. a token bucket of `limit` tokens refilled at
`limit / window` per second, written as one timestamp). Why: it stores ONE float per client (a sliding log
stores up to `limit` timestamps), costs O(1) per check, gives the exact Retry-After, allows a burst of
`limit` and then one request per `window / limit` seconds, and has no fixed-window edge where 2x the limit
passes around a boundary. A client whose timestamp lies in the past is indistinguishable from a new one,
so evicting it loses nothing; that is what keeps memory bounded for free.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache

from services.runtime.core.errors import TooManyRequests

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RateLimiter:
    """`limit` requests per `window_seconds` per key; thread- and asyncio-safe (the lock is never held
    across an await). At most `max_clients` keys are tracked."""

    def __init__(self, limit: int, window_seconds: float, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        if limit < 1 or window_seconds <= 0 or max_clients < 1:
            raise ValueError("limit and max_clients must be >= 1, window_seconds > 0")
        self.limit = limit
        self.window = float(window_seconds)
        self._interval = self.window / limit  # one token's refill time
        self._max_clients = max_clients
        self._clock = clock
        # key -> TAT (theoretical arrival time: when the client's bucket is full again), in update order
        self._tat: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._next_sweep = clock() + self.window

    def __len__(self) -> int:
        return len(self._tat)

    def check(self, key: str) -> None:
        """Count one request for `key`, or raise TooManyRequests (nothing counted) with retry_after."""
        with self._lock:
            now = self._clock()
            if now >= self._next_sweep:
                self._sweep(now)
            tat = max(self._tat.get(key, now), now)
            new_tat = tat + self._interval
            allowed_at = new_tat - self.window  # = TAT - burst tolerance
            if now < allowed_at:
                wait = allowed_at - now
                # Whole seconds, rounded UP: QwenError renders Retry-After with round(), and a client told
                # to come back 0.4 s early would be refused again.
                raise TooManyRequests(
                    f"rate limit exceeded: {self.limit} requests per {self.window:g} s; retry in {math.ceil(wait)} s",
                    code="rate_limited", retry_after=float(max(1, math.ceil(wait))))
            self._tat[key] = new_tat
            self._tat.move_to_end(key)
            while len(self._tat) > self._max_clients:
                # All tracked clients are active (else the sweep would have dropped them): forget the least
                # recently seen. It gets a fresh bucket, so the cap bounds memory, not the total rate.
                self._tat.popitem(last=False)

    def _sweep(self, now: float) -> None:
        # Lossless: an entry whose TAT has passed is a full bucket, the same as no entry. Amortised O(1):
        # at most once per window (and never more than once per check).
        for k in [k for k, t in self._tat.items() if t <= now]:
            del self._tat[k]
        self._next_sweep = now + self.window


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
