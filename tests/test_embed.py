"""The eval embedding loop: padded, masked, sharded batches give every record exactly once."""

import jax
import numpy as np

from conftest import tiny_config
from medclip_jax.models import params as model_params
from medclip_jax import sharding, train
from medclip_jax.data import pipeline, tokenizers
from medclip_jax.evaluation import embed
from medclip_jax.models import DualEncoder, build_model


def test_every_record_once_and_equal_to_unbatched_embeddings(tiny_data_dir):
    config = tiny_config(tiny_data_dir)
    tokenizer = tokenizers.load_tokenizer(config.data.tokenizer)
    config.model = train.model_config_with_vocab(config.model, tokenizer)
    model = build_model(config.model)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    params = train.init_params(model, config.model, jax.random.key(1),
                               model_params.param_shardings(model, config, mesh))
    # 48 test records in global batches of 40: the second batch is 32 rows of padding.
    batches = list(pipeline.make_eval_iterator(
        tiny_data_dir, "synthetic_medical@tiny", "test", image_size=32, max_len=16,
        tokenizer=tokenizer, global_batch_size=40, process_index=0, process_count=1,
        data_config=config.data, text_field="caption"))
    assert len(batches) == 2 and int(batches[1]["valid"].sum()) == 8
    out = embed.embed_batches(model, params, batches, mesh)
    np.testing.assert_array_equal(out["index"], np.arange(48))
    assert out["image_emb"].shape == (48, config.model.embed_dim)

    rows = np.concatenate([b["valid"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])[rows]
    ids = np.concatenate([b["text_ids"] for b in batches])[rows]
    mask = np.concatenate([b["text_mask"] for b in batches])[rows]
    host_params = jax.tree.map(np.asarray, params)
    for i in (0, 7, 39, 40, 47):
        image_emb, _ = model.apply({"params": host_params}, images[i:i + 1],
                                   method=DualEncoder.encode_image)
        text_emb, _ = model.apply({"params": host_params}, ids[i:i + 1], mask[i:i + 1],
                                  method=DualEncoder.encode_text)
        np.testing.assert_allclose(out["image_emb"][i], image_emb[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["text_emb"][i], text_emb[0], rtol=1e-4, atol=1e-5)
