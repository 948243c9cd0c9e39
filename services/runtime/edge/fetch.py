"""Fetching media the client names by URL: http(s) behind an SSRF guard, and s3://bucket/key.

http(s): every hop (redirects are followed by hand, at most N) is resolved once, every resolved address
is checked, and the connection goes to the checked address (Host header and TLS SNI keep the name), so
DNS rebinding between check and connect cannot slip in. Loopback, private, link-local (cloud metadata),
CGNAT, multicast, reserved and unspecified addresses are refused, also inside IPv4-mapped/6to4/NAT64
IPv6, unless the host is in `fetch_private_allowlist`. Bodies are streamed with the size cap enforced
while reading. s3:// goes through boto3 with a configurable endpoint (Cloudflare R2, MinIO, any S3).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from services.runtime.core.errors import InvalidRequest, PayloadTooLarge, Timeout, UpstreamError
from services.runtime.core.settings import Settings

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `ip` may not be fetched, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            why = address_refusal(inner)
            return f"{why} (embedded in {ip})" if why else None
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address (cloud metadata lives here)"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "shared (CGNAT) address"
    if ip.is_private:
        return "private address"
    if ip.is_multicast:
        return "multicast address"
    if ip.is_unspecified or ip.is_reserved:
        return "reserved address"
    if not ip.is_global:
        return "non-global address"
    return None


def _allowed(host: str, ips: list, allowlist: list[str]) -> bool:
    for entry in allowlist:
        if entry.lower() == host.lower():
            return True
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if ips and all(ip in net for ip in ips):
            return True
    return False


async def resolve(host: str, port: int) -> list:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InvalidRequest(f"cannot resolve host {host!r}", code="host_not_found") from None
    # Some resolvers accept decimal/octal/hex forms ("2130706433", "0177.0.0.1"): the numbers checked are
    # what getaddrinfo returns, not what the URL spells.
    return list(dict.fromkeys(ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos))


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address


async def check_url(url: str, settings: Settings, param: str) -> Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidRequest(f"{param}: scheme {scheme or '(none)'!r} is not allowed; use http, https or s3",
                             param=param, code="url_refused")
    if not parts.hostname:
        raise InvalidRequest(f"{param}: URL has no host", param=param, code="url_refused")
    if parts.username or parts.password:
        raise InvalidRequest(f"{param}: credentials in URLs are not accepted", param=param, code="url_refused")
    host = parts.hostname
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise InvalidRequest(f"{param}: invalid port", param=param, code="url_refused") from None
    ips = await resolve(host, port)
    if not ips:
        raise InvalidRequest(f"{param}: {host!r} has no address", param=param, code="host_not_found")
    if not _allowed(host, ips, settings.fetch_private_allowlist):
        for ip in ips:
            why = address_refusal(ip)
            if why:
                raise InvalidRequest(f"{param}: refused to fetch from {host} ({why})", param=param,
                                     code="url_refused")
    return Target(scheme, host, port, ips[0])


async def fetch_http(url: str, settings: Settings, *, max_bytes: int, param: str = "url") -> bytes:
    import httpx

    timeout = httpx.Timeout(settings.fetch_timeout, connect=min(10.0, settings.fetch_timeout))
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for _hop in range(settings.fetch_max_redirects + 1):
            t = await check_url(url, settings, param)
            parts = urlsplit(url)
            ip_host = f"[{t.ip}]" if t.ip.version == 6 else str(t.ip)
            pinned = parts._replace(netloc=f"{ip_host}:{t.port}").geturl()
            host_header = t.host if parts.port is None else f"{t.host}:{t.port}"
            request = client.build_request(
                "GET", pinned, headers={"Host": host_header, "User-Agent": "qwen-bento/fetch"},
                extensions={"sni_hostname": t.host} if t.scheme == "https" else {},
            )
            try:
                resp = await client.send(request, stream=True)
            except httpx.TimeoutException:
                raise Timeout(f"{param}: {t.host} did not answer within {settings.fetch_timeout:g}s", param=param,
                              code="fetch_timeout") from None
            except httpx.RemoteProtocolError as exc:  # e.g. a Location httpx cannot parse
                raise UpstreamError(f"{param}: {t.host} answered with an invalid response: {exc}",
                                    param=param) from None
            except httpx.HTTPError as exc:
                raise UpstreamError(f"{param}: could not fetch from {t.host}: {type(exc).__name__}",
                                    param=param) from None
            try:
                if resp.is_redirect:
                    loc = resp.headers.get("location")
                    if not loc:
                        raise UpstreamError(f"{param}: redirect without Location", param=param)
                    url = urljoin(url, loc)
                    continue
                if resp.status_code >= 400:
                    cls = InvalidRequest if resp.status_code < 500 else UpstreamError
                    raise cls(f"{param}: {t.host} answered HTTP {resp.status_code}", param=param,
                              code="fetch_failed")
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise PayloadTooLarge(f"{param}: {int(declared)} bytes exceeds the {max_bytes}-byte limit",
                                          param=param)
                buf = bytearray()
                try:
                    async for chunk in resp.aiter_bytes():
                        buf += chunk
                        if len(buf) > max_bytes:
                            raise PayloadTooLarge(f"{param}: body exceeds the {max_bytes}-byte limit",
                                                  param=param)
                except httpx.TimeoutException:
                    raise Timeout(f"{param}: {t.host} stalled mid-transfer for {settings.fetch_timeout:g}s",
                                  param=param, code="fetch_timeout") from None
                except httpx.HTTPError as exc:
                    raise UpstreamError(f"{param}: transfer from {t.host} failed: {type(exc).__name__}",
                                        param=param) from None
                return bytes(buf)
            finally:
                await resp.aclose()
        raise UpstreamError(f"{param}: more than {settings.fetch_max_redirects} redirects", param=param,
                            code="too_many_redirects")


def _s3_client(settings: Settings):
    import boto3
    from botocore.config import Config

    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret,
        region_name=None if settings.s3_region == "auto" and not settings.s3_endpoint_url else settings.s3_region,
        config=Config(connect_timeout=min(10.0, settings.fetch_timeout), read_timeout=settings.fetch_timeout,
                      retries={"max_attempts": 2, "mode": "standard"}, signature_version="s3v4"),
    )


def fetch_s3_sync(url: str, settings: Settings, *, max_bytes: int, param: str = "url") -> bytes:
    from botocore.exceptions import (BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError,
                                     ReadTimeoutError)

    parts = urlsplit(url)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise InvalidRequest(f"{param}: expected s3://bucket/key", param=param, code="invalid_url")
    if settings.s3_bucket and bucket != settings.s3_bucket:
        raise InvalidRequest(f"{param}: bucket {bucket!r} is not the configured bucket", param=param,
                             code="url_refused")
    client = _s3_client(settings)
    try:
        obj = client.get_object(Bucket=bucket, Key=key)
        size = obj.get("ContentLength")
        if size is not None and size > max_bytes:
            raise PayloadTooLarge(f"{param}: object is {size} bytes, limit {max_bytes}", param=param)
        body = obj["Body"]
        buf = bytearray()
        for chunk in iter(lambda: body.read(1 << 20), b""):
            buf += chunk
            if len(buf) > max_bytes:
                raise PayloadTooLarge(f"{param}: object exceeds the {max_bytes}-byte limit", param=param)
        return bytes(buf)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
            raise InvalidRequest(f"{param}: s3 object {bucket}/{key} not found ({code})", param=param,
                                 code="object_not_found") from None
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise UpstreamError(f"{param}: s3 refused access ({code})", param=param, code="s3_access_denied") from None
        raise UpstreamError(f"{param}: s3 error {code}", param=param, code="s3_error") from None
    except (ReadTimeoutError, ConnectTimeoutError):
        raise Timeout(f"{param}: s3 did not answer within {settings.fetch_timeout:g}s", param=param,
                      code="fetch_timeout") from None
    except EndpointConnectionError:
        raise UpstreamError(f"{param}: s3 endpoint is unreachable", param=param, code="s3_unreachable") from None
    except BotoCoreError as exc:
        raise UpstreamError(f"{param}: s3 failed: {type(exc).__name__}", param=param, code="s3_error") from None


async def fetch_bytes(url: str, settings: Settings, *, max_bytes: int, param: str = "url") -> bytes:
    """Bytes behind `url` (http, https or s3), or a QwenError with a 4xx/5xx that says why.

    `fetch_timeout` is the deadline of the whole fetch (every hop and the body): a server that never
    answers, or trickles the body slower than that, is a 504 with code `fetch_timeout`."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest(f"{param} is empty", param=param, code="invalid_url")
    scheme = urlsplit(url.strip()).scheme.lower()
    if scheme == "s3":
        work = asyncio.to_thread(fetch_s3_sync, url.strip(), settings, max_bytes=max_bytes, param=param)
    else:
        work = fetch_http(url.strip(), settings, max_bytes=max_bytes, param=param)
    deadline = settings.fetch_timeout
    try:
        return await asyncio.wait_for(work, deadline)
    except asyncio.TimeoutError:
        raise Timeout(f"{param}: the transfer took longer than {deadline:g}s", param=param,
                      code="fetch_timeout") from None
