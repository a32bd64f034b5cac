"""VQA of a checkpoint: a fusion head trained on its frozen features, scored on test.

    python -m evals.vqa --workdir runs/clip_demo [--step N] [--config configs/eval.py:demo]
        [--config.vqa.fusion=cross_attention] [--config.vqa.finetune_image=True]

For each dataset of ``config.vqa.datasets`` (``name[@config]``; VQA-RAD ``vqa_rad``, PathVQA
``path_vqa``, or the synthetic dataset, whose records carry a ``vqa`` sequence of questions),
a head is trained on ``config.vqa.train_split`` and scored on ``config.vqa.test_split``
(see `medclip_jax.evaluation.vqa` for the protocol). Result key: ``<name>/<test_split>:vqa``.
The evaluation itself is `medclip_jax.evaluation.vqa.evaluate(view, data_dir, config)`, which
`evals/run_suite.py` and training (``config.eval.evaluators``) call too.

``config.vqa`` fields:
  datasets, train_split, test_split   what to train on and score.
  fusion               ``bilinear`` (MFB over pooled embeddings) | ``cross_attention`` (the
                       question attends over the image's patch tokens).
  question_features    cross_attention queries: ``tokens`` (the text tower's token features)
                       | ``pooled`` (the question embedding as one query).
  hidden_dim, bilinear_factor, num_heads, num_layers, classifier_hidden_dim, dropout
                       the head's sizes (bilinear: hidden_dim * bilinear_factor projections).
  epochs, batch_size, learning_rate, weight_decay, seed
                       AdamW with warm-up + cosine decay; fixed epochs (no test-set selection).
  max_answers          answer vocabulary = the top-N train answers (0 = all of them).
  finetune_image       also train the image tower (lr * image_lr_multiplier) on the pixels,
                       kept in memory; default False: features computed once.
Metrics: accuracy, closed_accuracy, open_accuracy (exact match of the normalised answer;
None where a split has no such question), num_unseen_answers (test answers outside the
vocabulary, counted wrong), majority_closed_accuracy / majority_accuracy (always the train
split's most frequent closed / overall answer), question_prior_accuracy /
question_prior_closed_accuracy (a blind answerer: the most frequent train answer of the same
question text), and the sizes behind them.
"""

from typing import Any

from absl import flags

from evals import common
from medclip_jax.evaluation import tables, vqa

FLAGS = flags.FLAGS


def results_table(results: dict[str, dict[str, Any]]) -> str:
    header = ["task", "questions", "accuracy", "closed", "open", "majority_closed",
              "majority", "blind_closed", "blind", "unseen_answers", "answers"]
    rows = [[key, r["num_questions"], r["accuracy"], r["closed_accuracy"], r["open_accuracy"],
             r["majority_closed_accuracy"], r["majority_accuracy"],
             r["question_prior_closed_accuracy"], r["question_prior_accuracy"],
             r["num_unseen_answers"], r["num_answers"]] for key, r in results.items()]
    return tables.markdown_table(header, [["—" if v is None else v for v in row]
                                          for row in rows])


def run() -> None:
    loaded, data_dir, output_dir = common.load()
    results = vqa.evaluate(loaded, data_dir, FLAGS.config)
    common.publish(output_dir, "vqa", "VQA", loaded.step, results, results_table(results))


if __name__ == "__main__":
    common.run_binary(run)
