"""Image->text and text->image retrieval of a checkpoint over whole test splits.

    python -m evals.retrieval --workdir runs/clip_demo [--step N] [--config configs/eval.py:demo]

Texts come from the dataset's own caption field: ``captions`` (every caption of an image) when
it has one, else ``caption``, or ``config.fields`` (``"<dataset>:caption=<field>"``); never
the field the checkpoint was trained on. Every caption of every image is a candidate; identical caption strings are one text whose
positives are all the images it describes, and an image with several captions has several
positive texts. Ranks are those of each query's best-ranked positive, computed in
similarity tiles of ``retrieval.block_size`` so memory does not grow with the test set.

`evaluate(loaded, data_dir, config)` is what `evals/run_suite.py` calls in-process; results
are keyed by dataset spec, with ``i2t_R@K`` / ``t2i_R@K``, ``{i2t,t2i}_{mean,median}_rank``,
``num_images`` and ``num_texts``.
"""

from typing import Any

import ml_collections
import numpy as np
from absl import flags

from evals import common
from medclip_jax.data import sources
from medclip_jax.evaluation import fields, model_view, retrieval, tables

FLAGS = flags.FLAGS


def captions_per_image(annotations: dict[str, np.ndarray], field: str | None = None
                       ) -> list[list[str]]:
    """All captions of each record from `field` (default: ``captions`` if loaded, else
    ``caption``), which holds a string or a list of strings per record."""
    field = field or ("captions" if "captions" in annotations else "caption")
    return [[str(c) for c in v] if isinstance(v, (list, tuple, np.ndarray)) else [str(v)]
            for v in annotations[field]]


def evaluate_dataset(loaded: model_view.ModelView, data_dir: str, spec: str, batch_size: int,
                     ks: tuple[int, ...], block_size: int,
                     overrides: tuple[fields.FieldOverride, ...] = ()) -> dict[str, Any]:
    """Retrieval over `spec`'s own caption field (`fields.caption_field`), whatever field the
    checkpoint was trained on."""
    entry = sources.parse_mixture(spec, field="config.retrieval.datasets")[0]
    available = sources.read_builder(sources.dataset_dir(data_dir, entry.name)).info.features
    caption_field = fields.caption_field(entry.name, available.keys(), overrides)
    image_field = fields.image_field(entry.name, available.keys(), overrides)
    annotations = sources.load_annotations(data_dir, entry.name, entry.split,
                                           fields=[caption_field])
    texts, image_positives, text_positives = retrieval.build_positives(
        captions_per_image(annotations, caption_field))
    image_emb = model_view.embed_split_images(loaded, data_dir, entry.name, entry.split,
                                          batch_size, image_field=image_field)
    text_emb = model_view.embed_texts(loaded, texts, batch_size)
    result = retrieval.retrieval_metrics(image_emb, text_emb, image_positives, text_positives,
                                         ks=ks, block_size=block_size)
    return {k: (float(v) if isinstance(v, (float, np.floating)) else int(v))
            for k, v in result.items()}


def evaluate(loaded: model_view.ModelView, data_dir: str,
             config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
    """Every dataset of ``config.retrieval.datasets``: {spec: {"i2t_R@K", "t2i_R@K", ...}}."""
    config = common.settings(config)
    ks = config.retrieval.ks
    overrides = fields.parse_overrides(config.fields)
    return {spec: evaluate_dataset(loaded, data_dir, spec, config.batch_size, ks,
                                   config.retrieval.block_size, overrides)
            for spec in config.retrieval.datasets}


def table(results: dict[str, dict[str, Any]], ks: tuple[int, ...]) -> str:
    header = ["dataset", "direction", "queries", *[f"R@{k}" for k in ks], "chance R@10",
              "mean rank", "median rank"]
    rows = []
    for spec, r in results.items():
        for direction, queries, candidates in (("i2t", r["num_images"], r["num_texts"]),
                                               ("t2i", r["num_texts"], r["num_images"])):
            rows.append([spec, direction, queries, *[r[f"{direction}_R@{k}"] for k in ks],
                         min(10 / candidates, 1.0), r[f"{direction}_mean_rank"],
                         r[f"{direction}_median_rank"]])
    return tables.markdown_table(header, rows)


def run() -> None:
    loaded, data_dir, output_dir = common.load()
    config = FLAGS.config
    results = evaluate(loaded, data_dir, config)
    common.publish(output_dir, "retrieval", "Retrieval", loaded.step, results,
                   table(results, tuple(config.retrieval.ks)))


if __name__ == "__main__":
    common.run_binary(run)
