"""VQA evaluation: questions, vocabulary, soft targets, metrics against brute force, the fusion
head (shapes, masking, learning a separable toy problem), and the binary end to end."""

import dataclasses
import json
import os
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config
from data_prep.vqa import normalize_answer
from helpers import run, subprocess_env
from medclip_jax import settings as settings_lib
from medclip_jax import sharding
from medclip_jax.errors import UserError
from medclip_jax.evaluation import vqa

# --------------------------------------------------------------------------------------------
# Questions, vocabulary, targets
# --------------------------------------------------------------------------------------------


def test_expand_image_records_one_example_per_question():
    column = [
        {"question": ["What is the abnormality?", "Is there a nodule?"],
         "answer": ["Nodule.", "YES"], "answer_type": ["open", "closed"]},
        {"question": [], "answer": [], "answer_type": []},
        {"question": ["Which side?"], "answer": ["Right  Lung"], "answer_type": ["open"]},
    ]
    q = vqa.questions.expand_image_records(column, "x/train")
    assert q.question == ["What is the abnormality?", "Is there a nodule?", "Which side?"]
    assert q.answer == ["nodule", "yes", "right lung"]
    assert q.answer == [normalize_answer(a) for a in ("Nodule.", "YES", "Right  Lung")]
    np.testing.assert_array_equal(q.closed, [False, True, False])
    np.testing.assert_array_equal(q.image_row, [0, 0, 2])
    np.testing.assert_array_equal(q.image_records, [0, 1, 2])


def test_questions_from_records_share_one_row_per_image():
    q = vqa.questions.questions_from_records(
        ["q0", "q1", "q2", "q3", "q4"], ["Yes", "no.", "left", "Yes", "2"],
        ["CLOSED", "closed", "open", "yes/no", "other"], ["a", "b", "a", "c", "b"], "x/test")
    np.testing.assert_array_equal(q.image_row, [0, 1, 0, 2, 1])
    np.testing.assert_array_equal(q.image_records, [0, 1, 3])
    np.testing.assert_array_equal(q.closed, [True, True, False, True, False])
    assert q.answer == ["yes", "no", "left", "yes", "2"]
    with pytest.raises(UserError, match="answer_type"):
        vqa.questions.questions_from_records(["q"], ["a"], ["maybe"], ["i"], "x/test")


def test_vocabulary_most_frequent_first_ties_alphabetical_top_n():
    answers = [("no",), ("yes",), ("no",), ("left",), ("yes",), ("right",), ("no",)]
    assert vqa.questions.build_vocabulary(answers) == ["no", "yes", "left", "right"]
    assert vqa.questions.build_vocabulary(answers, max_answers=2) == ["no", "yes"]
    np.testing.assert_array_equal(
        vqa.questions.answer_index(["yes", "left", "h&e"], ["no", "yes", "left"]), [1, 2, -1])


def test_soft_targets_one_hot_and_vqa_min_count_over_three():
    vocab = ["a", "b", "c"]
    targets = vqa.questions.soft_targets([("a",), ("c",), ("zzz",), ("a", "a", "b"),
                                ("b",) * 4 + ("c",) * 6, ("a", "zzz")], vocab)
    expected = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0], [2 / 3, 1 / 3, 0],
                         [0, 1, 1], [1 / 3, 0, 0]], np.float32)
    np.testing.assert_allclose(targets, expected, rtol=1e-6)
    assert targets.dtype == np.float32


# --------------------------------------------------------------------------------------------
# Metrics and batching against brute force
# --------------------------------------------------------------------------------------------


def test_accuracy_matches_brute_force_with_unseen_answers_wrong():
    rng = np.random.default_rng(0)
    n = 503
    targets = rng.integers(-1, 6, n)      # -1: answer outside the vocabulary
    predictions = np.where(rng.random(n) < 0.5, targets, rng.integers(0, 6, n))
    predictions[targets == -1] = rng.integers(0, 6, (targets == -1).sum())
    closed = rng.random(n) < 0.4
    got = vqa.scores.vqa_accuracy(predictions, targets, closed)
    hits = {"all": [0, 0], "closed": [0, 0], "open": [0, 0]}
    unseen = 0
    for p, t, c in zip(predictions, targets, closed):
        right = t != -1 and p == t
        unseen += t == -1
        for group in ("all", "closed" if c else "open"):
            hits[group][0] += right
            hits[group][1] += 1
    assert got["accuracy"] == pytest.approx(hits["all"][0] / hits["all"][1])
    assert got["closed_accuracy"] == pytest.approx(hits["closed"][0] / hits["closed"][1])
    assert got["open_accuracy"] == pytest.approx(hits["open"][0] / hits["open"][1])
    assert got["num_unseen_answers"] == unseen > 0
    assert (got["num_questions"], got["num_closed"], got["num_open"]) == (
        n, hits["closed"][1], hits["open"][1])
    # A prediction "equal" to an unseen target's -1 still counts as wrong.
    accuracy = vqa.scores.vqa_accuracy
    assert accuracy(np.array([-1]), np.array([-1]), np.array([True]))["accuracy"] == 0
    assert accuracy(np.array([1]), np.array([1]), np.array([True]))["open_accuracy"] is None


def test_majority_baseline_matches_brute_force():
    train = ["no", "no", "yes", "left", "left", "left", "yes"]
    train_closed = np.array([1, 1, 1, 0, 0, 0, 1], bool)
    test = ["yes", "no", "no", "left", "right", "no"]
    test_closed = np.array([1, 1, 1, 0, 0, 1], bool)
    got = vqa.scores.majority_baseline(train, train_closed, test, test_closed)
    # closed train answers: no x2, yes x2 -> tie broken alphabetically: "no".
    assert got["majority_closed_answer"] == "no"
    assert got["majority_closed_accuracy"] == pytest.approx(3 / 4)
    assert got["majority_answer"] == "left"
    assert got["majority_accuracy"] == pytest.approx(1 / 6)


def test_question_prior_matches_brute_force():
    rng = np.random.default_rng(1)
    words = ["q0", "q1", "q2", "q3"]
    train_q = list(rng.choice(words[:3], 200))
    train_a = [str(rng.choice(["yes", "no"] if q != "q2" else ["left", "right", "left"]))
               for q in train_q]
    test_q = list(rng.choice(words, 80))      # q3 never occurs in train
    test_a = [str(rng.choice(["yes", "no", "left", "right"])) for _ in test_q]
    test_closed = rng.random(80) < 0.5
    got = vqa.scores.question_prior_baseline(train_q, train_a, test_q, test_a, test_closed)
    overall = max(sorted(set(train_a)), key=train_a.count)
    hits = []
    for q, a in zip(test_q, test_a):
        seen = [x for x, y in zip(train_a, train_q) if y == q]
        guess = max(sorted(set(seen)), key=seen.count) if seen else overall
        hits.append(guess == a)
    hits = np.array(hits)
    assert got["question_prior_accuracy"] == pytest.approx(hits.mean())
    assert got["question_prior_closed_accuracy"] == pytest.approx(hits[test_closed].mean())


@pytest.mark.parametrize("num, batch", [(1, 4), (8, 4), (9, 4), (37, 16), (3, 8)])
def test_batch_plan_covers_every_position_exactly_once(num, batch):
    counts = np.zeros(num, int)
    shapes = set()
    for positions, valid in vqa.fit.batch_plan(num, batch):
        shapes.add(positions.shape)
        np.add.at(counts, positions[valid], 1)
        assert not valid[:0].any() and (positions[~valid] == 0).all()
    assert shapes == {(batch,)}
    np.testing.assert_array_equal(counts, np.ones(num, int))


# --------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------


def toy_problem(seed: int, num_questions: int, num_images: int = 60):
    """Images of 4 classes; question 0 asks the class (4 answers), question 1 asks whether it
    is even (yes/no). Class signal in the pooled embedding and in one patch token."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 4, num_images)
    centroids = np.random.default_rng(99).normal(size=(4, 16)).astype(np.float32)
    image_pooled = centroids[classes] + 0.3 * rng.normal(size=(num_images, 16))
    image_tokens = rng.normal(size=(num_images, 5, 8)).astype(np.float32)
    image_tokens[:, 2] += 2 * centroids[classes][:, :8]
    question_pooled = np.random.default_rng(98).normal(size=(2, 12)).astype(np.float32)
    question_tokens = np.random.default_rng(97).normal(size=(2, 3, 8)).astype(np.float32)
    question_mask = np.array([[1, 1, 0], [1, 1, 1]], np.int32)
    image_row = rng.integers(0, num_images, num_questions)
    question_row = rng.integers(0, 2, num_questions)
    vocab = ["c0", "c1", "c2", "c3", "yes", "no"]
    cls = classes[image_row]
    answer = np.where(question_row == 0, cls, np.where(cls % 2 == 0, 4, 5))
    tables = {"image_row": image_row.astype(np.int32), "question_row": question_row.astype(np.int32),
              "image_pooled": image_pooled.astype(np.float32), "image_tokens": image_tokens,
              "question_pooled": question_pooled, "question_tokens": question_tokens,
              "question_mask": question_mask,
              "targets": np.eye(len(vocab), dtype=np.float32)[answer]}
    return tables, answer, vocab


def one_device_mesh():
    """Unit tests of the head run on one device (compiles faster); the binary uses all."""
    return sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])


def small_settings(**overrides) -> settings_lib.VqaSettings:
    values = dict(hidden_dim=16, bilinear_factor=3, num_heads=2, classifier_hidden_dim=32,
                  dropout=0.1, epochs=8, batch_size=40, learning_rate=1e-2, seed=3)
    values.update(overrides)
    return vqa.head.settings_from_config(values)


@pytest.mark.parametrize("fusion, queries", [("bilinear", "tokens"),
                                             ("cross_attention", "tokens"),
                                             ("cross_attention", "pooled")])
def test_fusion_logit_shapes_and_padding_tokens_are_ignored(fusion, queries):
    tables, _, vocab = toy_problem(0, 10)
    settings = small_settings(fusion=fusion, question_features=queries)
    head = vqa.head.make_head(settings, len(vocab))
    rows = np.arange(7)
    features = vqa.fit.gather_features(tables, rows, None, None, None)
    params = jax.jit(head.init)(jax.random.key(0), features)["params"]
    apply = jax.jit(lambda features: head.apply({"params": params}, features))
    logits = np.asarray(apply(features))
    assert logits.shape == (7, len(vocab)) and np.isfinite(logits).all()
    # Changing the features of padded question tokens must not change any logit.
    changed = dict(features)
    tokens = np.array(features["question_tokens"])
    tokens[np.asarray(features["question_mask"]) == 0] = 123.0
    changed["question_tokens"] = tokens
    np.testing.assert_allclose(np.asarray(apply(changed)), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["bilinear", "cross_attention"])
def test_head_learns_a_separable_toy_problem(fusion):
    mesh = one_device_mesh()
    train_tables, train_answer, vocab = toy_problem(0, 320)
    test_tables, test_answer, _ = toy_problem(1, 200)
    settings = small_settings(fusion=fusion)
    head = vqa.head.make_head(settings, len(vocab))

    def accuracy(trainable):
        predictions = vqa.fit.predict_answers(head, trainable, test_tables, len(test_answer),
                                              40, mesh)
        return float(np.mean(predictions == test_answer))

    untrained = {"head": vqa.fit.init_head(head, train_tables, settings.seed, mesh)}
    fit = vqa.fit.fit_head(head, settings, train_tables, np.arange(320), mesh)
    assert fit.epoch_losses[-1] < 0.3 * fit.epoch_losses[0]
    assert accuracy(untrained) < 0.5
    assert accuracy(fit.trainable) > 0.9
    # Deterministic: the same seed gives the same head (batch order and dropout keys).
    again = vqa.fit.fit_head(head, settings, train_tables, np.arange(320), mesh)
    assert again.epoch_losses == fit.epoch_losses
    for a, b in zip(jax.tree.leaves(fit.trainable), jax.tree.leaves(again.trainable)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_predictions_cover_every_question_once_in_order():
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})  # 45 questions in sharded batches of 16
    tables, answer, vocab = toy_problem(2, 45)
    head = vqa.head.make_head(small_settings(), len(vocab))
    trainable = {"head": vqa.fit.init_head(head, tables, 0, mesh)}
    got = vqa.fit.predict_answers(head, trainable, tables, len(answer), 16, mesh)
    features = vqa.fit.gather_features(tables, np.arange(len(answer)), None, None, None)
    host = jax.tree.map(np.asarray, trainable["head"])
    expected = np.argmax(np.asarray(head.apply({"params": host}, features)), -1)
    np.testing.assert_array_equal(got, expected)


def test_bad_settings_name_the_field():
    for field, values in (("fusion", {"fusion": "concat"}),
                          ("question_features", {"question_features": "cls"}),
                          ("epochs", {"epochs": 0}), ("batch_size", {"batch_size": True}),
                          ("hidden_dim", {"fusion": "cross_attention", "hidden_dim": 15}),
                          ("max_answers", {"max_answers": -1}), ("dropout", {"dropout": 1.0}),
                          ("learning_rate", {"learning_rate": 0.0})):
        with pytest.raises(UserError, match=f"config.vqa.{field}"):
            vqa.head.settings_from_config({**values, "num_heads": 2})
    vqa.head.settings_from_config({"hidden_dim": 15, "num_heads": 2})  # bilinear has no heads


# --------------------------------------------------------------------------------------------
# End to end: a tiny checkpoint, the binary, the fine-tuning option
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_workdir(tiny_data_dir, tmp_path_factory):
    """A tiny CLIP checkpoint made by the training entry point (1 step)."""
    from medclip_jax import train
    workdir = str(tmp_path_factory.mktemp("vqa_run"))
    train.train_and_evaluate(tiny_config(tiny_data_dir, max_steps=1,
                                         **{"eval.every_steps": 0}), workdir)
    return workdir


def brute_force_test_questions(data_dir: str) -> tuple[int, int]:
    """(questions, closed questions) of the tiny test split, read with TFDS directly."""
    import tensorflow_datasets as tfds
    builder = tfds.builder_from_directory(
        os.path.join(data_dir, "synthetic_medical", "tiny", "1.0.0"))
    source = builder.as_data_source("test", decoders={"image": tfds.decode.SkipDecoding()})
    total = closed = 0
    for i in range(len(source)):
        types = [t.decode() if isinstance(t, bytes) else t
                 for t in source[i]["vqa"]["answer_type"]]
        total += len(types)
        closed += sum(t == "closed" for t in types)
    return total, closed


@pytest.mark.slow
def test_binary_end_to_end(tiny_data_dir, tiny_workdir):
    env = subprocess_env(num_devices=2)
    result = run([sys.executable, "-m", "evals.vqa", "--workdir", tiny_workdir,
                  "--config", "configs/eval.py:tiny", f"--config.data_dir={tiny_data_dir}"],
                 env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "majority_closed" in result.stdout
    files = os.listdir(os.path.join(tiny_workdir, "eval"))
    name = next(f for f in files if f.startswith("vqa_step") and f.endswith(".json"))
    assert name.replace(".json", ".md") in files
    with open(os.path.join(tiny_workdir, "eval", name), encoding="utf-8") as f:
        out = json.load(f)
    metrics = out["results"]["synthetic_medical@tiny/test:vqa"]
    total, closed = brute_force_test_questions(tiny_data_dir)
    assert (metrics["num_questions"], metrics["num_closed"], metrics["num_open"]) == (
        total, closed, total - closed)
    for key in ("accuracy", "closed_accuracy", "open_accuracy", "majority_closed_accuracy",
                "majority_accuracy", "question_prior_accuracy",
                "question_prior_closed_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["num_unseen_answers"] >= 0 and metrics["num_answers"] > 2
    assert metrics["num_train_dropped"] == 0


@pytest.fixture(scope="module")
def one_device_model(tiny_workdir):
    """The tiny checkpoint restored onto one device (its programs compile faster)."""
    from medclip_jax.evaluation import model_view
    loaded = model_view.from_checkpoint(tiny_workdir)
    mesh = one_device_mesh()
    return dataclasses.replace(loaded, mesh=mesh, params=jax.device_put(
        loaded.params, sharding.replicated(mesh)))


@pytest.mark.slow
def test_per_question_records_in_vqa_rad_layout(one_device_model, tmp_path):
    """VQA-RAD's layout through its builder: one record per question, an image shared by
    several questions embedded once, a test answer never seen in train counted and wrong."""
    from configs import eval as eval_config
    from data_prep import vqa as vqa_prep
    from data_prep_helpers import run_build, write_image
    root = tmp_path / "raw"
    for n, image in enumerate("ABC"):
        write_image(str(root / "VQA_RAD Image Folder" / f"synpic{image}.jpg"), seed=n)
    rows = [("A", "Is there a fracture?", "Yes", "CLOSED", "freeform"),
            ("A", "What organ is shown?", "Brain", "OPEN", "freeform"),
            ("B", "Is there a fracture?", "No", "CLOSED", "freeform"),
            ("B", "What organ is shown?", "Chest.", "OPEN", "para"),
            ("C", "Is there a fracture?", "yes", "CLOSED", "freeform"),
            ("C", "What organ is shown?", "brain", "OPEN", "freeform"),
            ("A", "Is this normal?", "Yes", "CLOSED", "test_freeform"),
            ("B", "What organ is shown?", "chest", "OPEN", "test_freeform"),
            ("C", "What modality is used?", "MRI", "OPEN", "test_para"),
            ("B", "Is there a fracture?", "No.", "CLOSED", "test_freeform")]
    (root / vqa_prep.VQA_RAD_JSON).write_text(json.dumps([
        {"qid": i, "phrase_type": phrase, "image_name": f"synpic{image}.jpg", "question": q,
         "answer": a, "answer_type": kind, "question_type": "PRES", "image_organ": "HEAD"}
        for i, (image, q, a, kind, phrase) in enumerate(rows)]))
    data_dir = str(tmp_path / "tfds")
    run_build("vqa_rad", str(root), data_dir)
    config = eval_config.get_config("tiny")
    config.vqa.update(datasets=("vqa_rad",), batch_size=4, epochs=2)
    config.batch_size = 4
    metrics = vqa.evaluate(one_device_model, data_dir, config)["vqa_rad/test:vqa"]
    assert (metrics["num_questions"], metrics["num_closed"], metrics["num_open"]) == (4, 2, 2)
    assert metrics["num_unseen_answers"] == 1  # "mri"
    assert metrics["num_answers"] == 4         # yes, no, brain, chest
    assert (metrics["num_train_images"], metrics["num_test_images"]) == (3, 3)
    # Train closed answers yes, no, yes: the majority says "yes" (right once of 2). The blind
    # prior says "yes" to the fracture question (wrong) and, for the never-seen "Is this
    # normal?", the overall majority: yes and brain tie at 2, alphabetical -> "brain" (wrong).
    assert metrics["majority_closed_accuracy"] == 0.5
    assert metrics["question_prior_closed_accuracy"] == 0.0
    assert metrics["open_accuracy"] <= 0.5                # "mri" can never be right


@pytest.mark.slow
def test_finetuned_image_tower_with_cross_attention(tiny_data_dir, one_device_model):
    """finetune_image: the head trains on the pixels through the image tower, which moves."""
    from configs import eval as eval_config
    loaded = one_device_model
    config = eval_config.get_config("tiny")
    config.vqa.update(fusion="cross_attention", epochs=1, finetune_image=True)
    settings = vqa.head.settings_from_config(config.vqa)
    name = "synthetic_medical@tiny"
    train = vqa.questions.load_questions(tiny_data_dir, name, "test")  # small: 48 images
    tables = vqa.features.split_tables(loaded, tiny_data_dir, name, "test", train, settings, 16)
    assert "pixels" in tables and "image_pooled" not in tables
    assert len(tables["pixels"]) == 48 and len(tables["question_row"]) == len(train)
    vocab = vqa.questions.build_vocabulary(train.answers)
    tables["targets"] = vqa.questions.soft_targets(train.answers, vocab)
    tower, frozen, encoder = vqa.finetuned_tower(loaded)
    assert set(tower) == set(vqa.fit.IMAGE_TOWER_KEYS) and not set(tower) & set(frozen)
    before = jax.tree.map(np.asarray, tower)
    fit = vqa.fit.fit_head(vqa.head.make_head(settings, len(vocab)), settings, tables,
                           np.arange(48), loaded.mesh, tower=tower, frozen=frozen,
                           image_encoder=encoder)
    after = jax.tree.map(np.asarray, fit.trainable["tower"])
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before),
                                                    jax.tree.leaves(after))]
    assert all(moved) and set(fit.trainable) == {"head", "tower"}
    assert np.isfinite(fit.epoch_losses).all()
    with pytest.raises(UserError, match="config.vqa.datasets"):
        config.vqa.datasets = ("synthetic_medical@tiny/test",)
        vqa.evaluate(loaded, tiny_data_dir, config)
