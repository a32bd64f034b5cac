"""MedMNIST builder on tiny npz files in the publisher's format (zenodo.org/records/10519652)."""

import io

import numpy as np
import pytest
from PIL import Image

from data_prep import build, classification, core, medmnist
from data_prep_helpers import check_report, check_round_trip, column, reasons_by_id, run_build
from medclip_jax.data import sources
from medclip_jax.errors import UserError

# Number of classes per dataset in the medmnist package's INFO (medmnist/info.py).
INFO_CLASS_COUNTS = {"pathmnist": 9, "dermamnist": 7, "octmnist": 4, "pneumoniamnist": 2,
                     "retinamnist": 5, "breastmnist": 2, "bloodmnist": 8, "tissuemnist": 8,
                     "organamnist": 11, "organcmnist": 11, "organsmnist": 11}


def images(n, shape, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def npz_arrays(shape, labels, seed=0):
    """{train,val,test}_{images,labels} with `labels[split]` (one row per image)."""
    out = {}
    for i, (split, values) in enumerate(labels.items()):
        out[f"{split}_images"] = images(len(values), shape, seed + i)
        out[f"{split}_labels"] = np.asarray(values, np.uint8).reshape(-1, 1)
    return out


@pytest.fixture(scope="module")
def medmnist_raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("medmnist_raw")
    path = npz_arrays((8, 8, 3), {"train": [0, 1, 2, 3, 9, 8], "val": [4, 5], "test": [6, 7, 0]})
    path["train_labels"] = path["train_labels"][:5]  # one training image without a label
    np.savez_compressed(root / "pathmnist_224.npz", **path)
    np.savez_compressed(root / "pathmnist.npz", **npz_arrays(  # 28 px: the 224 px file wins
        (4, 4, 3), {"train": [0], "val": [0], "test": [0]}))
    # MedMNIST v2 naming (28 px), grey images, stored without compression.
    np.savez(root / "pneumoniamnist.npz", **npz_arrays(
        (8, 8), {"train": [0, 1, 1, 0], "val": [1, 0], "test": [0, 1]}, seed=10))
    grey = npz_arrays((8, 8, 1), {"train": [0, 1, 2, 3, 4], "val": [2], "test": [3, 4]}, seed=20)
    np.savez_compressed(root / "retinamnist_128.npz", **grey)
    return root


@pytest.fixture(scope="module")
def medmnist_built(medmnist_raw, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("medmnist_tfds")
    logged = []
    reports = build.build("medmnist", str(medmnist_raw), str(data_dir), max_image_side=64,
                          log=logged.append)
    return data_dir, {r.dataset: r for r in reports}, logged


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("shape", [(7, 5), (7, 5, 3)])
def test_streaming_reads_equal_np_load(tmp_path, compress, shape):
    arrays = {"train_images": images(23, shape, 1), "train_labels": np.arange(23).reshape(-1, 1)}
    path = str(tmp_path / "x.npz")
    (np.savez_compressed if compress else np.savez)(path, **arrays)
    row_bytes = int(np.prod(shape))
    blocks = list(medmnist.iter_npy_rows(path, "train_images", chunk_bytes=4 * row_bytes))
    assert [start for start, _ in blocks] == list(range(0, 23, 4))
    loaded = np.load(path)
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), loaded["train_images"])
    np.testing.assert_array_equal(medmnist.read_npy(path, "train_labels"), loaded["train_labels"])
    # The lazy item list reads only the rows it keeps, in order, one block at a time.
    items = medmnist.NpzItems(path, "train_images", [0, 5, 22],
                              lambda row, image: core.Item("train", str(row), image, {}))
    assert len(items) == 3
    got = list(items)
    assert [i.id for i in got] == ["0", "5", "22"]
    np.testing.assert_array_equal(got[1].image, loaded["train_images"][5])


def test_class_names_for_every_config():
    assert {c.name for c in medmnist.CONFIGS} == set(INFO_CLASS_COUNTS)
    for config in medmnist.CONFIGS:
        assert len(config.class_names) == len(config.label_names) == INFO_CLASS_COUNTS[
            config.name], config.name
        assert len(set(config.class_names)) == len(config.class_names)
        # Prompt-ready: lower case, words (no grade digits, "femur-left", "a, b" or "(...)").
        assert all(name == name.lower() and not name.isdigit() and "(" not in name
                   and ", " not in name and not name.endswith(("-left", "-right"))
                   for name in config.class_names), config.class_names
        assert classification.templates(config.modality)
    by_name = {c.name: c for c in medmnist.CONFIGS}
    assert by_name["retinamnist"].class_names[0] == "no diabetic retinopathy"
    assert by_name["retinamnist"].label_names == ("0", "1", "2", "3", "4")
    assert by_name["organamnist"].class_names[1] == "left femur"
    assert by_name["tissuemnist"].class_names[0] == "collecting duct or connecting tubule"
    assert by_name["pathmnist"].class_names == by_name["pathmnist"].label_names


def test_build_all_skips_absent_configs(medmnist_built):
    _, reports, logged = medmnist_built
    assert set(reports) == {"medmnist@pathmnist", "medmnist@pneumoniamnist",
                            "medmnist@retinamnist"}
    assert len(logged) == 1 and "dermamnist" in logged[0] and "pathmnist" not in logged[0]


def test_counts_rejects_and_official_splits(medmnist_built):
    _, reports, _ = medmnist_built
    path = reports["medmnist@pathmnist"]
    rows = check_report(path)
    assert path.written == {"train": 4, "validation": 2, "test": 3}
    assert path.found == {"train": 6, "validation": 2, "test": 3}
    reasons = reasons_by_id(rows)
    assert reasons == {"pathmnist_train_000004": "unknown_label",
                       "pathmnist_train_000005": "missing_label"}
    assert "pathmnist_224.npz:train_images[4]" in [r["path"] for r in rows][0]
    for name, written in (("pneumoniamnist", {"train": 4, "validation": 2, "test": 2}),
                          ("retinamnist", {"train": 5, "validation": 1, "test": 2})):
        report = reports[f"medmnist@{name}"]
        check_report(report)
        assert report.written == written and not report.rejects


def test_records_metadata_and_round_trip(medmnist_built, medmnist_raw):
    data_dir, _, _ = medmnist_built
    name = "medmnist@pathmnist"
    meta = sources.dataset_metadata(data_dir, name)
    assert meta["npz_file"] == "pathmnist_224.npz" and meta["image_size"] == 8
    assert meta["tasks"]["tissue_type"]["templates"] == classification.templates("histopathology")
    assert meta["source_labels"]["8"] == 8 and len(meta["medmnist_label_names"]) == 9
    assert sources.dataset_metadata(data_dir, "medmnist@pneumoniamnist")["npz_file"] == (
        "pneumoniamnist.npz")
    ids = column(data_dir, name, "train", "id")
    assert ids == [f"pathmnist_train_{i:06d}" for i in range(4)]
    source = sources.open_source(data_dir, name, "train")
    record = source[2]
    assert record["label"] == 2 and record["source_label"] == "2"
    assert record["class_name"] == "debris"
    # Pixels survive exactly (PNG): the record's image is the npz row.
    expected = np.load(medmnist_raw / "pathmnist_224.npz")["train_images"][2]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(record["image"]))), expected)
    for spec in (name, "medmnist@pneumoniamnist", "medmnist@retinamnist"):
        for split in core.SPLITS:
            check_round_trip(data_dir, spec, split, caption_field="class_name")


def test_absent_and_broken_npz(tmp_path):
    with pytest.raises(core.RawMissing, match="dermamnist_224.npz"):
        run_build("medmnist@dermamnist", tmp_path, tmp_path / "out")
    with pytest.raises(UserError, match="no config's raw files"):
        run_build("medmnist", tmp_path, tmp_path / "out")
    (tmp_path / "octmnist_224.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable npz"):
        run_build("medmnist@octmnist", tmp_path, tmp_path / "out")
    np.savez(tmp_path / "breastmnist_224.npz", train_images=images(2, (4, 4), 0))
    with pytest.raises(UserError, match="no array test_images"):
        run_build("medmnist@breastmnist", tmp_path, tmp_path / "out")
    arrays = npz_arrays((4, 4), {"train": [0], "val": [0], "test": [0]})
    arrays["test_images"] = arrays["test_images"].astype(np.float32)
    np.savez(tmp_path / "bloodmnist_224.npz", **arrays)
    with pytest.raises(UserError, match="expected uint8 images"):
        run_build("medmnist@bloodmnist", tmp_path, tmp_path / "out")


@pytest.fixture
def pools_started(monkeypatch):
    """Counts the process pools the conversion starts."""
    import concurrent.futures
    started = []

    class Counting(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            started.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Counting)
    return started


def test_one_pool_for_every_split_of_a_build(medmnist_raw, tmp_path, pools_started):
    """Starting conversion processes costs about a second each (they import TFDS): a build
    starts them once, not once per split."""
    (report,) = run_build("medmnist@pathmnist", medmnist_raw, tmp_path, workers=2)
    assert report.written == {"train": 4, "validation": 2, "test": 3}
    assert len(pools_started) == 1


def test_one_pool_for_a_whole_build_command(medmnist_raw, tmp_path, pools_started):
    """`build medmnist` (every config) and `build all` start the conversion processes once."""
    reports = build.build("medmnist", str(medmnist_raw), str(tmp_path / "one"),
                          max_image_side=64, workers=2)
    assert len(reports) == 3 and len(pools_started) == 1
    root = tmp_path / "raw"
    root.mkdir()
    (root / "medmnist").symlink_to(medmnist_raw, target_is_directory=True)
    reports = build.build("all", str(root), str(tmp_path / "all"), max_image_side=64,
                          workers=2)
    assert len(reports) == 3 and len(pools_started) == 2


def test_one_pool_across_configs_inside_conversion_pool(medmnist_raw, tmp_path, pools_started):
    with core.conversion_pool(2):
        reports = build.build("medmnist", str(medmnist_raw), str(tmp_path), max_image_side=64,
                              workers=2)
    assert len(reports) == 3 and len(pools_started) == 1
