"""Decoding a client's image (by content, never by name) to one RGB PIL image, bounded in memory.

Accepted: png, jpeg, webp, bmp, gif (first frame). Pillow's own detection decides the format, restricted
to those plugins, so a text file named .png or a TIFF is a 415 and a file's name never matters.

Decompression bombs (a few KB declaring gigapixels) are refused from the header alone: `Image.open` is
lazy, so the declared size is checked against `max_pixels` before a single pixel is decoded. Pillow's own
guard (global `Image.MAX_IMAGE_PIXELS`) is not relied on and not changed: its error and its warning (when
the warnings filter turns it into an exception) are mapped to the same 413, and our cap applies whatever
the global says (even None). For JPEG with a `resize_to` budget, the decoder scales by 1/2..1/8 while
decoding (`draft`), so a big photo never exists at full size in memory.

The VL and diagram engines hand the processor each service's pixel budget on every call
(`processor_pixel_kwargs`), so the processor itself resizes; without `resize_to` the image goes on as is;
with it, the gateway shrinks it once to the same budget (less to pickle to the model process).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from services.runtime.core.errors import InvalidRequest, PayloadTooLarge, QwenError, UnsupportedMedia

# 40 MP: a 8K x 5K photo fits; an RGB(A) image this size is 120-160 MB decoded, the most one request may
# cost. Pillow's own limit (89 MP warn / 179 MP error) is higher, so our cap is the one that decides.
DEFAULT_MAX_PIXELS = 40_000_000

# Pillow format name -> the name we report (MPO: a camera JPEG with extra frames; the first is the photo).
_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp", "BMP": "bmp", "GIF": "gif"}
_OPENERS = ["PNG", "JPEG", "WEBP", "BMP", "GIF"]  # Pillow plugins tried (JPEG's opener also yields MPO)
_ACCEPTED = "png, jpeg, webp, bmp, gif"
# Leading bytes of the accepted formats: an unidentifiable file that starts like one of them is a damaged
# image (400), anything else is not an image we take (415).
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


@dataclass
class DecodedImage:
    image: "PIL.Image.Image"  # noqa: F821 - mode RGB, EXIF orientation applied, maybe downscaled
    original_size: tuple[int, int]  # (w, h) as displayed (after EXIF orientation), before any resize
    format: str  # png | jpeg | webp | bmp | gif
    resized: bool

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def fit_to_budget(w: int, h: int, budget: int) -> tuple[int, int]:
    """The largest (w', h') with w'*h' <= budget and the same aspect ratio (to rounding); as is when it fits."""
    if w * h <= budget:
        return w, h
    scale = math.sqrt(budget / (w * h))
    nw, nh = max(1, int(w * scale)), max(1, int(h * scale))
    while nw * nh > budget:  # only for extreme ratios where max(1, ...) rounded a side up
        if nw >= nh:
            nw -= 1
        else:
            nh -= 1
    return nw, nh


def processor_pixel_kwargs(image_processor, budget: int | None) -> dict[str, int]:
    """`min_pixels`/`max_pixels` for every call of a Qwen-VL processor (Qwen2VLImageProcessor and its fast
    twin: Qwen2.5-VL and Qwen3-VL both use them), capping each image at `budget` pixels.

    The checkpoints allow 16384 visual tokens per image (Qwen2.5-VL: max_pixels 12845056 = 16384 x 28x28 px;
    Qwen3-VL: size.longest_edge 16777216 = 16384 x 32x32 px), so a 12 MP photo would cost ~15000 tokens
    of prompt. The processor then resizes (aspect kept, sides rounded down to whole tokens), so an image
    gives at most budget / px-per-token tokens. Both values are passed: the fast processor reads a call's
    min/max_pixels only as a pair. The checkpoint's own limits still bound the result (a budget above them,
    or 0/None, changes nothing); min_pixels is the checkpoint's, lowered to the budget if above it.
    """
    size = image_processor.size
    lo, hi = int(size["shortest_edge"]), int(size["longest_edge"])
    if budget:
        hi = min(hi, int(budget))
    return {"min_pixels": min(lo, hi), "max_pixels": hi}


def _is_accepted_magic(data: bytes) -> bool:
    return data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _orientation(im) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # malformed EXIF is metadata damage, not a reason to refuse the picture
        return 1


def _to_rgb(im):
    """RGB for any mode our formats produce. Transparency is flattened onto WHITE: diagrams are often black
    lines on a transparent background, which dropping alpha would turn into black on black."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode.startswith("I"):  # 16-bit grayscale PNG: Pillow's convert would clip 0..65535 to 0..255
        import numpy as np

        arr = np.asarray(im)
        if arr.size and int(arr.max()) > 255:
            arr = np.clip(arr, 0, 65535) >> 8
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if (im.mode == "P" and "transparency" in im.info) or im.mode in ("PA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        flat = Image.new("RGB", im.size, (255, 255, 255))
        flat.paste(im, mask=im.getchannel("A"))
        return flat
    return im.convert("RGB")  # L, 1, P, CMYK (incl. Adobe-inverted, which the JPEG decoder undoes), YCbCr...


def decode_image(
    data: bytes, *, max_bytes: int, max_pixels: int = DEFAULT_MAX_PIXELS, resize_to: int | None = None,
    param: str = "image",
) -> DecodedImage:
    """One RGB image from `data`. 415 not an accepted format; 400 empty/corrupt; 413 over `max_bytes` or
    declaring more than `max_pixels` (always refused, `resize_to` or not: decoding it is the cost);
    with `resize_to` (a pixel budget such as 1280*28*28) downscaled to fit it, aspect kept."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise InvalidRequest(f"{param} is empty", param=param, code="empty_image")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{param} exceeds the {max_bytes}-byte limit", param=param)

    def refuse_size(w: int, h: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"{param}: image is {w}x{h} ({w * h / 1e6:.1f} MP); the limit is "
                               f"{max_pixels / 1e6:g} MP", param=param, code="image_too_large")

    try:
        # No `with`: closing would invalidate the image we return; a BytesIO holds no OS resource.
        im = Image.open(io.BytesIO(data), formats=_OPENERS)
        fmt = _FORMATS.get(im.format or "", "")
        if not fmt:  # defensive: a plugin we did not ask for
            raise UnsupportedMedia(f"{param} is not an accepted image ({_ACCEPTED})", param=param)
        w0, h0 = im.size  # from the header; nothing decoded yet
        if w0 <= 0 or h0 <= 0:
            raise InvalidRequest(f"{param}: image declares size {w0}x{h0}", param=param, code="corrupt_image")
        if w0 * h0 > max_pixels:
            raise refuse_size(w0, h0)
        resized = False
        if resize_to is not None and fmt == "jpeg":
            # The budget is an area, so the target does not depend on orientation: scale in the decoder.
            target = fit_to_budget(w0, h0, resize_to)
            if target != (w0, h0):
                im.draft(None, target)
                resized = im.size != (w0, h0)
        im.load()  # the one place pixels are decoded (GIF/WebP: the first frame)
        orientation = _orientation(im)
        if orientation != 1:
            try:
                ImageOps.exif_transpose(im, in_place=True)
            except Exception:
                pass  # an unusable orientation tag: show the pixels as stored
        rgb = _to_rgb(im)
    except QwenError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's guard fired first (its global limit is below ours, or warnings are errors): same answer.
        raise PayloadTooLarge(f"{param}: image dimensions exceed the {max_pixels / 1e6:g} MP limit",
                              param=param, code="image_too_large") from None
    except UnidentifiedImageError:
        if _is_accepted_magic(data):
            raise InvalidRequest(f"{param}: corrupt or truncated image", param=param, code="corrupt_image") from None
        raise UnsupportedMedia(f"{param} is not an accepted image ({_ACCEPTED}); the format is decided by "
                               "content, not by file name", param=param) from None
    except MemoryError:
        raise
    except Exception as exc:
        # Pillow's decoders raise a zoo of types on damaged input (OSError "truncated", SyntaxError,
        # ValueError, struct.error, EOFError, IndexError...): on client bytes every one is a client error.
        raise InvalidRequest(f"{param}: corrupt or truncated image ({type(exc).__name__}: {exc})"[:300],
                             param=param, code="corrupt_image") from None

    original = (h0, w0) if orientation in _SWAPS_AXES else (w0, h0)
    if resize_to is not None:
        target = fit_to_budget(*rgb.size, resize_to)
        if target != rgb.size:
            # LANCZOS keeps thin lines and small text legible; reducing_gap first box-reduces by an integer
            # factor (fast, near-identical result) when shrinking a lot.
            rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
            resized = True
    return DecodedImage(rgb, original, fmt, resized)


def to_wire(image) -> str:
    """A decoded image as base64 PNG for the hop to a model service: lossless, and JSON-safe when the
    service is reached by URL (QWEN_<SVC>_URL)."""
    import base64

    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode()


def from_wire(text: str):
    import base64

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")
