"""SLIP / DeCLIP extra inputs: SimCLR image views, token-dropout text views, MLM masking.

The photometric ops are checked against per-pixel float64 definitions (colorsys for hue, PIL's
"L" for grey, a direct Gaussian convolution for blur); the token ops by their invariants and
frequencies over many rows; the pipeline by shapes, the untouched CLIP inputs, and process-count
invariance.
"""

import colorsys
import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from medclip_jax.data import image_ops, pipeline, text_ops, tokenizers
from medclip_jax.errors import UserError
from test_pipeline import MAX_LEN, SIZE, assert_batches_equal, data_config, take

BYTES = tokenizers.load_tokenizer("bytes")
EXTRA_KEYS = {"image_views", "text_view_ids", "text_view_mask", "mlm_ids", "mlm_positions",
              "mlm_labels", "mlm_weights"}


def random_image(seed: int = 0, height: int = 12, width: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def clip8(x: float) -> int:
    return int(min(255, max(0, round(x))))


def luma_of(pixel) -> float:
    r, g, b = (float(c) for c in pixel)
    return 0.299 * r + 0.587 * g + 0.114 * b


def naive_brightness(img, f):
    out = np.zeros_like(img)
    for i, j, c in np.ndindex(img.shape):
        out[i, j, c] = clip8(float(img[i, j, c]) * f)
    return out


def naive_contrast(img, f):
    lumas = [luma_of(img[i, j]) for i, j in np.ndindex(img.shape[:2])]
    mean = sum(lumas) / len(lumas)
    out = np.zeros_like(img)
    for i, j, c in np.ndindex(img.shape):
        out[i, j, c] = clip8(mean + f * (float(img[i, j, c]) - mean))
    return out


def naive_saturation(img, f):
    out = np.zeros_like(img)
    for i, j, c in np.ndindex(img.shape):
        grey = luma_of(img[i, j])
        out[i, j, c] = clip8(grey + f * (float(img[i, j, c]) - grey))
    return out


def naive_hue(img, shift):
    out = np.zeros_like(img)
    for i, j in np.ndindex(img.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(float(c) / 255 for c in img[i, j]))
        out[i, j] = [clip8(c * 255) for c in colorsys.hsv_to_rgb((h + shift) % 1.0, s, v)]
    return out


NAIVE_OPS = (naive_brightness, naive_contrast, naive_saturation, naive_hue)


@pytest.mark.parametrize("factor", [0.0, 0.6, 1.0, 1.4])
def test_brightness_contrast_saturation_match_definitions(factor):
    img = random_image()
    for op, naive in ((image_ops.adjust_brightness, naive_brightness),
                      (image_ops.adjust_contrast, naive_contrast),
                      (image_ops.adjust_saturation, naive_saturation)):
        out = op(img, factor)
        assert out.dtype == np.uint8 and out.shape == img.shape
        np.testing.assert_allclose(out, naive(img, factor), atol=1, err_msg=op.__name__)
    np.testing.assert_array_equal(image_ops.adjust_brightness(img, 1.0), img)


@pytest.mark.parametrize("shift", [-0.5, -0.1, 0.0, 0.07, 0.33])
def test_hue_matches_colorsys(shift):
    img = random_image(1)
    np.testing.assert_allclose(image_ops.adjust_hue(img, shift), naive_hue(img, shift), atol=1)


def test_grayscale_is_pil_luma():
    img = random_image(2, 16, 16)
    out = image_ops.to_grayscale(img)
    expected = np.asarray(Image.fromarray(img).convert("L"))
    for c in range(3):
        np.testing.assert_allclose(out[..., c], expected, atol=1)
    assert (out[..., 0] == expected).mean() > 0.95


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gaussian_blur_is_a_gaussian_convolution(sigma):
    # Blocky image: PIL's blur (extended box approximation) vs a direct Gaussian, edges clamped.
    rng = np.random.default_rng(3)
    img = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((6, 6, 1))).astype(np.uint8)
    out = image_ops.gaussian_blur(img, sigma).astype(np.float64)
    radius = int(np.ceil(4 * sigma))
    taps = [np.exp(-0.5 * (d / sigma) ** 2) for d in range(-radius, radius + 1)]
    total = sum(taps)
    expected = np.zeros_like(out)
    height, width = img.shape[:2]
    for i, j, c in np.ndindex(img.shape):
        acc = 0.0
        for a, di in enumerate(range(-radius, radius + 1)):
            for b, dj in enumerate(range(-radius, radius + 1)):
                y = min(max(i + di, 0), height - 1)
                x = min(max(j + dj, 0), width - 1)
                acc += taps[a] * taps[b] * float(img[y, x, c])
        expected[i, j, c] = acc / total ** 2
    diff = np.abs(out - expected)
    assert diff.mean() < 1.0 and diff.max() < 5
    assert out.std() < img.std()


def test_color_jitter_follows_torchvision_sampling():
    """Random op order, factors uniform in [1-s, 1+s] / [-h, h], replayed with the naive ops."""
    img = random_image(4, 8, 8)
    strengths = (0.4, 0.3, 0.5, 0.1)
    orders = set()
    for seed in range(12):
        out = image_ops.color_jitter(img, strengths, np.random.default_rng(seed))
        replay = np.random.default_rng(seed)
        order = replay.permutation(4)
        factors = [replay.uniform(1 - s, 1 + s) for s in strengths[:3]]
        factors.append(replay.uniform(-strengths[3], strengths[3]))
        expected = img
        for i in order:
            expected = NAIVE_OPS[i](expected, factors[i])
        np.testing.assert_allclose(out, expected, atol=2)
        orders.add(tuple(order))
    assert len(orders) > 6
    grey = np.full((4, 4, 3), 100, np.uint8)
    brightened = [image_ops.color_jitter(grey, (0.4, 0, 0, 0), np.random.default_rng(s))[0, 0, 0]
                  for s in range(400)]
    assert 60 <= min(brightened) < 66 and 134 < max(brightened) <= 140
    assert abs(np.mean(brightened) - 100) < 3


def test_simclr_view_probabilities_and_identity():
    img = random_image(5, 10, 10)
    plain = image_ops.ViewRecipe(random_crop_scale=(1.0, 1.0), color_jitter_prob=0.0,
                                 grayscale_prob=0.0, blur_prob=0.0, flip=False)
    np.testing.assert_array_equal(image_ops.simclr_view(img, 8, np.random.default_rng(0), plain),
                                  image_ops.center_crop_resize(img, 8))
    rng = np.random.default_rng(1)
    views = [image_ops.simclr_view(img, 8, rng) for _ in range(400)]  # SLIP's default recipe
    assert all(v.shape == (8, 8, 3) and v.dtype == np.uint8 for v in views)
    grey = np.mean([np.array_equal(v[..., 0], v[..., 1]) and np.array_equal(v[..., 1], v[..., 2])
                    for v in views])
    assert abs(grey - 0.2) < 0.07
    flip_only = image_ops.ViewRecipe(random_crop_scale=(1.0, 1.0), color_jitter_prob=0.0,
                                     grayscale_prob=0.0, blur_prob=0.0, flip=True)
    base = image_ops.center_crop_resize(img, 8)
    flips = [image_ops.simclr_view(img, 8, rng, flip_only) for _ in range(200)]
    flipped = np.mean([np.array_equal(v, base[:, ::-1]) for v in flips])
    assert all(np.array_equal(v, base) or np.array_equal(v, base[:, ::-1]) for v in flips)
    assert abs(flipped - 0.5) < 0.12
    always_grey = image_ops.ViewRecipe(grayscale_prob=1.0)
    v = image_ops.simclr_view(img, 8, rng, always_grey)
    assert np.array_equal(v[..., 0], v[..., 2])


def test_shared_decode_never_changes_the_main_image():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (640, 512, 3), np.uint8))
    buffer = io.BytesIO()
    big.save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    main, views = image_ops.decode_pil_shared(jpeg, "x", [64, 400])
    assert np.array_equal(np.asarray(main), np.asarray(image_ops.decode_pil(jpeg, "x", 64)))
    assert np.array_equal(np.asarray(views), np.asarray(image_ops.decode_pil(jpeg, "x", 400)))
    assert main.size != views.size and min(views.size) >= 400
    a, b = image_ops.decode_pil_shared(jpeg, "x", [100, 110])  # same draft (1/4): one decode
    assert a is b
    buffer = io.BytesIO()
    big.save(buffer, "PNG")
    a, b = image_ops.decode_pil_shared(buffer.getvalue(), "x", [64, 400])
    assert a is b


# --- token ops ---------------------------------------------------------------------------


def caption_rows(tokenizer, count: int = 200, max_len: int = 32, seed: int = 0):
    """Packed rows of random captions (some empty, some truncated)."""
    rng = np.random.default_rng(seed)
    words = ["left", "pleural", "effusion", "mild", "cardiomegaly", "no", "acute", "findings",
             "biopsy", "of", "the", "liver"]
    captions = [" ".join(rng.choice(words, int(rng.integers(0, 14)))) for _ in range(count)]
    return tokenizer(captions, max_len)


def tokenizer_cases():
    return [("bytes", BYTES), ("minilm", tokenizers.load_tokenizer("minilm"))]


@pytest.mark.parametrize("name", ["bytes", "minilm"])
def test_drop_tokens_keeps_specials_order_and_eos(name):
    tok = dict(tokenizer_cases())[name]
    ids, mask = caption_rows(tok)
    prefix, suffix = list(tok.prefix), list(tok.suffix)
    dropped = kept = 0
    for row in range(len(ids)):
        rng = np.random.default_rng(row)
        out, out_mask = text_ops.drop_tokens(ids[row], mask[row], len(prefix), len(suffix), 0.3,
                                             rng, pad_id=tok.pad_id)
        n, m = int(mask[row].sum()), int(out_mask.sum())
        assert out.dtype == ids.dtype and out.shape == ids[row].shape
        assert out_mask.tolist() == [1] * m + [0] * (len(out) - m)  # left-aligned
        assert (out[m:] == tok.pad_id).all()
        assert out[:len(prefix)].tolist() == prefix
        assert out[m - len(suffix):m].tolist() == suffix  # EOS pooling reads index m - 1
        content = ids[row, len(prefix):n - len(suffix)].tolist()
        view = out[len(prefix):m - len(suffix)].tolist()
        it = iter(content)
        assert all(token in it for token in view)  # an ordered subsequence
        assert len(view) >= min(1, len(content))
        dropped += len(content) - len(view)
        kept += len(view)
    assert abs(dropped / (dropped + kept) - 0.3) < 0.03
    one = text_ops.drop_tokens(ids[0], mask[0], len(prefix), len(suffix), 1.0,
                               np.random.default_rng(0), pad_id=tok.pad_id)[1]
    assert one.sum() == len(prefix) + len(suffix) + min(1, int(mask[0].sum()) - 2)


def check_mlm_row(tok, ids, mask, out, positions, labels, weights, max_predictions):
    n = int(mask.sum())
    start, stop = len(tok.prefix), n - len(tok.suffix)
    count = int(weights.sum())
    assert weights.tolist() == [1] * count + [0] * (max_predictions - count)
    assert (positions[count:] == 0).all() and (labels[count:] == 0).all()
    chosen = positions[:count]
    assert ((chosen >= start) & (chosen < stop)).all()  # never a special or padding
    assert len(set(chosen.tolist())) == count and (np.diff(chosen) > 0).all()
    np.testing.assert_array_equal(labels[:count], ids[chosen])
    untouched = np.ones(len(ids), bool)
    untouched[chosen] = False
    np.testing.assert_array_equal(out[untouched], ids[untouched])
    assert count >= min(1, stop - start) and count <= max_predictions
    return chosen


@pytest.mark.parametrize("name", ["bytes", "minilm"])
def test_mask_tokens_bert_rule(name):
    tok = dict(tokenizer_cases())[name]
    ids, mask = caption_rows(tok, count=400, seed=1)
    random_ids = text_ops.random_token_ids(tok.vocab_size, tok.special_ids)
    assert not set(random_ids.tolist()) & set(tok.special_ids)
    outcomes = {"mask": 0, "random": 0, "same": 0}
    selected = content = 0
    for row in range(len(ids)):
        out, positions, labels, weights = text_ops.mask_tokens(
            ids[row], mask[row], len(tok.prefix), len(tok.suffix), mask_prob=0.15,
            max_predictions=20, mask_id=tok.mask_id, random_ids=random_ids,
            rng=np.random.default_rng(row))
        chosen = check_mlm_row(tok, ids[row], mask[row], out, positions, labels, weights, 20)
        for p in chosen:
            if out[p] == tok.mask_id:
                outcomes["mask"] += 1
            elif out[p] == ids[row, p]:
                outcomes["same"] += 1
            else:
                outcomes["random"] += 1
                assert out[p] not in tok.special_ids
        selected += len(chosen)
        content += int(mask[row].sum()) - len(tok.prefix) - len(tok.suffix)
    total = sum(outcomes.values())
    assert total > 500
    assert abs(outcomes["mask"] / total - 0.8) < 0.05
    assert abs(outcomes["random"] / total - 0.1) < 0.04
    assert abs(outcomes["same"] / total - 0.1) < 0.04
    assert 0.14 < selected / content < 0.19  # 0.15, plus the at-least-one rule


def test_mask_tokens_cap_minimum_and_fixed_rule():
    ids, mask = BYTES(["a fairly long caption about a chest x-ray", "", "ab"], 48)
    random_ids = text_ops.random_token_ids(BYTES.vocab_size, BYTES.special_ids)
    kwargs = dict(mask_id=BYTES.mask_id, random_ids=random_ids)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        capped = text_ops.mask_tokens(ids[0], mask[0], 1, 1, mask_prob=0.9, max_predictions=5,
                                      rng=rng, **kwargs)
        assert capped[3].sum() == 5
        check_mlm_row(BYTES, ids[0], mask[0], *capped, 5)
        empty = text_ops.mask_tokens(ids[1], mask[1], 1, 1, mask_prob=0.5, max_predictions=4,
                                     rng=rng, **kwargs)
        assert empty[3].sum() == 0 and np.array_equal(empty[0], ids[1])
        short = text_ops.mask_tokens(ids[2], mask[2], 1, 1, mask_prob=0.01, max_predictions=4,
                                     rng=rng, **kwargs)
        assert short[3].sum() == 1
        n = int(mask[0].sum())
        for p, cap in ((0.15, 20), (0.5, 6)):
            fixed = text_ops.mask_tokens(ids[0], mask[0], 1, 1, mask_prob=p, max_predictions=cap,
                                         rng=rng, selection="fixed", **kwargs)
            assert fixed[3].sum() == min(cap, max(1, round(n * p)))
            check_mlm_row(BYTES, ids[0], mask[0], *fixed, cap)


# --- pipeline -----------------------------------------------------------------------------


def extras_config(data_dir, **overrides):
    fields = data_config(data_dir).to_dict()
    fields.update({"image_views": 2, "text_views": 2, "text_view_drop_prob": 0.2,
                   "mlm": {"enabled": True, "max_predictions": 6},
                   "view_augment": {"random_crop_scale": (0.2, 1.0)}})
    for key, value in overrides.items():  # on the dict: a ConfigDict refuses type changes
        *parents, leaf = key.split(".")
        node = fields
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return ml_collections.ConfigDict(fields)


def train_iter(config, tokenizer=BYTES, batch=8, process_index=0, process_count=1, seed=0):
    return pipeline.make_train_iterator(
        config, image_size=SIZE, max_len=MAX_LEN, tokenizer=tokenizer, global_batch_size=batch,
        process_index=process_index, process_count=process_count, seed=seed)


def test_extras_off_by_default_and_never_in_eval(tiny_data_dir):
    batch = next(train_iter(data_config(tiny_data_dir)))
    assert not EXTRA_KEYS & batch.keys()
    config = extras_config(tiny_data_dir)
    evaluation = next(iter(pipeline.make_eval_iterator(
        tiny_data_dir, "synthetic_medical@tiny", "validation", image_size=SIZE, max_len=MAX_LEN,
        tokenizer=BYTES, global_batch_size=8, process_index=0, process_count=1,
        data_config=config)))
    assert not EXTRA_KEYS & evaluation.keys()


def test_extras_shapes_and_clip_inputs_unchanged(tiny_data_dir):
    plain = take(train_iter(data_config(tiny_data_dir)), 2)
    extra = take(train_iter(extras_config(tiny_data_dir)), 2)
    for p, e in zip(plain, extra):
        assert e.keys() == p.keys() | EXTRA_KEYS
        assert_batches_equal([p], [{k: e[k] for k in p}])  # the CLIP view, byte for byte
        assert e["image_views"].shape == (8, 2, SIZE, SIZE, 3)
        assert e["image_views"].dtype == np.float32 and np.abs(e["image_views"]).max() < 3
        assert not np.allclose(e["image_views"][:, 0], e["image_views"][:, 1])
        assert not np.allclose(e["image_views"][:, 0], e["image"])
        for key in ("text_view_ids", "text_view_mask"):
            assert e[key].shape == (8, 2, MAX_LEN) and e[key].dtype == np.int32
        lengths = e["text_view_mask"].sum(-1)
        rows = np.arange(8)[:, None]
        assert (e["text_view_ids"][rows, np.arange(2), lengths - 1] == BYTES.eos_id).all()
        assert (e["text_view_ids"][..., 0] == BYTES.bos_id).all()
        assert (lengths <= e["text_mask"].sum(-1)[:, None]).all()
        assert e["mlm_ids"].shape == (8, MAX_LEN)
        for key in ("mlm_ids", "mlm_positions", "mlm_labels", "mlm_weights"):
            assert e[key].dtype == np.int32
            assert e[key].shape[0] == 8 and (key == "mlm_ids" or e[key].shape[1] == 6)
        for row in range(8):
            check_mlm_row(BYTES, e["text_ids"][row], e["text_mask"][row], e["mlm_ids"][row],
                          e["mlm_positions"][row], e["mlm_labels"][row], e["mlm_weights"][row], 6)


def test_extras_deterministic_and_process_count_invariant(tiny_data_dir):
    config = extras_config(tiny_data_dir)
    global_batches = take(train_iter(config), 2)
    assert_batches_equal(global_batches, take(train_iter(config), 2))
    local = [take(train_iter(config, process_index=p, process_count=2), 2) for p in range(2)]
    for k in range(2):
        joined = {key: np.concatenate([local[p][k][key] for p in range(2)])
                  for key in global_batches[k]}
        assert_batches_equal([joined], [global_batches[k]])
    other = next(train_iter(config, seed=1))
    assert not np.allclose(other["image_views"], global_batches[0]["image_views"])


def test_minilm_extras(tiny_data_dir):
    tok = tokenizers.load_tokenizer("minilm")
    batch = next(train_iter(extras_config(tiny_data_dir, tokenizer="minilm"), tokenizer=tok))
    lengths = batch["text_view_mask"].sum(-1)
    assert (batch["text_view_ids"][..., 0] == 101).all()
    assert (batch["text_view_ids"][np.arange(8)[:, None], np.arange(2), lengths - 1] == 102).all()
    assert (batch["mlm_ids"] == 103).any()
    for row in range(8):
        check_mlm_row(tok, batch["text_ids"][row], batch["text_mask"][row], batch["mlm_ids"][row],
                      batch["mlm_positions"][row], batch["mlm_labels"][row],
                      batch["mlm_weights"][row], 6)


class NoMaskTokenizer(tokenizers.ByteTokenizer):
    mask_id = None


@pytest.mark.parametrize("key,value,field", [
    ("image_views", -1, "config.data.image_views"),
    ("image_views", 1.5, "config.data.image_views"),
    ("view_augment.random_crop_scale", (0.0, 1.0), "config.data.view_augment.random_crop_scale"),
    ("view_augment.random_crop_ratio", (2.0, 1.0), "config.data.view_augment.random_crop_ratio"),
    ("view_augment.color_jitter", (0.4, 0.4, 0.4), "config.data.view_augment.color_jitter"),
    ("view_augment.color_jitter", (0.4, 0.4, 0.4, 0.6), "config.data.view_augment.color_jitter"),
    ("view_augment.color_jitter_prob", 1.5, "config.data.view_augment.color_jitter_prob"),
    ("view_augment.grayscale_prob", -0.1, "config.data.view_augment.grayscale_prob"),
    ("view_augment.blur_prob", "half", "config.data.view_augment.blur_prob"),
    ("view_augment.blur_sigma", (0.0, 2.0), "config.data.view_augment.blur_sigma"),
    ("view_augment.flip", "yes", "config.data.view_augment.flip"),
    ("text_views", -2, "config.data.text_views"),
    ("text_view_drop_prob", 1.2, "config.data.text_view_drop_prob"),
    ("mlm.mask_prob", 0.0, "config.data.mlm.mask_prob"),
    ("mlm.max_predictions", 0, "config.data.mlm.max_predictions"),
    ("mlm.selection", "random", "config.data.mlm.selection"),
    ("mlm.enabled", "on", "config.data.mlm.enabled"),
])
def test_bad_values_name_the_field(tiny_data_dir, key, value, field):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        train_iter(extras_config(tiny_data_dir, **{key: value}))


def test_mlm_needs_a_mask_token(tiny_data_dir):
    with pytest.raises(UserError, match=r"config\.data\.mlm.*config\.data\.tokenizer"):
        train_iter(extras_config(tiny_data_dir), tokenizer=NoMaskTokenizer())
    train_iter(extras_config(tiny_data_dir, **{"mlm.enabled": False}), tokenizer=NoMaskTokenizer())
