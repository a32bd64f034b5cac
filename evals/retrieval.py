"""Image->text and text->image retrieval of a checkpoint over whole test splits.

    python -m evals.retrieval --workdir runs/clip_demo [--step N] [--config configs/eval.py:demo]

Texts come from the dataset's own caption field: ``captions`` (every caption of an image) when
it has one, else ``caption``, or ``config.fields`` (``"<dataset>:caption=<field>"``); never
the field the checkpoint was trained on. Every caption of every image is a candidate; identical caption strings are one text whose
positives are all the images it describes, and an image with several captions has several
positive texts. Ranks are those of each query's best-ranked positive, computed in
similarity tiles of ``retrieval.block_size`` so memory does not grow with the test set.

The evaluation itself is `medclip_jax.evaluation.retrieval.evaluate(view, data_dir,
config)`, which `evals/run_suite.py` and training (``config.eval.evaluators``) call too; results
are keyed by dataset spec, with ``i2t_R@K`` / ``t2i_R@K``, ``{i2t,t2i}_{mean,median}_rank``,
``num_images`` and ``num_texts``.
"""

from typing import Any

from absl import flags

from evals import common
from medclip_jax.evaluation import retrieval, tables

FLAGS = flags.FLAGS


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
    results = retrieval.evaluate(loaded, data_dir, config)
    common.publish(output_dir, "retrieval", "Retrieval", loaded.step, results,
                   table(results, tuple(config.retrieval.ks)))


if __name__ == "__main__":
    common.run_binary(run)
