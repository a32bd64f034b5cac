"""The shared base config: every hyperparameter that the methods have in common.

Method configs (``configs/<method>.py``) import this, select their loss and change only what the
method needs, so every method trains under one identical setup.

Fields (types and defaults: ``medclip_jax/settings.py``, listed in ``configs/FIELDS.md``;
parsed once at start-up, where an unknown key, a wrong type or an impossible value stops the run
with one line naming ``config.<field>``):
  method            a method of ``medclip_jax.methods`` (one module each: loss, heads, inputs,
                    state, defaults); ``configs/<method>.py`` is `method_config`.
  loss              keyword arguments for that method's loss (method-specific).
                    ``loss.duplicate_captions`` (CLIP, ConVIRT, CyCLIP, SigLIP, SLIP, DeCLIP,
                    VSE++; default False): pairs of the global batch whose captions are
                    identical after normalisation (case, Unicode NFKC, whitespace, trailing
                    punctuation) are positives, not negatives; InfoNCE targets become uniform
                    over them, SigLIP labels them +1 (``medclip_jax/losses/clip.py``).
  model             the towers (see ``medclip_jax/models/presets.py``), plus the fields of the
                    method's heads; ``text.vocab_size <= 0`` takes the tokenizer's vocabulary
                    size.
  data              input pipeline (see ``medclip_jax/data/pipeline.py``), including the extra
                    image/text views and MLM inputs that SLIP and DeCLIP switch on.
  batch_size        global batch size, split over all data-parallel devices.
  grad_accum_steps  split each global batch into this many micro-batches for memory; the loss
                    still sees the whole batch (every negative), see train.make_train_step.
  num_epochs        the schedule length is derived from it and the dataset size.
  max_steps         if > 0, stop after this many steps (smoke tests, benchmarks).
  seed              params init, data order, augmentation, dropout and FLIP's patch subsets.
  unmasked_tuning_steps
                    FLIP: the run's last N steps keep every patch (the steps before drop
                    ``1 - model.image.token_keep_fraction`` of them); 0 = none.
  log_every_steps   train metrics are averaged and written every this many steps.
  optim             AdamW, warmup + cosine, clipping, no-decay and lr-multiplier/freeze rules.
  mesh              device mesh axis sizes (-1 = all remaining devices).
  sharding          ``(regex, spec)`` partition rules for params (the optimizer state follows
                    them) and the size below which an ``fsdp`` leaf stays replicated.
  checkpoint        save interval and retention.
  eval              in-loop validation: split, interval, size, recall K; ``evaluators``
                    schedules any evaluator every N steps (``"zero_shot:100"``): zero_shot,
                    retrieval, linear_probe, vqa, set by ``eval.<name>`` as in configs/eval.py.
  init              published weights to start from: ``text="hf_bert:/dir"`` or ``"hf_clip:/dir"``,
                    ``image="hf_clip:/dir"``; "" = random (``medclip_jax/pretrained/init.py``).
                    ``init.logit_scale``: take the logit scale from the CLIP folder when both
                    towers come from it. The ``paper`` preset adds ``init.clip``: one HF CLIP
                    folder that both towers, the projections and the tokenizer come from.

Every method config takes ``<preset>[,lock=<what>][,text=<tower>]`` (`parse_arg`):

  lock=tower|all|none|<k>   freeze part of the image tower (`lock_rules`): the transfer presets.
  text=minilm|hf_bert:/dir  a BERT text tower with the architecture, weights and tokenizer of
                            that folder (``minilm``: the all-MiniLM-L6-v2 package), mean-pooled.
"""

import ml_collections

from medclip_jax import settings
from medclip_jax.errors import UserError
from medclip_jax.models.presets import model_config

OPTIONS = ("lock", "text")
#: The image-tower params in front of the first block (frozen with any `lock=<k>`).
IMAGE_EMBEDDINGS = "patch_embed|cls_token|pos_embed|ln_pre"


def get_base_config() -> ml_collections.ConfigDict:
    """Every default of `medclip_jax.settings.TrainSettings` (the one home of the defaults of
    ``data``, ``optim``, ``mesh``, ``sharding``, ``checkpoint``, ``eval`` and the run fields),
    plus the sections owned elsewhere: the loss, the model preset, the init."""
    config = settings.config_dict(settings.TrainSettings)
    # CLIP's knobs; every method config that changes the method sets its own.
    config.loss = ml_collections.ConfigDict({"duplicate_captions": False})
    config.model = model_config("small")
    config.model.text.vocab_size = -1
    config.init = ml_collections.ConfigDict(dict(image="", text="", logit_scale=True))
    return config


def parse_arg(arg: str, defaults: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """"paper,lock=3,text=minilm" -> ("paper", {"lock": "3", "text": "minilm"})."""
    preset, *items = arg.split(",")
    options = dict(defaults or {})
    for item in items:
        key, _, value = item.partition("=")
        if key not in OPTIONS or not value:
            raise UserError(f"config argument {item!r}: expected lock=<tower|all|none|k> or "
                            f"text=<minilm|hf_bert:/folder>")
        options[key] = value
    return preset, options


def preset_name(arg: str) -> str:
    """The preset of a config argument ("paper,lock=3" -> "paper")."""
    return parse_arg(arg)[0]


def lock_rules(lock: str, depth: int) -> tuple[tuple[str, float], ...]:
    """`optim.lr_multipliers` rules that freeze the image-tower part named by `lock`:
    ``tower`` (the ViT, its projection trained), ``all`` (tower + projection), ``<k>`` (the
    embeddings, ``ln_pre`` and the first k blocks) or ``none``."""
    if lock == "none":
        return ()
    if lock == "tower":
        return ((r"^image/", 0.0),)
    if lock == "all":
        return ((r"^image/", 0.0), (r"^image_proj/", 0.0))
    if lock.isdigit() and 0 <= int(lock) <= depth:
        blocks = "".join(f"|block_{i}" for i in range(int(lock)))
        return ((rf"^image/({IMAGE_EMBEDDINGS}{blocks})(/|$)", 0.0),)
    raise UserError(f"config argument lock={lock!r}: choose tower, all, none or a block count "
                    f"in [0, {depth}]")


def use_bert_text_tower(config: ml_collections.ConfigDict, spec: str) -> None:
    """`text=minilm` / `text=hf_bert:/folder`: the text tower, its init and the tokenizer all
    come from one HF BERT folder (architecture from its config.json); mean pooling, as the
    sentence-transformers models are trained (override ``model.text.pooling`` for [CLS])."""
    from medclip_jax.data import tokenizers
    from medclip_jax.pretrained import hf_bert, hf_folder
    if spec == "minilm":
        folder, tokenizer = tokenizers.minilm_folder(), "minilm"
    elif spec.startswith("hf_bert:") and spec[len("hf_bert:"):]:
        folder = spec[len("hf_bert:"):]
        tokenizer = f"hf:{folder}"
    else:
        raise UserError(f"config argument text={spec!r}: expected text=minilm or "
                        f"text=hf_bert:/path/to/bert_folder")
    fields = hf_bert.text_fields(hf_folder.read_config(folder), folder)
    max_len = min(int(config.model.text.max_len), fields["max_len"])
    config.model.text = ml_collections.ConfigDict(
        {**fields, "kind": "bert", "max_len": max_len, "pooling": "mean"})
    config.data.tokenizer = tokenizer
    config.init.text = f"hf_bert:{folder}"


def apply_options(config: ml_collections.ConfigDict, options: dict[str, str]
                  ) -> ml_collections.ConfigDict:
    if "lock" in options:
        config.optim.lr_multipliers = lock_rules(options["lock"], config.model.image.depth)
    if "text" in options:
        use_bert_text_tower(config, options["text"])
    return config


def init_from_clip_folder(config: ml_collections.ConfigDict) -> None:
    """``config.init.clip``: both towers, both projections, the logit scale and the tokenizer
    from one HF CLIPModel folder; the other fields follow it (overriding one unlinks it)."""
    config.init.clip = ""
    folder = config.init.get_ref("clip")
    config.init.image = "hf_clip:" + folder
    config.init.text = "hf_clip:" + folder
    config.data.tokenizer = "hf:" + folder


def paper_data(config: ml_collections.ConfigDict) -> None:
    """The benchmark's training data: the concatenation of the four corpora (~2.8M pairs,
    weighted by size), every caption of an image kept (training samples one), validated on
    ROCO."""
    config.data.train_mixture = ("roco@radiology/train:size,pmc_oa@pmc_oa/train:size,"
                                 "quilt_1m/train:size,mimic_cxr@frontal/train:size")
    config.data.caption_field = "captions"
    config.eval.split = "roco@radiology/validation"


def apply_preset(config: ml_collections.ConfigDict, arg: str,
                 defaults: dict[str, str] | None = None) -> ml_collections.ConfigDict:
    """Scale presets shared by every method's config file (demo, tiny, paper, rehearsal), then the
    ``lock`` / ``text`` options of `arg` (`defaults` for the ones it does not give)."""
    preset, options = parse_arg(arg, defaults)
    if preset == "demo":
        config.data.train_mixture = "synthetic_medical/train"
        config.eval.split = "synthetic_medical/validation"
        config.eval.zero_shot.datasets = ("synthetic_medical/test",)
        config.eval.retrieval.datasets = ("synthetic_medical/test",)
        config.batch_size = 128
        config.num_epochs = 10.0
        config.optim.learning_rate = 1e-3
        config.checkpoint.every_steps = 100
        config.eval.every_steps = 100
    elif preset in ("tiny", "rehearsal"):
        config.model = model_config("tiny")
        config.model.text.vocab_size = -1
        config.data.tokenizer = "bytes"
        config.data.train_mixture = "synthetic_medical@tiny/train"
        config.eval.split = "synthetic_medical@tiny/validation"
        config.eval.zero_shot.datasets = ("synthetic_medical@tiny/test",)
        config.eval.retrieval.datasets = ("synthetic_medical@tiny/test",)
        config.eval.retrieval.block_size = 8
        config.batch_size = 16
        config.num_epochs = 1.0
        config.log_every_steps = 1
        config.checkpoint.every_steps = 2
        config.eval.every_steps = 4
        config.eval.max_examples = 32
        if preset == "rehearsal":
            # The paper's data at the tiny model's scale (scripts/rehearsal.sh), a few steps.
            paper_data(config)
            config.model.text.max_len = 128  # bytes: every prompt keeps its class name
            config.num_epochs = 100.0
            config.max_steps = 4
    elif preset == "paper":
        config.model = model_config("base")
        # The benchmark starts from OpenAI CLIP ViT-B/16: --config.init.clip=/path/to/folder.
        init_from_clip_folder(config)
        paper_data(config)
        config.batch_size = 512
        config.num_epochs = 10.0
        config.optim.learning_rate = 5e-5
        config.optim.warmup_steps = 2000
        config.log_every_steps = 50
        config.checkpoint.every_steps = 2000
        config.eval.every_steps = 2000
        config.eval.max_examples = 5000
    else:
        raise UserError(f"config preset: unknown preset {preset!r}; choose demo, tiny, paper "
                        f"or rehearsal")
    return apply_options(config, options)


def method_config(method: str, arg: str, defaults: dict[str, str] | None = None
                  ) -> ml_collections.ConfigDict:
    """The base config with the preset and options of `arg`, then the defaults of `method`
    (`medclip_jax.methods`: its loss, heads, views): what every ``configs/<method>.py`` is."""
    from medclip_jax import methods
    config = apply_preset(get_base_config(), arg, defaults)
    return methods.get(method).make_config(config, preset_name(arg))


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    """The base config with a scale preset (CLIP is the base method)."""
    return apply_preset(get_base_config(), arg)
