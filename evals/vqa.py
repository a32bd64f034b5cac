"""VQA of a checkpoint: a fusion head trained on its frozen features, scored on test.

    python -m evals.vqa --workdir runs/clip_demo [--step N] [--config configs/eval.py:demo]
        [--config.vqa.fusion=cross_attention] [--config.vqa.finetune_image=True]

For each dataset of ``config.vqa.datasets`` (``name[@config]``; VQA-RAD ``vqa_rad``, PathVQA
``path_vqa``, or the synthetic dataset, whose records carry a ``vqa`` sequence of questions),
a head is trained on ``config.vqa.train_split`` and scored on ``config.vqa.test_split``
(see `medclip_jax.evaluation.vqa` for the protocol). Result key: ``<name>/<test_split>:vqa``.

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

import jax
import ml_collections
import numpy as np
from absl import flags

from evals import common
from medclip_jax.data import sources
from medclip_jax.errors import UserError
from medclip_jax.evaluation import model_view, tables, vqa

FLAGS = flags.FLAGS
RECORD_FIELDS = ("question", "answer_type", "image_id")


def say(line: str) -> None:
    """Progress on process 0 only."""
    if jax.process_index() == 0:
        print(line, flush=True)


def load_questions(data_dir: str, name: str, split: str) -> vqa.Questions:
    """A split's questions, from per-question records or per-image `vqa` sequences."""
    features = set(sources.read_builder(sources.dataset_dir(data_dir, name)).info.features)
    where = f"{name}/{split}"
    if "vqa" in features:
        annotations = sources.load_annotations(data_dir, name, split, fields=["vqa"])
        return vqa.expand_image_records(annotations["vqa"], where)
    answer = "answer_normalized" if "answer_normalized" in features else "answer"
    if set(RECORD_FIELDS) <= features and answer in features:
        a = sources.load_annotations(data_dir, name, split, fields=[*RECORD_FIELDS, answer])
        return vqa.questions_from_records(a["question"].tolist(), a[answer].tolist(),
                                          a["answer_type"].tolist(), a["image_id"].tolist(),
                                          where)
    raise UserError(f"config.vqa.datasets: {name} has no VQA fields (a `vqa` sequence, or "
                    f"question / answer / answer_type / image_id per record)")


def split_tables(loaded: model_view.ModelView, data_dir: str, name: str, split: str,
                 questions: vqa.Questions, settings: vqa.HeadSettings,
                 batch_size: int) -> dict[str, np.ndarray]:
    """The head's feature tables for one split: each distinct question and image once."""
    texts = list(dict.fromkeys(questions.question))
    lookup = {text: i for i, text in enumerate(texts)}
    tables = {"image_row": questions.image_row.astype(np.int32),
              "question_row": np.asarray([lookup[q] for q in questions.question], np.int32)}
    tables.update(vqa.encode_questions(loaded, texts, batch_size,
                                       tokens=settings.needs_question_tokens))
    tables.update(vqa.encode_split_images(
        loaded, data_dir, name, split, batch_size, questions.image_records,
        tokens=settings.needs_image_tokens, pixels=settings.finetune_image))
    return tables


def evaluate_dataset(loaded: model_view.ModelView, data_dir: str, name: str,
                     config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
    settings = vqa.settings_from_config(config.vqa)
    train_split, test_split = str(config.vqa.train_split), str(config.vqa.test_split)
    train = load_questions(data_dir, name, train_split)
    test = load_questions(data_dir, name, test_split)
    if not len(train) or not len(test):
        raise UserError(f"config.vqa.datasets: {name} has no questions in split "
                        f"{train_split if not len(train) else test_split}")
    vocab = vqa.build_vocabulary(train.answers, settings.max_answers)
    targets = vqa.soft_targets(train.answers, vocab)
    train_rows = np.flatnonzero(targets.sum(-1) > 0)
    train_tables = split_tables(loaded, data_dir, name, train_split, train, settings,
                                config.batch_size)
    train_tables["targets"] = targets
    test_tables = split_tables(loaded, data_dir, name, test_split, test, settings,
                               config.batch_size)
    tower = frozen = encoder = None
    if settings.finetune_image:
        tower = {k: loaded.params[k] for k in vqa.IMAGE_TOWER_KEYS}
        frozen = {k: v for k, v in loaded.params.items() if k not in vqa.IMAGE_TOWER_KEYS}
        encoder = vqa.clip_image_encoder(loaded.model)
    head = settings.head(len(vocab))
    say(f"VQA {name}: {len(train)} train questions ({len(train) - len(train_rows)} with an "
        f"answer outside the {len(vocab)}-answer vocabulary, dropped), {len(test)} test "
        f"questions; {settings.fusion} head")
    fit = vqa.fit_head(head, settings, train_tables, train_rows, loaded.mesh, tower=tower,
                       frozen=frozen, image_encoder=encoder,
                       log=lambda line: say(f"VQA {name} head {line}"))
    predictions = vqa.predict_answers(head, fit.trainable, test_tables, len(test),
                                      settings.batch_size, loaded.mesh, frozen=frozen,
                                      image_encoder=encoder)
    results = vqa.vqa_accuracy(predictions, vqa.answer_index(test.answer, vocab), test.closed)
    baseline = vqa.majority_baseline(train.answer, train.closed, test.answer, test.closed)
    results.update({k: v for k, v in baseline.items() if k.endswith("_accuracy")})
    results.update(vqa.question_prior_baseline(train.question, train.answer, test.question,
                                               test.answer, test.closed))
    results.update(num_answers=len(vocab), num_train_questions=len(train),
                   num_train_dropped=int(len(train) - len(train_rows)),
                   num_train_images=len(train.image_records),
                   num_test_images=len(test.image_records),
                   first_epoch_loss=fit.epoch_losses[0], final_train_loss=fit.epoch_losses[-1])
    return f"{name}/{test_split}:vqa", results


def evaluate(loaded: model_view.ModelView, data_dir: str, config: ml_collections.ConfigDict
             ) -> dict[str, dict[str, Any]]:
    """{"<name>/<test_split>:vqa": metrics} for every dataset of config.vqa.datasets."""
    config = common.settings(config)  # fails on a bad field before any embedding
    if not config.vqa.datasets:
        raise UserError("config.vqa.datasets is empty")
    results = {}
    for name in config.vqa.datasets:
        if "/" in str(name):
            raise UserError(f"config.vqa.datasets: {name!r} names a split; give the dataset "
                            f"(name[@config]) and set config.vqa.train_split / test_split")
        key, metrics = evaluate_dataset(loaded, data_dir, str(name), config)
        results[key] = metrics
    return results


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
    results = evaluate(loaded, data_dir, FLAGS.config)
    common.publish(output_dir, "vqa", "VQA", loaded.step, results, results_table(results))


if __name__ == "__main__":
    common.run_binary(run)
