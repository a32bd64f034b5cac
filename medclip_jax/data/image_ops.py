"""Host-side image ops (numpy + PIL): decode any stored image to RGB, crop, resize, normalise.

Images are `uint8 [H, W, 3]` arrays until `normalize`, which returns float32. Resizing is
bicubic with PIL's antialiasing, so downscaling large scans does not alias.

* `resize(img, size)`: direct resize to `size x size`; the aspect ratio is NOT kept.
* `center_crop_resize(img, size)`: the shorter side to `size`, then the central square (CLIP's
  evaluation transform; keeps the aspect ratio, may cut the long side's borders).
* `random_resized_crop(...)`: Inception-style crop (area fraction in `scale`, aspect ratio in
  `ratio`, log-uniform), resized to `size x size`.

SimCLR-style extra views (`simclr_view`): the recipe SLIP (Mu et al. 2022, arXiv 2112.12750)
takes from MoCo v3 (Chen, Xie & He 2021, arXiv 2104.02057): random resized crop -> colour
jitter (with probability) -> random grayscale -> Gaussian blur (with probability) ->
horizontal flip. The photometric ops are pure functions of a uint8 image and a factor, each
back to uint8 (rounded to nearest; torchvision's PIL path also goes through uint8 between ops,
but truncates, so results may differ by one level):

* brightness f: ``x * f``;
* contrast f: ``m + f * (x - m)``, m = the mean grey level (luma) of the whole image;
* saturation f: ``g + f * (x - g)``, g = the pixel's own luma;
* hue h (fraction of a turn, |h| <= 0.5): the HSV hue rotated by h;
* grayscale: ITU-R 601-2 luma ``0.299 R + 0.587 G + 0.114 B`` (PIL's "L"), in all 3 channels;
* blur: PIL's ``GaussianBlur(radius=sigma)``, sigma in output pixels (SLIP: at 224 px).
"""

import dataclasses
import io
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from medclip_jax.errors import BadRecordError, UserError

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
        raise BadRecordError(f"cannot decode the image of {where}: {reason}", where, reason
                             ) from e


def decoded_size(data: bytes, min_side: int | None) -> tuple[int, int]:
    """(width, height) that `decode_pil(data, ..., min_side)` yields, from the header alone."""
    image = Image.open(io.BytesIO(data))
    if min_side is not None and image.format == "JPEG":
        image.draft("RGB", (min_side, min_side))
    return image.size


def decode_pil_shared(data: bytes, where: str, min_sides: Sequence[int | None]
                      ) -> list[Image.Image]:
    """`decode_pil` for each min_side, decoding once per distinct JPEG draft size.

    Each result equals `decode_pil(data, where, min_side)` exactly, so adding consumers that
    need a larger decode (extra views with small crops) never changes the others' pixels.
    """
    first = decode_pil(data, where, min_sides[0])
    decoded = {first.size: first}
    out = [first]
    for min_side in min_sides[1:]:
        size = decoded_size(data, min_side)
        if size not in decoded:
            decoded[size] = decode_pil(data, where, min_side)
        out.append(decoded[size])
    return out


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


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float pixels -> uint8, rounded to nearest and clipped to [0, 255]."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def luma(img: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma [..., H, W] (float) of uint8 RGB, PIL's "L" before rounding."""
    rgb = np.asarray(img, np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def to_grayscale(img: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 RGB with every channel the pixel's rounded luma."""
    grey = to_uint8(luma(img))
    return np.repeat(grey[..., None], 3, axis=-1)


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with black: ``x * factor`` (0 = black, 1 = unchanged)."""
    return to_uint8(np.asarray(img, np.float32) * factor)


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the image's mean grey level (0 = flat grey, 1 = unchanged)."""
    mean = float(luma(img).mean())
    return to_uint8(mean + factor * (np.asarray(img, np.float32) - mean))


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with each pixel's own luma (0 = grey, 1 = unchanged)."""
    grey = luma(img)[..., None]
    return to_uint8(grey + factor * (np.asarray(img, np.float32) - grey))


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn; 0 for greys)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    high, low = rgb.max(-1), rgb.min(-1)
    delta = high - low
    chroma = np.where(delta > 0, delta, 1.0)
    saturation = np.where(high > 0, delta / np.where(high > 0, high, 1.0), 0.0)
    hue = np.where(r == high, (g - b) / chroma,
                   np.where(g == high, 2.0 + (b - r) / chroma, 4.0 + (r - g) / chroma))
    hue = np.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
    return np.stack([hue, saturation, high], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_hsv`."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6.0)
    frac = h * 6.0 - sector
    sector = sector.astype(np.int64) % 6
    p, q, t = v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))
    r = np.choose(sector, [v, q, p, p, t, v])
    g = np.choose(sector, [t, v, v, q, p, p])
    b = np.choose(sector, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1)


def adjust_hue(img: np.ndarray, shift: float) -> np.ndarray:
    """Rotates the HSV hue by `shift` turns (-0.5..0.5); saturation and value are kept."""
    hsv = rgb_to_hsv(np.asarray(img, np.float64) / 255.0)
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    return to_uint8(hsv_to_rgb(hsv) * 255.0)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """PIL's Gaussian blur with standard deviation `sigma` pixels (MoCo v3 / SLIP's blur)."""
    return np.asarray(as_pil(img).filter(ImageFilter.GaussianBlur(radius=sigma)))


def color_jitter(img: np.ndarray, strengths: Sequence[float], rng: np.random.Generator
                 ) -> np.ndarray:
    """torchvision's ColorJitter(brightness, contrast, saturation, hue).

    The four ops run in a random order; the factors are uniform in ``[max(0, 1 - s), 1 + s]``
    (hue: ``[-h, h]``); an op of strength 0 is skipped, as torchvision skips it.
    """
    brightness, contrast, saturation, hue = (float(s) for s in strengths)
    order = rng.permutation(4)
    factors = [rng.uniform(max(0.0, 1 - s), 1 + s) for s in (brightness, contrast, saturation)]
    factors.append(rng.uniform(-hue, hue))
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    for i in order:
        if (brightness, contrast, saturation, hue)[i] > 0:
            img = ops[i](img, factors[i])
    return img


@dataclasses.dataclass(frozen=True)
class ViewRecipe:
    """One SimCLR-style view (defaults: the MoCo v3 recipe that SLIP uses)."""

    random_crop_scale: tuple[float, float] = (0.08, 1.0)
    random_crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    color_jitter_prob: float = 0.8
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip: bool = True


def simclr_view(image: np.ndarray | Image.Image, size: int, rng: np.random.Generator,
                recipe: ViewRecipe = ViewRecipe()) -> np.ndarray:
    """crop -> jitter (p) -> grayscale (p) -> blur (p, sigma uniform) -> flip (1/2), as uint8."""
    if tuple(recipe.random_crop_scale) == (1.0, 1.0):
        pixels = center_crop_resize(image, size)
    else:
        pixels = random_resized_crop(image, size, rng, recipe.random_crop_scale,
                                     recipe.random_crop_ratio)
    if rng.random() < recipe.color_jitter_prob:
        pixels = color_jitter(pixels, recipe.color_jitter, rng)
    if rng.random() < recipe.grayscale_prob:
        pixels = to_grayscale(pixels)
    if rng.random() < recipe.blur_prob:
        pixels = gaussian_blur(pixels, rng.uniform(*recipe.blur_sigma))
    if recipe.flip:
        pixels = random_flip(pixels, rng)
    return np.ascontiguousarray(pixels)
