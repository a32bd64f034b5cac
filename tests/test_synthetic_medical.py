"""The embedded synthetic dataset: build, read-back without TensorFlow, determinism, content."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from data_prep import synthetic_medical as sm

TINY = sm.TINY_CONFIG
SKIP_IMAGE = {"image": tfds.decode.SkipDecoding()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> str:
    """The `tiny` config built once for this module."""
    return sm.build(str(tmp_path_factory.mktemp("tfds_a")), "tiny")


@pytest.fixture(scope="module")
def builder(dataset_dir):
    return tfds.builder_from_directory(dataset_dir)


@pytest.fixture(scope="module")
def records(builder) -> dict[str, list[dict]]:
    """Every record of every split, images left as PNG bytes."""
    return {split: list(builder.as_data_source(split, decoders=SKIP_IMAGE))
            for split in sm.SPLITS}


def _raw_records(dataset_dir: str, split: str) -> list[bytes]:
    info = tfds.builder_from_directory(dataset_dir).info
    raw = []
    for path in info.splits[split].filepaths:
        reader = array_record_module.ArrayRecordReader(os.fspath(path))
        raw.extend(reader.read(list(range(reader.num_records()))))
        reader.close()
    return raw


def test_layout_and_counts(dataset_dir, builder):
    assert dataset_dir.endswith(os.path.join("synthetic_medical", "tiny", "1.0.0"))
    assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    for split, size in TINY.split_sizes().items():
        assert builder.info.splits[split].num_examples == size
        assert len(builder.as_data_source(split)) == size


def test_build_is_idempotent(dataset_dir):
    info_file = os.path.join(dataset_dir, "dataset_info.json")
    before = os.stat(info_file).st_mtime_ns
    data_dir = os.path.dirname(os.path.dirname(os.path.dirname(dataset_dir)))
    assert sm.build(data_dir, "tiny") == dataset_dir
    assert os.stat(info_file).st_mtime_ns == before


def test_same_config_gives_identical_records(dataset_dir, records, tmp_path):
    other_dir = sm.build(str(tmp_path), sm.TINY_CONFIG)
    other = tfds.builder_from_directory(other_dir)
    for split in sm.SPLITS:
        assert _raw_records(other_dir, split) == _raw_records(dataset_dir, split)
        mine = records[split]
        theirs = list(other.as_data_source(split, decoders=SKIP_IMAGE))
        assert [r["id"] for r in theirs] == [r["id"] for r in mine]
        assert [r["caption"] for r in theirs] == [r["caption"] for r in mine]
        assert [r["image"] for r in theirs] == [r["image"] for r in mine]


def test_records_do_not_depend_on_generation_order():
    forward = [sm.make_record(3, "train", i, 16) for i in range(4)]
    backward = [sm.make_record(3, "train", i, 16) for i in reversed(range(4))][::-1]
    assert [r["image"] for r in forward] == [r["image"] for r in backward]


def test_splits_are_disjoint(records):
    ids = {s: {_text(r["id"]) for r in records[s]} for s in sm.SPLITS}
    images = {s: {r["image"] for r in records[s]} for s in sm.SPLITS}
    for split in sm.SPLITS:
        assert len(ids[split]) == len(records[split])
        assert len(images[split]) == len(records[split])
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not ids[a] & ids[b]
        assert not images[a] & images[b]


def test_labels_class_names_and_captions_agree(records):
    for split, split_records in records.items():
        for record in split_records:
            modality, class_name = _text(record["modality"]), _text(record["class_name"])
            caption = _text(record["caption"])
            assert modality in sm.MODALITIES
            assert 0 <= record["label"] < len(sm.CLASS_NAMES[modality])
            assert sm.CLASS_NAMES[modality][record["label"]] == class_name
            prefix = {"chest_xray": "cxr", "histopathology": "histo"}[modality]
            assert _text(record["id"]).startswith(f"{prefix}-{split}-")
            assert caption.strip()
            synonyms = sm.CLASS_SYNONYMS[modality][class_name]
            assert any(word in caption.lower() for word in synonyms), (class_name, caption)


def test_vqa_pairs(records):
    for record in records["train"]:
        vqa = {k: [_text(v) for v in values] for k, values in record["vqa"].items()}
        assert 2 <= len(vqa["question"]) == len(vqa["answer"]) == len(vqa["answer_type"]) <= 4
        for question, answer, kind in zip(vqa["question"], vqa["answer"], vqa["answer_type"]):
            assert question.endswith("?")
            assert answer == answer.lower() and answer
            assert kind in ("open", "closed")
            if kind == "closed":
                assert answer in ("yes", "no")
        assert vqa["answer"][0] == _text(record["class_name"])


def test_modalities_and_classes_are_balanced(records):
    for split, split_records in records.items():
        for modality in sm.MODALITIES:
            labels = [r["label"] for r in split_records if _text(r["modality"]) == modality]
            assert len(labels) == len(split_records) // 2
            counts = np.bincount(labels, minlength=len(sm.CLASS_NAMES[modality]))
            assert counts.max() - counts.min() <= 1, (split, modality, counts)


def test_metadata_survives_builder_from_directory(builder):
    tasks = builder.info.metadata["tasks"]
    assert set(tasks) == set(sm.MODALITIES)
    for modality in sm.MODALITIES:
        assert tasks[modality]["class_names"] == sm.CLASS_NAMES[modality]
        assert tasks[modality]["templates"] == sm.PROMPT_TEMPLATES[modality]
        assert all("{}" in t for t in tasks[modality]["templates"])


def test_images_decode_to_config_size(builder):
    source = builder.as_data_source("validation")
    for index in range(8):
        record = source[index]
        image = record["image"]
        assert image.dtype == np.uint8 and image.shape == (TINY.image_size, TINY.image_size, 3)
        channels_equal = (image[..., 0] == image[..., 1]).all() and (
            image[..., 1] == image[..., 2]).all()
        assert channels_equal == (_text(record["modality"]) == "chest_xray")
        assert image.std() > 5  # Not blank.


def test_raw_array_records_parse_with_tfds_features(dataset_dir, builder, records):
    features = builder.info.features
    raw = _raw_records(dataset_dir, "test")
    assert len(raw) == TINY.test_size
    parsed = features.deserialize_example_np(raw[5], decoders=SKIP_IMAGE)
    assert parsed["id"] == records["test"][5]["id"]
    assert parsed["image"][:8] == b"\x89PNG\r\n\x1a\n"
    decoded = features["image"].decode_example_np(parsed["image"])
    assert decoded.shape == (TINY.image_size, TINY.image_size, 3)


def test_cli_builds_custom_config(tmp_path, capsys):
    sm.main(["--data_dir", str(tmp_path), "--config", "tiny", "--train_size", "6",
             "--validation_size", "2", "--test_size", "4", "--image_size", "16"])
    lines = capsys.readouterr().out.strip().splitlines()
    expected_dir = os.path.join(str(tmp_path), "synthetic_medical", "custom_6_2_4_16_1", "1.0.0")
    assert lines[-2] == expected_dir
    assert "train=6, validation=2, test=4" in lines[-1]
    record = tfds.builder_from_directory(expected_dir).as_data_source("test")[0]
    assert record["image"].shape == (16, 16, 3)


def _downsampled_features(split: str, count: int, size: int = 32, factor: int = 2
                          ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Block-mean pixels per modality (grey for radiographs), with labels."""
    features = {m: ([], []) for m in sm.MODALITIES}
    for index in range(count):
        example = sm.make_example(7, split, index, size)
        image = example["image"].astype(np.float32) / 255.0
        if example["modality"] == "chest_xray":
            image = image[..., :1]
        cells = size // factor
        pooled = image.reshape(cells, factor, cells, factor, -1).mean(axis=(1, 3))
        features[example["modality"]][0].append(pooled.ravel())
        features[example["modality"]][1].append(int(example["label"]))
    return {m: (np.stack(x), np.array(y)) for m, (x, y) in features.items()}


def test_classes_are_learnable_from_pixels():
    """A nearest-centroid classifier on 16x16 pixels beats chance by a wide margin."""
    train, test = _downsampled_features("train", 600), _downsampled_features("test", 300)
    for modality, minimum in (("chest_xray", 0.45), ("histopathology", 0.7)):
        x, y = train[modality]
        x_test, y_test = test[modality]
        centroids = np.stack([x[y == c].mean(axis=0) for c in range(len(sm.CLASS_NAMES[modality]))])
        distances = ((x_test[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
        accuracy = float((distances.argmin(axis=1) == y_test).mean())
        chance = 1.0 / len(sm.CLASS_NAMES[modality])
        assert accuracy > minimum > 2 * chance, (modality, accuracy)
