"""Host-side image ops (numpy + PIL): decode any stored image to RGB, crop, resize, normalise.

Images are `uint8 [H, W, 3]` arrays until `normalize`, which returns float32. Resizing is
bicubic with PIL's antialiasing, so downscaling large scans does not alias.

* `resize(img, size)`: direct resize to `size x size`; the aspect ratio is NOT kept.
* `center_crop_resize(img, size)`: the shorter side to `size`, then the central square (CLIP's
  evaluation transform; keeps the aspect ratio, may cut the long side's borders).
* `random_resized_crop(...)`: Inception-style crop (area fraction in `scale`, aspect ratio in
  `ratio`, log-uniform), resized to `size x size`.
"""

import io
import math
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from medclip_jax.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Box = tuple[int, int, int, int]  # (left, top, right, bottom) as PIL wants it


def high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit grey images (X-rays) min-max scaled to 8 bits, not clipped at 255."""
    array = np.asarray(image, dtype=np.float64)
    lo, hi = float(array.min()), float(array.max())
    scaled = (array - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(array)
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def composite_on_white(image: Image.Image) -> Image.Image:
    """Transparent pixels become white (figures from papers have transparent backgrounds)."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: grey replicated, alpha composited on white, CMYK converted."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return high_bit_depth_to_l(image).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
            image.mode == "P" and "transparency" in image.info):
        return composite_on_white(image)
    return image.convert("RGB")


def decode_pil(data: bytes, where: str, min_side: int | None = None) -> Image.Image:
    """Encoded bytes -> RGB PIL image; JPEGs are DCT-downscaled while both sides >= min_side."""
    try:
        image = Image.open(io.BytesIO(data))
        if min_side is not None and image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))
        image.load()
        return to_rgb(image)
    except UserError:
        raise
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBomb...
        reason = ("not a recognised image format" if isinstance(e, UnidentifiedImageError)
                  else f"{type(e).__name__}: {e}")
        raise UserError(f"cannot decode the image of {where}: {reason}") from e


def decode_image(data: bytes, where: str, min_side: int | None = None) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, 3]; a corrupt image raises UserError naming `where`."""
    return np.asarray(decode_pil(data, where, min_side))


def as_pil(img: np.ndarray | Image.Image) -> Image.Image:
    return img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, np.uint8))


def resize_box(img: np.ndarray | Image.Image, box: Box, size: int) -> np.ndarray:
    """Crops `box` and resizes it to `size x size` in one antialiased bicubic pass."""
    out = as_pil(img).resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(out)


def image_hw(img: np.ndarray | Image.Image) -> tuple[int, int]:
    if isinstance(img, Image.Image):
        return img.height, img.width
    return img.shape[0], img.shape[1]


def resize(img: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """Direct resize to `size x size` (aspect ratio not kept)."""
    height, width = image_hw(img)
    return resize_box(img, (0, 0, width, height), size)


def center_square(height: int, width: int) -> Box:
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return left, top, left + side, top + side


def center_crop_resize(img: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """Shorter side to `size`, then the central square (aspect ratio kept)."""
    return resize_box(img, center_square(*image_hw(img)), size)


def sample_crop_box(height: int, width: int, rng: np.random.Generator,
                    scale: Sequence[float], ratio: Sequence[float]) -> Box:
    """Inception-style crop box; after 10 misses, the central crop with the ratio clamped."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u_area, u_ratio, u_top, u_left = rng.random(4)  # one draw per attempt: cheaper
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def random_resized_crop(img: np.ndarray | Image.Image, size: int, rng: np.random.Generator,
                        scale: Sequence[float] = (0.08, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """A random crop (area fraction in `scale`, aspect in `ratio`) resized to `size x size`."""
    height, width = image_hw(img)
    return resize_box(img, sample_crop_box(height, width, rng, scale, ratio), size)


def random_flip(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Left-right flip with probability 1/2 (always draws once, so rng streams stay aligned)."""
    return img[:, ::-1] if rng.random() < 0.5 else img


def normalize(img: np.ndarray, mean: Sequence[float] = CLIP_MEAN,
              std: Sequence[float] = CLIP_STD) -> np.ndarray:
    """uint8 [..., 3] -> float32 (x / 255 - mean) / std per channel (in place after one cast)."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    out = np.asarray(img).astype(np.float32)
    out *= 1.0 / (255.0 * std)
    out -= mean / std
    return out
