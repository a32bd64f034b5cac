"""Multi-label (CheXpert-style) zero-shot: per-label AUROC against scikit-learn with the
uncertain / unknown exclusions, the mean over scorable labels, prompt construction, and a run
on a tiny MIMIC-CXR build with a tiny checkpoint."""

import math
import os

import ml_collections
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import tiny_config
from data_prep import mimic_cxr
from data_prep_helpers import run_build, write_image
from evals import zero_shot as zero_shot_eval
from medclip_jax import train
from medclip_jax.data import sources
from medclip_jax.errors import UserError
from medclip_jax.evaluation import model_view, zero_shot
from test_data_prep_mimic_cxr import csv_bytes, dicom_id, write_table

LABELS = mimic_cxr.CHEXPERT_LABELS
NAN = math.nan
CYCLE = (1.0, 0.0, -1.0, NAN)
NUM_TEST = 16


# --------------------------------------------------------------------------------------------
# Fixtures shared with tests/test_run_suite.py
# --------------------------------------------------------------------------------------------


def chexpert_row(i: int) -> dict[str, float]:
    """Test image i's labels: every label cycles through 1 / 0 / -1 / NaN, except Fracture
    (negatives only), Pleural Other (never mentioned) and Pneumonia (3 positives, the rest
    uncertain: scorable only when uncertain counts as negative)."""
    row = {label: CYCLE[(i + j) % 4] for j, label in enumerate(LABELS)}
    row["Fracture"] = 0.0 if i % 2 == 0 else NAN
    row["Pleural Other"] = NAN
    row["Pneumonia"] = 1.0 if i < 3 else -1.0
    return row


def raw_value(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"


def write_mimic_fixture(base: str) -> str:
    """A MIMIC-CXR-JPG folder (manual_dir itself) with one PA image per study: 2 train,
    1 validate and NUM_TEST test images, each with a report; labels of `chexpert_row`."""
    images = ([("train", i) for i in range(2)] + [("validate", 2)]
              + [("test", 3 + i) for i in range(NUM_TEST)])
    split_rows, meta_rows, label_rows = [], [], []
    os.makedirs(base, exist_ok=True)
    for n, (split, i) in enumerate(images):
        subject, study, dicom = f"1{i:07d}", f"5{i:07d}", dicom_id(f"m{i:02d}")
        split_rows.append([dicom, study, subject, split])
        meta_rows.append([dicom, subject, study, "CHEST (PA AND LAT)", "PA", "20", "24"])
        labels = chexpert_row(i - 3) if split == "test" else {label: 1.0 for label in LABELS}
        label_rows.append([subject, study, *(raw_value(labels[label]) for label in LABELS)])
        write_image(mimic_cxr.image_path(base, subject, study, dicom),
                    "grey_png" if n % 2 else "rgb_jpeg", seed=n)
        report = os.path.join(base, "files", mimic_cxr.report_path(subject, study))
        os.makedirs(os.path.dirname(report), exist_ok=True)
        with open(report, "w", encoding="utf-8") as f:
            f.write(f" FINAL REPORT\n FINDINGS:  Finding number {i}.\n \n IMPRESSION:  "
                    f"Impression {i % 5}.\n")
    write_table(base, "mimic-cxr-2.0.0-split.csv",
                csv_bytes(["dicom_id", "study_id", "subject_id", "split"], split_rows), True)
    write_table(base, "mimic-cxr-2.0.0-metadata.csv",
                csv_bytes(["dicom_id", "subject_id", "study_id",
                           "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                           "Columns"], meta_rows), True)
    write_table(base, "mimic-cxr-2.0.0-chexpert.csv",
                csv_bytes(["subject_id", "study_id", *LABELS], label_rows), True)
    return base


def mimic_data_dir(tmp_path_factory) -> str:
    """A TFDS data_dir holding the tiny MIMIC-CXR build (built once per session)."""
    data_dir = os.path.join(str(tmp_path_factory.getbasetemp()), "multilabel_mimic_tfds")
    if not os.path.isdir(os.path.join(data_dir, "mimic_cxr")):
        raw = write_mimic_fixture(os.path.join(str(tmp_path_factory.getbasetemp()),
                                               "multilabel_mimic_raw"))
        (report,) = run_build("mimic_cxr", raw, data_dir, max_image_side=32)
        report.check()
    return data_dir


def tiny_checkpoint(tmp_path_factory, data_dir: str) -> str:
    """A workdir with an untrained tiny CLIP checkpoint (step 5), made once per session.

    Untrained on purpose: the tests check wiring and metrics against references, not
    quality, and skipping the train step saves its compilation."""
    workdir = os.path.join(str(tmp_path_factory.getbasetemp()), "multilabel_tiny_ckpt")
    if not os.path.isdir(os.path.join(workdir, "checkpoints", "5")):
        run, checkpointer = train.setup(tiny_config(data_dir, **{"eval.every_steps": 0}),
                                        workdir)
        checkpointer.save(5, run.state.params, train.rest_of_state(run.state),
                          run.config.to_dict())
        checkpointer.wait_until_finished()
        checkpointer.close()
    return workdir


@pytest.fixture(scope="module")
def mimic_dir(tmp_path_factory) -> str:
    return mimic_data_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tiny_data_dir) -> model_view.ModelView:
    return model_view.from_checkpoint(tiny_checkpoint(tmp_path_factory, tiny_data_dir))


# --------------------------------------------------------------------------------------------
# The metric against scikit-learn
# --------------------------------------------------------------------------------------------


def sklearn_reference(scores, values, labels, uncertain):
    """Per-label roc_auc_score over known targets; labels with one class skipped."""
    out, skipped = {}, []
    for j, label in enumerate(labels):
        v = values[:, j]
        known = ~np.isnan(v) & ((v != -1) | (uncertain != "exclude"))
        y = (v == 1) | ((v == -1) & (uncertain == "positive"))
        if len(set(y[known].tolist())) < 2:
            skipped.append(label)
        else:
            out[label] = roc_auc_score(y[known], scores[known, j])
    return out, skipped


def random_values(rng, n, num_labels):
    return rng.choice(np.array(CYCLE), size=(n, num_labels), p=[0.3, 0.4, 0.15, 0.15])


@pytest.mark.parametrize("uncertain", zero_shot.UNCERTAIN_POLICIES)
def test_per_label_auroc_matches_sklearn(uncertain):
    rng = np.random.default_rng(0)
    labels = [f"label {j}" for j in range(6)]
    values = random_values(rng, 200, len(labels))
    scores = np.round(rng.normal(size=values.shape) + 0.8 * (values == 1), 1)  # with ties
    result = zero_shot.multilabel_auroc(scores, values, labels, uncertain)
    expected, skipped = sklearn_reference(scores, values, labels, uncertain)
    assert skipped == [] and result["skipped_labels"] == []
    for label, auroc in expected.items():
        assert result[f"auroc/{label}"] == pytest.approx(auroc, abs=1e-12)
    assert result["mean_auroc"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
    assert result["num_labels"] == len(labels)
    column = values[:, 0]
    known = ~np.isnan(column) & ((column != -1) | (uncertain != "exclude"))
    positives = ((column == 1) | ((column == -1) & (uncertain == "positive")))[known].sum()
    assert result["positives/label 0"] == positives
    assert result["negatives/label 0"] == known.sum() - positives


def test_one_class_labels_are_skipped_listed_and_left_out_of_the_mean():
    rng = np.random.default_rng(1)
    values = random_values(rng, 60, 4)
    values[:, 1] = rng.choice([0.0, NAN, -1.0], size=60)   # no positive
    values[:, 2] = NAN                                      # never mentioned
    values[:5, 3], values[5:, 3] = 1.0, -1.0                # positives + uncertain only
    scores = rng.normal(size=values.shape)
    labels = ["a", "b", "c", "d"]
    result = zero_shot.multilabel_auroc(scores, values, labels, "exclude")
    assert result["skipped_labels"] == ["b", "c", "d"]
    assert set(k for k in result if k.startswith("auroc/")) == {"auroc/a"}
    assert result["mean_auroc"] == result["auroc/a"] and result["num_labels"] == 1
    # Uncertain as negative makes "d" two-class; "b" has no positive either way.
    as_negative = zero_shot.multilabel_auroc(scores, values, labels, "negative")
    expected, skipped = sklearn_reference(scores, values, labels, "negative")
    assert as_negative["skipped_labels"] == skipped == ["b", "c"]
    assert as_negative["auroc/d"] == pytest.approx(expected["d"])
    assert as_negative["mean_auroc"] == pytest.approx(np.mean([expected["a"], expected["d"]]))
    nothing = zero_shot.multilabel_auroc(scores[:, 2:3], values[:, 2:3], ["c"])
    assert math.isnan(nothing["mean_auroc"]) and nothing["num_samples"] == 0


def test_binary_targets_policies_and_errors():
    values = np.array([[1.0, 0.0, -1.0, NAN]])
    for policy, targets, known in (("exclude", [1, 0, 0, 0], [1, 1, 0, 0]),
                                   ("negative", [1, 0, 0, 0], [1, 1, 1, 0]),
                                   ("positive", [1, 0, 1, 0], [1, 1, 1, 0])):
        t, k = zero_shot.binary_targets(values, policy)
        assert t.tolist() == [targets] and k.astype(int).tolist() == [known], policy
    with pytest.raises(UserError, match="multilabel_uncertain"):
        zero_shot.binary_targets(values, "ignore")
    with pytest.raises(UserError, match="1, 0, -1 or NaN"):
        zero_shot.binary_targets(np.array([[2.0]]))


def test_scores_are_prompt_ensemble_cosine_differences():
    rng = np.random.default_rng(2)
    num_labels, dim = 3, 8
    positive = rng.normal(size=(num_labels, 4, dim))
    negative = rng.normal(size=(num_labels, 2, dim))
    images = rng.normal(size=(5, dim))

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def ensemble(p):
        return unit(unit(p).mean(axis=1))

    expected = unit(images) @ ensemble(positive).T - unit(images) @ ensemble(negative).T
    pos_cls, neg_cls = zero_shot.multilabel_classifiers(positive, negative)
    np.testing.assert_allclose(zero_shot.multilabel_scores(images, pos_cls, neg_cls), expected,
                               rtol=1e-5, atol=1e-6)
    # The softmax over the (positive, negative) pair at scale s is sigmoid(s * difference).
    scale = 20.0
    pair = np.stack([unit(images) @ ensemble(positive).T, unit(images) @ ensemble(negative).T])
    softmax = np.exp(scale * pair[0]) / np.exp(scale * pair).sum(axis=0)
    np.testing.assert_allclose(zero_shot.positive_probability(expected, scale), softmax,
                               rtol=1e-5)
    # Saturation: at s = 100, float32 sigmoid ties distinct differences, hence AUROC on them.
    assert np.unique(zero_shot.positive_probability(np.array([0.3, 0.5]), 100.0)).size == 1


def test_mimic_task_metadata_and_prompts(mimic_dir):
    meta = sources.dataset_metadata(mimic_dir, "mimic_cxr")
    task = zero_shot.multilabel_task("mimic_cxr/test", "chexpert", meta["tasks"]["chexpert"])
    assert "No Finding" not in task["labels"] and "Support Devices" in task["labels"]
    assert len(task["labels"]) == 13 and task["num_columns"] == 14
    assert [LABELS[c] for c in task["columns"]] == task["labels"]
    assert task["label_field"] == "chexpert"
    names = dict(zip(task["labels"], task["class_names"]))
    assert names["Edema"] == "pulmonary edema" and names["Pleural Effusion"] == "pleural effusion"
    prompts = zero_shot.format_prompts(task["class_names"], task["negative_templates"])
    per_label = len(task["negative_templates"])
    effusion = task["labels"].index("Pleural Effusion")
    assert "a chest X-ray with no pleural effusion." in prompts[
        effusion * per_label:(effusion + 1) * per_label]
    positives = zero_shot.format_prompts(task["class_names"], task["positive_templates"])
    assert positives[0] == "atelectasis." and len(positives) == 13 * len(
        task["positive_templates"])


def test_bad_task_metadata_is_a_user_error():
    with pytest.raises(UserError, match=r"tasks\['x'\].type"):
        zero_shot.task_type("d/test", "x", {"type": "ranking"})
    good = {"type": "multilabel", "label_field": "f", "labels": ["A"],
            "positive_templates": ["{}."], "negative_templates": ["no {}."]}
    assert zero_shot.multilabel_task("d/test", "x", good)["class_names"] == ["A"]
    for broken, message in (({"labels": []}, "no 'labels'"),
                            ({"columns": ["B"]}, "not in its columns"),
                            ({"class_names": ["a", "b"]}, "2 names for 1 labels")):
        with pytest.raises(UserError, match=message):
            zero_shot.multilabel_task("d/test", "x", {**good, **broken})


# --------------------------------------------------------------------------------------------
# End to end on a tiny MIMIC-CXR build
# --------------------------------------------------------------------------------------------


def eval_config(data_dir: str, uncertain: str = "exclude") -> ml_collections.ConfigDict:
    from configs import eval as eval_configs
    config = eval_configs.get_config("tiny")
    config.data_dir = data_dir
    config.zero_shot.datasets = ("mimic_cxr/test",)
    config.zero_shot.multilabel_uncertain = uncertain
    return config


def reference_scores(loaded, data_dir, task):
    """Scores [N, L] from independently embedded images and prompts, and the label values."""
    images = model_view.embed_split_images(loaded, data_dir, "mimic_cxr", "test", 8)
    images = images / np.linalg.norm(images, axis=1, keepdims=True)

    def ensemble(templates):
        prompts = [t.format(n) for n in task["class_names"] for t in templates]
        emb = model_view.embed_texts(loaded, prompts, 8).reshape(len(task["class_names"]),
                                                              len(templates), -1)
        emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
        mean = emb.mean(axis=1)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)

    scores = (images @ ensemble(task["positive_templates"]).T
              - images @ ensemble(task["negative_templates"]).T)
    values = np.stack(list(sources.load_annotations(data_dir, "mimic_cxr", "test",
                                                    ["chexpert"])["chexpert"]))
    return scores, values[:, task["columns"]]


@pytest.mark.slow
def test_zero_shot_on_tiny_mimic_build(mimic_dir, loaded):
    meta = sources.dataset_metadata(mimic_dir, "mimic_cxr")
    task = zero_shot.multilabel_task("mimic_cxr/test", "chexpert", meta["tasks"]["chexpert"])
    scores, values = reference_scores(loaded, mimic_dir, task)
    for uncertain, skipped in (("exclude", ["Fracture", "Pleural Other", "Pneumonia"]),
                               ("negative", ["Fracture", "Pleural Other"])):
        results = zero_shot.evaluate(loaded, mimic_dir, eval_config(mimic_dir, uncertain))
        assert list(results) == ["mimic_cxr/test:chexpert"]
        result = results["mimic_cxr/test:chexpert"]
        expected, expected_skipped = sklearn_reference(scores, values, task["labels"], uncertain)
        assert result["skipped_labels"] == expected_skipped == skipped
        assert {k.split("/", 1)[1] for k in result if k.startswith("auroc/")} == set(expected)
        for label, auroc in expected.items():
            assert result[f"auroc/{label}"] == pytest.approx(auroc, abs=1e-5), label
        assert result["mean_auroc"] == pytest.approx(np.mean(list(expected.values())), abs=1e-5)
        assert result["num_samples"] == NUM_TEST and result["num_labels"] == 13 - len(skipped)
    assert result["positives/Pneumonia"] == 3 and result["negatives/Pneumonia"] == NUM_TEST - 3
    table = zero_shot_eval.table(results)
    assert "not scored: Fracture, Pleural Other" in table and "**mean**" in table
    assert "| Support Devices |" in table
