"""The miniature release of every dataset (data_prep.fixtures) through `data_prep.build all`:
every dataset the paper's evaluations and training mixture name resolves, every class is in
every classification split, the counts add up, and every planted bad item is reported with
its reason (the rehearsal's data half, scripts/rehearsal.sh)."""

import collections
import hashlib
import json
import math
import os

import numpy as np
import pytest

from configs import base as base_config
from configs import eval as eval_config
from data_prep import build as build_lib
from data_prep import core, fixtures
from medclip_jax.data import sources

RETRIEVAL = [spec.rsplit("/", 1) for spec in eval_config.PAPER_RETRIEVAL]
CLASSIFICATION = [spec.rsplit("/", 1)[0] for spec in eval_config.PAPER_CLASSIFICATION]
VQA = tuple(eval_config.vqa_config("paper").datasets)
# ROCO's fetch.py names images <ROCO id>.jpg since 2022: the shared build uses those, and
# test_roco_older_image_names the <PMCID>_<name> copies made before.
ROCO_IMAGE_NAMES = "roco_id"


@pytest.fixture(scope="session")
def release(tmp_path_factory):
    """(data_dir, planted bad items, {build name: report}) of one build of the release."""
    raw = str(tmp_path_factory.mktemp("release_raw"))
    planted = fixtures.write_release(raw, seed=0, roco_image_names=ROCO_IMAGE_NAMES)
    data_dir = str(tmp_path_factory.mktemp("release_tfds"))
    reports = build_lib.build_all(raw, data_dir, max_image_side=48, workers=1)
    return data_dir, planted, {r.dataset: r for r in reports}


def files_digest(root: str) -> dict[str, str]:
    digests = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def labels_of(data_dir: str, name: str, split: str) -> np.ndarray:
    return sources.load_annotations(data_dir, name, split, fields=["label"])["label"]


def splits_of(data_dir: str, name: str) -> list[str]:
    return list(sources.read_builder(sources.dataset_dir(data_dir, name)).info.splits)


def test_every_builder_has_a_release_and_every_build_planted_rejects(release):
    _, planted, reports = release
    assert set(fixtures.WRITERS) == set(build_lib.BUILDERS)
    assert set(reports) == set(planted)
    built = {name.partition("@")[0] for name in reports}
    assert built == set(build_lib.BUILDERS)
    assert {n for n in reports if n.startswith("medmnist@")} == {
        f"medmnist@{n}" for n in eval_config.MEDMNIST}


def test_paper_datasets_and_training_mixture_resolve(release):
    data_dir, _, _ = release
    specs = [spec.rsplit("/", 1) for spec in eval_config.PAPER_CLASSIFICATION]
    specs += RETRIEVAL + [(name, split) for name in VQA for split in ("train", "test")]
    entries = sources.parse_mixture(base_config.get_config("paper").data.train_mixture)
    assert len(entries) == 4
    specs += [(e.name, e.split) for e in entries]
    for name, split in specs:
        assert sources.num_records(data_dir, name, split) > 0, (name, split)


def test_counts_add_up_and_planted_rejects_are_reported(release):
    data_dir, planted, reports = release
    for name, report in reports.items():
        report.check()
        path = sources.dataset_dir(data_dir, name)
        with open(os.path.join(path, core.SUMMARY_FILE), encoding="utf-8") as f:
            summary = json.load(f)
        for split, found in summary["found"].items():
            assert summary["written"][split] + summary["rejected"][split] == found, (name, split)
        rows = core.read_rejects(path)
        assert all(r["path"] and r["reason"] and r["split"] for r in rows), name
        reasons = dict(collections.Counter(r["reason"] for r in rows))
        assert reasons == planted[name], name
        assert summary["rejected_by_reason"] == planted[name], name


def test_every_class_in_every_classification_split(release):
    data_dir, _, _ = release
    for name in CLASSIFICATION:
        (task,) = sources.dataset_metadata(data_dir, name)["tasks"].values()
        classes = len(task["class_names"])
        splits = splits_of(data_dir, name)
        assert {"train", "test"} <= set(splits), name
        for split in splits:
            counts = np.bincount(labels_of(data_dir, name, split), minlength=classes)
            assert len(counts) == classes and counts.min() >= 2, (name, split, counts)
    # The builders that make or have a validation split keep it (the probe picks L2 there).
    no_validation = {"nct_crc_he@default"}
    for name in set(CLASSIFICATION) - no_validation:
        assert "validation" in splits_of(data_dir, name), name


def test_image_text_corpora(release):
    data_dir, _, _ = release
    for name, split in RETRIEVAL:
        assert sources.num_records(data_dir, name, split) >= 8, name
        assert sources.num_records(data_dir, name, "train") >= 8, name
    # Several records share one caption (the duplicate-caption-aware losses; retrieval
    # merges a shared caption into one query).
    shared = [("mimic_cxr@frontal", "train"), ("mimic_cxr@frontal", "test"),
              ("roco@radiology", "train"), ("roco@radiology", "test"), ("pmc_oa@pmc_oa", "train")]
    for name, split in shared:
        captions = sources.load_annotations(data_dir, name, split, ["caption"])["caption"]
        assert max(collections.Counter(captions).values()) >= 2, (name, split)
    # Some images have several captions (retrieval scores each as a positive).
    for name in ("pmc_oa@pmc_oa", "quilt_1m"):
        captions = sources.load_annotations(data_dir, name, "train", ["captions"])["captions"]
        assert max(len(c) for c in captions) >= 2, name


def test_mimic_cxr_views_and_chexpert(release):
    data_dir, _, _ = release
    name = "mimic_cxr@frontal"
    for split in ("train", "validation", "test"):
        views = set(sources.load_annotations(data_dir, name, split, ["view_position"])[
            "view_position"])
        assert views and views <= {"PA", "AP"}, split
    meta = sources.dataset_metadata(data_dir, name)
    assert sum(meta["non_frontal_skipped"].values()) > 0
    task = meta["tasks"]["chexpert"]
    values = np.stack(sources.load_annotations(data_dir, name, "test", ["chexpert"])["chexpert"])
    columns = [task["columns"].index(label) for label in task["labels"]]
    scored = values[:, columns]
    both = [(scored[:, j] == 1).any() and (scored[:, j] == 0).any() for j in range(len(columns))]
    assert all(both), dict(zip(task["labels"], both))
    assert (scored == -1).any() and np.isnan(scored).any()


def test_vqa_closed_and_open_questions_with_test_answers_seen_in_train(release):
    data_dir, _, _ = release
    for name in VQA:
        columns = {s: sources.load_annotations(data_dir, name, s,
                                               ["answer_type", "answer_normalized"])
                   for s in ("train", "test")}
        for split, column in columns.items():
            assert set(column["answer_type"]) == {"closed", "open"}, (name, split)
        seen = set(columns["train"]["answer_normalized"])
        test = list(columns["test"]["answer_normalized"])
        assert sum(a in seen for a in test) >= 0.8 * len(test), name


def test_release_is_deterministic_and_the_seed_changes_only_content(tmp_path):
    subset = ("roco", "mimic_cxr", "medmnist", "path_vqa")
    first = fixtures.write_release(str(tmp_path / "a"), seed=0, datasets=subset)
    again = fixtures.write_release(str(tmp_path / "b"), seed=0, datasets=subset)
    other = fixtures.write_release(str(tmp_path / "c"), seed=1, datasets=subset)
    assert first == again == other
    a, b, c = (files_digest(str(tmp_path / x)) for x in "abc")
    assert a == b
    assert set(c) == set(a) and c != a


def test_command_line_and_old_roco_names(tmp_path):
    planted_file = tmp_path / "planted.json"
    assert fixtures.main(["--out", str(tmp_path / "raw"), "--seed", "3",
                          "--planted", str(planted_file)]) == 0
    assert sorted(os.listdir(tmp_path / "raw")) == sorted(build_lib.BUILDERS)
    assert json.loads(planted_file.read_text()) == fixtures.write_release(
        str(tmp_path / "again"), seed=3)
    fixtures.write_release(str(tmp_path / "old"), datasets=("roco",), roco_image_names="pmc")
    images = os.listdir(tmp_path / "old" / "roco" / "data" / "test" / "radiology" / "images")
    assert images and all(n.startswith("PMC") for n in images)
    current = os.listdir(tmp_path / "raw" / "roco" / "data" / "test" / "radiology" / "images")
    assert all(n.startswith("ROCO_") and n.endswith(".jpg") for n in current)
    with pytest.raises(ValueError, match="no fixture"):
        fixtures.write_release(str(tmp_path / "x"), datasets=("imagenet",))


def test_fixture_images_convert_or_are_rejected_as_planned():
    from data_prep import images
    for kind in fixtures.GOOD_KINDS + ("grey_jpeg", "rgb_png"):
        converted = images.convert_image(fixtures.image_bytes(kind, seed=1), max_side=48)
        assert converted.width > 0 and math.isfinite(converted.height)
    for kind, reason in fixtures.BAD_KINDS.items():
        with pytest.raises(images.Rejected) as e:
            images.convert_image(fixtures.image_bytes(kind, seed=1))
        assert e.value.reason == reason


def test_roco_older_image_names(tmp_path):
    planted = fixtures.write_release(str(tmp_path / "raw"), datasets=("roco",),
                                     roco_image_names="pmc")
    (report,) = build_lib.build("roco", str(tmp_path / "raw" / "roco"), str(tmp_path / "out"),
                                max_image_side=48)
    assert report.reasons() == planted["roco@radiology"]
