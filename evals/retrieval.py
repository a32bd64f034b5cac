"""Image->text and text->image retrieval of a checkpoint over whole test splits.

    python -m evals.retrieval --workdir runs/clip_demo [--step N] [--config configs/eval.py:demo]

Every caption of every image is a candidate; identical caption strings are one text whose
positives are all the images it describes, and an image with several captions has several
positive texts. Ranks are those of each query's best-ranked positive, computed in
similarity tiles of ``retrieval.block_size`` so memory does not grow with the test set.
"""

from typing import Any

import numpy as np
from absl import flags

from evals import common
from medclip_jax.data import sources
from medclip_jax.evaluation import retrieval, runner

FLAGS = flags.FLAGS


def captions_per_image(annotations: dict[str, np.ndarray]) -> list[list[str]]:
    """All captions of each record: a `captions` list field if present, else `caption`."""
    if "captions" in annotations:
        return [[str(c) for c in caps] for caps in annotations["captions"]]
    return [[str(c)] for c in annotations["caption"]]


def evaluate_dataset(loaded: runner.LoadedModel, data_dir: str, spec: str, batch_size: int,
                     ks: tuple[int, ...], block_size: int) -> dict[str, Any]:
    entry = sources.parse_mixture(spec, field="config.retrieval.datasets")[0]
    annotations = sources.load_annotations(data_dir, entry.name, entry.split)
    texts, image_positives, text_positives = retrieval.build_positives(
        captions_per_image(annotations))
    image_emb = runner.embed_split_images(loaded, data_dir, entry.name, entry.split,
                                          batch_size)
    text_emb = runner.embed_texts(loaded, texts, batch_size)
    result = retrieval.retrieval_metrics(image_emb, text_emb, image_positives, text_positives,
                                         ks=ks, block_size=block_size)
    return {k: (float(v) if isinstance(v, (float, np.floating)) else int(v))
            for k, v in result.items()}


def run() -> None:
    loaded, data_dir, output_dir = common.load()
    config = FLAGS.config
    ks = tuple(config.retrieval.ks)
    results = {spec: evaluate_dataset(loaded, data_dir, spec, config.batch_size, ks,
                                      config.retrieval.block_size)
               for spec in config.retrieval.datasets}
    header = ["dataset", "direction", "queries", *[f"R@{k}" for k in ks], "chance R@10",
              "mean rank", "median rank"]
    rows = []
    for spec, r in results.items():
        for direction, queries, candidates in (("i2t", r["num_images"], r["num_texts"]),
                                               ("t2i", r["num_texts"], r["num_images"])):
            rows.append([spec, direction, queries, *[r[f"{direction}_R@{k}"] for k in ks],
                         min(10 / candidates, 1.0), r[f"{direction}_mean_rank"],
                         r[f"{direction}_median_rank"]])
    table = runner.markdown_table(header, rows)
    common.publish(output_dir, "retrieval", "Retrieval", loaded.step, results, table)


if __name__ == "__main__":
    common.run_binary(run)
