"""The methods' loss math, one module per method, each a pure function of arrays (testable with
numpy inputs, identical on 1 or N devices).

Each module has the loss itself (`clip.clip_loss(image_emb, text_emb, logit_scale, ...)`) and
an adapter from the model's outputs (`clip.clip_loss_from_outputs(outputs, **config.loss)`).
What else a method is (its heads, inputs, state, config defaults) and the registry by
`config.method` are in `medclip_jax.methods`.

Duplicate captions (``config.loss.duplicate_captions=True``, for the methods whose adapter
takes it): pairs with identical normalised captions in the global batch are positives; the
targets are defined in `clip`, the caption hash comes from the input pipeline through
`outputs.caption_hash`.
"""
