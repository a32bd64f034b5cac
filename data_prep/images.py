"""Image normalisation shared by the data_prep builders (issue 4): any image a publisher ships
becomes 8-bit grey or RGB, no larger than `max_side`, re-encoded; anything unreadable is
rejected with a short reason code the builder counts and lists in its rejects file.

Rules:
* grey stays grey ("L": X-rays are single-channel); 16/32-bit grey is min-max scaled to 8 bits;
  alpha is composited on white; CMYK, palette, YCbCr, ... become RGB (`image_ops.to_rgb`);
* the longer side is downscaled (bicubic, antialiased) to at most `max_side`, aspect kept; a
  JPEG is first decoded at the DCT scale (1/2, 1/4, 1/8) that still covers the target size
  (3x faster on 2048 px figures, `benchmarks/data_prep_throughput.py`);
* a JPEG or PNG that needs no change is kept byte for byte; other JPEG sources are re-encoded
  as JPEG (quality 95), everything else as PNG (lossless, zlib level 4);
* rejected: empty files, bytes PIL cannot identify, truncated or corrupt pixel data, images with
  more than `max_pixels` pixels (decompression bombs), zero-size images.
"""

import dataclasses
import io

from PIL import Image, UnidentifiedImageError

from medclip_jax.data import image_ops

GREY_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "1")
DEFAULT_MAX_PIXELS = 400_000_000
PNG_COMPRESS_LEVEL = 4


@dataclasses.dataclass(frozen=True)
class Rejected(Exception):
    """An image the builders skip: `reason` is a short code, `detail` says what was wrong."""
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class ConvertedImage:
    data: bytes
    format: str  # "jpeg" | "png"
    width: int
    height: int
    mode: str  # "L" | "RGB"


def open_image(data: bytes, max_pixels: int, max_side: int | None = None) -> Image.Image:
    """Decoded PIL image, or `Rejected` naming why not.

    With `max_side`, a JPEG that will be downscaled is decoded at the smallest DCT scale (1/2,
    1/4, 1/8) that still covers the target size: several times faster for large scans and
    figures. The size before that is kept in ``image.info["source_size"]``."""
    if not data:
        raise Rejected("empty_file", "the file has no bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise Rejected("unreadable", "not an image format PIL can identify") from None
    except Image.DecompressionBombError as e:
        raise Rejected("too_many_pixels", str(e)) from None
    except (OSError, SyntaxError, ValueError) as e:  # a header cut short or malformed
        raise Rejected("corrupt", f"{type(e).__name__}: {e}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise Rejected("empty_image", f"size {width}x{height}")
    if width * height > max_pixels:
        raise Rejected("too_many_pixels", f"{width}x{height} exceeds {max_pixels} pixels")
    image.info["source_size"] = (width, height)
    target = fitted_size(width, height, max_side) if max_side else (width, height)
    try:
        if image.format == "JPEG" and target != (width, height):
            image.draft(image.mode, target)
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise Rejected("corrupt", f"{type(e).__name__}: {e}") from None
    return image


def normalise_mode(image: Image.Image) -> Image.Image:
    """8-bit "L" for grey sources, "RGB" for everything else."""
    if image.mode == "L":
        return image
    if image.mode == "1":
        return image.convert("L")
    if image.mode in GREY_MODES:
        return image_ops.high_bit_depth_to_l(image)
    return image_ops.to_rgb(image)


def fitted_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the longer side at most `max_side`, aspect ratio kept."""
    if max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit_within(image: Image.Image, max_side: int,
               source_size: tuple[int, int] | None = None) -> Image.Image:
    """Longer side at most `max_side` (aspect ratio kept; never upscaled). The target size is
    computed from `source_size` (the size before a JPEG draft decode) when given."""
    size = fitted_size(*(source_size or image.size), max_side)
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def convert_image(data: bytes, max_side: int = 512,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> ConvertedImage:
    """Normalised, re-encoded image bytes; raises `Rejected` for what cannot be converted."""
    if max_side <= 0:
        raise ValueError(f"max_side must be positive, got {max_side}")
    image = open_image(data, max_pixels, max_side)
    source_format, source_size = image.format, image.info["source_size"]
    converted = fit_within(normalise_mode(image), max_side, source_size)
    unchanged = converted is image and image.size == source_size
    if source_format == "JPEG":
        if unchanged:
            return ConvertedImage(data, "jpeg", *converted.size, converted.mode)
        out = io.BytesIO()
        converted.save(out, format="JPEG", quality=95)
        return ConvertedImage(out.getvalue(), "jpeg", *converted.size, converted.mode)
    if source_format == "PNG" and unchanged:
        return ConvertedImage(data, "png", *converted.size, converted.mode)
    return ConvertedImage(encode_png(converted), "png", *converted.size, converted.mode)


def encode_png(image: Image.Image) -> bytes:
    """Lossless. zlib level 4: the size of the default level 6 at 1.7x its speed (measured
    on 512 px RGB; encoding dominated the conversion of TIFF microscopy photos)."""
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return out.getvalue()
