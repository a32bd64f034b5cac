"""SLIP and DeCLIP against naive float64 loop references; the DeCLIP queue; 1 vs 8 devices."""

import inspect
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from helpers import numeric_grad
from medclip_jax import sharding
from medclip_jax.errors import UserError
from medclip_jax.losses import declip, slip

B, E, D, NP, K, Q = 6, 4, 3, 3, 5, 9  # batch, embed, SSL dim, MLM slots, vocab, queue


# ---------------------------------------------------------------- naive float64 references

def cos(x, y):
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def ref_clip(image, text, scale):
    n = len(image)
    s = [[scale * cos(image[i], text[j]) for j in range(n)] for i in range(n)]
    i2t = sum(np.log(sum(np.exp(s[i][j]) for j in range(n))) - s[i][i] for i in range(n)) / n
    t2i = sum(np.log(sum(np.exp(s[j][i]) for j in range(n))) - s[i][i] for i in range(n)) / n
    return 0.5 * (i2t + t2i)


def ref_nt_xent(a, b, tau):
    """Chen et al. 2020: each of the 2N samples, positive = its other view, self excluded."""
    n = len(a)
    u = list(a) + list(b)
    total = 0.0
    for k in range(2 * n):
        pos = k + n if k < n else k - n
        num = np.exp(cos(u[k], u[pos]) / tau)
        den = sum(np.exp(cos(u[k], u[m]) / tau) for m in range(2 * n) if m != k)
        total += -np.log(num / den)
    return total / (2 * n)


def ref_slip(image, text, scale, ssl, tau, weight):
    return ref_clip(image, text, scale) + weight * ref_nt_xent(ssl[:, 0], ssl[:, 1], tau)


def ref_simsiam(p, z):
    def d(p_view, z_view):
        return -np.mean([cos(p_view[i], z_view[i]) for i in range(len(p_view))])
    return 0.5 * d(p[:, 0], z[:, 1]) + 0.5 * d(p[:, 1], z[:, 0])


def ref_mlm(logits, labels, weights):
    terms = []
    for i in range(logits.shape[0]):
        for k in range(logits.shape[1]):
            if weights[i, k] == 1:
                row = logits[i, k]
                terms.append(np.log(np.sum(np.exp(row))) - row[labels[i, k]])
    return sum(terms) / len(terms) if terms else 0.0


def ref_mvs(images, texts, scale, pairs):
    losses = {(a, b): ref_clip(images[a], texts[b], scale)
              for a in range(len(images)) for b in range(len(texts))}
    if pairs == "all":
        return sum(losses.values()) / len(losses)
    return sum(v for key, v in losses.items() if key != (0, 0))


def ref_nearest(query, queue, valid):
    best, best_sim = None, -np.inf
    for q in range(len(queue)):
        if valid[q] and cos(query, queue[q]) > best_sim:
            best, best_sim = q, cos(query, queue[q])
    return queue[best]


def ref_nns(images, texts, scale, queue, valid):
    if not any(valid):
        return 0.0
    losses = []
    for text in texts:
        nn = [ref_nearest(t, queue, valid) for t in text]
        for image in images:
            n = len(image)
            losses.append(sum(
                np.log(sum(np.exp(scale * cos(image[i], nn[j])) for j in range(n)))
                - scale * cos(image[i], nn[i]) for i in range(n)) / n)
    return sum(losses) / len(losses)


def ref_declip(x, state, clip_weight=0.0, mvs_weight=0.4, iss_weight=0.2, tss_weight=0.2,
               nns_weight=0.2, mvs_pairs="all", nns_views="all"):
    scale = x["logit_scale"]
    images = [x["image_emb"], x["view_image_emb"][:, 0]]
    texts = [x["text_emb"], x["view_text_emb"][:, 0]]
    total = clip_weight * ref_clip(images[0], texts[0], scale)
    if mvs_weight:
        total += mvs_weight * ref_mvs(images, texts, scale, mvs_pairs)
    if iss_weight:
        total += iss_weight * ref_simsiam(x["simsiam_p"], x["simsiam_z"])
    if tss_weight:
        total += tss_weight * ref_mlm(x["mlm_logits"], x["mlm_labels"], x["mlm_weights"])
    if nns_weight:
        if nns_views == "clip":
            images, texts = images[:1], texts[:1]
        total += nns_weight * ref_nns(images, texts, scale, state["text_queue"],
                                      state["queue_valid"])
    return total


# ---------------------------------------------------------------- inputs

FLOAT_FIELDS = ("image_emb", "text_emb", "view_image_emb", "view_text_emb", "simsiam_z",
                "simsiam_p", "mlm_logits", "logit_scale")


def declip_inputs(seed=0, n=B):
    rng = np.random.default_rng(seed)
    weights = (rng.random((n, NP)) < 0.6).astype(np.int32)
    weights[0] = 1
    weights[1] = 0  # a text with no masked token at all
    labels = rng.integers(0, K, (n, NP)).astype(np.int32)
    labels[weights == 0] = K + 7  # padding slots hold out-of-vocabulary junk
    return {"image_emb": rng.normal(size=(n, E)), "text_emb": rng.normal(size=(n, E)),
            "view_image_emb": rng.normal(size=(n, 1, E)),
            "view_text_emb": rng.normal(size=(n, 1, E)),
            "simsiam_z": rng.normal(size=(n, 2, D)), "simsiam_p": rng.normal(size=(n, 2, D)),
            "mlm_logits": rng.normal(size=(n, NP, K)), "logit_scale": np.array(3.0),
            "mlm_labels": labels, "mlm_weights": weights}


def queue_state(x, seed=1, size=Q, filled=5):
    """Unit-norm valid entries; invalid slots hold copies of the batch's own texts (cosine 1),
    so they would win every nearest-neighbour search if the validity mask were ignored."""
    rng = np.random.default_rng(seed)
    queue = rng.normal(size=(size, E))
    queue /= np.linalg.norm(queue, axis=1, keepdims=True)
    valid = np.zeros(size, bool)
    valid[rng.permutation(size)[:filled]] = True
    texts = np.concatenate([x["text_emb"], x["view_text_emb"][:, 0]])
    invalid = np.flatnonzero(~valid)
    queue[invalid] = texts[np.arange(len(invalid)) % len(texts)]
    return {"text_queue": queue, "queue_valid": valid, "queue_ptr": np.int32(filled % size)}


def as_jax(x):
    return {k: jnp.asarray(v, jnp.float32 if k in FLOAT_FIELDS or k == "text_queue" else None)
            for k, v in x.items()}


def outputs_of(x):
    return types.SimpleNamespace(**{name: x.get(name) for name in (
        "image_emb", "text_emb", "logit_scale", "view_image_emb", "view_text_emb", "ssl_emb",
        "simsiam_z", "simsiam_p", "mlm_logits", "mlm_labels", "mlm_weights")})


class Guarded:
    """Outputs whose `forbidden` fields fail the test when read."""

    def __init__(self, x, forbidden):
        self._x, self._forbidden = x, set(forbidden)

    def __getattr__(self, name):
        assert name not in self._forbidden, f"the loss read outputs.{name}"
        return self._x.get(name)


# ---------------------------------------------------------------- SLIP

def slip_inputs(seed=0, n=B):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, E)), rng.normal(size=(n, E)), rng.normal(size=(n, 2, D)))


@pytest.mark.parametrize("tau,weight", [(0.1, 1.0), (0.5, 0.3)])
def test_slip_matches_reference_with_gradients(tau, weight):
    image, text, ssl = slip_inputs()
    scale = 4.0

    def ours(image, text, ssl):
        outputs = types.SimpleNamespace(image_emb=image, text_emb=text, ssl_emb=ssl,
                                        logit_scale=jnp.float32(scale))
        return slip.slip_loss_from_outputs(outputs, ssl_temperature=tau, ssl_weight=weight)[0]

    args = [jnp.asarray(a, jnp.float32) for a in (image, text, ssl)]
    np.testing.assert_allclose(ours(*args), ref_slip(image, text, scale, ssl, tau, weight),
                               rtol=1e-5)
    grads = jax.grad(ours, argnums=(0, 1, 2))(*args)
    numeric = [numeric_grad(lambda v: ref_slip(v, text, scale, ssl, tau, weight), image),
               numeric_grad(lambda v: ref_slip(image, v, scale, ssl, tau, weight), text),
               numeric_grad(lambda v: ref_slip(image, text, scale, v, tau, weight), ssl)]
    for got, want in zip(grads, numeric):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_nt_xent_metrics_and_perfect_views():
    image, text, ssl = slip_inputs()
    loss, metrics = slip.slip_loss(jnp.asarray(image), jnp.asarray(text), jnp.float32(2.0),
                                   jnp.asarray(ssl))
    np.testing.assert_allclose(metrics["ssl_loss"],
                               ref_nt_xent(ssl[:, 0], ssl[:, 1], 0.1), rtol=1e-5)
    np.testing.assert_allclose(metrics["clip_loss"], ref_clip(image, text, 2.0), rtol=1e-5)
    np.testing.assert_allclose(loss, metrics["clip_loss"] + metrics["ssl_loss"], rtol=1e-6)
    # orthogonal images, identical views: every positive wins, loss -> -log(1/(1+(2N-2)e^-10))
    views = np.eye(B, dtype=np.float32)
    ssl_loss, m = slip.nt_xent_loss(jnp.asarray(views), jnp.asarray(views), 0.1)
    assert float(m["ssl_batch_acc"]) == 1.0
    np.testing.assert_allclose(ssl_loss, np.log1p((2 * B - 2) * np.exp(-10.0)), atol=1e-6)


def test_slip_weight_zero_does_not_read_ssl_emb():
    image, text, _ = slip_inputs()
    x = {"image_emb": jnp.asarray(image), "text_emb": jnp.asarray(text),
         "logit_scale": jnp.float32(3.0)}
    loss, metrics = slip.slip_loss_from_outputs(Guarded(x, {"ssl_emb"}), ssl_weight=0.0)
    np.testing.assert_allclose(loss, ref_clip(image, text, 3.0), rtol=1e-5)
    assert "ssl_loss" not in metrics
    assert slip.required_outputs(ssl_weight=0.0) == {"image_emb", "text_emb", "logit_scale"}
    assert "ssl_emb" in slip.required_outputs()


# ---------------------------------------------------------------- DeCLIP terms

def test_simsiam_matches_reference_and_stops_gradient_at_z():
    x = declip_inputs()
    p, z = jnp.asarray(x["simsiam_p"], jnp.float32), jnp.asarray(x["simsiam_z"], jnp.float32)
    np.testing.assert_allclose(declip.simsiam_loss(p, z),
                               ref_simsiam(x["simsiam_p"], x["simsiam_z"]), rtol=1e-5)
    grad_p, grad_z = jax.grad(declip.simsiam_loss, argnums=(0, 1))(p, z)
    np.testing.assert_allclose(
        grad_p, numeric_grad(lambda v: ref_simsiam(v, x["simsiam_z"]), x["simsiam_p"]),
        rtol=1e-4, atol=1e-6)
    assert not np.any(grad_z)  # sg(z): z gets no gradient from this loss at all
    assert np.any(numeric_grad(lambda v: ref_simsiam(x["simsiam_p"], v), x["simsiam_z"]))


def test_mlm_matches_reference_with_padding_and_no_predictions():
    x = declip_inputs()
    args = (jnp.asarray(x["mlm_logits"], jnp.float32), jnp.asarray(x["mlm_labels"]),
            jnp.asarray(x["mlm_weights"]))
    loss, acc = declip.mlm_loss(*args)
    np.testing.assert_allclose(loss, ref_mlm(x["mlm_logits"], x["mlm_labels"],
                                             x["mlm_weights"]), rtol=1e-5)
    assert 0.0 <= float(acc) <= 1.0
    grad = jax.grad(lambda logits: declip.mlm_loss(logits, *args[1:])[0])(args[0])
    np.testing.assert_allclose(
        grad, numeric_grad(lambda v: ref_mlm(v, x["mlm_labels"], x["mlm_weights"]),
                           x["mlm_logits"]), rtol=1e-4, atol=1e-6)
    assert not np.any(np.asarray(grad)[x["mlm_weights"] == 0])
    none = jnp.zeros_like(args[2])
    assert float(declip.mlm_loss(args[0], args[1], none)[0]) == 0.0


@pytest.mark.parametrize("pairs", ["all", "extra"])
def test_multi_view_matches_reference(pairs):
    x = declip_inputs()
    images = declip.stack_views(jnp.asarray(x["image_emb"], jnp.float32),
                                jnp.asarray(x["view_image_emb"], jnp.float32))
    texts = declip.stack_views(jnp.asarray(x["text_emb"], jnp.float32),
                               jnp.asarray(x["view_text_emb"], jnp.float32))
    want = ref_mvs([x["image_emb"], x["view_image_emb"][:, 0]],
                   [x["text_emb"], x["view_text_emb"][:, 0]], 3.0, pairs)
    np.testing.assert_allclose(declip.multi_view_loss(images, texts, jnp.float32(3.0), pairs),
                               want, rtol=1e-5)


def test_nearest_neighbour_search_uses_valid_entries_only():
    x = declip_inputs()
    state = queue_state(x)
    got = declip.nearest_neighbours(jnp.asarray(x["text_emb"], jnp.float32),
                                    jnp.asarray(state["text_queue"], jnp.float32),
                                    jnp.asarray(state["queue_valid"]))
    want = np.stack([ref_nearest(t, state["text_queue"], state["queue_valid"])
                     for t in x["text_emb"]])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    valid_rows = state["text_queue"][state["queue_valid"]]
    assert all(any(np.allclose(row, v) for v in valid_rows) for row in np.asarray(got))


@pytest.mark.parametrize("views", ["all", "clip"])
def test_nns_matches_reference_and_gives_texts_no_gradient(views):
    x = declip_inputs()
    state = queue_state(x)
    images = [x["image_emb"], x["view_image_emb"][:, 0]]
    texts = [x["text_emb"], x["view_text_emb"][:, 0]]
    if views == "clip":
        images, texts = images[:1], texts[:1]
    queue = jnp.asarray(state["text_queue"], jnp.float32)
    valid = jnp.asarray(state["queue_valid"])

    def ours(images, texts):
        return declip.nns_loss(images, texts, jnp.float32(3.0), queue, valid)

    img = jnp.asarray(np.stack(images, 1), jnp.float32)
    txt = jnp.asarray(np.stack(texts, 1), jnp.float32)
    want = ref_nns(images, texts, 3.0, state["text_queue"], state["queue_valid"])
    np.testing.assert_allclose(ours(img, txt), want, rtol=1e-5)
    grad_img, grad_txt = jax.grad(ours, argnums=(0, 1))(img, txt)
    img64 = np.stack(images, 1)
    numeric = numeric_grad(lambda v: ref_nns([v[:, a] for a in range(v.shape[1])], texts, 3.0,
                                             state["text_queue"], state["queue_valid"]), img64)
    np.testing.assert_allclose(grad_img, numeric, rtol=1e-4, atol=1e-6)
    assert not np.any(grad_txt)  # the neighbour is a constant; argmax has no gradient


def test_nns_is_zero_without_gradient_while_the_queue_is_empty():
    x = declip_inputs()
    state = declip.declip_init_state(Q, E)
    img = jnp.asarray(x["image_emb"], jnp.float32)[:, None]
    txt = jnp.asarray(x["text_emb"], jnp.float32)[:, None]
    fn = jax.value_and_grad(lambda i, t, s: declip.nns_loss(i, t, s, state["text_queue"],
                                                            state["queue_valid"]),
                            argnums=(0, 1, 2))
    value, grads = fn(img, txt, jnp.float32(3.0))
    assert float(value) == 0.0
    for g in grads:
        assert np.all(np.isfinite(g)) and not np.any(g)


# ---------------------------------------------------------------- DeCLIP total

CONFIGS = {
    "code_defaults": {},
    "paper": {"clip_weight": 0.4, "mvs_weight": 0.2, "mvs_pairs": "extra"},
    "nns_clip_view": {"clip_weight": 0.3, "nns_views": "clip", "tss_weight": 0.5},
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_declip_total_matches_reference_with_gradients(name):
    knobs = CONFIGS[name]
    x = declip_inputs()
    state = queue_state(x)
    ints = {k: jnp.asarray(x[k]) for k in ("mlm_labels", "mlm_weights")}
    jstate = as_jax(state)

    def ours(floats):
        outputs = outputs_of({**floats, **ints})
        return declip.declip_loss_from_outputs(outputs, jstate, queue_size=Q, **knobs)

    floats = {k: jnp.asarray(x[k], jnp.float32) for k in FLOAT_FIELDS}
    loss, metrics = ours(floats)
    np.testing.assert_allclose(loss, ref_declip(x, state, **knobs), rtol=1e-5)
    for key in ("clip_loss", "mvs_loss", "iss_loss", "tss_loss", "tss_acc", "nns_loss",
                "nns_queue_fill", "i2t_batch_acc"):
        assert key in metrics
    grads = jax.grad(lambda f: ours(f)[0])(floats)
    assert not np.any(grads["simsiam_z"])  # stop-gradient on SimSiam's targets
    for field in FLOAT_FIELDS:
        if field == "simsiam_z":
            continue

        def ref_of(v, field=field):
            return ref_declip({**x, field: v}, state, **knobs)
        np.testing.assert_allclose(grads[field], numeric_grad(ref_of, np.asarray(x[field])),
                                   rtol=1e-4, atol=1e-6, err_msg=field)


@pytest.mark.parametrize("off", ["mvs_weight", "iss_weight", "tss_weight", "nns_weight"])
def test_switching_a_term_off_removes_it_and_its_inputs(off):
    x = declip_inputs()
    state = queue_state(x)
    knobs = {off: 0.0, "clip_weight": 0.25}
    unused = set(declip.required_outputs()) - set(declip.required_outputs(**knobs))
    expected_unused = {"mvs_weight": set(), "iss_weight": {"simsiam_z", "simsiam_p"},
                       "tss_weight": {"mlm_logits", "mlm_labels", "mlm_weights"},
                       "nns_weight": set()}[off]
    assert unused == expected_unused
    if off == "mvs_weight":  # the views are still needed by NNS; with NNS on the CLIP view only
        both = {**knobs, "nns_views": "clip"}
        unused = set(declip.required_outputs()) - set(declip.required_outputs(**both))
        assert unused == {"view_image_emb", "view_text_emb"}
        knobs = both
    jx = {**as_jax(x), **{k: jnp.asarray(x[k]) for k in ("mlm_labels", "mlm_weights")}}
    outputs = Guarded(jx, unused)
    method_state = None if off == "nns_weight" else as_jax(state)
    loss, metrics = declip.declip_loss_from_outputs(outputs, method_state, queue_size=Q, **knobs)
    np.testing.assert_allclose(loss, ref_declip(x, state, **knobs), rtol=1e-5)
    assert off.replace("_weight", "_loss") not in metrics


def test_required_outputs():
    assert declip.required_outputs() == {
        "image_emb", "text_emb", "logit_scale", "view_image_emb", "view_text_emb",
        "simsiam_z", "simsiam_p", "mlm_logits", "mlm_labels", "mlm_weights"}
    assert declip.required_outputs(mvs_weight=0, iss_weight=0, tss_weight=0, nns_weight=0,
                                   clip_weight=1) == {"image_emb", "text_emb", "logit_scale"}


# ---------------------------------------------------------------- the queue

def naive_fifo(size, batches):
    """One row at a time into a ring buffer: the slot after the last written one is the oldest."""
    queue, valid, ptr = np.zeros((size, E)), np.zeros(size, bool), 0
    for batch in batches:
        for row in batch:
            queue[ptr], valid[ptr] = row / np.linalg.norm(row), True
            ptr = (ptr + 1) % size
    return queue, valid, ptr


def test_queue_fifo_order_wraps_around_and_tracks_validity():
    rng = np.random.default_rng(3)
    batches = [rng.normal(size=(3, E)) for _ in range(4)]
    state = declip.declip_init_state(7, E)
    assert state["text_queue"].shape == (7, E) and not np.any(state["queue_valid"])
    update = jax.jit(declip.declip_update_state)
    for i, batch in enumerate(batches):
        eager = declip.declip_update_state(state, jnp.asarray(batch, jnp.float32))
        state = update(state, jnp.asarray(batch, jnp.float32))
        for key in state:
            np.testing.assert_allclose(eager[key], state[key], rtol=1e-6)
            assert state[key].dtype == eager[key].dtype
        queue, valid, ptr = naive_fifo(7, batches[:i + 1])
        np.testing.assert_allclose(state["text_queue"], queue, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(state["queue_valid"], valid)
        assert int(state["queue_ptr"]) == ptr
    assert int(np.sum(state["queue_valid"])) == 7  # 12 rows through a queue of 7
    # the 5 oldest rows were overwritten: the newest batch's rows sit at slots 2, 3, 4
    np.testing.assert_allclose(state["text_queue"][2:5],
                               batches[-1] / np.linalg.norm(batches[-1], axis=1, keepdims=True),
                               rtol=1e-6)


def test_queue_entries_are_stop_gradient_and_the_size_is_checked():
    state = declip.declip_init_state(4, E)
    text = jnp.ones((3, E))
    grad = jax.grad(lambda t: jnp.sum(declip.declip_update_state(state, t)["text_queue"]))(text)
    assert not np.any(grad)
    with pytest.raises(UserError, match="config.loss.queue_size"):
        declip.declip_update_state(state, jnp.ones((5, E)))
    with pytest.raises(UserError, match="config.loss.queue_size"):
        declip.declip_init_state(0, E)


def test_state_hooks_enqueue_both_text_views_after_the_loss():
    x = as_jax(declip_inputs())
    outputs = outputs_of(x)
    kwargs = {"queue_size": 16}
    state = declip.init_state_from_config(kwargs, E)
    loss_before, metrics = declip.declip_loss_from_outputs(outputs, state, **kwargs)
    assert float(metrics["nns_loss"]) == 0.0 and float(metrics["nns_queue_fill"]) == 0.0
    state = declip.update_state_from_outputs(state, outputs, kwargs)
    assert int(np.sum(state["queue_valid"])) == 2 * B and int(state["queue_ptr"]) == 2 * B
    texts = np.concatenate([np.asarray(x["text_emb"]), np.asarray(x["view_text_emb"][:, 0])])
    np.testing.assert_allclose(state["text_queue"][:2 * B],
                               texts / np.linalg.norm(texts, axis=1, keepdims=True), rtol=1e-6)
    _, metrics = declip.declip_loss_from_outputs(outputs, state, **kwargs)
    assert float(metrics["nns_loss"]) > 0.0
    clip_only = {"queue_size": 16, "nns_views": "clip"}
    state = declip.update_state_from_outputs(declip.init_state_from_config(clip_only, E),
                                             outputs, clip_only)
    assert int(np.sum(state["queue_valid"])) == B
    off = {"nns_weight": 0.0}
    assert declip.init_state_from_config(off, E) == {}
    assert declip.update_state_from_outputs({}, Guarded({}, {"text_emb", "view_text_emb"}),
                                            off) == {}
    # the registry binds (outputs, method_state, **config.loss)
    inspect.signature(declip.declip_loss_from_outputs).bind(None, None, **clip_only)


# ---------------------------------------------------------------- knobs

@pytest.mark.parametrize("knobs,field", [
    ({"iss_weight": -0.1}, "iss_weight"),
    ({"nns_weight": float("nan")}, "nns_weight"),
    ({"clip_weight": 0.0, "mvs_weight": 0.0}, "mvs_weight"),
    ({"mvs_pairs": "sum"}, "mvs_pairs"),
    ({"nns_views": "both"}, "nns_views"),
    ({"queue_size": 0}, "queue_size"),
    ({"queue_size": 4}, "queue_size"),  # the state holds Q entries
])
def test_bad_declip_knobs_raise_user_error(knobs, field):
    x = as_jax(declip_inputs())
    state = as_jax(queue_state(declip_inputs()))
    with pytest.raises(UserError, match=f"config.loss.{field}"):
        declip.declip_loss_from_outputs(outputs_of(x), state, **{"queue_size": Q, **knobs})


def test_missing_outputs_and_bad_slip_knobs_raise_user_error():
    x = as_jax(declip_inputs())
    del x["simsiam_z"]
    with pytest.raises(UserError, match="config.loss.iss_weight"):
        declip.declip_loss_from_outputs(outputs_of(x), None, nns_weight=0.0)
    image, text, ssl = (jnp.asarray(a) for a in slip_inputs())
    with pytest.raises(UserError, match="config.loss.ssl_temperature"):
        slip.slip_loss(image, text, jnp.float32(1.0), ssl, ssl_temperature=0.0)
    with pytest.raises(UserError, match="config.loss.ssl_weight"):
        slip.slip_loss(image, text, jnp.float32(1.0), ssl, ssl_weight=-1.0)
    with pytest.raises(UserError, match="2 SimCLR views"):
        slip.slip_loss(image, text, jnp.float32(1.0), jnp.concatenate([ssl, ssl], axis=1))


# ---------------------------------------------------------------- 1 vs 8 devices

@pytest.mark.slow
def test_same_on_one_and_eight_devices():
    n = 16
    x = declip_inputs(seed=5, n=n)
    _, _, ssl = slip_inputs(seed=5, n=n)
    state = queue_state(x, size=40, filled=23)
    floats = {k: np.asarray(x[k], np.float32) for k in FLOAT_FIELDS}
    floats["ssl_emb"] = ssl.astype(np.float32)
    ints = {k: x[k] for k in ("mlm_labels", "mlm_weights")}
    jstate = {k: np.asarray(v, np.float32 if k == "text_queue" else None)
              for k, v in state.items()}

    def step(floats, ints, state):
        outputs = outputs_of({**floats, **ints})

        def total(f):
            o = outputs_of({**f, **ints})
            d, _ = declip.declip_loss_from_outputs(o, state, queue_size=40)
            s, _ = slip.slip_loss_from_outputs(o)
            return d + 0.5 * s

        value, grads = jax.value_and_grad(total)(floats)
        return value, grads, declip.update_state_from_outputs(state, outputs, {})

    fn = jax.jit(step)
    single = fn(floats, ints, jstate)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    batch, replicated = NamedSharding(mesh, P(sharding.BATCH_AXES)), NamedSharding(mesh, P())

    def put(tree):
        return {k: jax.device_put(v, replicated if k == "logit_scale" else batch)
                for k, v in tree.items()}

    sharded = fn(put(floats), put(ints), jax.device_put(jstate, replicated))
    assert len(sharded[1]["image_emb"].sharding.device_set) == 8
    np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5)
    for key in single[1]:
        np.testing.assert_allclose(sharded[1][key], single[1][key], rtol=1e-5, atol=1e-7,
                                   err_msg=key)
    for key in single[2]:
        np.testing.assert_allclose(sharded[2][key], single[2][key], rtol=1e-6, err_msg=key)
