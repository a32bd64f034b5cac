"""data_prep image normalisation: every colour mode and size becomes 8-bit L/RGB within the size
limit; broken files are rejected with a reason, never silently dropped or passed through."""

import io

import numpy as np
import pytest
from PIL import Image

from data_prep.images import Rejected, convert_image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def gradient(width: int = 40, height: int = 30) -> np.ndarray:
    return (np.arange(width)[None, :] * 255 // max(width - 1, 1)
            + np.zeros((height, 1), np.int64)).astype(np.uint8)


def test_grey_png_stays_grey_and_lossless():
    pixels = gradient()
    result = convert_image(encode(Image.fromarray(pixels, "L"), "PNG"), max_side=64)
    assert (result.format, result.mode, result.width, result.height) == ("png", "L", 40, 30)
    np.testing.assert_array_equal(np.asarray(decode(result.data)), pixels)


def test_16_bit_grey_is_scaled_to_the_full_8_bit_range():
    pixels = (gradient().astype(np.uint16) * 16 + 1000)  # 1000 .. 5080: 12-bit X-ray values
    result = convert_image(encode(Image.fromarray(pixels), "PNG"), max_side=64)
    out = np.asarray(decode(result.data))
    assert result.mode == "L" and out.min() == 0 and out.max() == 255
    expected = np.round((pixels - 1000.0) * 255.0 / (pixels.max() - 1000.0))
    np.testing.assert_array_equal(out, expected.astype(np.uint8))


def test_rgba_is_composited_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # top half opaque red-ish, bottom half fully transparent
    result = convert_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), max_side=64)
    out = np.asarray(decode(result.data))
    assert result.mode == "RGB"
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[9, 9], [255, 255, 255])


@pytest.mark.parametrize("mode", ["P", "CMYK", "YCbCr"])
def test_other_colour_modes_become_rgb(mode):
    rgb = Image.fromarray(np.stack([gradient()] * 3, axis=-1), "RGB")
    image = rgb.convert(mode)
    fmt = "JPEG" if mode in ("CMYK", "YCbCr") else "PNG"
    result = convert_image(encode(image, fmt), max_side=64)
    assert result.mode == "RGB"
    assert decode(result.data).mode == "RGB"


def test_large_images_are_downscaled_keeping_the_aspect_ratio():
    image = Image.fromarray(np.stack([gradient(2000, 500)] * 3, axis=-1), "RGB")
    result = convert_image(encode(image, "JPEG", quality=90), max_side=512)
    assert (result.format, result.width, result.height) == ("jpeg", 512, 128)
    assert decode(result.data).size == (512, 128)


def test_an_unchanged_jpeg_is_kept_byte_for_byte():
    data = encode(Image.fromarray(gradient(), "L"), "JPEG", quality=80)
    result = convert_image(data, max_side=512)
    assert result.data == data and result.mode == "L"


@pytest.mark.parametrize("data,reason", [
    (b"", "empty_file"),
    (b"this is a caption, not an image", "unreadable"),
])
def test_unreadable_files_are_rejected_with_a_reason(data, reason):
    with pytest.raises(Rejected) as info:
        convert_image(data)
    assert info.value.reason == reason


def test_truncated_files_are_rejected_as_corrupt():
    data = encode(Image.fromarray(np.stack([gradient(200, 200)] * 3, axis=-1), "RGB"), "PNG")
    with pytest.raises(Rejected) as info:
        convert_image(data[:len(data) // 2])
    assert info.value.reason == "corrupt"


def test_decompression_bombs_are_rejected_before_decoding():
    data = encode(Image.new("L", (300, 300)), "PNG")
    with pytest.raises(Rejected) as info:
        convert_image(data, max_pixels=300 * 299)
    assert info.value.reason == "too_many_pixels"


def test_large_jpeg_draft_decode_matches_a_full_decode_and_resize():
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8))
    source = coarse.resize((1700, 1300), Image.Resampling.BILINEAR)  # smooth, like a photo
    data = encode(source, "JPEG", quality=95)
    result = convert_image(data, max_side=200)
    assert (result.width, result.height) == (200, 153)  # 1300 * 200 / 1700 = 152.9
    reference = decode(data).resize((200, 153), Image.Resampling.BICUBIC)
    diff = np.abs(np.asarray(decode(result.data), np.float64)
                  - np.asarray(reference, np.float64))
    # Re-encoding (JPEG q95) and the DCT-scaled decode differ from the reference by a few
    # levels; a misplaced or mis-scaled image would differ by tens.
    assert diff.mean() < 4.0 and np.percentile(diff, 99) < 16


def test_jpeg_whose_draft_lands_on_the_target_size_is_still_re_encoded():
    data = encode(Image.fromarray(np.full((400, 800, 3), 128, np.uint8)), "JPEG")
    result = convert_image(data, max_side=200)  # 1/4 DCT scale gives exactly 200 x 100
    assert (result.width, result.height) == (200, 100) and result.data != data


def test_an_unchanged_png_is_kept_byte_for_byte_and_a_changed_one_is_lossless():
    pixels = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "PNG")
    assert convert_image(data, max_side=64).data == data
    palette = encode(Image.fromarray(pixels).convert("P"), "PNG")
    result = convert_image(palette, max_side=64)
    assert result.data != palette and result.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decode(result.data)),
                                  np.asarray(decode(palette).convert("RGB")))
