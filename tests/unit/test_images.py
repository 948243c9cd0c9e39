"""Image decoding by content: formats, damage, decompression bombs (refused from the header), resize,
modes (palette/alpha/CMYK/16-bit), EXIF orientation; and the request helper (upload / data: URL)."""

import asyncio
import base64
import io
import struct
import time
import tracemalloc
import warnings
import zlib

import pytest
from PIL import Image, ImageFile, features

from services.runtime.core.errors import InvalidRequest, PayloadTooLarge, UnsupportedMedia
from services.runtime.codecs.images import decode_image, fit_to_budget
from services.runtime.edge.media import image_from_request
from services.runtime.core.settings import Settings

MB = 1 << 20


def decode(data, **kw):
    kw.setdefault("max_bytes", 10 * MB)
    kw.setdefault("max_pixels", 40_000_000)
    kw.setdefault("resize_to", None)
    kw.setdefault("param", "image")
    return decode_image(data, **kw)


def encode(im, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w=64, h=48, mode="RGB") -> Image.Image:
    import numpy as np

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert(mode)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def crafted_png(w: int, h: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR declares w x h (8-bit gray) followed by `idat` (tiny: a lying header)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64)) \
        + png_chunk(b"IEND", b"")


def one_colour_png(w: int, h: int) -> bytes:
    """A REAL, fully valid 1-bit w x h PNG, written row by row so it is never in memory at full size."""
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\0" * (1 + (w + 7) // 8)  # filter byte + packed bits
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# --- formats, by content ------------------------------------------------------------------------------------

FORMATS = [("PNG", "png"), ("JPEG", "jpeg"), ("BMP", "bmp"), ("GIF", "gif")]
if features.check("webp"):
    FORMATS.append(("WEBP", "webp"))


@pytest.mark.parametrize("pil_fmt,name", FORMATS)
def test_each_format_is_recognised_by_content(pil_fmt, name):
    # decode_image takes bytes only: no file name or declared type can influence the decision.
    out = decode(encode(noise(), pil_fmt))
    assert out.format == name
    assert out.image.mode == "RGB" and out.image.size == (64, 48) == out.original_size
    assert out.resized is False


@pytest.mark.parametrize("data", [
    b"hello, this is text renamed to diagram.png\n" * 20,
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>',
    b"%PDF-1.4\n%...",
])
def test_non_images_are_415(data):
    with pytest.raises(UnsupportedMedia) as e:
        decode(data)
    assert e.value.status == 415 and e.value.param == "image"


def test_a_real_image_in_a_format_we_do_not_take_is_415():
    with pytest.raises(UnsupportedMedia):
        decode(encode(noise(), "TIFF"))


def test_empty_is_400():
    with pytest.raises(InvalidRequest) as e:
        decode(b"")
    assert e.value.status == 400 and e.value.code == "empty_image"


def test_over_max_bytes_is_413_before_anything_else():
    with pytest.raises(PayloadTooLarge) as e:
        decode(b"x" * 1001, max_bytes=1000)
    assert e.value.status == 413


@pytest.mark.parametrize("pil_fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_image_is_400_corrupt(pil_fmt, keep):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the process default this relies on
    data = encode(noise(256, 256), pil_fmt)
    with pytest.raises(InvalidRequest) as e:
        decode(data[: int(len(data) * keep)])
    assert e.value.status == 400 and e.value.code == "corrupt_image"


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", b"\xff\xd8\xff\xe0\0\x10JF"])
def test_just_a_signature_is_400_corrupt_not_415(data):
    with pytest.raises(InvalidRequest) as e:
        decode(data)
    assert e.value.code == "corrupt_image"


def test_garbage_inside_the_pixel_data_is_400():
    data = bytearray(encode(noise(128, 128), "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 10: start + 400] = b"\xff" * 390  # broken deflate stream (CRC mismatch too)
    with pytest.raises(InvalidRequest) as e:
        decode(bytes(data))
    assert e.value.code == "corrupt_image"


# --- decompression bombs ------------------------------------------------------------------------------------

@pytest.fixture
def pixel_loads(monkeypatch):
    """Counts pixel decodes: a bomb must be refused before any."""
    calls = []
    orig = ImageFile.ImageFile.load

    def spy(self):
        calls.append(self.size)
        return orig(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def test_the_spy_sees_a_normal_decode(pixel_loads):
    decode(encode(noise(), "PNG"))
    assert pixel_loads and set(pixel_loads) == {(64, 48)}


def test_lying_header_50000x50000_is_413_before_decoding(pixel_loads):
    data = crafted_png(50_000, 50_000)
    assert len(data) < 200
    with pytest.raises(PayloadTooLarge) as e:
        decode(data)
    assert e.value.code == "image_too_large" and e.value.status == 413
    assert pixel_loads == []


def test_our_cap_holds_when_pillows_global_guard_is_off(monkeypatch, pixel_loads):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # some other code disabled Pillow's guard
    with pytest.raises(PayloadTooLarge) as e:
        decode(crafted_png(50_000, 50_000))
    assert "2500.0 MP" in e.value.message
    assert pixel_loads == []


def test_our_cap_is_below_pillows(pixel_loads):
    # 7000 x 7000 = 49 MP: Pillow (89 MP) would decode it; our 40 MP cap refuses from the header.
    with pytest.raises(PayloadTooLarge) as e:
        decode(crafted_png(7000, 7000))
    assert e.value.code == "image_too_large"
    assert pixel_loads == []
    # ...and the cap is the caller's: a smaller one refuses a real 64x48 image.
    with pytest.raises(PayloadTooLarge):
        decode(encode(noise(), "PNG"), max_pixels=1000)


@pytest.mark.parametrize("filter_action", ["ignore", "error"])
def test_real_highly_compressible_144mp_png_is_refused_cheaply(pixel_loads, filter_action):
    data = one_colour_png(12_000, 12_000)  # valid and decodable: 144 MP of one colour
    assert len(data) < 100_000
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # 144 MP is past Pillow's 89 MP warning: warned or raised, the answer is the same 413.
            warnings.simplefilter(filter_action, Image.DecompressionBombWarning)
            with pytest.raises(PayloadTooLarge) as e:
                decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 0.5
    assert peak < 5 * MB  # Python-side; the pixel buffer (C side) is covered by `pixel_loads`
    assert e.value.code == "image_too_large"
    assert pixel_loads == []


# --- resize ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("w,h,budget", [(4000, 3000, 1280 * 28 * 28), (300, 5000, 50_000), (10_000, 3, 2000),
                                        (1, 1, 1), (999, 1001, 999 * 1001 - 1)])
def test_fit_to_budget_keeps_aspect_and_budget(w, h, budget):
    nw, nh = fit_to_budget(w, h, budget)
    assert nw * nh <= budget and nw >= 1 and nh >= 1
    if min(nw, nh) > 20:
        assert abs(nw / nh - w / h) / (w / h) < 0.02
        assert nw * nh > budget * 0.95  # not needlessly small


@pytest.mark.parametrize("pil_fmt", ["PNG", "JPEG"])  # JPEG also scales in the decoder (draft)
def test_resize_to_budget(pil_fmt):
    budget = 64 * 64
    out = decode(encode(noise(800, 200), pil_fmt), resize_to=budget)
    w, h = out.image.size
    assert w * h <= budget and abs(w / h - 4) < 0.1
    assert out.resized is True and out.original_size == (800, 200)
    assert out.image.mode == "RGB"


def test_image_within_budget_is_untouched():
    out = decode(encode(noise(), "PNG"), resize_to=10_000)
    assert out.image.size == (64, 48) and out.resized is False


# --- modes, frames, orientation ---------------------------------------------------------------------------

def test_gif_first_frame():
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = decode(data)
    assert out.format == "gif"
    r, g, b = out.image.getpixel((5, 5))
    assert r > 200 and g < 50 and b < 50


def test_exif_orientation_is_applied():
    # Stored 40x20: left half red, right half blue; orientation 6 = display rotated 90 degrees clockwise,
    # so the viewer sees 20x40 with red on top.
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode(encode(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.image.size == (20, 40) == out.original_size
    top, bottom = out.image.getpixel((10, 5)), out.image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_exif_orientation_with_resize_reports_displayed_original_size():
    im = Image.new("RGB", (400, 200), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 8
    out = decode(encode(im, "JPEG", exif=exif.tobytes()), resize_to=50 * 25)
    assert out.original_size == (200, 400)
    w, h = out.image.size
    assert h > w and w * h <= 50 * 25


def test_cmyk_jpeg_to_rgb():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK
    out = decode(data)
    assert out.image.mode == "RGB"
    r, g, b = out.image.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_transparency_is_flattened_onto_white():
    # A diagram: black line on a transparent background. Dropping alpha would make it black on black.
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (0, 9, 20, 11))
    out = decode(encode(rgba, "PNG"))
    assert out.image.getpixel((2, 2)) == (255, 255, 255)
    assert out.image.getpixel((2, 10)) == (0, 0, 0)
    # The same through a palette with a transparent index, and grayscale + alpha.
    for im in (rgba.convert("P"), rgba.convert("LA")):
        if im.mode == "P":
            im.info["transparency"] = im.getpixel((2, 2))
        out = decode(encode(im, "PNG"))
        assert out.image.getpixel((2, 2)) == (255, 255, 255) and out.image.getpixel((2, 10)) == (0, 0, 0)


def test_16_bit_grayscale_is_scaled_not_clipped():
    im = Image.new("I;16", (8, 8), 32768)
    im.paste(65535, (0, 0, 4, 8))
    out = decode(encode(im, "PNG"))
    assert out.image.getpixel((1, 1)) == (255, 255, 255)
    assert 120 <= out.image.getpixel((6, 1))[0] <= 135


def test_palette_and_1bit_images():
    for im in (noise().convert("P"), noise().convert("1"), noise().convert("L")):
        assert decode(encode(im, "PNG")).image.mode == "RGB"


# --- the request helper ---------------------------------------------------------------------------------

def test_image_from_request_upload_and_data_url():
    settings = Settings()
    png = encode(noise(), "PNG")
    out = asyncio.run(image_from_request(settings, data=png))
    assert out.format == "png"
    # The data: URL's declared type is ignored: content decides.
    url = "data:image/jpeg;base64," + base64.b64encode(png).decode()
    out = asyncio.run(image_from_request(settings, url=url, resize_to=32 * 24))
    assert out.format == "png" and out.image.size[0] * out.image.size[1] <= 32 * 24
    with pytest.raises(UnsupportedMedia) as e:
        asyncio.run(image_from_request(settings, url="data:image/png;base64," + base64.b64encode(b"text").decode()))
    assert e.value.param == "image_url"


def test_image_from_request_needs_exactly_one_source():
    settings = Settings()
    with pytest.raises(InvalidRequest) as e:
        asyncio.run(image_from_request(settings))
    assert e.value.code == "missing_image"
    with pytest.raises(InvalidRequest):
        asyncio.run(image_from_request(settings, data=b"x", url="https://example.com/a.png"))
