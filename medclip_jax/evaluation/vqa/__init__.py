"""Medical VQA as classification over the answers of the training split.

The protocol of medical CLIP papers on VQA-RAD / PathVQA (PubMedCLIP, the benchmark of
arXiv 2406.07450): a fusion head trained on a checkpoint's frozen features (or with its image
tower finetuned), scored by exact match on the test split. One concern per module:

* `questions`  the questions of a split in either layout, the answer vocabulary, soft targets;
* `features`   the head's feature tables, from the evaluators' shared embedding loop;
* `head`       the fusion head (bilinear or cross-attention) and its settings;
* `fit`        training the head (the training optimizer, a jitted scan per epoch) and
               predicting;
* `scores`     accuracy, and the majority and blind question-prior baselines.

`evaluate(view, data_dir, config)` is the evaluator (`evaluation.evaluators`): the same call
runs in `evals/vqa.py`, `evals/run_suite.py` and training (``config.eval.evaluators``).
"""

from typing import Any

import jax
import ml_collections
import numpy as np

from medclip_jax.errors import UserError
from medclip_jax.evaluation import model_view
from medclip_jax.evaluation.vqa import features, fit, head, questions, scores
from medclip_jax.settings import EvalSettings, VqaSettings


def say(line: str) -> None:
    """Progress on process 0 only."""
    if jax.process_index() == 0:
        print(line, flush=True)


def finetuned_tower(view: model_view.ModelView) -> tuple[Any, Any, fit.ImageEncoder]:
    """(trainable image tower params, the rest of the params, the encoder of both)."""
    tower = {k: view.params[k] for k in fit.IMAGE_TOWER_KEYS}
    frozen = {k: v for k, v in view.params.items() if k not in fit.IMAGE_TOWER_KEYS}
    return tower, frozen, fit.clip_image_encoder(view.model)


def evaluate_dataset(view: model_view.ModelView, data_dir: str, name: str,
                     vqa_settings: VqaSettings, batch_size: int) -> dict[str, Any]:
    """Trains a head on `vqa_settings.train_split` of dataset `name` and scores it on its
    `test_split`."""
    settings = head.settings_from_config(vqa_settings)
    train_split, test_split = settings.train_split, settings.test_split
    field = f"{settings.PATH}.datasets"
    train = questions.load_questions(data_dir, name, train_split, field)
    test = questions.load_questions(data_dir, name, test_split, field)
    if not len(train) or not len(test):
        raise UserError(f"{field}: {name} has no questions in split "
                        f"{train_split if not len(train) else test_split}")
    vocab = questions.build_vocabulary(train.answers, settings.max_answers)
    targets = questions.soft_targets(train.answers, vocab)
    train_rows = np.flatnonzero(targets.sum(-1) > 0)
    train_tables = features.split_tables(view, data_dir, name, train_split, train, settings,
                                         batch_size)
    train_tables["targets"] = targets
    test_tables = features.split_tables(view, data_dir, name, test_split, test, settings,
                                        batch_size)
    tower = frozen = encoder = None
    if settings.finetune_image:
        tower, frozen, encoder = finetuned_tower(view)
    vqa_head = head.make_head(settings, len(vocab))
    say(f"VQA {name}: {len(train)} train questions ({len(train) - len(train_rows)} with an "
        f"answer outside the {len(vocab)}-answer vocabulary, dropped), {len(test)} test "
        f"questions; {settings.fusion} head")
    fitted = fit.fit_head(vqa_head, settings, train_tables, train_rows, view.mesh, tower=tower,
                          frozen=frozen, image_encoder=encoder,
                          log=lambda line: say(f"VQA {name} head {line}"))
    predictions = fit.predict_answers(vqa_head, fitted.trainable, test_tables, len(test),
                                      settings.batch_size, view.mesh, frozen=frozen,
                                      image_encoder=encoder)
    results = scores.vqa_accuracy(predictions, questions.answer_index(test.answer, vocab),
                                  test.closed)
    baseline = scores.majority_baseline(train.answer, train.closed, test.answer, test.closed)
    results.update({k: v for k, v in baseline.items() if k.endswith("_accuracy")})
    results.update(scores.question_prior_baseline(train.question, train.answer, test.question,
                                                  test.answer, test.closed))
    results.update(num_answers=len(vocab), num_train_questions=len(train),
                   num_train_dropped=int(len(train) - len(train_rows)),
                   num_train_images=len(train.image_records),
                   num_test_images=len(test.image_records),
                   first_epoch_loss=fitted.epoch_losses[0],
                   final_train_loss=fitted.epoch_losses[-1])
    return results


def evaluate(view: model_view.ModelView, data_dir: str,
             config: "ml_collections.ConfigDict | EvalSettings") -> dict[str, dict[str, Any]]:
    """{"<name>/<test_split>:vqa": metrics} for every dataset of ``config.vqa.datasets``.

    `config`: the eval config (`configs/eval.py`) or its parsed `EvalSettings`; checked before
    any embedding."""
    config = EvalSettings.from_config(config)
    path = config.vqa.PATH
    if not config.vqa.datasets:
        raise UserError(f"{path}.datasets is empty")
    results = {}
    for name in config.vqa.datasets:
        if "/" in str(name):
            raise UserError(f"{path}.datasets: {name!r} names a split; give the dataset "
                            f"(name[@config]) and set {path}.train_split / test_split")
        results[f"{name}/{config.vqa.test_split}:vqa"] = evaluate_dataset(
            view, data_dir, str(name), config.vqa, config.batch_size)
    return results
