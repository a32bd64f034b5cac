"""Duplicate-caption targets: each loss against a naive loop of its formula (with and without
duplicates, on 1 and 8 devices), the pipeline's caption hash, and training with the option on."""

import inspect
import io
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P
from PIL import Image

from conftest import tiny_config
from helpers import numeric_grad
from medclip_jax.models import params as model_params
from medclip_jax import methods, sharding, train
from medclip_jax.data import image_ops, pipeline, text_ops, tokenizers
from medclip_jax.errors import UserError
from medclip_jax.losses import declip, siglip, slip
from medclip_jax.losses.clip import same_caption
from medclip_jax.models import build_model, model_config

N, DIM = 16, 6
MESHES = {"data8": {"data": 8, "fsdp": 1}, "data2_fsdp4": {"data": 2, "fsdp": 4}}


# ---------------------------------------------------------------- naive references (float64)

def unit(x):
    return x / np.sqrt(np.sum(x * x, axis=1, keepdims=True))


def same(h, i, j):
    return tuple(h[i]) == tuple(h[j])


def ref_infonce(logits, h):
    """(image->text, text->image) cross-entropies, targets uniform over same-caption pairs."""
    n = len(logits)
    i2t = t2i = 0.0
    for i in range(n):
        row_lse = np.log(sum(np.exp(logits[i, k]) for k in range(n)))
        col_lse = np.log(sum(np.exp(logits[k, i]) for k in range(n)))
        count = sum(same(h, i, k) for k in range(n))
        for j in range(n):
            if same(h, i, j):
                i2t -= (logits[i, j] - row_lse) / count
                t2i -= (logits[j, i] - col_lse) / count
    return i2t / n, t2i / n


def ref_clip(image, text, scale, h):
    i2t, t2i = ref_infonce(scale * unit(image) @ unit(text).T, h)
    return 0.5 * (i2t + t2i)


def ref_convirt(image, text, h, temperature=0.1, weight=0.75):
    i2t, t2i = ref_infonce(unit(image) @ unit(text).T / temperature, h)
    return weight * i2t + (1 - weight) * t2i


def ref_cyclip(image, text, scale, h, w_in=0.25, w_cross=0.25):
    x, y = unit(image), unit(text)
    n = len(x)
    c_in = sum((x[i] @ x[j] - y[i] @ y[j]) ** 2 for i in range(n) for j in range(n)) / n ** 2
    c_cross = sum((x[i] @ y[j] - y[i] @ x[j]) ** 2 for i in range(n) for j in range(n)) / n ** 2
    return ref_clip(image, text, scale, h) + w_in * c_in + w_cross * c_cross


def ref_siglip(image, text, t, b, h):
    x, y = unit(image), unit(text)
    total = 0.0
    for i in range(len(x)):
        for j in range(len(y)):
            z = 1.0 if same(h, i, j) else -1.0
            total += np.log(1.0 / (1.0 + np.exp(-z * (t * x[i] @ y[j] + b))))
    return -total / len(x)


def ref_vse(image, text, h, margin=0.2, max_violation=True):
    s = unit(image) @ unit(text).T
    n = len(s)
    total = 0.0
    for i in range(n):
        by_text = [max(0.0, margin - s[i, i] + s[i, j]) for j in range(n) if not same(h, i, j)]
        by_image = [max(0.0, margin - s[i, i] + s[j, i]) for j in range(n) if not same(h, i, j)]
        reduce = (lambda costs: max(costs, default=0.0)) if max_violation else sum
        total += reduce(by_text) + reduce(by_image)
    return total / n


# ---------------------------------------------------------------- inputs

def embeddings(seed=0, n=N, dim=DIM):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)).astype(np.float32),
            rng.normal(size=(n, dim)).astype(np.float32))


def hashes(duplicates: bool, n=N, seed=0) -> np.ndarray:
    """Distinct [n, 2] int32 rows; with duplicates, groups spread over the devices' shards and
    a near miss (first column equal, second not) that must not count."""
    rng = np.random.default_rng(seed + 100)
    h = rng.integers(-2 ** 31, 2 ** 31, size=(n, 2), dtype=np.int64).astype(np.int32)
    if duplicates:
        h[[5, 9, 14]] = h[1]  # a group of four: rows 1, 5, 9, 14
        h[11] = h[2]          # a pair
        h[3] = (h[2, 0], h[2, 1] ^ 1)
    return h


def outputs(image, text, h, scale=5.0, bias=-3.0):
    return types.SimpleNamespace(image_emb=image, text_emb=text, logit_scale=jnp.float32(scale),
                                 logit_bias=jnp.float32(bias), caption_hash=h)


def on_devices(count: int, *arrays):
    """The arrays unsharded (1 device) or batch-sharded over an 8-device mesh."""
    if count == 1:
        return [jnp.asarray(a) for a in arrays]
    mesh = sharding.make_mesh({"data": count, "fsdp": 1})
    return [jax.device_put(a, NamedSharding(mesh, P(sharding.BATCH_AXES))) for a in arrays]


def bound_loss(method: str, **kwargs):
    """The train step's view of the loss (`methods.bind_loss`), jitted, on (image, text, hash)."""
    loss_fn = methods.bind_loss(method, kwargs)
    return jax.jit(lambda image, text, h: loss_fn(outputs(image, text, h), {}))


CASES = {  # method -> (loss kwargs, reference(image, text, h) in float64)
    "clip": ({}, lambda x, y, h: ref_clip(x, y, 5.0, h)),
    "convirt": ({}, ref_convirt),
    "cyclip": ({}, lambda x, y, h: ref_cyclip(x, y, 5.0, h)),
    "siglip": ({}, lambda x, y, h: ref_siglip(x, y, 5.0, -3.0, h)),
    "vse": ({}, ref_vse),
    "vse_sum": ({"max_violation": False}, lambda x, y, h: ref_vse(x, y, h, max_violation=False)),
}


# ---------------------------------------------------------------- losses

@pytest.mark.parametrize("devices", [1, 8])
@pytest.mark.parametrize("duplicates", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_matches_naive_formula(case, duplicates, devices):
    kwargs, reference = CASES[case]
    method = case.split("_")[0]
    image, text = embeddings(seed=1)
    h = hashes(duplicates)
    loss, _ = bound_loss(method, duplicate_captions=True, **kwargs)(
        *on_devices(devices, image, text, h))
    want = reference(image.astype(np.float64), text.astype(np.float64), h)
    np.testing.assert_allclose(loss, want, rtol=2e-5)
    plain = reference(image.astype(np.float64), text.astype(np.float64), hashes(False))
    assert duplicates == (abs(want - plain) > 1e-3)  # the duplicates change the loss


@pytest.mark.parametrize("case", sorted(CASES))
def test_without_duplicates_the_loss_is_the_plain_loss_exactly(case):
    kwargs, _ = CASES[case]
    method = case.split("_")[0]
    image, text = embeddings(seed=2)
    h = hashes(False)
    on, on_metrics = bound_loss(method, duplicate_captions=True, **kwargs)(image, text, h)
    off, off_metrics = bound_loss(method, **kwargs)(image, text, h)
    np.testing.assert_array_equal(on, off)
    for key in off_metrics:
        np.testing.assert_allclose(on_metrics[key], off_metrics[key], rtol=1e-6, err_msg=key)


def test_clip_gradient_matches_finite_differences_of_the_formula():
    image, text = embeddings(seed=3, n=6, dim=4)
    h = hashes(False, n=6)
    h[[2, 4]] = h[0]
    loss_fn = methods.bind_loss("clip", {"duplicate_captions": True})
    grads = jax.grad(lambda x, y: loss_fn(outputs(x, y, h), {})[0], argnums=(0, 1))(image, text)
    x64, y64 = image.astype(np.float64), text.astype(np.float64)
    want = (numeric_grad(lambda x: ref_clip(x, y64, 5.0, h), x64),
            numeric_grad(lambda y: ref_clip(x64, y, 5.0, h), y64))
    for got, expected in zip(grads, want):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_batch_accuracy_counts_any_positive_as_a_hit():
    text = np.eye(4, dtype=np.float32)
    image = text[[1, 1, 2, 3]]  # image 0 is closest to text 1, which has the same caption
    h = np.array([[7, 7], [7, 7], [1, 2], [3, 4]], np.int32)
    _, metrics = bound_loss("clip", duplicate_captions=True)(image, text, h)
    assert float(metrics["i2t_batch_acc"]) == 1.0
    _, plain = bound_loss("clip")(image, text, h)
    assert float(plain["i2t_batch_acc"]) == 0.75


def test_slip_and_declip_contrastive_terms_take_the_targets():
    image, text = embeddings(seed=4)
    h = hashes(True)
    want = ref_clip(image.astype(np.float64), text.astype(np.float64), 5.0, h)
    out = outputs(jnp.asarray(image), jnp.asarray(text), jnp.asarray(h))
    loss, _ = slip.slip_loss_from_outputs(out, ssl_weight=0.0, duplicate_captions=True)
    np.testing.assert_allclose(loss, want, rtol=2e-5)
    only_clip = dict(clip_weight=1.0, mvs_weight=0.0, iss_weight=0.0, tss_weight=0.0,
                     nns_weight=0.0)
    loss, _ = declip.declip_loss_from_outputs(out, {}, **only_clip, duplicate_captions=True)
    np.testing.assert_allclose(loss, want, rtol=2e-5)
    # MVS over two image and two text views: the mean of the four pair losses.
    views = np.random.default_rng(5).normal(size=(N, 1, DIM)).astype(np.float32)
    out = types.SimpleNamespace(**vars(out), view_image_emb=views, view_text_emb=views[::-1])
    loss, _ = declip.declip_loss_from_outputs(
        out, {}, **dict(only_clip, clip_weight=0.0, mvs_weight=1.0), duplicate_captions=True)
    x = [image, views[:, 0]]
    y = [text, views[::-1][:, 0]]
    pairs = [ref_clip(a.astype(np.float64), b.astype(np.float64), 5.0, h) for a in x for b in y]
    np.testing.assert_allclose(loss, np.mean(pairs), rtol=2e-5)
    # NNS: the neighbour of text j keeps caption h_j.
    queue = np.random.default_rng(6).normal(size=(8, DIM)).astype(np.float32)
    queue /= np.linalg.norm(queue, axis=1, keepdims=True)
    state = {"text_queue": queue, "queue_valid": np.ones(8, bool)}
    got = declip.nns_loss(image[:, None], text[:, None], jnp.float32(5.0), queue,
                          state["queue_valid"], same_caption(h, h))
    neighbours = queue[np.argmax(unit(text.astype(np.float64)) @ queue.T, axis=1)]
    i2t, _ = ref_infonce(5.0 * unit(image.astype(np.float64)) @ unit(neighbours).T, h)
    np.testing.assert_allclose(got, i2t, rtol=2e-5)


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_siglip_ring_carries_the_hashes_and_matches_global_and_one_device(mesh_name):
    image, text = embeddings(seed=7, n=32, dim=5)
    h = hashes(True, n=32)
    h[[20, 27, 31]] = h[0]  # positives far off the diagonal blocks
    mesh = sharding.make_mesh(MESHES[mesh_name])
    spec = NamedSharding(mesh, P(sharding.BATCH_AXES))
    sharded = [jax.device_put(a, spec) for a in (image, text, h)]
    scale, bias = jnp.float32(10.0), jnp.float32(-10.0)

    def value_and_grads(loss_fn):
        return jax.jit(jax.value_and_grad(
            lambda x, y, t, b, h: loss_fn(x, y, t, b, caption_hash=h), argnums=(0, 1, 2, 3),
            has_aux=True))

    ring = value_and_grads(lambda *a, **k: siglip.siglip_ring_loss(*a, mesh=mesh, **k))
    one_device_mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
    ring_one = value_and_grads(lambda *a, **k: siglip.siglip_ring_loss(*a, mesh=one_device_mesh,
                                                                       **k))
    results = {"ring": ring(*sharded[:2], scale, bias, sharded[2]),
               "global": value_and_grads(siglip.siglip_loss)(*sharded[:2], scale, bias,
                                                             sharded[2]),
               "ring_1": ring_one(image, text, scale, bias, h),
               "global_1": value_and_grads(siglip.siglip_loss)(image, text, scale, bias, h)}
    want = ref_siglip(image.astype(np.float64), text.astype(np.float64), 10.0, -10.0, h)
    (_, want_metrics), want_grads = results["global_1"]
    positives = np.array([[same(h, i, j) for j in range(32)] for i in range(32)])
    logits = 10.0 * unit(image.astype(np.float64)) @ unit(text.astype(np.float64)).T - 10.0
    np.testing.assert_allclose(want_metrics["positive_logit"], logits[positives].mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(want_metrics["negative_logit"], logits[~positives].mean(),
                               rtol=1e-5)
    for name, ((loss, metrics), grads) in results.items():
        np.testing.assert_allclose(loss, want, rtol=1e-5, err_msg=name)
        for a, b in zip(grads, want_grads):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)
        for key in want_metrics:
            np.testing.assert_allclose(metrics[key], want_metrics[key], rtol=1e-5, err_msg=key)


def test_option_errors_name_the_field():
    with pytest.raises(UserError, match=r"^config\.loss\.duplicate_captions: method 'filip'"):
        methods.check_loss_kwargs("filip", {"duplicate_captions": True})
    with pytest.raises(UserError, match="config.loss.duplicate_captions must be True or False"):
        methods.check_loss_kwargs("clip", {"duplicate_captions": "yes"})
    image, text = embeddings()
    with pytest.raises(UserError, match="caption_hash"):
        bound_loss("clip", duplicate_captions=True)(image, text, None)
    supported = {m.name for m in methods.registry().values() if m.duplicate_captions}
    assert {"clip", "convirt", "cyclip", "siglip", "slip", "declip", "vse"} <= supported
    for method in methods.registry().values():  # the flag says what the loss takes
        takes = "duplicate_captions" in inspect.signature(method.loss).parameters
        assert method.duplicate_captions == takes, method.name


# ---------------------------------------------------------------- the pipeline's hash

def test_caption_hash_ignores_case_whitespace_and_trailing_punctuation():
    variants = ["No acute cardiopulmonary process.", "no acute cardiopulmonary process",
                "  NO  acute\tcardiopulmonary\nprocess . ", "No acute cardiopulmonary process!",
                "Ｎｏ acute cardiopulmonary process．"]
    different = ["No acute cardiopulmonary processes.", "No acute, cardiopulmonary process.",
                 "No acute pulmonary process.", "Acute cardiopulmonary process.", ""]
    h = text_ops.caption_hashes(variants + different)
    assert h.dtype == np.int32 and h.shape == (len(variants) + len(different), 2)
    assert len({tuple(row) for row in h[:len(variants)]}) == 1
    assert len({tuple(row) for row in h}) == 1 + len(different)
    assert text_ops.normalize_caption("  Right \t Lung !? ") == "right lung"
    assert text_ops.normalize_caption("e.g. cyst, mass.") == "e.g. cyst, mass"


def write_list_captions_dataset(data_dir: str) -> None:
    """A train split whose `captions` field holds three captions per record."""
    import tensorflow_datasets as tfds

    class ListCaptions(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("0.1.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, disable_shuffling=True,
                                         features=tfds.features.FeaturesDict({
                                             "image": tfds.features.Image(shape=(None, None, 3)),
                                             "captions": tfds.features.Sequence(
                                                 tfds.features.Text())}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(8):
                buffer = io.BytesIO()
                Image.new("RGB", (8, 8), (i, 0, 0)).save(buffer, "PNG")
                yield i, {"image": buffer.getvalue(),
                          "captions": ["No acute process.", f"Finding {i % 3}",
                                       f"finding {i % 3}  "]}

    ListCaptions(data_dir=data_dir, file_format="array_record").download_and_prepare(
        download_config=tfds.download.DownloadConfig())


def test_train_batches_hash_the_caption_that_text_ids_encode(tmp_path):
    write_list_captions_dataset(str(tmp_path))
    tokenizer = tokenizers.load_tokenizer("bytes")
    config = ml_collections.ConfigDict({
        "data_dir": str(tmp_path), "train_mixture": "list_captions/train", "tokenizer": "bytes",
        "caption_field": "captions", "augment": {"random_crop_scale": (0.5, 1.0)},
        "mean": image_ops.CLIP_MEAN, "std": image_ops.CLIP_STD, "read_threads": 0})
    batches = pipeline.make_train_iterator(
        config, image_size=8, max_len=32, tokenizer=tokenizer, global_batch_size=8,
        process_index=0, process_count=1, seed=0)
    candidates = ["No acute process."] + [f"{f} {k}{s}" for f, s in (("Finding", ""),
                                                                      ("finding", "  "))
                                          for k in range(3)]
    ids, _ = tokenizer(candidates, 32)
    picked = []
    for _ in range(3):
        batch = next(batches)
        assert batch["caption_hash"].shape == (8, 2) and batch["caption_hash"].dtype == np.int32
        for row, h in zip(batch["text_ids"], batch["caption_hash"]):
            caption = candidates[next(c for c in range(len(candidates))
                                      if np.array_equal(ids[c], row))]
            picked.append(caption)
            np.testing.assert_array_equal(h, text_ops.caption_hashes([caption])[0])
    assert len(set(picked)) > 3  # the random pick varies, the hash follows it


def test_eval_batches_have_no_caption_hash(tiny_data_dir):
    batch = next(iter(pipeline.make_eval_iterator(
        tiny_data_dir, "synthetic_medical@tiny", "validation", image_size=16, max_len=24,
        tokenizer=tokenizers.load_tokenizer("bytes"), global_batch_size=8, process_index=0,
        process_count=1, text_field="caption")))
    assert "caption_hash" not in batch


# ---------------------------------------------------------------- training

@pytest.mark.slow
def test_grad_accumulation_sees_duplicates_across_micro_batches():
    """With 4 micro-batches, rows 0 and 1 (caption "A") fall into different micro-batches
    (row r of micro-batch m is global row m + 4r) and on different devices."""
    config = model_config("tiny")
    config.text.vocab_size = 100
    model = build_model(config)
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 17, size=32)
    h = hashes(False, n=32)
    h[[1, 6, 30]] = h[0]
    h[[13, 22]] = h[9]
    local = {"image": rng.normal(size=(32, 32, 32, 3)).astype(np.float32),
             "text_ids": rng.integers(1, 100, size=(32, 16)).astype(np.int32),
             "text_mask": (np.arange(16)[None, :] < lengths[:, None]).astype(np.int32),
             "caption_hash": h}
    batch = sharding.to_global_batch(train.model_inputs(local, "clip"), mesh)
    assert "caption_hash" in batch
    params = train.init_params(model, config, jax.random.key(0),
                               sharding.tree_shardings(model_params.abstract_params(model, config),
                                                       ((".*", "fsdp"),), mesh))
    results = {}
    for accum, on in ((1, True), (4, True), (4, False)):
        loss_fn = methods.bind_loss("clip", {"duplicate_captions": on})
        grad_fn = jax.jit(train.make_grad_fn(model, loss_fn, accum, mesh))
        results[accum, on] = grad_fn(params, {}, batch, jax.random.key(1))
    (loss_1, (_, merged)), grads_1 = results[1, True]
    (loss_4, (_, merged_4)), grads_4 = results[4, True]
    np.testing.assert_array_equal(np.asarray(merged_4.caption_hash), h)
    np.testing.assert_allclose(loss_4, loss_1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads_1), jax.tree.leaves(grads_4)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    assert abs(float(results[4, False][0][0]) - float(loss_4)) > 1e-3  # the hashes arrived


@pytest.mark.slow
def test_one_train_step_with_the_option_on(tiny_data_dir, tmp_path):
    """The trainer with the option on and micro-batches (the hashes travel through the
    pipeline, the split and the merge); the unit test above compares its numbers."""
    config = tiny_config(tiny_data_dir, max_steps=1, grad_accum_steps=2,
                         **{"loss.duplicate_captions": True, "eval.every_steps": 0})
    state = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_unsupported_method_fails_at_start_up(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir, method="filip")
    config.loss = ml_collections.ConfigDict({"duplicate_captions": True})
    with pytest.raises(UserError, match=r"^config\.loss\.duplicate_captions: method 'filip'"):
        train.setup(config, str(tmp_path))


def test_random_batches_carry_distinct_caption_hashes():
    from medclip_jax.data import synthetic_batch
    config = tiny_config("unused")
    config.model.text.vocab_size = 100
    batch = synthetic_batch.random_batch(config, 64)
    assert batch["caption_hash"].shape == (64, 2) and batch["caption_hash"].dtype == np.int32
    assert len({tuple(row) for row in batch["caption_hash"]}) == 64
