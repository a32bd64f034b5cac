"""DeCLIP (Li et al. 2022, arXiv 2110.05208): CLIP plus image self-supervision (SimSiam), text
self-supervision (MLM), multi-view and nearest-neighbour supervision. Its heads: the SimSiam
projector and predictor on the CLIP view and one augmented view, and BERT's MLM head on the
text tower (see `_views`); its inputs: one image view, one token-dropout text view and the MLM
inputs; its state: the FIFO queue of past text embeddings (`losses.declip`)."""

import ml_collections

from medclip_jax.losses import declip
from medclip_jax.methods import _views
from medclip_jax.methods._base import Method, MethodState

QUEUE_SIZES = {"tiny": 128, "rehearsal": 128, "demo": 4096, "paper": 65536}


def configure(config: ml_collections.ConfigDict, preset: str) -> None:
    config.loss = ml_collections.ConfigDict(dict(
        clip_weight=0.0, mvs_weight=0.4, iss_weight=0.2, tss_weight=0.2, nns_weight=0.2,
        mvs_pairs="all", nns_views="all", queue_size=QUEUE_SIZES.get(preset, 4096),
        duplicate_captions=False))
    ssl = config.model.ssl_head = _views.ssl_head_config(config.model.embed_dim, "simsiam")
    if preset == "paper":  # SimSiam's projector 2048-2048-2048 and bottleneck predictor 512.
        ssl.hidden_dim, ssl.out_dim, ssl.predictor_hidden_dim = 2048, 2048, 512
    else:
        ssl.predictor_hidden_dim = max(ssl.out_dim // 4, 1)
    config.model.mlm_head = True
    config.data.image_views = 1
    # The extra image view is paired with the caption in MVS: flips would swap "left" and
    # "right" in radiology reports.
    config.data.view_augment.flip = False
    config.data.text_views = 1
    config.data.mlm.enabled = True


def check_model(cfg: ml_collections.ConfigDict) -> None:
    _views.check_ssl_head(cfg)
    _views.check_mlm_head(cfg)


def reads(**loss_kwargs) -> set[str]:
    return declip.required_outputs(**loss_kwargs) - {"image_emb", "text_emb", "logit_scale"}


METHOD = Method(
    name="declip", title="DeCLIP (Li et al. 2022): CLIP + SimSiam, MLM, multi-view, NN",
    loss=declip.declip_loss_from_outputs, configure=configure, reads=reads,
    produced_by=_views.PRODUCED_BY, model_fields=("ssl_head", "mlm_head"),
    check_model=check_model, heads=_views.heads,
    inputs=_views.IMAGE_INPUTS + _views.TEXT_INPUTS,
    state=MethodState(init=declip.init_state_from_config,
                      update=declip.update_state_from_outputs),
    duplicate_captions=True, question="unimodal")
