"""Evaluation config for `evals/zero_shot.py` and `evals/retrieval.py`.

    python -m evals.zero_shot --workdir runs/clip_demo [--step N] [--config configs/eval.py:demo]

Presets: ``demo`` (the synthetic dataset's test split), ``tiny`` (the tiny synthetic build),
``paper`` (the benchmark's 19 classification test sets and the four corpora's retrieval test
splits, as built by ``python -m data_prep.build``; every one must be built), ``rehearsal``
(``paper``'s tasks with ``tiny``'s settings and ``suite.strict``: scripts/rehearsal.sh).
Dataset specs use the same ``name[@config]/split`` convention as the training mixture.

Fields (types and defaults: ``medclip_jax/settings.py``, listed in ``configs/FIELDS.md``):
  data_dir        TFDS data_dir; empty = the one in the checkpoint's training config.
  output_dir      where results go; empty = <workdir>/eval.
  batch_size      global eval batch size (padded and masked, so it need not divide the data).
  mesh            device mesh for evaluation; empty = the training config's.
  fields          per-dataset record-field overrides, "<dataset>[@<config>]:<role>=<field>" with
                  role image, caption or label, e.g. ("roco@radiology:caption=caption",).
                  Without one, evaluations read each dataset's own fields (image; captions if
                  present, else caption; the task's label field), never the training config's
                  (medclip_jax/evaluation/fields.py).
  zero_shot.datasets   datasets whose metadata defines zero-shot tasks (class names, templates).
  zero_shot.templates  prompt templates for every multi-class task; () = each task's own.
  zero_shot.prompts    JSON file of per-dataset / per-task class names and templates
                       (see evals/zero_shot.py); "" = none.
  zero_shot.multilabel_uncertain  multi-label tasks (CheXpert -1 = uncertain): "exclude" (the
                       default), "negative" or "positive"; NaN (not mentioned) is always
                       excluded.
  retrieval.datasets   datasets to retrieve over (every record's caption(s)).
  retrieval.ks         Recall@K values.
  retrieval.block_size similarity tile size; memory is bounded by one tile.
  linear_probe.*  `evals/linear_probe.py` (see that module): datasets, the L2 sweep, k-shot.
  vqa.*           `evals/vqa.py` (see that module): datasets, fusion head and its training.
  suite.*         `evals/run_suite.py`: which evaluations run (zero_shot, retrieval,
                  linear_probe, vqa); ``strict``: a skipped dataset fails the run too.
"""

import ml_collections

from medclip_jax import settings
from medclip_jax.errors import UserError


# The benchmark's evaluation datasets as `python -m data_prep.build` names them.
# A dataset built in several configs is named with its config (``name@config``).
PAPER_RETRIEVAL = ("roco@radiology/test", "pmc_oa@pmc_oa/test", "quilt_1m/test",
                   "mimic_cxr@frontal/test")
MEDMNIST = ("pathmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
            "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist",
            "organsmnist")
PAPER_CLASSIFICATION = (
    "bach/test", "ham10000@lesion_split/test", "lc25000@lung/test", "lc25000@colon/test",
    "nct_crc_he@default/test", "pad_ufes_20/test", "patch_camelyon/test", "sicapv2/test",
) + tuple(f"medmnist@{name}/test" for name in MEDMNIST)


PRESETS = ("demo", "tiny", "paper", "rehearsal")


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise UserError(f"config preset: unknown eval preset {arg!r}; choose "
                        f"{', '.join(PRESETS)}")
    if arg == "rehearsal":
        return rehearsal_config()
    config = settings.config_dict(settings.EvalSettings)  # every default, in one place
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    config.linear_probe = linear_probe_config(arg)
    config.vqa = vqa_config(arg)
    if arg == "demo":
        config.zero_shot.datasets = ("synthetic_medical/test",)
        config.retrieval.datasets = ("synthetic_medical/test",)
    elif arg == "tiny":
        config.batch_size = 16
        config.zero_shot.datasets = ("synthetic_medical@tiny/test",)
        config.retrieval.datasets = ("synthetic_medical@tiny/test",)
        config.retrieval.block_size = 8
    elif arg == "paper":
        # + MIMIC-CXR's multi-label CheXpert task (per-finding AUROC with prompt pairs).
        config.zero_shot.datasets = PAPER_CLASSIFICATION + ("mimic_cxr@frontal/test",)
        config.retrieval.datasets = PAPER_RETRIEVAL
    return config


def rehearsal_config() -> ml_collections.ConfigDict:
    """Every task of ``paper`` with the ``tiny`` settings (small heads, short fits): the
    benchmark's rehearsal on miniature releases (scripts/rehearsal.sh)."""
    config, paper = get_config("tiny"), get_config("paper")
    config.zero_shot.datasets = paper.zero_shot.datasets
    config.retrieval.datasets = paper.retrieval.datasets
    config.linear_probe.datasets = paper.linear_probe.datasets
    config.vqa.datasets = paper.vqa.datasets
    config.suite.strict = True
    return config


def vqa_config(arg: str) -> ml_collections.ConfigDict:
    """`config.vqa` for `evals/vqa.py`: `settings.VqaSettings` with the preset's head size."""
    vqa = settings.config_dict(settings.VqaSettings)
    if arg == "demo":
        vqa.datasets = ("synthetic_medical",)
    elif arg == "tiny":
        vqa.datasets = ("synthetic_medical@tiny",)
        vqa.hidden_dim = 32
        vqa.bilinear_factor = 2
        vqa.num_heads = 2
        vqa.classifier_hidden_dim = 32
        vqa.epochs = 3
        vqa.batch_size = 16
    elif arg == "paper":
        vqa.datasets = ("vqa_rad", "path_vqa")
        vqa.hidden_dim = 1024
        vqa.bilinear_factor = 5
        vqa.num_heads = 8
        vqa.classifier_hidden_dim = 1024
        vqa.epochs = 40
        vqa.batch_size = 64
        vqa.learning_rate = 1e-3
    return vqa


def linear_probe_config(arg: str) -> ml_collections.ConfigDict:
    """`config.linear_probe` for `evals/linear_probe.py`: `settings.LinearProbeSettings` with the
    preset's datasets and sweep."""
    lp = settings.config_dict(settings.LinearProbeSettings)
    if arg == "demo":
        lp.datasets = ("synthetic_medical",)
    elif arg == "tiny":
        lp.datasets = ("synthetic_medical@tiny",)
        lp.k_shots = (1, 2)
        lp.k_shot_seeds = 2
        lp.l2_grid = (1e-4, 1e-2, 1.0)
        lp.max_iterations = 100
    elif arg == "paper":
        lp.datasets = tuple(spec.rsplit("/", 1)[0] for spec in PAPER_CLASSIFICATION)
    return lp
