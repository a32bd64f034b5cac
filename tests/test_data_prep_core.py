"""data_prep core: deterministic group splits, CSV row handling, parallel conversion equal to
serial, the build command's summary, rejects file and errors."""

import collections
import json
import os

import numpy as np
import pytest

from data_prep import build as build_lib
from data_prep import core
from data_prep_helpers import run_build, write_image
from medclip_jax.data import sources
from medclip_jax.errors import UserError


def make_groups(n_groups=60, seed=0):
    rng = np.random.default_rng(seed)
    groups, labels = [], []
    for g in range(n_groups):
        label = ["a", "b", "c"][g % 3]
        for _ in range(int(rng.integers(1, 5))):
            groups.append(f"patient{g}")
            labels.append(label)
    return groups, labels


FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}


def test_group_split_keeps_groups_whole_and_is_stratified():
    groups, labels = make_groups()
    splits = core.group_split(groups, labels, FRACTIONS, seed=0)
    by_group = collections.defaultdict(set)
    for g, s in zip(groups, splits):
        by_group[g].add(s)
    assert all(len(s) == 1 for s in by_group.values())
    for label in "abc":
        rows = [s for s, l in zip(splits, labels) if l == label]
        for name, fraction in FRACTIONS.items():
            # Whole groups of <= 4 items: within a few items of the target share.
            assert abs(rows.count(name) - fraction * len(rows)) <= 4, (label, name)


def test_group_split_is_deterministic_and_order_free():
    groups, labels = make_groups()
    first = core.group_split(groups, labels, FRACTIONS, seed=0)
    assert core.group_split(groups, labels, FRACTIONS, seed=0) == first
    order = np.random.default_rng(1).permutation(len(groups))
    shuffled = core.group_split([groups[i] for i in order], [labels[i] for i in order],
                                FRACTIONS, seed=0)
    assert [shuffled[list(order).index(i)] for i in range(len(groups))] == first
    assert core.group_split(groups, labels, FRACTIONS, seed=1) != first


def test_group_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="sum to 1"):
        core.group_split(["a"], [0], {"train": 0.7, "test": 0.2}, seed=0)


def test_hash_split_fractions():
    splits = core.hash_split([f"img{i}" for i in range(1000)], FRACTIONS, seed=0)
    counts = collections.Counter(splits)
    assert counts == {"train": 700, "validation": 100, "test": 200}


def test_read_csv_rows_reports_bad_rows(tmp_path):
    path = tmp_path / "meta.csv"
    path.write_bytes(b"\xef\xbb\xbfid,label\n"  # UTF-8 byte order mark
                     b"a,1\n"
                     b"b,2,extra\n"
                     b"\n"
                     b"c,caf\xe9\n"
                     b'd,"multi\nline"\n')
    rows = list(core.read_csv_rows(str(path)))
    assert rows[0] == (2, {"id": "a", "label": "1"})
    assert isinstance(rows[1][1], core.BadText) and rows[1][1].reason == "malformed_row"
    assert isinstance(rows[2][1], core.BadText) and rows[2][1].reason == "not_utf8"
    assert rows[3][1] == {"id": "d", "label": "multi\nline"}
    assert len(rows) == 4


def test_read_csv_rows_gzip(tmp_path):
    import gzip
    path = tmp_path / "meta.csv.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"id,label\nx,3\n")
    assert list(core.read_csv_rows(str(path))) == [(2, {"id": "x", "label": "3"})]


def test_clean_caption():
    assert core.clean_caption("  CT of\tthe\n chest. ") == "CT of the chest."
    with pytest.raises(core.BadText, match="empty"):
        core.clean_caption(" \n\t ")
    with pytest.raises(core.BadText) as e:
        core.decode_utf8(b"caf\xe9")
    assert e.value.reason == "not_utf8"


def test_array_items_become_png_and_bad_arrays_are_rejects():
    good = core.Item("train", "x", np.zeros((4, 5, 3), np.uint8), {})
    record = core.convert_item(good, max_side=64)
    assert record["id"] == "x" and record["image"][:4] == b"\x89PNG"
    bad = core.Item("train", "y", np.zeros((4, 5, 7), np.uint8), {}, path="f.h5[3]")
    reject = core.convert_item(bad, max_side=64)
    assert isinstance(reject, core.Reject) and reject.reason == "bad_array"
    assert reject.path == "f.h5[3]"


def roco_layout(root, n, kinds=("rgb_jpeg", "garbage", "grey_png")):
    """A minimal ROCO release folder (see test_data_prep_roco for the full one)."""
    for split in ("train", "test"):
        folder = os.path.join(root, split, "radiology")
        lines = []
        for i in range(n):
            roco_id = f"ROCO_{split}{i}"
            write_image(os.path.join(folder, "images", f"{roco_id}.jpg"), kinds[i % len(kinds)],
                        seed=i)
            lines.append(f"{roco_id}\t caption {i}")
        with open(os.path.join(folder, "captions.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return root


def test_parallel_conversion_equals_serial(tmp_path):
    raw = roco_layout(str(tmp_path / "raw"), 9)
    (serial,) = run_build("roco", raw, tmp_path / "one", workers=1)
    (parallel,) = run_build("roco", raw, tmp_path / "two", workers=2)
    assert serial.written == parallel.written and serial.rejects == parallel.rejects
    for split in ("train", "test"):
        a = sources.open_source(str(tmp_path / "one"), "roco", split)
        b = sources.open_source(str(tmp_path / "two"), "roco", split)
        assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]


def test_cli_summary_rejects_file_and_rebuild(tmp_path, capsys):
    raw = roco_layout(str(tmp_path / "raw"), 3)
    out = str(tmp_path / "out")
    args = ["roco", "--manual_dir", raw, "--data_dir", out, "--workers", "1", "--no_progress",
            "--max_image_side", "32"]
    assert build_lib.main(args) == 0
    printed = capsys.readouterr().out
    assert "roco@radiology: 4 records written, 2 rejected" in printed
    assert "rejected unreadable: 2" in printed and "rejects.jsonl" in printed
    dataset_dir = sources.dataset_dir(out, "roco")
    rows = core.read_rejects(dataset_dir)
    assert {r["id"] for r in rows} == {"ROCO_train1", "ROCO_test1"}
    assert all(r["path"].endswith(".jpg") for r in rows)
    summary = json.load(open(os.path.join(dataset_dir, core.SUMMARY_FILE)))
    assert summary["written"] == {"train": 2, "test": 2}
    assert summary["rejected_by_reason"] == {"unreadable": 2}
    # A second run finds the complete build and reports it again without rebuilding.
    assert build_lib.main(args) == 0
    assert "4 records written, 2 rejected" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["nonexistent"], "unknown dataset 'nonexistent'"),
    (["roco@nope"], "unknown config 'nope'"),
    (["roco", "--max_image_side", "0"], "--max_image_side must be positive"),
    (["roco", "--workers", "0"], "--workers must be positive"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    full = args[:1] + ["--manual_dir", str(tmp_path), "--data_dir", str(tmp_path / "o")] + args[1:]
    assert build_lib.main(full) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_tfrecord_build_without_tensorflow_reads_as_the_array_record_build(tmp_path):
    """TFDS writes ArrayRecord, `tfrecord.rewrite_as_tfrecord` turns it into TFRecord before
    the version folder appears: same records, same report, no TensorFlow involved."""
    from medclip_jax.data import tfrecord
    raw = roco_layout(str(tmp_path / "raw"), 3)
    (expected,) = run_build("roco", raw, tmp_path / "ar")
    (report,) = build_lib.build("roco", raw, str(tmp_path / "tfr"), file_format="tfrecord",
                                max_image_side=64, workers=1)
    files = os.listdir(report.data_dir)
    assert any(".tfrecord-" in f for f in files) and not any(".array_record-" in f for f in files)
    assert {core.REJECTS_FILE, core.SUMMARY_FILE} <= set(files)
    assert report.written == expected.written and report.rejects == expected.rejects
    for split in ("train", "test"):
        ours = sources.open_source(str(tmp_path / "tfr"), "roco", split)
        theirs = sources.open_source(str(tmp_path / "ar"), "roco", split)
        assert isinstance(ours.records, tfrecord.TFRecordSource)
        assert ours.get_many(range(len(ours))) == theirs.get_many(range(len(theirs)))
    (again,) = build_lib.build("roco", raw, str(tmp_path / "tfr"), file_format="tfrecord")
    assert again.written == report.written  # complete: left alone


def test_split_with_every_item_rejected_fails_clearly(tmp_path):
    raw = roco_layout(str(tmp_path / "raw"), 2, kinds=("garbage",))
    with pytest.raises(UserError, match="every one of the 2 items of split 'train'"):
        run_build("roco", raw, tmp_path / "out")


def test_list_names_every_builder(capsys):
    assert build_lib.main(["--list"]) == 0
    printed = capsys.readouterr().out
    for name in build_lib.BUILDERS:
        assert name in printed


def test_build_all_builds_every_dataset_folder_present(tmp_path, capsys):
    roco_layout(str(tmp_path / "raw" / "roco"), 2, kinds=("rgb_jpeg",))
    out = str(tmp_path / "out")
    assert build_lib.main(["all", "--manual_dir", str(tmp_path / "raw"), "--data_dir", out,
                           "--workers", "1", "--no_progress"]) == 0
    captured = capsys.readouterr()
    assert "roco@radiology: 4 records written, 0 rejected" in captured.out
    assert "no folder for pmc_oa" in captured.err
    assert build_lib.main(["all", "--manual_dir", str(tmp_path / "empty"), "--data_dir", out]) == 2


def test_interrupted_build_resumes_without_converting_again(tmp_path, monkeypatch):
    raw = roco_layout(str(tmp_path / "raw"), 6)
    (reference,) = run_build("roco", raw, tmp_path / "reference")
    calls = []
    real = core.convert_item

    def interrupted_after_four(item, max_side):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(item.id)
        return real(item, max_side)

    monkeypatch.setattr(core, "convert_item", interrupted_after_four)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_build("roco", raw, out)
    dataset_dir = os.path.join(str(out), "roco", "radiology", "1.0.0")
    assert not os.path.exists(dataset_dir)  # nothing half-written is visible
    assert os.path.exists(dataset_dir + ".conversion_cache.sqlite")

    calls.clear()
    monkeypatch.setattr(core, "convert_item", lambda item, side: (calls.append(item.id),
                                                                   real(item, side))[1])
    (resumed,) = run_build("roco", raw, out)
    assert len(calls) == 12 - 4  # only what the first run had not converted
    assert resumed.written == reference.written and resumed.rejects == reference.rejects
    for split in ("train", "test"):
        a = sources.open_source(str(tmp_path / "reference"), "roco", split)
        b = sources.open_source(str(out), "roco", split)
        assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
    assert not os.path.exists(dataset_dir + ".conversion_cache.sqlite")


def test_changed_source_file_is_converted_again(tmp_path, monkeypatch):
    from data_prep.conversion_cache import ConversionCache
    image = write_image(str(tmp_path / "a.jpg"), "rgb_jpeg", seed=0)
    item = core.Item("train", "a", image, {})
    cache = ConversionCache(str(tmp_path / "c.sqlite"), max_side=64)
    cache.store(item, core.convert_item(item, 64))
    assert cache.reusable([item], "train") == {"a"}
    other_size = ConversionCache(str(tmp_path / "c.sqlite"), max_side=32)
    assert other_size.reusable([item], "train") == set()
    write_image(image, "rgb_jpeg", seed=1, size=(30, 20))
    os.utime(image, ns=(1, 1))
    assert cache.reusable([item], "train") == set()


def test_missing_or_empty_manual_dir_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        build_lib.build("roco", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no ROCO folder"):
        build_lib.build("roco", str(tmp_path / "empty"), str(tmp_path / "out"))


class CountingItems:
    """A lazy item sequence (like MedMNIST's npz reader) that counts the items it produced."""

    def __init__(self, n):
        self.n, self.produced = n, 0

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            self.produced += 1
            yield core.Item("train", f"x{i}", np.full((4, 4), i % 256, np.uint8), {})


def test_parallel_conversion_reads_items_as_they_are_consumed():
    items = CountingItems(400)
    options = core.ConversionOptions(max_side=8, workers=2, progress=False, resume=False)
    results = core.convert_items(items, "train", options)
    first = [next(results) for _ in range(10)]
    batch = 400 // (2 * 8)
    assert items.produced <= 10 + (4 * 2 + 1) * batch  # a bounded window, not all 400
    rest = list(results)
    assert [r["id"] for r in first + rest] == [f"x{i}" for i in range(400)]


def test_registry_names_are_the_tfds_names_the_sources_look_up():
    for name in build_lib.BUILDERS:
        assert build_lib.builder_class(name).name == name


def test_paper_eval_and_train_datasets_are_buildable():
    from configs import base, eval as eval_config
    config = eval_config.get_config("paper")
    mixture = base.get_config("paper").data.train_mixture
    specs = (list(config.zero_shot.datasets) + list(config.retrieval.datasets)
             + [f"{e.name}/{e.split}" for e in sources.parse_mixture(mixture)])
    # The benchmark's 19 classification tasks and MIMIC-CXR's multi-label one.
    assert len(config.zero_shot.datasets) == 20
    for spec in specs:
        entry = sources.parse_mixture(spec)[0]
        cls = build_lib.builder_class(entry.dataset)
        configs = build_lib.config_names(cls)
        # Several configs: the spec must name one (a data_dir may hold more than one).
        assert (entry.config in configs) if len(configs) > 1 else not entry.config, spec


def test_tfrecord_build_reads_back_with_tensorflow(tmp_path):
    """Runs where TensorFlow is installed (it is not in requirements.txt)."""
    tf = pytest.importorskip("tensorflow")
    import tensorflow_datasets as tfds
    raw = roco_layout(str(tmp_path / "raw"), 3)
    (report,) = build_lib.build("roco", raw, str(tmp_path / "out"), file_format="tfrecord",
                                max_image_side=32)
    assert any(".tfrecord-" in f for f in os.listdir(report.data_dir))
    examples = list(tfds.builder_from_directory(report.data_dir).as_dataset(split="train"))
    assert [e["id"].numpy().decode() for e in examples] == ["ROCO_train0", "ROCO_train2"]
    assert all(e["image"].shape[-1] == 3 and e["image"].dtype == tf.uint8 for e in examples)


def test_check_counts_rows_where_a_builder_read_them():
    """A builder that gathers rows into records counts the rows it read: one that is neither
    written, rejected nor an extra caption of a record fails the build's check."""
    report = core.BuildReport("x", found={"train": 2}, written={"train": 2},
                              rows_read={"train": 4}, rows_merged={"train": 1})
    with pytest.raises(AssertionError, match="1 rows merged into records != 4 rows read"):
        report.check()
    report.rows_merged["train"] = 2
    report.check()
    assert report.to_json()["rows_read"] == {"train": 4}
    assert "rows_read" not in core.BuildReport("y", {"train": 1}, {"train": 1}).to_json()


def test_conversion_pool_is_shared_inside_the_block_and_closed_after():
    items = [core.Item("train", f"x{i}", np.full((4, 4), i, np.uint8), {}) for i in range(6)]
    options = core.ConversionOptions(max_side=8, workers=2, progress=False, resume=False)
    with core.conversion_pool(2) as pool:
        first = [r["id"] for _, r in core.converted(items, len(items), options)]
        executor = pool.executor()
        second = [r["id"] for _, r in core.converted(items, len(items), options)]
        assert pool.executor() is executor  # the same processes served both
        with core.conversion_pool(2) as inner:
            assert inner is pool
    assert first == second == [f"x{i}" for i in range(6)]
    with pytest.raises(RuntimeError, match="shutdown"):  # stopped when the block ended
        executor.submit(int)
