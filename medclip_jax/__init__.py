"""medclip_jax: vision-language contrastive pretraining and benchmarking for medical data."""

__version__ = "0.1.0"
