"""The heads that methods add to the towers: they appear only for their method and when
configured, and compute what their docstrings say (checked against the same modules applied by
hand)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from configs import base as config_base
from helpers import set_dotted
from medclip_jax import methods
from medclip_jax.errors import UserError
from medclip_jax.models import build_model, init_params

B, L, IMAGE, VOCAB = 3, 16, 32, 100


def config(method: str = "clip", **overrides):
    """The method's tiny `config.model` (its head fields included), with overrides."""
    cfg = methods.get(method).make_config(config_base.get_config("tiny"), "tiny").model
    cfg = ml_collections.ConfigDict(cfg.to_dict(), type_safe=False)  # wrong types on purpose
    cfg.text.vocab_size = VOCAB
    for key, value in overrides.items():
        set_dotted(cfg, key, value)
    return cfg


def names(params) -> set[str]:
    return {"/".join(k) for k in traverse_util.flatten_dict(params)}


def params_for(model):
    return init_params(model, jax.random.key(0), IMAGE, L)


def batch(views: int = 0, text_views: int = 0, predictions: int = 0, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = np.array([5, 16, 2])
    out = {"image": rng.normal(size=(B, IMAGE, IMAGE, 3)).astype(np.float32),
           "text_ids": rng.integers(3, VOCAB, size=(B, L)).astype(np.int32),
           "text_mask": (np.arange(L)[None] < lengths[:, None]).astype(np.int32)}
    if views:
        out["image_views"] = rng.normal(size=(B, views, IMAGE, IMAGE, 3)).astype(np.float32)
    if text_views:
        out["text_view_ids"] = rng.integers(3, VOCAB, size=(B, text_views, L)).astype(np.int32)
        out["text_view_mask"] = np.stack([out["text_mask"]] * text_views, axis=1)
    if predictions:
        out["mlm_ids"] = rng.integers(3, VOCAB, size=(B, L)).astype(np.int32)
        out["mlm_positions"] = rng.integers(0, 2, size=(B, predictions)).astype(np.int32)
        out["mlm_labels"] = rng.integers(3, VOCAB, size=(B, predictions)).astype(np.int32)
        out["mlm_weights"] = np.ones((B, predictions), np.int32)
    return {k: jnp.asarray(v) for k, v in out.items()}


def test_clip_tree_has_no_optional_parts_and_outputs_are_absent():
    model = build_model(config())
    params = params_for(model)
    assert {n.split("/")[0] for n in names(params)} == {
        "image", "text", "image_proj", "text_proj", "logit_scale"}
    out = model.apply({"params": params}, batch(), method=model.apply_batch)
    for field in ("logit_bias", "image_token_emb", "text_token_emb", "view_image_emb",
                  "view_text_emb", "ssl_emb", "simsiam_z", "simsiam_p", "mlm_logits"):
        assert field not in out.extras and getattr(out, field, None) is None, field


def test_logit_bias_param_and_output():
    model = build_model(config("siglip", init_logit_bias=-10.0, init_logit_scale=10.0),
                        "siglip")
    params = params_for(model)
    assert float(params["logit_bias"]) == -10.0
    out = model.apply({"params": params}, batch(), method=model.apply_batch)
    assert float(out.logit_bias) == -10.0
    np.testing.assert_allclose(out.logit_scale, 10.0, rtol=1e-6)


def test_shared_token_projection_applies_the_pooled_heads_to_every_token():
    model = build_model(config("filip", token_projection="shared"), "filip")
    params = params_for(model)
    assert "image_token_proj/kernel" not in names(params)
    out = model.apply({"params": params}, batch(), method=model.apply_batch)
    np.testing.assert_allclose(out.image_token_emb,
                               out.image_tokens @ params["image_proj"]["kernel"], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(out.text_token_emb,
                               out.text_tokens @ params["text_proj"]["kernel"], rtol=1e-5,
                               atol=1e-6)


def test_separate_token_projection_has_its_own_heads():
    model = build_model(config("gloria", token_projection="separate"), "gloria")
    params = params_for(model)
    assert {"image_token_proj/kernel", "text_token_proj/kernel"} <= names(params)
    out = model.apply({"params": params}, batch(), method=model.apply_batch)
    np.testing.assert_allclose(out.image_token_emb,
                               out.image_tokens @ params["image_token_proj"]["kernel"],
                               rtol=1e-5, atol=1e-6)
    assert out.text_token_emb.shape == (B, L, 32)


def test_image_views_share_the_tower_and_feed_the_simclr_head():
    model = build_model(config("slip", **{"ssl_head.kind": "simclr", "ssl_head.out_dim": 8}),
                        "slip")
    params = params_for(model)
    assert {"ssl_head/fc1/kernel", "ssl_head/ln2/scale", "ssl_head/fc3/kernel"} <= names(params)
    data = batch(views=2)
    out = model.apply({"params": params}, data, method=model.apply_batch)
    assert out.ssl_emb.shape == (B, 2, 8) and out.view_image_emb.shape == (B, 2, 32)
    # View v of example i is the same as encoding that image as the main image.
    second = dict(data, image=data["image_views"][:, 1])
    again = model.apply({"params": params}, second, method=model.apply_batch)
    np.testing.assert_allclose(out.view_image_emb[:, 1], again.image_emb, rtol=1e-5, atol=1e-6)


def test_simsiam_heads_see_the_clip_view_and_the_first_extra_view():
    model = build_model(config("declip", **{"ssl_head.kind": "simsiam", "ssl_head.out_dim": 8,
                                            "ssl_head.predictor_hidden_dim": 4}), "declip")
    params = params_for(model)
    out = model.apply({"params": params}, batch(views=1), method=model.apply_batch)
    assert out.simsiam_z.shape == (B, 2, 8) and out.simsiam_p.shape == (B, 2, 8)
    swapped = dict(batch(views=1))
    swapped["image"], swapped["image_views"] = (swapped["image_views"][:, 0],
                                                swapped["image"][:, None])
    again = model.apply({"params": params}, swapped, method=model.apply_batch)
    np.testing.assert_allclose(again.simsiam_z[:, ::-1], out.simsiam_z, rtol=1e-5, atol=1e-5)


def test_text_views_and_mlm_logits_at_the_masked_positions():
    model = build_model(config("declip", mlm_head=True), "declip")
    params = params_for(model)
    data = batch(text_views=2, predictions=4)
    out = model.apply({"params": params}, data, method=model.apply_batch)
    assert out.view_text_emb.shape == (B, 2, 32)
    assert out.mlm_logits.shape == (B, 4, VOCAB)
    np.testing.assert_array_equal(out.mlm_labels, data["mlm_labels"])
    _, tokens = model.apply({"params": params}, data["mlm_ids"], data["text_mask"],
                            method=model.encode_text)
    head = build_model(config("declip", mlm_head=True), "declip").heads.modules["mlm_head"]
    full = head.apply({"params": params["mlm_head"]}, tokens)
    expected = np.take_along_axis(np.asarray(full), np.asarray(data["mlm_positions"])[..., None],
                                  axis=1)
    np.testing.assert_allclose(out.mlm_logits, expected, rtol=1e-5, atol=1e-5)
    view = dict(data, text_ids=data["text_view_ids"][:, 1], text_mask=data["text_view_mask"][:, 1])
    again = model.apply({"params": params}, view, method=model.apply_batch)
    np.testing.assert_allclose(out.view_text_emb[:, 1], again.text_emb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,overrides,message", [
    ("filip", {"token_projection": "both"}, "token_projection"),
    ("slip", {"ssl_head.kind": "byol"}, "ssl_head.kind"),
    ("slip", {"ssl_head.kind": "simclr", "ssl_head.hidden_dim": 0}, "ssl_head.hidden_dim"),
    ("siglip", {"init_logit_bias": "x"}, "init_logit_bias"),
    ("declip", {"mlm_head": 1}, "mlm_head"),
])
def test_bad_optional_fields_are_named(method, overrides, message):
    with pytest.raises(UserError, match=message):
        build_model(config(method, **overrides), method)


@pytest.mark.parametrize("field,method", [("token_projection", "filip"),
                                          ("init_logit_bias", "siglip"),
                                          ("ssl_head", "slip"), ("mlm_head", "declip")])
def test_a_head_field_of_another_method_is_named(field, method):
    cfg = config()
    cfg[field] = config(method)[field]
    with pytest.raises(UserError, match=rf"^config\.model\.{field} is not a model field"):
        build_model(cfg)


@pytest.mark.parametrize("lock,frozen_blocks,proj_frozen", [
    ("none", None, False), ("tower", (0, 1), False), ("all", (0, 1), True), ("0", (), False),
    ("1", (0,), False), ("2", (0, 1), False)])
def test_lock_rules_freeze_exactly_the_named_parts(lock, frozen_blocks, proj_frozen):
    from medclip_jax import optim
    model = build_model(config())
    params = params_for(model)
    multipliers = traverse_util.flatten_dict(
        optim.lr_multipliers(params, config_base.lock_rules(lock, depth=2)), sep="/")
    for name, value in multipliers.items():
        if name.startswith("image/block_"):
            block = int(name.split("/")[1].split("_")[1])
            expected = frozen_blocks is not None and block in frozen_blocks
        elif name.startswith("image/ln_post"):
            expected = lock in ("tower", "all")
        elif name.startswith("image/"):  # embeddings and ln_pre
            expected = frozen_blocks is not None
        elif name.startswith("image_proj/"):
            expected = proj_frozen
        else:
            expected = False
        assert (value == 0.0) == expected, (lock, name, value)


def test_lock_block_rule_does_not_confuse_block_1_with_block_10():
    (pattern, _), = config_base.lock_rules("2", depth=12)
    import re
    assert re.search(pattern, "image/block_1/mlp/fc1/kernel")
    assert not re.search(pattern, "image/block_10/mlp/fc1/kernel")
    assert re.search(pattern, "image/pos_embed")
    with pytest.raises(UserError, match="lock"):
        config_base.lock_rules("13", depth=12)
    with pytest.raises(UserError, match="lock"):
        config_base.parse_arg("demo,freeze=3")


@pytest.mark.parametrize("method,switch", [
    ("filip", "token_projection"), ("gloria", "token_projection"),
    ("siglip", "init_logit_bias"), ("slip", "image_views"), ("declip", "mlm")])
def test_a_loss_without_its_model_outputs_names_the_config_switch(method, switch):
    import importlib
    from medclip_jax.data import synthetic_batch
    config = importlib.import_module(f"configs.{method}").get_config("tiny")
    config.model.text.vocab_size = VOCAB
    if switch == "image_views":
        config.data.image_views = 0
    elif switch == "mlm":
        config.data.mlm.enabled = False
    else:
        config.model[switch] = {"token_projection": "none", "init_logit_bias": None}[switch]
    model = build_model(config.model, method)
    data = {k: jnp.asarray(v) for k, v in synthetic_batch.random_batch(config, 2).items()}
    outputs = jax.eval_shape(lambda: model.apply(
        {"params": params_for(model)}, data, method=model.apply_batch))
    loss = methods.bind_loss(method, config.loss)
    state = methods.init_method_state(method, config.loss, config.model.embed_dim)
    with pytest.raises(UserError, match=switch):
        loss(outputs, state)


def test_configs_saved_before_methods_owned_their_heads_still_build_the_same_model():
    from medclip_jax.models import presets
    old_heads = {"init_logit_bias": None, "token_projection": "none", "mlm_head": False,
                 "ssl_head": ml_collections.ConfigDict(dict(kind="none", hidden_dim=128,
                                                            out_dim=32, predictor_hidden_dim=32,
                                                            activation="relu"))}
    for method in ("clip", "siglip", "filip", "slip", "declip"):
        old = config(method).to_dict()
        for name, off in old_heads.items():
            old.setdefault(name, off)
        old.pop("text_projection")  # older still: saved before the text head kind existed
        restored = presets.saved_model_config(ml_collections.ConfigDict(old), method)
        assert restored.to_dict() == config(method).to_dict(), method
        build_model(restored, method)
    old = config().to_dict()
    old["ssl_head"] = config("slip").ssl_head.to_dict()
    with pytest.raises(UserError, match=r"^config\.model\.ssl_head='simclr': method 'clip'"):
        presets.saved_model_config(ml_collections.ConfigDict(old), "clip")
