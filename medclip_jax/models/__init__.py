"""Flax linen towers and the DualEncoder, built from `config.model` (see presets.py)."""

from medclip_jax.models.dual_encoder import (DualEncoder, EncoderOutputs, dummy_inputs,
                                             init_params)
from medclip_jax.models.presets import build_model, model_config, validate_model_config

__all__ = ["DualEncoder", "EncoderOutputs", "build_model", "dummy_inputs", "init_params",
           "model_config", "validate_model_config"]
