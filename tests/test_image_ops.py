"""Image ops: every stored mode decodes to uint8 RGB, corrupt bytes name their record."""

import io

import numpy as np
import pytest
from PIL import Image

from medclip_jax.data import image_ops
from medclip_jax.errors import UserError


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def gradient(height: int = 12, width: int = 16) -> np.ndarray:
    return (np.arange(height * width).reshape(height, width) % 256).astype(np.uint8)


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"),
                                      ("P", "PNG"), ("CMYK", "JPEG"), ("RGB", "JPEG")])
def test_modes_decode_to_rgb(mode, fmt):
    image = Image.fromarray(gradient()).convert(mode)
    out = image_ops.decode_image(encode(image, fmt), "test record")
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3)


def test_grey_is_replicated():
    out = image_ops.decode_image(encode(Image.fromarray(gradient())), "x")
    np.testing.assert_array_equal(out[..., 0], gradient())
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_transparency_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 0
    out = image_ops.decode_image(encode(Image.fromarray(rgba, "RGBA")), "x")
    assert (out == 255).all()


def test_16_bit_scaled_not_clipped():
    raw = np.linspace(0, 4095, 12 * 16).reshape(12, 16).astype(np.uint16)
    data = encode(Image.fromarray(raw))
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    out = image_ops.decode_image(data, "x")
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out[..., 0])) > 100


def test_corrupt_bytes_name_location():
    good = encode(Image.fromarray(gradient()))
    for data in (b"not an image", good[:len(good) // 2]):
        with pytest.raises(UserError, match=r"/data/roco train\[7\]"):
            image_ops.decode_image(data, "/data/roco train[7]")


def test_jpeg_draft_keeps_min_side():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 600, 3), np.uint8))
    out = image_ops.decode_image(encode(big, "JPEG"), "x", min_side=128)
    assert min(out.shape[:2]) >= 128 and out.shape[0] < 800


def test_resize_ops_shapes():
    img = np.random.default_rng(0).integers(0, 255, (30, 50, 3), np.uint8)
    assert image_ops.resize(img, 8).shape == (8, 8, 3)
    assert image_ops.center_crop_resize(img, 8).shape == (8, 8, 3)
    same = np.full((20, 20, 3), 77, np.uint8)
    np.testing.assert_array_equal(image_ops.center_crop_resize(same, 10), same[:10, :10])


def test_center_crop_takes_the_middle():
    img = np.zeros((10, 30, 3), np.uint8)
    img[:, 10:20] = 200
    assert (image_ops.center_crop_resize(img, 10) == 200).all()


def test_random_resized_crop_is_deterministic_per_rng():
    img = np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)
    a = image_ops.random_resized_crop(img, 16, np.random.default_rng(5), scale=(0.3, 1.0))
    b = image_ops.random_resized_crop(img, 16, np.random.default_rng(5), scale=(0.3, 1.0))
    c = image_ops.random_resized_crop(img, 16, np.random.default_rng(6), scale=(0.3, 1.0))
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_crop_box_within_bounds_and_scale():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, right, bottom = image_ops.sample_crop_box(40, 60, rng, (0.5, 1.0),
                                                             (3 / 4, 4 / 3))
        assert 0 <= left < right <= 60 and 0 <= top < bottom <= 40
        assert (right - left) * (bottom - top) >= 0.45 * 40 * 60


def test_random_flip():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    rng = np.random.default_rng(0)
    outs = [image_ops.random_flip(img, rng) for _ in range(50)]
    flipped = sum(np.array_equal(o, img[:, ::-1]) for o in outs)
    assert 5 < flipped < 45
    assert all(np.array_equal(o, img) or np.array_equal(o, img[:, ::-1]) for o in outs)


def test_normalize():
    img = np.array([[[0, 255, 128]]], np.uint8)
    out = image_ops.normalize(img, (0.5, 0.5, 0.5), (0.5, 0.5, 0.25))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [-1.0, 1.0, (128 / 255 - 0.5) / 0.25], atol=1e-6)
    default = image_ops.normalize(img)
    np.testing.assert_allclose(default[0, 0, 0], -0.48145466 / 0.26862954, rtol=1e-6)
