"""Media from a request, fetched and decoded once, in the gateway: uploads and URLs, size-capped."""

from __future__ import annotations

import asyncio

from .audio import DecodedAudio, decode_audio
from .errors import InvalidRequest, PayloadTooLarge
from .fetch import fetch_bytes
from .settings import Settings


async def read_upload(upload, *, max_bytes: int, param: str) -> bytes:
    """Bytes of a Starlette UploadFile, refusing past `max_bytes` without reading the rest."""
    buf = bytearray()
    while chunk := await upload.read(1 << 20):
        buf += chunk
        if len(buf) > max_bytes:
            raise PayloadTooLarge(f"{param} exceeds the {max_bytes}-byte upload limit", param=param)
    return bytes(buf)


async def load_audio(
    settings: Settings,
    *,
    data: bytes | None = None,
    url: str | None = None,
    param: str,
    url_param: str,
    max_seconds: float,
    sample_rate: int = 16000,
) -> DecodedAudio:
    if data is None and not url:
        raise InvalidRequest(f"send the audio as a `{param}` file or give `{url_param}`", param=param,
                             code="missing_audio")
    if data is not None and url:
        raise InvalidRequest(f"give either a `{param}` file or `{url_param}`, not both", param=url_param)
    if data is None:
        data = await fetch_bytes(url, settings, max_bytes=settings.fetch_max_bytes, param=url_param)
        param = url_param
    # Decoding is CPU work: keep the gateway's event loop free.
    return await asyncio.to_thread(decode_audio, data, sample_rate=sample_rate, max_seconds=max_seconds,
                                   param=param)
