"""Image->text and text->image retrieval of a checkpoint over whole test splits.

    python -m evals.retrieval --workdir runs/clip_demo [--step N] [--config configs/eval.py:demo]

Every caption of every image is a candidate; identical caption strings are one text whose
positives are all the images it describes, and an image with several captions has several
positive texts. Ranks are those of each query's best-ranked positive, computed in
similarity tiles of ``retrieval.block_size`` so memory does not grow with the test set.
"""

from typing import Any

import jax
import numpy as np
from absl import app, flags

from evals import common
from medclip_jax import cli
from medclip_jax.data import pipeline, sources
from medclip_jax.evaluation import embed, retrieval, runner

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
    model_cfg = loaded.train_config.model
    batches = pipeline.make_eval_iterator(
        data_dir, entry.name, entry.split, image_size=model_cfg.image.image_size,
        max_len=model_cfg.text.max_len, tokenizer=loaded.tokenizer,
        global_batch_size=batch_size, process_index=jax.process_index(),
        process_count=jax.process_count(), data_config=loaded.train_config.data)
    image_emb = embed.embed_batches(loaded.model, loaded.params, batches, loaded.mesh,
                                    texts=False)["image_emb"]
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
    path = runner.write_results(output_dir, f"retrieval_step{loaded.step}",
                                {"step": loaded.step, "workdir": FLAGS.workdir,
                                 "datasets": results}, table)
    print(f"Retrieval, checkpoint step {loaded.step}:\n{table}\n(written to {path})", flush=True)


def main(argv):
    del argv
    cli.maybe_initialize_distributed()
    cli.run_user_main(run)


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    app.run(main)
