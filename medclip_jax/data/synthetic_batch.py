"""Random batches with every input a config's pipeline would produce (views, MLM inputs), for
benchmarks and tests that exercise the train step without reading data."""

import ml_collections
import numpy as np


def random_batch(config: ml_collections.ConfigDict, batch_size: int, seed: int = 0
                 ) -> dict[str, np.ndarray]:
    """A batch with every input the config's pipeline would produce (views, MLM), random;
    texts have random lengths (>= 3 tokens) and padding after them."""
    rng = np.random.default_rng(seed)
    size, length = config.model.image.image_size, config.model.text.max_len
    vocab = config.model.text.vocab_size
    lengths = rng.integers(min(3, length), length + 1, size=batch_size)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    batch = {"image": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
             "text_ids": rng.integers(3, vocab, size=(batch_size, length)).astype(np.int32),
             "text_mask": mask}
    if config.data.image_views:
        batch["image_views"] = rng.normal(
            size=(batch_size, config.data.image_views, size, size, 3)).astype(np.float32)
    if config.data.text_views:
        views = config.data.text_views
        batch["text_view_ids"] = rng.integers(3, vocab, size=(batch_size, views, length),
                                              dtype=np.int32)
        batch["text_view_mask"] = np.repeat(mask[:, None], views, axis=1)
    if config.data.mlm.enabled:
        predictions = config.data.mlm.max_predictions
        batch["mlm_ids"] = batch["text_ids"].copy()
        batch["mlm_positions"] = (rng.random((batch_size, predictions))
                                  * np.maximum(lengths[:, None] - 2, 1)).astype(np.int32) + 1
        batch["mlm_labels"] = rng.integers(3, vocab, size=(batch_size, predictions),
                                           dtype=np.int32)
        batch["mlm_weights"] = np.ones((batch_size, predictions), np.int32)
    # Random texts: distinct captions (`config.loss.duplicate_captions` finds no duplicates).
    batch["caption_hash"] = rng.integers(-2**31, 2**31, size=(batch_size, 2), dtype=np.int64
                                         ).astype(np.int32)
    return batch
