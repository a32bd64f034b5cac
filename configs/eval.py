"""Evaluation config for `evals/zero_shot.py` and `evals/retrieval.py`.

    python -m evals.zero_shot --workdir runs/clip_demo [--step N] [--config configs/eval.py:demo]

Presets: ``demo`` (the synthetic dataset's test split), ``tiny`` (the tiny synthetic build),
``paper`` (the benchmark's 19 classification test sets and the four corpora's retrieval test
splits, as built by ``python -m data_prep.build``; every one must be built).
Dataset specs use the same ``name[@config]/split`` convention as the training mixture.

Fields:
  data_dir        TFDS data_dir; empty = the one in the checkpoint's training config.
  output_dir      where results go; empty = <workdir>/eval.
  batch_size      global eval batch size (padded and masked, so it need not divide the data).
  mesh            device mesh for evaluation; empty = the training config's.
  zero_shot.datasets   datasets whose metadata defines zero-shot tasks (class names, templates).
  retrieval.datasets   datasets to retrieve over (every record's caption(s)).
  retrieval.ks         Recall@K values.
  retrieval.block_size similarity tile size; memory is bounded by one tile.
  linear_probe.*  `evals/linear_probe.py` (see that module): datasets, the L2 sweep, k-shot.
  vqa.*           `evals/vqa.py` (see that module): datasets, fusion head and its training.
  suite.*         `evals/run_suite.py`: which evaluations run (zero_shot, retrieval,
                  linear_probe, vqa).
"""

import ml_collections

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


def get_config(arg: str = "demo") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data_dir = ""
    config.output_dir = ""
    config.batch_size = 256
    config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
    config.zero_shot = ml_collections.ConfigDict()
    config.retrieval = ml_collections.ConfigDict()
    config.retrieval.ks = (1, 5, 10, 50, 200)
    config.retrieval.block_size = 1024
    config.linear_probe = ml_collections.ConfigDict()
    config.linear_probe.datasets = ()
    config.vqa = ml_collections.ConfigDict()
    config.vqa.datasets = ()
    config.suite = ml_collections.ConfigDict()
    config.suite.evaluations = ("zero_shot", "retrieval", "linear_probe", "vqa")
    if arg == "demo":
        config.zero_shot.datasets = ("synthetic_medical/test",)
        config.retrieval.datasets = ("synthetic_medical/test",)
    elif arg == "tiny":
        config.batch_size = 16
        config.zero_shot.datasets = ("synthetic_medical@tiny/test",)
        config.retrieval.datasets = ("synthetic_medical@tiny/test",)
        config.retrieval.block_size = 8
    elif arg == "paper":
        config.zero_shot.datasets = PAPER_CLASSIFICATION
        config.retrieval.datasets = PAPER_RETRIEVAL
    else:
        raise UserError(f"config preset: unknown eval preset {arg!r}; choose demo, tiny or "
                        f"paper")
    return config
