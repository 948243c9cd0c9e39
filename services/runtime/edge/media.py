"""Media from a request, fetched and decoded once, in the gateway: uploads and URLs, size-capped."""

from __future__ import annotations

import asyncio

from services.runtime.codecs.audio import DecodedAudio, decode_audio
from services.runtime.core.errors import InvalidRequest, PayloadTooLarge
from services.runtime.edge.fetch import fetch_bytes
from services.runtime.codecs.images import DEFAULT_MAX_PIXELS, DecodedImage, decode_image
from services.runtime.core.settings import Settings


async def read_upload(upload, *, max_bytes: int, param: str) -> bytes:
    """Bytes of a Starlette UploadFile, refusing past `max_bytes` without reading the rest."""
    buf = bytearray()
    while chunk := await upload.read(1 << 20):
        buf += chunk
        if len(buf) > max_bytes:
            raise PayloadTooLarge(f"{param} exceeds the {max_bytes}-byte upload limit", param=param)
    return bytes(buf)


def decode_base64(value: str, *, max_bytes: int, param: str) -> bytes:
    """Bytes of base64 text or a `data:...;base64,` URL, size-capped before decoding."""
    import base64
    import binascii

    text = value.strip()
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise InvalidRequest(f"{param}: only base64 data: URLs are accepted", param=param, code="invalid_url")
    if len(text) * 3 // 4 > max_bytes:
        raise PayloadTooLarge(f"{param} exceeds the {max_bytes}-byte limit", param=param)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{param} is not valid base64", param=param, code="invalid_base64") from None


async def audio_bytes(settings: Settings, *, data: bytes | None = None, url: str | None = None, param: str,
                      url_param: str) -> tuple[bytes, str]:
    """The encoded audio of a request (an uploaded part, a data: URL or a fetched URL) and the field it came
    in (what its errors name)."""
    if data is None and not url:
        raise InvalidRequest(f"send the audio as a `{param}` file or give `{url_param}`", param=param,
                             code="missing_audio")
    if data is not None and url:
        raise InvalidRequest(f"give either a `{param}` file or `{url_param}`, not both", param=url_param)
    if data is None and url.strip().startswith("data:"):
        return decode_base64(url, max_bytes=settings.upload_max_bytes, param=url_param), url_param
    if data is None:
        return await fetch_bytes(url, settings, max_bytes=settings.fetch_max_bytes, param=url_param), url_param
    return data, param


async def load_audio(
    settings: Settings,
    *,
    data: bytes | None = None,
    url: str | None = None,
    param: str,
    url_param: str,
    max_seconds: float,
    sample_rate: int = 16000,
    truncate: bool = False,
) -> DecodedAudio:
    data, param = await audio_bytes(settings, data=data, url=url, param=param, url_param=url_param)
    # Decoding is CPU work: keep the gateway's event loop free.
    return await asyncio.to_thread(decode_audio, data, sample_rate=sample_rate, max_seconds=max_seconds,
                                   param=param, truncate=truncate)


async def image_from_request(
    settings: Settings,
    *,
    data: bytes | None = None,
    url: str | None = None,
    param: str = "image",
    url_param: str = "image_url",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    resize_to: int | None = None,
) -> DecodedImage:
    """An uploaded image, or one named by `url` (http(s) behind the SSRF guard, s3://, or a base64 data:
    URL), decoded by content to RGB (runtime.codecs.images). The data: URL's declared type is ignored."""
    if data is None and not url:
        raise InvalidRequest(f"send the image as a `{param}` file or give `{url_param}`", param=param,
                             code="missing_image")
    if data is not None and url:
        raise InvalidRequest(f"give either a `{param}` file or `{url_param}`, not both", param=url_param)
    max_bytes = settings.upload_max_bytes
    if data is None and url.strip().startswith("data:"):
        data = decode_base64(url, max_bytes=max_bytes, param=url_param)
        param = url_param
    elif data is None:
        max_bytes = settings.fetch_max_bytes
        data = await fetch_bytes(url, settings, max_bytes=max_bytes, param=url_param)
        param = url_param
    # Decoding is CPU work: keep the gateway's event loop free.
    return await asyncio.to_thread(decode_image, data, max_bytes=max_bytes, max_pixels=max_pixels,
                                   resize_to=resize_to, param=param)
